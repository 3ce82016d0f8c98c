"""Quantised conv autoencoder: shapes for the three image sizes, and a hand-written jitted optax train step
(nnx.split into params + rest, EMA codebook / counts / restarts applied after the gradient step)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxgen.nets.autoencoder import QuantizedAutoencoder, update_quantizer_state

SMALL = dict(channels=(8,), num_codes=16, levels=(5, 3, 3, 2))  # one stage (test_shapes covers downsampling); latent dim 4 for VQ and FSQ


def data(shape=(8, 8, 8, 1), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def make_train_step(graphdef, tx):
    """The pattern a task's train step follows (see jaxgen.quant.vq's docstring)."""

    @jax.jit
    def train_step(params, rest, opt_state, x, key):
        k_drop, k_restart = jax.random.split(key)

        def loss_fn(params):
            out = nnx.merge(graphdef, params, rest)(x, key=k_drop)
            return out["loss"], out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, rest = update_quantizer_state(graphdef, params, rest, out=out, key=k_restart)
        return params, rest, opt_state, loss, out

    return train_step


@pytest.mark.parametrize("shape, channels, levels, quantizer", [
    ((2, 8, 8, 1), (8, 16), (8, 5, 5, 5), "fsq"),                # digits: 4x4 grid of codes
    ((2, 28, 28, 1), (8, 16, 16), (8, 5, 5, 5), "vq"),           # MNIST: 7x7
    ((2, 32, 32, 3), (8, 16, 16), (8, 5, 5, 5), "vq_ema"),       # CIFAR-10: 8x8, as configs/fsq_cifar10.py
])
def test_shapes(shape, channels, levels, quantizer):
    B, H, W, C = shape
    model = QuantizedAutoencoder(in_channels=C, channels=channels, quantizer=quantizer, levels=levels,
                                 num_codes=32, latent_dim=None if quantizer == "fsq" else 4, rngs=nnx.Rngs(0))
    x = data(shape)
    out, recon_from_indices = nnx.jit(lambda m, x: (lambda o: (o, m.decode_indices(o["indices"])))(m(x)))(model, x)
    f = 2 ** (len(channels) - 1)
    D = 4
    assert out["recon"].shape == shape
    assert out["z_e"].shape == out["z_q"].shape == (B, H // f, W // f, D)
    assert out["indices"].shape == (B, H // f, W // f) and out["indices"].dtype == jnp.int32
    assert model.codebook_size == (int(np.prod(levels)) if quantizer == "fsq" else 32)
    assert set(out["loss_terms"]) == {"recon", "codebook", "commitment", "quant"}
    # decoding the codes named by the indices gives the reconstruction
    np.testing.assert_allclose(np.asarray(recon_from_indices), np.asarray(out["recon"]), rtol=1e-5, atol=1e-5)
    rec = float(np.mean((np.asarray(out["recon"], np.float64) - np.asarray(x, np.float64)) ** 2))
    np.testing.assert_allclose(float(out["loss_terms"]["recon"]), rec, rtol=1e-5)


def test_jitted_train_step_vq_ema_updates_codebook_by_formula():
    decay, eps = 0.9, 1e-5
    model = QuantizedAutoencoder(quantizer="vq_ema", decay=decay, eps=eps, latent_dim=4, **SMALL, rngs=nnx.Rngs(1))
    x = data()
    model.init_codebook(jax.random.key(0), x, method="kmeans++")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert "vq" not in params and "codebook" in rest["vq"]  # the EMA codebook is not trainable
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx)
    N0, M0 = np.asarray(rest["vq"]["cluster_size"][...]), np.asarray(rest["vq"]["embed_sum"][...])
    params, rest, opt_state, loss0, out = step(params, rest, opt_state, x, jax.random.key(1))
    z = np.asarray(out["z_e"], np.float64).reshape(-1, 4)
    k = np.asarray(out["indices"]).reshape(-1)
    counts = np.bincount(k, minlength=16)
    sums = np.zeros((16, 4))
    np.add.at(sums, k, z)
    N1, M1 = decay * N0 + (1 - decay) * counts, decay * M0 + (1 - decay) * sums
    n = N1.sum()
    e1 = M1 / ((N1 + eps) / (n + 16 * eps) * n)[:, None]
    np.testing.assert_allclose(np.asarray(rest["vq"]["cluster_size"][...]), N1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rest["vq"]["codebook"][...]), e1, rtol=1e-4, atol=1e-5)
    # the loss is recon + beta * commitment only
    t = out["loss_terms"]
    assert float(t["codebook"]) == 0.0
    np.testing.assert_allclose(float(out["loss"]), float(t["recon"]) + 0.25 * float(t["commitment"]), rtol=1e-6)
    losses = [float(loss0)]
    for i in range(15):
        params, rest, opt_state, loss, out = step(params, rest, opt_state, x, jax.random.key(2 + i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_jitted_train_step_vq_and_fsq(quantizer):
    model = QuantizedAutoencoder(quantizer=quantizer, decay=0.9, latent_dim=4 if quantizer == "vq" else None,
                                 **SMALL, rngs=nnx.Rngs(2))
    x = data(seed=1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx)
    rest0 = jax.tree.map(np.asarray, rest)
    params1, rest, opt_state, loss0, out = step(params, rest, opt_state, x, jax.random.key(0))
    if quantizer == "vq":
        # the codebook is a Param moved by the codebook loss; the counts are an EMA of the assignments
        assert not np.allclose(np.asarray(params1["vq"]["codebook"][...]), np.asarray(params["vq"]["codebook"][...]))
        counts = np.bincount(np.asarray(out["indices"]).reshape(-1), minlength=16)
        np.testing.assert_allclose(np.asarray(rest["vq"]["cluster_size"][...]),
                                   0.9 * rest0["vq"]["cluster_size"][...] + 0.1 * counts, rtol=1e-6)
        assert float(out["loss_terms"]["codebook"]) > 0
    else:
        assert len(jax.tree.leaves(rest)) == len(jax.tree.leaves(rest0)) == 0  # FSQ has no state
        assert float(out["loss_terms"]["quant"]) == 0.0
    params, losses = params1, [float(loss0)]
    for i in range(15):
        params, rest, opt_state, loss, out = step(params, rest, opt_state, x, jax.random.key(1 + i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0]


def test_dead_codes_restarted_inside_jit():
    model = QuantizedAutoencoder(quantizer="vq_ema", dead_threshold=1e6, latent_dim=4, **SMALL, rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    z_e = jax.random.normal(jax.random.key(0), (8, 4, 4, 4))
    out = dict(z_e=z_e, indices=jnp.zeros((8, 4, 4), jnp.int32))
    _, rest = jax.jit(lambda p, r, o, k: update_quantizer_state(graphdef, p, r, out=o, key=k))(
        params, rest, out, jax.random.key(4))
    z = np.asarray(z_e).reshape(-1, 4)
    cb = np.asarray(rest["vq"]["codebook"][...])
    # every code was below the threshold: each is now a distinct vector of this batch
    rows = [np.flatnonzero(np.all(z == r, axis=1)) for r in cb]
    assert all(len(r) == 1 for r in rows) and len({int(r[0]) for r in rows}) == 16


def test_init_codebook_and_dropout_key():
    model = QuantizedAutoencoder(quantizer="vq", dropout=0.5, latent_dim=4, **SMALL, rngs=nnx.Rngs(4))
    x = data()
    model.init_codebook(jax.random.key(0), x, method="batch")
    z = np.asarray(model.encode(x)).reshape(-1, 4)
    cb = np.asarray(model.vq.codebook[...])
    assert all(np.any(np.all(np.isclose(z, r), axis=1)) for r in cb)
    a, b = model(x)["recon"], model(x)["recon"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c, d = model(x, key=jax.random.key(1))["recon"], model(x, key=jax.random.key(2))["recon"]
    assert not np.allclose(np.asarray(c), np.asarray(d))


def test_bad_arguments():
    with pytest.raises(ValueError, match="quantizer"):
        QuantizedAutoencoder(quantizer="rvq", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="latent_dim"):
        QuantizedAutoencoder(quantizer="fsq", levels=(8, 5, 5), latent_dim=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="levels"):
        QuantizedAutoencoder(quantizer="fsq", levels=(8, 1), rngs=nnx.Rngs(0))
    model = QuantizedAutoencoder(channels=(8, 16, 16), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 2\\^2"):
        model(jnp.zeros((1, 10, 10, 1)))
    with pytest.raises(ValueError, match="x must be"):
        model(jnp.zeros((1, 8, 8, 3)))
