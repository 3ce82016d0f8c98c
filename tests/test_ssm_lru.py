"""LRU: ring-init statistics, parallel scan == sequential scan == NumPy loop, layer recurrent mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxgen.ssm.lru import LRU, lru_apply, lru_init, lru_lambda


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.0, 1.0, 2 * np.pi), (0.9, 0.999, np.pi / 10)])
def test_ring_init_statistics(r_min, r_max, max_phase):
    N, H = 4000, 8
    p = lru_init(jax.random.key(0), N, H, r_min=r_min, r_max=r_max, max_phase=max_phase)
    with jax.enable_x64(True):
        lam = np.asarray(lru_lambda(jnp.asarray(p["nu_log"], jnp.float64), jnp.asarray(p["theta_log"], jnp.float64)))
    mod2 = np.abs(lam) ** 2
    # |lambda|^2 ~ U[r_min^2, r_max^2] and arg(lambda) ~ U[0, max_phase]
    assert scipy.stats.kstest(mod2, "uniform", args=(r_min**2, r_max**2 - r_min**2)).pvalue > 1e-3
    assert scipy.stats.kstest(np.exp(np.asarray(p["theta_log"], np.float64)), "uniform", args=(0, max_phase)).pvalue > 1e-3
    assert mod2.max() < 1.0 and np.all(np.isfinite(p["nu_log"]))
    # gamma = sqrt(1 - |lambda|^2) normalises the state variance for white-noise input
    np.testing.assert_allclose(np.exp(2 * np.asarray(p["gamma_log"], np.float64)), 1 - mod2, rtol=1e-4, atol=1e-6)
    assert np.std(p["B_re"]) == pytest.approx(1 / np.sqrt(2 * H), rel=0.03)
    assert np.std(p["C_im"]) == pytest.approx(1 / np.sqrt(N), rel=0.03)
    assert np.std(p["D"]) == pytest.approx(1.0, rel=0.6)


def test_gamma_normalisation_gives_unit_state_variance():
    # E|x_L|^2 = gamma^2 Σ_k |lambda|^(2k) E u^2 = 1 - |lambda|^(2L) ≈ 1 for B = 1 and i.i.d. N(0, 1) input;
    # without gamma it would be 1 / (1 - |lambda|^2) in [5, 50] here.
    N, H, L = 64, 1, 800
    p = lru_init(jax.random.key(1), N, H, r_min=0.9, r_max=0.99)
    p = {**p, "B_re": jnp.ones((N, H)), "B_im": jnp.zeros((N, H))}
    u = jax.random.normal(jax.random.key(2), (64, L, H))
    _, x_last = jax.jit(lambda p, u: lru_apply(p, u))(p, u)
    power = np.abs(np.asarray(x_last)) ** 2
    mod2 = np.abs(np.asarray(lru_lambda(p["nu_log"], p["theta_log"]))) ** 2
    assert np.mean(power / (1 - mod2**L)) == pytest.approx(1.0, abs=0.06)
    assert np.abs(power.mean(0) - 1).max() < 0.8


def test_parallel_scan_equals_sequential_and_numpy_loop():
    N, H, L = 6, 3, 20
    p = lru_init(jax.random.key(3), N, H, r_min=0.5, r_max=0.95)
    u = np.asarray(jax.random.normal(jax.random.key(4), (2, L, H)), np.float64)
    pn = {k: np.asarray(v, np.float64) for k, v in p.items()}
    lam = np.exp(-np.exp(pn["nu_log"]) + 1j * np.exp(pn["theta_log"]))
    Bn = (pn["B_re"] + 1j * pn["B_im"]) * np.exp(pn["gamma_log"])[:, None]
    C = pn["C_re"] + 1j * pn["C_im"]
    ref = np.zeros_like(u)
    for b in range(2):
        x = np.zeros(N, complex)
        for k in range(L):
            x = lam * x + Bn @ u[b, k]
            ref[b, k] = (C @ x).real + pn["D"] * u[b, k]
    with jax.enable_x64(True):
        pj = {k: jnp.asarray(v) for k, v in pn.items()}
        f = jax.jit(lru_apply, static_argnames="parallel")
        par, xl = f(pj, jnp.asarray(u))
        seq, _ = f(pj, jnp.asarray(u), parallel=False)
        np.testing.assert_allclose(par, ref, atol=1e-12)
        np.testing.assert_allclose(seq, ref, atol=1e-12)
        assert xl.shape == (2, N)
        # gradients agree too
        gp = jax.jit(jax.grad(lambda q, u: jnp.sum(lru_apply(q, u)[0] ** 2)))(pj, jnp.asarray(u))
        gs = jax.jit(jax.grad(lambda q, u: jnp.sum(lru_apply(q, u, parallel=False)[0] ** 2)))(pj, jnp.asarray(u))
        for k in gp:
            np.testing.assert_allclose(gp[k], gs[k], rtol=1e-9, atol=1e-9)


def test_layer_parallel_equals_step_mode():
    layer = LRU(5, 8, r_min=0.5, r_max=0.99, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (3, 30, 5))
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    # recurrent mode, scanned over positions
    graph, params = nnx.split(layer)

    @jax.jit
    def steps(params, x):
        m = nnx.merge(graph, params)
        return jax.lax.scan(lambda s, xk: m.step(s, xk), m.init_state(3), jnp.swapaxes(x, 0, 1))[1]

    ys = jnp.swapaxes(steps(params, x), 0, 1)
    np.testing.assert_allclose(ys, y, rtol=0, atol=1e-4 * float(jnp.abs(y).max()))


def test_bad_ring_raises():
    with pytest.raises(ValueError, match="r_min, r_max"):
        lru_init(jax.random.key(0), 4, 2, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="r_min, r_max"):
        lru_init(jax.random.key(0), 4, 2, r_max=1.2)
    with pytest.raises(ValueError, match="max_phase"):
        lru_init(jax.random.key(0), 4, 2, max_phase=0.0)
