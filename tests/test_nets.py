"""Backbones: shapes, the time embedding's formula, dropout semantics, the CIFAR-10 parameter count."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen.nets import Classifier, MLPDenoiser, UNet, count_params, sinusoidal_embedding
from jaxgen.nets.unet import group_count


def _randomize(model, seed=0, scale=0.05):
    """Replace every parameter by small host-side noise, so zero-initialised layers hide nothing.

    Works on an abstract model from `nnx.eval_shape` too (which skips the slow eager init).
    """
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    new = jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), state)
    nnx.update(model, new)
    return model


def _jitted(model):
    """jit(apply) with the parameters as an argument, so re-randomised weights reuse the compile."""
    graphdef, _ = nnx.split(model)

    @jax.jit
    def apply(state, x, t, key=None):
        return nnx.merge(graphdef, state)(x, t, key=key)

    return lambda x, t, key=None: apply(nnx.state(model), x, t, key)


def _small_unet(**kw):
    base = dict(in_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                dropout=0.1, image_size=8, num_groups=8)
    base.update(kw)
    return UNet(**base, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dim", [6, 7, 64])
def test_sinusoid_matches_direct_formula(dim):
    t = np.array([0.0, 0.013, 0.5, 1.0])
    got = np.asarray(sinusoidal_embedding(jnp.asarray(t, jnp.float32), dim))
    half = dim // 2
    want = np.zeros((len(t), dim))
    for b, tb in enumerate(t):
        for k in range(half):
            w = 10000.0 ** (-k / (half - 1))
            want[b, k] = math.sin(1000.0 * tb * w)
            want[b, half + k] = math.cos(1000.0 * tb * w)
    # float32 arguments up to 1000: absolute error of order 1000 * eps32
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert got.shape == (len(t), dim)


def test_group_count_divides():
    for c in [1, 3, 16, 24, 48, 96, 128, 256]:
        g = group_count(c, 32)
        assert c % g == 0 and g <= 32
        assert all(c % h for h in range(g + 1, 33))  # the largest such divisor


@pytest.mark.parametrize("kw,shape", [
    (dict(in_channels=1, ch=32, ch_mult=(1, 2), attn_resolutions=(4,), image_size=8), (8, 8, 1)),
    (dict(in_channels=1, ch=16, ch_mult=(1, 2, 2), attn_resolutions=(7,), num_res_blocks=1,
          image_size=28), (28, 28, 1)),
    (dict(in_channels=3, out_channels=6, ch=16, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,),
          num_res_blocks=1, image_size=32), (32, 32, 3)),
])
def test_unet_shapes(kw, shape):
    model = _randomize(nnx.eval_shape(lambda: UNet(**kw, rngs=nnx.Rngs(0))))
    apply = _jitted(model)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    c_out = kw.get("out_channels", shape[-1])
    y = apply(x, jnp.array([0.5, 0.5]))
    chex.assert_shape(y, (2, *shape[:2], c_out))
    chex.assert_tree_all_finite(y)
    assert float(jnp.abs(y).max()) > 0


def test_unet_starts_at_zero():
    # the output conv starts at zero (DDPM): an untrained eps-model predicts 0
    model = _small_unet()
    for p in jax.tree.leaves(nnx.state(model.conv_out, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(p), 0.0)
    y = _jitted(model)(jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.array([0.1, 0.9]))
    chex.assert_shape(y, (2, 8, 8, 1))
    np.testing.assert_array_equal(np.asarray(y), 0.0)


def test_unet_cifar_recipe_parameter_count():
    model = nnx.eval_shape(lambda: UNet(3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                        attn_resolutions=(16,), dropout=0.1, image_size=32,
                                        rngs=nnx.Rngs(0)))
    n = count_params(model)
    assert 35_000_000 <= n <= 36_500_000, n  # DDPM paper: 35.7M


def test_unet_dropout_only_with_key():
    model = _jitted(_randomize(nnx.eval_shape(lambda: _small_unet(dropout=0.3))))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([0.2, 0.7])
    y0, y0b = model(x, t), model(x, t)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(y0b))  # deterministic without key
    k1, k2 = jax.random.key(5), jax.random.key(6)
    y1, y1b, y2 = model(x, t, key=k1), model(x, t, key=k1), model(x, t, key=k2)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1b))  # same key, same mask
    assert float(jnp.abs(y1 - y0).max()) > 1e-4
    assert float(jnp.abs(y1 - y2).max()) > 1e-4
    # rate 0: a key changes nothing
    model0 = _jitted(_randomize(nnx.eval_shape(lambda: _small_unet(dropout=0.0))))
    np.testing.assert_array_equal(np.asarray(model0(x, t)), np.asarray(model0(x, t, key=k1)))


def test_unet_depends_on_time_and_is_jittable():
    model = _randomize(nnx.eval_shape(_small_unet))
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x, t):
        return nnx.merge(graphdef, state)(x, t)

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    y_a, y_b = apply(state, x, jnp.array([0.1, 0.1])), apply(state, x, jnp.array([0.9, 0.9]))
    assert float(jnp.abs(y_a - y_b).max()) > 1e-4
    # a scalar t is broadcast over the batch
    np.testing.assert_allclose(np.asarray(y_a), np.asarray(apply(state, x, 0.1)),
                               rtol=1e-5, atol=1e-6)


def test_unet_bfloat16_compute_keeps_float32_params():
    # the same parameters, computed in float32 and in bfloat16
    m32 = _randomize(nnx.eval_shape(lambda: _small_unet(dropout=0.0)), seed=3)
    m16 = _randomize(nnx.eval_shape(lambda: _small_unet(dropout=0.0, dtype="bfloat16")), seed=3)
    for p in jax.tree.leaves(nnx.state(m16, nnx.Param)):
        assert p.dtype == jnp.float32
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    y32, y16 = _jitted(m32)(x, 0.3), _jitted(m16)(x, 0.3)
    assert y16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert rel < 5e-2, rel


def test_unet_rejects_bad_config():
    with pytest.raises(ValueError, match="image_size"):
        UNet(1, ch=16, ch_mult=(1, 2, 2), image_size=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(1, ch=16, ch_mult=(1, 2), attn_resolutions=(16,), image_size=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        UNet(1, ch=16, ch_mult=(1, 2), attn_resolutions=(), dropout=1.0, image_size=8,
             rngs=nnx.Rngs(0))
    model = nnx.eval_shape(_small_unet)
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros((2, 8, 8, 3)), 0.5)


def test_mlp_denoiser_shapes_dropout_and_fit():
    model = MLPDenoiser(2, hidden=64, depth=2, t_embed=16, dropout=0.2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (16, 2))
    t = jnp.linspace(0.0, 1.0, 16)
    y = model(x, t)
    chex.assert_shape(y, (16, 2))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(model(x, t)))
    assert float(jnp.abs(model(x, t, key=jax.random.key(1)) - y).max() > 1e-5)
    assert float(jnp.abs(model(x, jnp.zeros(16)) - model(x, jnp.ones(16))).max()) > 1e-4
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros((4, 3)), 0.5)

    # gradients flow: a few Adam steps fit the time-dependent target f(x, t) = (1 - t) x
    import optax
    model = MLPDenoiser(2, hidden=64, depth=2, t_embed=16, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss(params, x, t):
        return jnp.mean((nnx.merge(graphdef, params)(x, t) - (1 - t)[:, None] * x) ** 2)

    @jax.jit
    def step(params, opt_state, key):
        kx, kt = jax.random.split(key)
        x, t = jax.random.normal(kx, (128, 2)), jax.random.uniform(kt, (128,))
        l, g = jax.value_and_grad(loss)(params, x, t)
        upd, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, upd), opt_state, l

    keys = jax.random.split(jax.random.key(2), 300)
    first = None
    for k in keys:
        params, opt_state, l = step(params, opt_state, k)
        first = float(l) if first is None else first
    assert float(l) < 0.05 * first, (first, float(l))


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3)])
def test_classifier_shapes(size, channels):
    model = Classifier(channels, 10, size, 16, rngs=nnx.Rngs(0))
    x = jnp.ones((3, size, size, channels))
    logits, feats = nnx.jit(lambda m, x: (m(x), m.features(x)))(model, x)
    chex.assert_shape(logits, (3, 10))
    chex.assert_shape(feats, (3, model.feature_dim))
