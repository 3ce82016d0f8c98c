"""S4 / S4D / LRU layers and the sequence model: convolution mode == step mode, causality, heads, groups."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen.ssm import LRU, S4, S4D, SSM_PARAM_PATTERN, SequenceModel


def run_steps(obj, x):
    """Feed x (B, L, ...) one position at a time through obj.step (lax.scan over positions, jitted)."""
    graph, params = nnx.split(obj)

    @jax.jit
    def steps(params, x):
        m = nnx.merge(graph, params)
        return jax.lax.scan(lambda s, xk: m.step(s, xk), m.init_state(x.shape[0]), jnp.swapaxes(x, 0, 1))[1]

    return jnp.swapaxes(steps(params, x), 0, 1)


@nnx.jit
def fwd(model, x, key=None):
    return model(x, key=key)


def close(a, b, rel=1e-4):
    scale = float(jnp.abs(b).max())
    np.testing.assert_allclose(a, b, atol=rel * scale, rtol=0)


LAYERS = {
    "s4d-lin-zoh": lambda: S4D(6, 16, init="lin", rngs=nnx.Rngs(0)),
    "s4d-inv-bilinear": lambda: S4D(6, 16, init="inv", method="bilinear", rngs=nnx.Rngs(1)),
    "s4d-legs": lambda: S4D(6, 16, init="legs", step_min=0.01, step_max=0.5, rngs=nnx.Rngs(2)),
    "s4-legs": lambda: S4(6, 16, l_max=48, rngs=nnx.Rngs(3)),
    "s4-legt": lambda: S4(6, 16, l_max=48, measure="legt", step_min=0.01, step_max=0.3, rngs=nnx.Rngs(4)),
    "lru": lambda: LRU(6, 16, r_min=0.8, r_max=0.99, rngs=nnx.Rngs(5)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_convolution_mode_equals_step_mode(name):
    layer = LAYERS[name]()
    x = jax.random.normal(jax.random.key(0), (2, 40, 6))
    y = fwd(layer, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    close(run_steps(layer, x), y)


def test_s4d_kernel_matches_numpy_powers_of_its_parameters():
    layer = S4D(3, 8, init="inv", method="bilinear", rngs=nnx.Rngs(0))
    L = 64
    K = np.asarray(layer.kernel(L))
    lam = -np.exp(np.asarray(layer.A_re[...], np.float64)) + 1j * np.asarray(layer.A_im[...], np.float64)
    B = np.asarray(layer.B_re[...], np.float64) + 1j * np.asarray(layer.B_im[...], np.float64)
    C = np.asarray(layer.C_re[...], np.float64) + 1j * np.asarray(layer.C_im[...], np.float64)
    d = np.exp(np.asarray(layer.log_step[...], np.float64))[:, None]
    Ab, Bb = (1 + d / 2 * lam) / (1 - d / 2 * lam), d * B / (1 - d / 2 * lam)
    ref = np.stack([2 * np.sum(C * Bb * Ab**l, -1).real for l in range(L)], -1)
    close(K, ref)


def test_s4_shorter_inputs_use_the_truncated_kernel():
    layer = S4(4, 8, l_max=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 32, 4))
    close(fwd(layer, x[:, :20]), fwd(layer, x)[:, :20])
    with pytest.raises(ValueError, match="l_max"):
        layer(jnp.zeros((1, 33, 4)))


@pytest.mark.parametrize("ssm", ["s4d", "s4", "lru"])
def test_sequence_model_step_equals_full_and_is_causal(ssm):
    model = SequenceModel(3, 8, 2, 5, ssm=ssm, N=8, l_max=24, dropout=0.2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 24, 3))
    y = fwd(model, x)
    assert y.shape == (2, 24, 5)
    close(run_steps(model, x), y)
    # causal: perturbing positions >= 10 leaves outputs < 10 unchanged, and changes later ones
    y2 = fwd(model, x.at[:, 10:].add(1.0))
    np.testing.assert_allclose(y2[:, :10], y[:, :10], atol=1e-5)
    assert float(jnp.abs(y2[:, 10:] - y[:, 10:]).max()) > 1e-2


def test_token_inputs_pooling_and_dropout():
    model = SequenceModel(17, 8, 1, 17, N=8, tokens=True, dropout=0.3, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(0), (2, 12), 0, 17)
    y = fwd(model, tok)
    assert y.shape == (2, 12, 17)
    close(run_steps(model, tok), y)  # tokens (B,) per step
    # dropout: key=None is deterministic; a key changes the output reproducibly
    np.testing.assert_array_equal(fwd(model, tok), y)
    y_a, y_b = fwd(model, tok, jax.random.key(1)), fwd(model, tok, jax.random.key(1))
    np.testing.assert_array_equal(y_a, y_b)
    assert float(jnp.abs(y_a - y).max()) > 1e-3
    # pooling: the decoder is affine, so pooled logits = pooled per-position logits (same seed, same weights)
    x = jax.random.normal(jax.random.key(2), (5, 10, 4))
    per_pos = fwd(SequenceModel(4, 8, 1, 3, N=8, rngs=nnx.Rngs(0)), x)
    for pooling, expect in (("mean", per_pos.mean(1)), ("last", per_pos[:, -1])):
        pm = SequenceModel(4, 8, 1, 3, N=8, pooling=pooling, rngs=nnx.Rngs(0))
        out = fwd(pm, x)
        assert out.shape == (5, 3)
        close(out, expect)
        with pytest.raises(ValueError, match="pooling"):
            pm.init_state(1)


def test_param_pattern_selects_exactly_the_ssm_parameters():
    pat = re.compile(SSM_PARAM_PATTERN)
    expected = {
        "s4": {"A_re", "A_im", "B_re", "B_im", "P_re", "P_im", "log_step"},
        "s4d": {"A_re", "A_im", "B_re", "B_im", "log_step"},
        "lru": {"nu_log", "theta_log", "gamma_log", "B_re", "B_im"},
    }
    for ssm, names in expected.items():
        model = SequenceModel(2, 4, 2, 2, ssm=ssm, N=4, l_max=8, rngs=nnx.Rngs(0))
        paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        matched = [p for p in paths if pat.search(p)]
        assert {p.split("/")[-1] for p in matched} == names
        assert len(matched) == 2 * len(names)  # two blocks
        assert not any(pat.search(p) for p in paths if p.split("/")[-1] in ("kernel", "bias", "scale", "D", "C_re", "C_im"))


@pytest.mark.parametrize("ssm", ["s4d", "s4", "lru"])
def test_gradients_are_finite_through_a_split_state(ssm):
    model = SequenceModel(3, 8, 1, 4, ssm=ssm, N=8, l_max=16, dropout=0.1, rngs=nnx.Rngs(0))
    graph, params = nnx.split(model, nnx.Param)
    x = jax.random.normal(jax.random.key(0), (2, 16, 3))

    @jax.jit
    def loss(params, key):
        m = nnx.merge(graph, params)
        return jnp.mean(m(x, key=key) ** 2)

    grads = jax.grad(loss)(params, jax.random.key(1))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="N must be an even"):
        S4D(4, 7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ssm must be one of"):
        SequenceModel(2, 4, 1, 2, ssm="mamba", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="l_max"):
        SequenceModel(2, 4, 1, 2, ssm="s4", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="step_min"):
        S4D(4, 8, step_min=0.1, step_max=0.01, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="method"):
        S4D(4, 8, method="euler", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        SequenceModel(2, 4, 1, 2, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_layers"):
        SequenceModel(2, 4, 0, 2, rngs=nnx.Rngs(0))


def test_s4_kernel_methods_agree():
    # the layer's default 'paired' Cauchy kernel and the 'direct' one give the same kernel
    layer = S4(4, 8, l_max=32, rngs=nnx.Rngs(0))
    direct = S4(4, 8, l_max=32, kernel_method="direct", rngs=nnx.Rngs(0))
    close(jax.jit(lambda m: m.kernel(32))(layer), jax.jit(lambda m: m.kernel(32))(direct))
    with pytest.raises(ValueError, match="kernel_method"):
        S4(4, 8, l_max=32, kernel_method="fft", rngs=nnx.Rngs(0))
