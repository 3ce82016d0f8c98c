"""Knobs TPU users reach for: bf16 compute with float32 master weights, gradient accumulation
(optax.MultiSteps) equal to one big batch, UNet rematerialisation equal to the plain backward pass, the
persistent compilation cache hit by a second run, and a jax.profiler trace in the TensorBoard directory."""

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import tasks
from jaxgen.nets import MLPDenoiser, UNet
from jaxgen.optim import make_optimizer
from jaxgen.train.loop import train_and_evaluate
from jaxgen.train.state import create_train_state, make_train_step, with_grad_accum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(spec, **overrides):
    c = config_lib.load_config(os.path.join(ROOT, spec))
    config_lib.apply_overrides(c, list(overrides.items()))
    config_lib.validate(c)
    return c


def test_bf16_compute_trains_the_quickstart_with_float32_master_weights():
    # One resolution level without attention: every convolution and GroupNorm of the UNet at the least compile time.
    config = _load("configs/quickstart.py:smoke", **{"model.dtype": "bfloat16", "model.ch_mult": "(1,)",
                                                    "model.attn_resolutions": "()"})
    task = tasks.build(config)
    state = jax.jit(task.init)(jax.random.key(0))
    assert {p.dtype for p in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    it = data_lib.make_train_iterator(config.data, global_batch_size=config.train.batch_size, seed=0)
    batch = next(it)
    lowered = jax.jit(task.train_step).lower(state, batch, jax.random.key(1))
    convs = [ln for ln in lowered.as_text().splitlines() if "stablehlo.convolution" in ln]
    assert convs and all("bf16" in ln and "f32" not in ln.split("->")[0] for ln in convs)  # bf16 operands
    step = lowered.compile()
    losses = []
    for i in range(3):
        state, metrics = step(state, batch if i == 0 else next(it), jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert {p.dtype for p in jax.tree.leaves((state.params, state.ema_params))} == {jnp.dtype(jnp.float32)}


def test_grad_accumulation_of_k_micro_batches_equals_one_big_batch():
    """k steps of batch b with grad_accum_steps=k == one step of batch k b (a mean loss), over two updates."""
    k, b = 4, 8
    model = MLPDenoiser(dim=3, hidden=16, depth=2, t_embed=8, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    opt = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, schedule="constant", warmup_steps=0,
                                         weight_decay=0.0, grad_clip=1.0, eps=1e-8, momentum=0.9, b1=None, b2=None,
                                         param_groups=()))
    build, schedule = make_optimizer(opt, 10)

    def loss_fn(params, extra, batch, key):  # deterministic: the key is not used
        pred = nnx.merge(graphdef, params)(batch["x"], batch["t"])
        return jnp.mean((pred - batch["y"]) ** 2), ({}, extra)

    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(2 * k * b, 3)).astype(np.float32), "t": rng.uniform(size=2 * k * b).astype(np.float32),
            "y": rng.normal(size=(2 * k * b, 3)).astype(np.float32)}
    with jax.default_matmul_precision("highest"):
        tx = build(params)
        big_step = jax.jit(make_train_step(loss_fn, tx, schedule, 0.9))
        big = create_train_state(params, tx, 0.9)
        for u in range(2):
            big, _ = big_step(big, {n: v[u * k * b:(u + 1) * k * b] for n, v in data.items()}, jax.random.key(0))

        acc_tx = with_grad_accum(build(params), ml_collections.ConfigDict(dict(grad_accum_steps=k)))
        acc_step = jax.jit(make_train_step(loss_fn, acc_tx, schedule, 0.9))
        acc = create_train_state(params, acc_tx, 0.9)
        moved = []
        for s in range(2 * k):
            before = acc.params
            acc, _ = acc_step(acc, {n: v[s * b:(s + 1) * b] for n, v in data.items()}, jax.random.key(s))
            moved.append(not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(acc.params))))
    assert moved == [False] * (k - 1) + [True] + [False] * (k - 1) + [True]  # an update every k-th step only
    for got, want in zip(jax.tree.leaves((acc.params, acc.ema_params)), jax.tree.leaves((big.params, big.ema_params))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_unet_remat_matches_the_plain_backward_pass():
    kw = dict(in_channels=1, ch=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
              image_size=4, num_groups=2)
    plain, remat = UNet(**kw, rngs=nnx.Rngs(0)), UNet(**kw, remat=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
    t = jnp.array([0.2, 0.7])

    def grads(model):
        graphdef, params = nnx.split(model, nnx.Param)
        def f(p):
            y = nnx.merge(graphdef, p)(x, t)  # one forward pass: the same loss at half the program to compile
            return jnp.sum(y ** 2 + 0.1 * y)

        return jax.jit(jax.grad(f))(params), jax.make_jaxpr(jax.grad(f))(params)

    g_plain, jaxpr_plain = grads(plain)
    g_remat, jaxpr_remat = grads(remat)
    assert "remat" in str(jaxpr_remat) or "checkpoint" in str(jaxpr_remat)
    assert "remat" not in str(jaxpr_plain) and "checkpoint" not in str(jaxpr_plain)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, overrides, words", [
    ("configs/ddpm_toy2d.py:smoke", {"train.remat": "True"}, ["config.train.remat", "MLP"]),
    ("configs/s4_seq_digits.py:smoke", {"model.dtype": "bfloat16"}, ["config.model.dtype", "sequence model", "float32"]),
    ("configs/quickstart.py:smoke", {"model.param_dtype": "float64"}, ["config.model.param_dtype", "bfloat16"]),
    ("configs/quickstart.py:smoke", {"train.grad_accum_steps": "0"}, ["config.train.grad_accum_steps", ">= 1"]),
    ("configs/quickstart.py:smoke", {"train.profile_steps": "(3, 1)"}, ["config.train.profile_steps", "start < stop"]),
])
def test_unsupported_knobs_are_config_errors_naming_the_key(spec, overrides, words):
    with pytest.raises(config_lib.ConfigError) as e:
        tasks.build(_load(spec, **overrides))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_second_run_compiles_from_the_cache_and_profile_is_written(tmp_path):
    """Two runs of the same config: the first writes the train step's executable to train.compile_cache_dir, the
    second (a train step traced anew, which JAX's in-memory caches do not hold) loads it (JAX's cache-hit event), not
    a timing. (jax.clear_caches() would also empty this test process's caches for every later test.)"""
    cache = tmp_path / "cache"
    overrides = {"train.num_steps": "2", "train.compile_cache_dir": str(cache), "train.profile_steps": "(0, 1)"}
    config = _load("configs/ddpm_toy2d.py:smoke", **overrides)
    task = tasks.build(config)
    task = tasks.Task(task.init, task.train_step, lambda state, key, workdir: {})  # the train step is what counts
    hits = []

    def listener(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    old_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    old_dir = jax.config.jax_compilation_cache_dir  # the test session's shared cache (tests/conftest.py)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.monitoring.register_event_listener(listener)
    try:
        train_and_evaluate(config, str(tmp_path / "a"), task=task)
        assert not hits
        assert glob.glob(str(cache / "jit_step_fn-*"))
        assert glob.glob(str(tmp_path / "a" / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
        for f in os.listdir(cache):  # keep only the train step: a hit below can only be its executable
            if not f.startswith("jit_step_fn-"):
                os.remove(cache / f)
        train_and_evaluate(config, str(tmp_path / "b"), task=task)
        assert len(hits) == 1
    finally:
        jax.monitoring.unregister_event_listener(listener)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min_time)
        jax.config.update("jax_compilation_cache_dir", old_dir)
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()


def test_profile_categories_name_the_convolution_and_the_matmul_of_a_compiled_program():
    """experiments/bench_train_step.py files each executed op of a profile under the heaviest op inside it, read
    from the compiled HLO: a convolution and a matmul (each possibly inside a fusion) are found as such."""
    from experiments import bench_train_step

    def f(x, w, m):
        y = jax.lax.conv(x, w, (1, 1), "SAME")
        return jax.nn.relu(y).sum(), jnp.tanh(x.reshape(2, -1) @ m)

    args = (jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), jnp.ones((192, 16)))
    categories = bench_train_step.hlo_op_categories(jax.jit(f).lower(*args).compile().as_text())
    assert {"convolution", "matmul"} <= set(categories.values()), categories
    assert set(categories.values()) <= {name for name, _ in bench_train_step.OP_CATEGORIES} | {"elementwise", "other"}
