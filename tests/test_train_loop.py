"""The training loop: one trace, bitwise resume after SIGTERM/SIGKILL, sharded == single device,
restore onto another device count, non-finite stop (2 processes x 4 devices: tests/test_multihost.py)."""

import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen import tasks
from jaxgen.train.logging import read_metrics
from jaxgen.tasks import build_and_train
from jaxgen.train.loop import NonFiniteError, train_and_evaluate
from signals import signal_self_when

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "configs/ddpm_toy2d.py:smoke"


# `python -m jaxgen.run` as on a user's install, without torch: torch is a test-only dependency (the FID reference,
# setup.py's test extra) and tensorboardX imports it when present (3.4 CPU-s per process).
NO_TORCH = "import sys; sys.modules['torch'] = None; "
CLI = [sys.executable, "-c", NO_TORCH + "import runpy; runpy.run_module('jaxgen.run', run_name='__main__', alter_sys=True)"]


def _run(workdir, *overrides, devices=8, env=None, config=TOY, wait=True):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu", **(env or {}))
    cmd = [*CLI, "--config", config, "--workdir", str(workdir), *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _losses(workdir):
    return {row["step"]: row["loss"] for row in read_metrics(str(workdir)) if "loss" in row}


def _load(spec, **overrides):
    c = config_lib.load_config(os.path.join(ROOT, spec))
    config_lib.apply_overrides(c, list(overrides.items()))
    return c


def test_step_traced_once_and_metrics_logged(tmp_path):
    config = _load(TOY, **{"train.num_steps": "6", "train.log_every": "2"})
    task = tasks.build(config)
    traces = []

    def counting_step(state, batch, key):
        traces.append(1)
        return task.train_step(state, batch, key)

    out = train_and_evaluate(config, str(tmp_path), task=tasks.Task(task.init, counting_step, task.evaluate))
    assert len(traces) == 1
    rows = read_metrics(str(tmp_path))
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    for key in ("loss", "grad_norm", "param_norm", "learning_rate", "steps_per_sec", "examples_per_sec"):
        assert all(np.isfinite(r[key]) for r in train_rows), key
    assert "eval/sw2" in out and os.listdir(tmp_path / "figures")
    assert os.path.exists(tmp_path / "config.json") and os.listdir(tmp_path / "tensorboard")


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = _load(TOY, **{"train.num_steps": "10", "train.log_every": "5", "train.checkpoint_every": "2"})
    task = tasks.build(config)

    def step_nan_from_5(state, batch, key):
        state, metrics = task.train_step(state, batch, key)
        bad = state.step > 5  # the 6th step onwards
        return state, dict(metrics, loss=jnp.where(bad, jnp.nan, metrics["loss"]))

    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 6 \(in the window of steps 6-6\).*step 4"):
        train_and_evaluate(config, str(tmp_path), task=tasks.Task(task.init, step_nan_from_5, task.evaluate))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and max(steps) == 4


# A checkpoint every 20 steps; the rest of the run is the margin for each signal to land before the end.
RESUME_STEPS = {"train.num_steps": "200", "train.log_every": "1", "train.checkpoint_every": "20",
                "eval.untrained_baseline": "False"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference losses of the resume tests, from one uninterrupted run (in-process, 8 devices)."""
    workdir = tmp_path_factory.mktemp("full")
    build_and_train(_load(TOY, **RESUME_STEPS), str(workdir))
    return _losses(workdir)


def _saved(workdir):
    ckpt_dir = workdir / "checkpoints"
    return [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []


def _sigterm_in_process_after_checkpoint(workdir, after: int, steps, capsys) -> int:
    """`jaxgen.run.main` in this process; a thread sends this process SIGTERM once the run's own handler is
    installed and a checkpoint newer than step `after` is on disk. The CLI's exit status and stderr are the
    same as a subprocess's (the process boundary itself: tests/test_multihost.py, tests/test_cli.py)."""
    from jaxgen import run

    with signal_self_when(signal.SIGTERM, lambda: max(_saved(workdir), default=0) > after, timeout=240) as sig:
        capsys.readouterr()
        rc = run.main(["--config", os.path.join(ROOT, TOY), "--workdir", str(workdir), *steps])
    err = capsys.readouterr().err
    assert sig.sent.is_set() and not sig.strays, f"the SIGTERM missed the run (rc {rc}): {err[-2000:]}"
    assert rc == 143, err[-2000:]
    assert "preempted: checkpoint of step" in err
    return max(_saved(workdir))


def _sigkill_after_checkpoint(workdir, after: int, steps) -> int:
    """Run the CLI in a subprocess in `workdir`, SIGKILL it once a checkpoint newer than step `after` is on
    disk; returns the newest checkpoint step once the process has ended."""
    proc = _run(workdir, *steps, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and max(_saved(workdir), default=0) <= after:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted: " + proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    return max(_saved(workdir))


def test_resume_after_sigterm_and_after_sigkill_is_bitwise_identical(tmp_path, uninterrupted, capsys):
    """SIGTERM (checkpoint of the current step, exit 143), resume; SIGKILL after a later checkpoint, resume:
    every logged loss after the first cut equals the uninterrupted run's. The SIGKILL needs a process of its
    own; the SIGTERM run and the last resume run the CLI's main in this process."""
    from jaxgen import run

    steps = [f"--config.{k}={v}" for k, v in RESUME_STEPS.items()]
    n = int(RESUME_STEPS["train.num_steps"])
    work = tmp_path / "cut"
    first = _sigterm_in_process_after_checkpoint(work, 0, steps, capsys)
    second = _sigkill_after_checkpoint(work, first, steps)
    assert 0 < first < second < n
    assert run.main(["--config", os.path.join(ROOT, TOY), "--workdir", str(work), *steps]) == 0
    resumed = _losses(work)
    assert sorted(resumed) == list(range(1, n + 1))
    assert [resumed[s] for s in range(first + 1, n + 1)] == [uninterrupted[s] for s in range(first + 1, n + 1)]


# Eight steps at a constant learning rate, a checkpoint after four: the reference of the device-count tests (which
# compare losses: the final evaluation scores the trained network only).
STEPS8 = {"train.num_steps": "8", "train.log_every": "1", "train.checkpoint_every": "4",
          "optimizer.schedule": "constant", "optimizer.warmup_steps": "0", "eval.untrained_baseline": "False"}


def _flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """Losses of steps 1..8 on the tests' 8 emulated devices (in-process)."""
    workdir = tmp_path_factory.mktemp("eight")
    build_and_train(_load(TOY, **STEPS8), str(workdir))
    losses = _losses(workdir)
    return [losses[s] for s in range(1, 9)]


def test_one_device_and_fsdp_match_eight_and_restore_across_device_counts(tmp_path, eight_devices):
    # 2 (data) x 4 (fsdp): every parameter with a dimension divisible by 4 is split over 4 devices.
    build_and_train(_load(TOY, **STEPS8, **{"mesh.fsdp": "4", "mesh.fsdp_min_size": "1"}), str(tmp_path / "fsdp"))
    # 4 (data) x 2 (fsdp), weight-update sharded: optimizer state and EMA split over all 8 devices.
    build_and_train(_load(TOY, **STEPS8, **{"mesh.shard_update": "True", "mesh.fsdp": "2", "mesh.fsdp_min_size": "1",
                                            "ema_decay": "0.9"}), str(tmp_path / "update"))
    build_and_train(_load(TOY, **dict(STEPS8, **{"train.num_steps": "4"})), str(tmp_path / "switch"))
    # One process of 1 device runs the CLI's main twice: 8 steps from scratch, then a resume that restores the
    # 8-device checkpoint of step 4 onto its 1 device.
    argv = lambda d: ["--config", TOY, "--workdir", str(tmp_path / d), *_flags(STEPS8)]  # noqa: E731
    code = (NO_TORCH + "import jax; from jaxgen import run; assert jax.device_count() == 1, jax.devices(); "
            f"sys.exit(run.main({argv('one')!r}) or run.main({argv('switch')!r}))")
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("process 0 of 1 (1 local / 1 global devices, cpu)") == 2, r.stdout[-3000:]
    assert "Resumed from" in r.stdout and "at step 4" in r.stdout, r.stdout[-3000:]
    one, switch, fsdp, update = (_losses(tmp_path / d) for d in ("one", "switch", "fsdp", "update"))
    np.testing.assert_allclose([one[s] for s in range(1, 9)], eight_devices, rtol=1e-5)
    np.testing.assert_allclose([fsdp[s] for s in range(1, 9)], eight_devices, rtol=1e-5)
    np.testing.assert_allclose([update[s] for s in range(1, 9)], eight_devices, rtol=1e-5)
    np.testing.assert_allclose([switch[s] for s in range(1, 9)], eight_devices, rtol=1e-5)


def test_fsdp_shards_large_parameters():
    from jaxgen.config import base_config
    from jaxgen.train import mesh as mesh_lib

    mesh_config = base_config().mesh
    mesh_config.fsdp = 4
    mesh = mesh_lib.make_mesh(mesh_config)
    abstract = {"big": jax.ShapeDtypeStruct((6, 512, 256), jnp.float32), "small": jax.ShapeDtypeStruct((8,), jnp.float32),
                "odd": jax.ShapeDtypeStruct((301, 303), jnp.float32)}
    sh = mesh_lib.state_shardings(mesh, abstract, min_fsdp_size=1000)
    assert tuple(sh["big"].spec) == (None, "fsdp", None)  # the largest dimension divisible by 4
    assert tuple(sh["small"].spec) == () and tuple(sh["odd"].spec) == ()
    x = jax.device_put(jnp.ones((6, 512, 256)), sh["big"])
    assert x.addressable_shards[0].data.shape == (6, 128, 256)


@pytest.mark.parametrize("spec", [TOY, "configs/sid_toy2d.py:smoke"])
def test_weight_update_sharding_splits_optimizer_state_and_ema_and_the_step_gathers_parameters(spec):
    """config.mesh.shard_update on 8 data-parallel devices: parameters replicated, the optimizer state and the EMA
    of large leaves split over all 8 devices (each holds and updates 1/8); the compiled step all-gathers the updated
    parameters and, per device, reads less memory than the replicated update (XLA's cost analysis). SiD: its two
    networks' optimizers in one step."""
    from jaxgen import aot, config as config_lib
    from jaxgen.train.state import TrainState

    costs = {}
    for on in (False, True):
        config = _load(spec, **{"mesh.shard_update": str(on), "ema_decay": "0.9", "mesh.fsdp_min_size": "1000"})
        config_lib.validate(config)
        _, mesh, abstract, sh, lowered = aot.lower_steps(config, jax.devices(), ("train",))
        assert isinstance(sh, TrainState) and mesh.shape == {"data": 8, "fsdp": 1}
        assert all(s.is_fully_replicated for s in jax.tree.leaves(sh.params))
        split = [(x.shape, s) for part in ("opt_state", "ema_params")
                 for x, s in zip(jax.tree.leaves(getattr(abstract, part)), jax.tree.leaves(getattr(sh, part)))
                 if x.size >= 1000]
        assert len(split) >= 3, "the MLPs' large kernels: EMA, Adam's two moments"
        for shape, s in split:
            assert math.prod(s.shard_shape(shape)) * (8 if on else 1) == math.prod(shape), (on, shape, s)
        compiled = lowered[0][2].compile()
        cost = compiled.cost_analysis()
        costs[on] = (cost[0] if isinstance(cost, (list, tuple)) else cost)["bytes accessed"]
        assert (" all-gather(" in compiled.as_text() or " all-gather-start(" in compiled.as_text()) == on
    assert costs[True] < costs[False], costs


def test_arrays_a_step_creates_are_split_over_the_batch_axes_by_shard_batch():
    """Under the loop's train step, mesh.shard_batch splits noise a task draws itself (SiD's z) along the
    batch axes, as the data batch is; outside a mesh it returns its input unchanged."""
    import ml_collections

    from jaxgen.train import mesh as mesh_lib
    from jaxgen.train.loop import sharded_train_step

    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=4, fsdp=2)))

    def train_step(state, batch, key):
        z = jax.random.normal(key, batch["x"].shape)
        return state, dict(z=mesh_lib.shard_batch(z), other=jax.random.normal(jax.random.fold_in(key, 1), (16, 3)))

    task = tasks.Task(init=None, train_step=train_step, evaluate=None)
    step = sharded_train_step(task, mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh), jax.random.key(0))
    batch = jax.device_put({"x": jnp.zeros((16, 3))}, mesh_lib.batch_sharding(mesh))
    _, m = step(jnp.zeros(()), batch, 0)
    assert m["z"].sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh), 2)
    assert {s.data.shape for s in m["z"].addressable_shards} == {(2, 3)}  # 16 rows over 8 devices
    assert m["other"].sharding.is_fully_replicated  # without it, XLA replicates the noise (and the work on it)
    expected = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (16, 3))  # the same numbers
    np.testing.assert_array_equal(np.asarray(m["z"]), np.asarray(expected))
    z = jnp.ones((4, 2))
    assert mesh_lib.shard_batch(z) is z
