"""Test setup: 8 emulated CPU devices (before any backend use), float32 by default.

Tests that compare against a closed form wrap themselves in `jax.enable_x64(True)`.

Many tests compile the same small programs (the toy and smoke configs' train steps, in-process and in
CLI subprocesses), so the session shares one persistent compilation cache: a fresh directory per
session, created by the first process that loads this file and inherited through the environment by
the pytest-xdist workers and every subprocess a test starts. It saves compile time only; what runs is
the same executable. The feature classifiers that evaluation trains (jaxgen.metrics.features) are
cached the same way, in a fresh $JAXGEN_CACHE, never in the user's ~/.cache/jaxgen.

The tests run with the XLA:CPU options `python -m jaxgen.run` sets (jaxgen.xla_cpu: convolutions outside YNNPACK), so
that in-process and CLI results agree. Its cost here is within this VM's noise: tests/test_nets.py, test_knobs.py,
test_configs_smoke.py, test_diffusion_task.py and test_autoencoder_task.py 181 s with YNNPACK's convolutions, 154 s
without; the first three alone, in turns, 83 and 95 s with, 99 and 97 s without.

The tests compile far more than they run (a few steps of many small programs), so LLVM's optimisation
passes are turned off for the session (XLA's own HLO passes, fusion included, still run): the same programs
compile several times faster (the quickstart UNet's init 15.2 -> 2.4 s CPU; tests/test_knobs.py 56 -> 34 s).
Users' runs keep the default level. XLA's Eigen thread pool is off: each of the two pytest-xdist workers has one core
(measured: 10 % less wall time for the diffusion and one-step test files alone, 1 % for the whole suite, 676 -> 667 s;
in jaxlib 0.10 the matmuls and convolutions run in YNNPACK, which still uses both cores). XLA:CPU's classic fusion
emitters compile faster than the new ones (the whole suite 736 -> 580 s). The programs carry no Python source
locations (they only name ops in profiles and errors): lowering and compiling them is that much less work (measured on
tests/test_nets.py, test_diffusion_samplers.py, test_objectives.py and test_likelihood.py in one process: 96.5 -> 84.5
s, backend compile 38.8 -> 33.8 s). Each program's LLVM code is generated as one module, not split for parallel
compilation (--xla_cpu_parallel_codegen_split_count=1): tests/test_diffusion_samplers.py, test_diffusion_score_matching.py,
test_objectives.py and test_diffusion_amed.py in one process 75 -> 69 s.
"""
import gc
import os
import tempfile
import threading

import pytest

from jaxgen import xla_cpu

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxgen-test-jit-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "JAXGEN_CACHE" not in os.environ:  # the feature classifiers the tests train: this session's, not ~/.cache
    os.environ["JAXGEN_CACHE"] = tempfile.mkdtemp(prefix="jaxgen-test-feature-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "false")
xla_cpu.set_default_flags()  # what `python -m jaxgen.run` runs with: convolutions outside YNNPACK
for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_multi_thread_eigen=false",
             "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1"):
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
import jax  # noqa: E402
from jax._src.interpreters import mlir, partial_eval  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# flax's Rngs asks each traced counter for `.sharding` (Variable.set_value: getattr(value, 'sharding', None)) on every
# parameter draw; jax builds that AttributeError's message by walking every equation traced so far, so building a
# module under a trace is quadratic in its size (the CIFAR-10 UNet under eval_shape: 2.5 s, 0.5 s without). getattr
# discards the message; the tests skip building it (tests/test_nets.py + 3 others: 105 -> 96 s).
partial_eval.DynamicJaxprTracer._origin_msg = lambda self: ""
# jax lowers each program into a fresh MLIR context (make_ir_context registers and loads every dialect). The tests lower
# thousands of small programs; one context per thread for the whole session lowers the same modules with far less work
# and memory (tests/test_diffusion_samplers.py + 3 others in one process: 100 -> 77 s, peak RSS 2.7 -> 1.1 GB).
_lowering_contexts = threading.local()


def _shared_ir_context(make=mlir.make_ir_context):
    if getattr(_lowering_contexts, "context", None) is None:
        _lowering_contexts.context = make()
    return _lowering_contexts.context


mlir.make_ir_context = _shared_ir_context
# Tracing and lowering allocate many short-lived objects: Python's cyclic collector, run every 700 net allocations by
# default, spent ~4 % of a samplers test file's CPU time. Every 50,000 here: tests/test_nets.py, test_objectives.py and
# test_knobs.py in one process, 4 runs in turns, 51.1 / 67.8 / 65.7 / 61.1 s against 55.6 / 70.4 / 74.1 / 66.4 s.
gc.set_threshold(50_000, 20, 100)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """(path, state dict): FID Inception-v3 weights drawn at random (jaxgen.metrics.inception.random_state_dict(0)),
    written by torch.save as the published file is; built once per test process (4-5 s)."""
    import collections

    import torch

    from jaxgen.metrics import inception

    sd = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in inception.random_state_dict(0).items())
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(sd, path)
    return path, sd
