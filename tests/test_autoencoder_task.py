"""The quantised-autoencoder task: the jitted train step's VQ EMA update vs the formula in NumPy, dead-code
restarts on their interval (EMA and gradient codebooks), held-out metrics vs NumPy, figures, config
variants, and each config file's `:smoke` end to end through `jaxgen.run.main` (MNIST / CIFAR-10 on tfds mock data)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import tasks
from jaxgen.config import ConfigError
from jaxgen.task_configs import quantizer_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(spec="configs/fsq_digits.py:smoke", **overrides):
    c = config_lib.load_config(os.path.join(ROOT, spec))
    config_lib.apply_overrides(c, [(k, str(v)) for k, v in overrides.items()])
    return c


# Unit tests use a one-stage network (no downsampling: an 8x8 grid of codes): half the compile time of the
# smoke network, whose two stages the end-to-end tests below exercise.
ONE_STAGE = {"model.channels": "(8,)"}


def _batch(n=16, offset=0):
    return {"x": jnp.asarray(data_lib.load_split(_config().data, "train")["x"][offset:offset + n])}


def _forward(task_config, state, x):
    """The model's own forward pass on x (z_e, indices), merged from the state by hand."""
    from jaxgen.tasks.autoencoder import make_model

    info = data_lib.dataset_info(task_config.data)
    model = nnx.eval_shape(lambda: make_model(task_config, info, nnx.Rngs(params=jax.random.key(0))))
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    return _apply(graphdef, state.params, state.extra, x)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, extra, x):
    """One compiled forward pass per network and input shape (eagerly, every op would compile on its own)."""
    return nnx.merge(graphdef, params, extra)(x)


def test_vq_ema_step_updates_codebook_by_formula_and_restarts_on_interval():
    decay, eps, K, D = 0.9, 1e-5, 32, 4
    c = _config("configs/fsq_digits.py:vq_ema,smoke", **ONE_STAGE,
                **{"quantizer.decay": decay, "quantizer.eps": eps, "quantizer.restart_every": 2,
                   "quantizer.dead_threshold": 1e6})
    task = tasks.build(c)
    state = jax.jit(task.init)(jax.random.key(0))
    step = jax.jit(task.train_step)
    x1 = _batch(16, 200)
    fwd = _forward(c, state, x1["x"])
    z, k = np.asarray(fwd["z_e"], np.float64).reshape(-1, D), np.asarray(fwd["indices"]).reshape(-1)
    N0 = np.asarray(state.extra["vq"]["cluster_size"][...], np.float64)
    M0 = np.asarray(state.extra["vq"]["embed_sum"][...], np.float64)
    state1, metrics = step(state, x1, jax.random.key(1))
    # step 1 of an interval of 2: no restart, only the EMA (VQ-VAE appendix, Laplace-smoothed counts)
    counts = np.bincount(k, minlength=K)
    sums = np.zeros((K, D))
    np.add.at(sums, k, z)
    N1, M1 = decay * N0 + (1 - decay) * counts, decay * M0 + (1 - decay) * sums
    n = N1.sum()
    e1 = M1 / ((N1 + eps) / (n + K * eps) * n)[:, None]
    np.testing.assert_allclose(np.asarray(state1.extra["vq"]["cluster_size"][...]), N1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state1.extra["vq"]["codebook"][...]), e1, rtol=1e-4, atol=1e-5)
    # logged batch metrics: usage and perplexity of the batch's codes, in NumPy
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(float(metrics["usage"]), np.mean(counts > 0), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["perplexity"]), np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
    assert float(metrics["codebook_loss"]) == 0.0  # the EMA codebook gets no gradient loss
    # step 2 closes the interval: every code is below the threshold, so all become encoder outputs of batch 2
    x2 = _batch(16, 216)
    z2 = np.asarray(_forward(c, state1, x2["x"])["z_e"]).reshape(-1, D)
    state2, _ = step(state1, x2, jax.random.key(2))
    cb = np.asarray(state2.extra["vq"]["codebook"][...])
    rows = [np.flatnonzero(np.all(np.isclose(z2, r, rtol=1e-5, atol=1e-6), axis=1)) for r in cb]
    assert all(len(r) >= 1 for r in rows) and len({int(r[0]) for r in rows}) == K
    # step 3 opens the next interval: the EMA moves the codes again, off the restarted values
    state3, _ = step(state2, _batch(16, 232), jax.random.key(3))
    assert not np.allclose(np.asarray(state3.extra["vq"]["codebook"][...]), cb)


def test_vq_restart_moves_the_gradient_trained_codebook_parameter():
    c = _config("configs/fsq_digits.py:vq,smoke", **ONE_STAGE,
                **{"quantizer.restart_every": 1, "quantizer.dead_threshold": 1e6})
    task = tasks.build(c)
    state = jax.jit(task.init)(jax.random.key(0))
    assert "codebook" in state.params["vq"] and "codebook" not in state.extra["vq"]
    x = _batch(16, 200)  # not among the 16 images the codebook was initialised from

    def rows_from_batch(codebook, z):
        return [bool(np.any(np.all(np.isclose(z, r, rtol=1e-5, atol=1e-6), axis=1))) for r in codebook]

    z = np.asarray(_forward(c, state, x["x"])["z_e"]).reshape(-1, 4)
    assert not any(rows_from_batch(np.asarray(state.params["vq"]["codebook"][...]), z))
    state1, _ = jax.jit(task.train_step)(state, x, jax.random.key(1))
    # every code was dead: the restart (after the optimizer step) put each on an encoder output of the batch
    assert all(rows_from_batch(np.asarray(state1.params["vq"]["codebook"][...]), z))


@pytest.fixture(scope="module")
def trained_fsq():
    """The FSQ smoke task after 30 steps on one batch of 32 digits (constant lr): (config, task, state, losses)."""
    c = _config("configs/fsq_digits.py:smoke", **ONE_STAGE,
                **{"optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 0, "optimizer.schedule": "constant",
                   "eval.batch_size": 100, "eval.usage_on_train": True})
    task = tasks.build(c)
    state = jax.jit(task.init)(jax.random.key(0))
    step = jax.jit(task.train_step)
    x = _batch(32)
    losses = []
    for i in range(30):
        state, m = step(state, x, jax.random.key(i))
        losses.append((float(m["loss"]), float(m["recon_mse"])))
    return c, task, state, np.asarray(losses)


def test_fsq_training_reduces_the_reconstruction_error(trained_fsq):
    _, _, state, losses = trained_fsq
    np.testing.assert_allclose(losses[:, 0], losses[:, 1], rtol=1e-6)  # FSQ: no quantiser loss term
    assert np.all(np.isfinite(losses)) and losses[-1, 0] < 0.5 * losses[0, 0]
    assert len(jax.tree.leaves(state.extra)) == 0  # and no quantiser state


def test_evaluate_matches_numpy_on_the_held_out_split_and_writes_figures(trained_fsq, tmp_path):
    c, task, state, _ = trained_fsq
    out = task.evaluate(state, jax.random.key(0), str(tmp_path))
    # reference: one eager forward pass over all 297 held-out digits (no batching, no padding), NumPy metrics
    test = data_lib.load_split(c.data, "test")["x"]
    ref = _forward(c, state, jnp.asarray(test))
    rec = np.asarray(ref["recon"], np.float64)
    np.testing.assert_allclose(out["recon_mse"], np.mean((rec - test.astype(np.float64)) ** 2), rtol=1e-5)
    K = 5 * 3 * 3
    for split, suffix in (("test", ""), ("train", "_train")):
        x = test if split == "test" else data_lib.load_split(c.data, "train")["x"]
        idx = np.asarray(_forward(c, state, jnp.asarray(x))["indices"]).reshape(-1)
        counts = np.bincount(idx, minlength=K)
        p = counts[counts > 0] / counts.sum()
        np.testing.assert_allclose(out["usage" + suffix], np.count_nonzero(counts) / K, rtol=1e-6)
        np.testing.assert_allclose(out["perplexity" + suffix], np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
    assert out["codebook_size"] == K
    for name in ("reconstructions.png", "code_usage.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 1000


def test_variants_and_bad_values():
    assert quantizer_variant(None) == ("fsq", False)
    assert quantizer_variant("vq_ema,smoke") == ("vq_ema", True)
    assert quantizer_variant("smoke,vq") == ("vq", True)
    for bad, match in (("vqq", "unknown variant 'vqq'"), ("vq,fsq", "more than one quantizer"),
                       ("smoke,smoke", "given twice")):
        with pytest.raises(ValueError, match=match):
            quantizer_variant(bad)
    with pytest.raises(ConfigError, match="unknown variant"):
        config_lib.load_config(os.path.join(ROOT, "configs/fsq_digits.py:rvq"))
    for name in ("fsq_digits", "fsq_mnist", "fsq_cifar10"):
        for arg in ("", ":vq", ":vq_ema,smoke"):
            c = config_lib.load_config(os.path.join(ROOT, f"configs/{name}.py{arg}"))
            config_lib.validate(c)
            assert c.quantizer.name == (arg.strip(":").split(",")[0] or "fsq")
    for key, value, match in (("quantizer.name", "rvq", "config.quantizer.name must be one of"),
                              ("quantizer.init", "zeros", "config.quantizer.init must be one of"),
                              ("quantizer.restart_every", "-1", "restart_every must be >= 0"),
                              ("model.channels", "(8, 8, 8, 8, 8)", "divisible by 16"),
                              ("quantizer.levels", "(5, 1)", "levels")):
        with pytest.raises(ConfigError, match=match):
            tasks.build(_config(**{key: value}))


@pytest.mark.parametrize("spec", ["configs/fsq_digits.py:vq_ema,smoke", "configs/fsq_mnist.py:vq,smoke",
                                  "configs/fsq_cifar10.py:smoke"])
def test_smoke_configs_end_to_end_through_the_cli_entry_point(tmp_path, spec):
    import tensorflow_datasets as tfds

    from jaxgen import run

    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=64):  # MNIST / CIFAR-10 are not prepared on the test machine
        assert run.main(["--config", os.path.join(ROOT, spec), "--workdir", str(workdir)]) == 0
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert {"eval/recon_mse", "eval/usage", "eval/perplexity", "eval/codebook_size"} <= set(final)
    assert np.isfinite(final["eval/recon_mse"]) and 0 < final["eval/usage"] <= 1
    assert final["eval/codebook_size"] == (5 * 3 * 3 if spec.endswith(":smoke") else 32)  # FSQ (5, 3, 3) or VQ
    assert 1 <= final["eval/perplexity"] <= final["eval/codebook_size"]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == [2, 4]
    assert all(np.isfinite(row[k]) for row in train_rows for k in ("usage", "perplexity", "recon_mse"))
    assert (workdir / "figures" / "reconstructions.png").exists() and (workdir / "figures" / "code_usage.png").exists()
