"""Rectified flow on Gaussian data, where everything is closed form (float64).

Data x0 ~ N(m, s^2 I), noise x1 ~ N(0, I), x_t = (1 - t) x0 + t x1 (t = 0 data). The 1-RF field is
E[x1 - x0 | x_t = x] = -m + c(t) (x - (1 - t) m), c(t) = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2); its
trajectories are Z_t = (1 - t) m + g(t) x1 with g(t) = sqrt((1 - t)^2 s^2 + t^2) (curved when s != 1), so its
ODE map is the affine optimal map x1 -> m + s x1. The 2-RF field of that deterministic coupling is
(1 - s)(x - (1 - t) m) / ((1 - t) s + t) - m: straight paths, solved exactly by one Euler step.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxgen import diffusion as D
from jaxgen.diffusion import interpolants as I
from jaxgen.diffusion import rectified_flow as RF

M, S = 0.3, 0.5


def _one_rf(dim):
    gm = D.oracle_gaussian(M, S, dim)
    rf = D.RectifiedFlow()
    return I.velocity_from_denoiser(gm.denoise_fn(rf), rf)


def _one_rf_closed_form(x, t):
    t = t[:, None]
    c = (t - (1 - t) * S**2) / ((1 - t) ** 2 * S**2 + t**2)
    return -M + c * (x - (1 - t) * M)


def _two_rf(m, s):
    """The exact 2-RF field of the coupling x0 = m + s x1."""

    def v(x, t):
        t = t[:, None]
        return (1 - s) * (x - (1 - t) * m) / ((1 - t) * s + t) - m

    return v


def test_one_rf_field_from_the_oracle_is_the_closed_form():
    with jax.enable_x64(True):
        v = _one_rf(3)
        x = jax.random.normal(jax.random.key(0), (40, 3), jnp.float64)
        t = jnp.linspace(0.0, 1.0, 40, dtype=jnp.float64)
        np.testing.assert_allclose(np.asarray(jax.jit(v)(x, t)), np.asarray(_one_rf_closed_form(x, t)),
                                   rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module", params=[1, 4])
def pairs(request):
    """Reflow pairs of the exact 1-RF (adaptive RK45, tolerance 1e-9), 300 pairs in batches of 128."""
    dim = request.param
    with jax.enable_x64(True):
        v1 = _one_rf(dim)
        solve = jax.jit(lambda z: I.flow_solve_adaptive(v1, z, 1.0, 0.0, rtol=1e-9, atol=1e-9))
        batches = list(RF.reflow_pairs(solve, jax.random.key(3), 300, 128, (dim,), dtype=jnp.float64))
        resumed = list(RF.reflow_pairs(solve, jax.random.key(3), 300, 128, (dim,), start_batch=2, dtype=jnp.float64))
    return dim, v1, solve, batches, resumed


def test_pairs_are_the_affine_optimal_map(pairs):
    dim, _, _, batches, resumed = pairs
    assert [b[0] for b in batches] == [0, 1, 2] and [b[1].shape[0] for b in batches] == [128, 128, 44]
    x1 = np.concatenate([np.asarray(b[1]) for b in batches])
    x0 = np.concatenate([np.asarray(b[2]) for b in batches])
    assert x1.shape == (300, dim) and x1.dtype == np.float64
    np.testing.assert_allclose(x0, M + S * x1, atol=1e-7)
    # resuming at batch 2 yields the same last batch
    assert len(resumed) == 1 and resumed[0][0] == 2
    np.testing.assert_array_equal(np.asarray(resumed[0][1]), np.asarray(batches[2][1]))
    np.testing.assert_array_equal(np.asarray(resumed[0][2]), np.asarray(batches[2][2]))


def test_one_euler_step_of_the_exact_two_rf_is_exact(pairs):
    dim, v1, solve, batches, _ = pairs
    with jax.enable_x64(True):
        x1 = jnp.concatenate([b[1] for b in batches])
        x0 = jnp.concatenate([b[2] for b in batches])
        # the 2-RF field of the coupling fitted from the pairs (least squares x0 ~ s x1 + m)
        A = np.stack([np.asarray(x1).ravel(), np.ones(x1.size)], 1)
        s_hat, m_hat = np.linalg.lstsq(A, np.asarray(x0).ravel(), rcond=None)[0]
        v2 = _two_rf(m_hat, s_hat)
        g1, g2 = RF.one_step_generator(v1), RF.one_step_generator(v2)
        z = jax.random.normal(jax.random.key(9), (128, dim), jnp.float64)  # the compiled batch size
        ref = solve(z)  # the 1-RF ODE solved accurately
        t = jax.random.uniform(jax.random.key(4), (x1.shape[0],), jnp.float64)

        @jax.jit
        def checks(x1, x0, z, ref, t):
            return dict(
                one_step_pairs=g2(x1) - x0, one_step_fresh=g2(z) - ref, one_step_1rf=g1(z) - ref,
                velocity_loss=RF.rf_velocity_loss(v2, x0, x1, t), distill_2rf=RF.distill_loss(g2, x1, x0),
                distill_1rf=RF.distill_loss(g1, x1, x0),
                distill_l1=RF.distill_loss(g2, x1, x0, distance_fn=lambda a, b: jnp.sum(jnp.abs(a - b + 1.0), -1)))

        c = {k: np.asarray(v) for k, v in checks(x1, x0, z, ref, t).items()}
    # one Euler step of the 2-RF reproduces the pairs and the accurate 1-RF solve on fresh noise
    np.testing.assert_allclose(c["one_step_pairs"], 0.0, atol=1e-7)
    np.testing.assert_allclose(c["one_step_fresh"], 0.0, atol=1e-7)
    # the 1-RF is curved: one Euler step of it is far off
    assert np.max(np.abs(c["one_step_1rf"])) > 0.05
    # the 2-RF field reproduces the pairs' slope everywhere on the segments: zero velocity loss
    np.testing.assert_allclose(c["velocity_loss"], 0.0, atol=1e-12)
    # distillation: the one-step generator of the 2-RF has zero loss, the 1-RF's does not; distance_fn is used
    np.testing.assert_allclose(c["distill_2rf"], 0.0, atol=1e-12)
    assert c["distill_1rf"].mean() > 1e-3
    np.testing.assert_allclose(c["distill_l1"], dim, rtol=1e-9)


def test_straightness_of_one_rf_matches_the_closed_form_and_two_rf_is_zero():
    """Per trajectory S = ||x1||^2 int_0^1 (g'(t) - (1 - s))^2 dt for the 1-RF; 0 for the exact 2-RF."""
    with jax.enable_x64(True):
        dim = 2
        x1 = jax.random.normal(jax.random.key(5), (16, dim), jnp.float64)
        s1 = np.asarray(jax.jit(lambda z: RF.straightness(_one_rf(dim), z, num_steps=64))(x1))
        gp = lambda t: ((t - 1) * S**2 + t) / np.sqrt((1 - t) ** 2 * S**2 + t**2)  # noqa: E731
        per_unit = integrate.quad(lambda t: (gp(t) - (1 - S)) ** 2, 0.0, 1.0, epsabs=1e-13)[0]
        np.testing.assert_allclose(s1, np.sum(np.asarray(x1) ** 2, -1) * per_unit, rtol=2e-3)
        assert per_unit > 0.05
        s2 = np.asarray(RF.straightness(_two_rf(M, S), x1, num_steps=8))
        np.testing.assert_allclose(s2, 0.0, atol=1e-20)


def _gauss_expectation_nodes(n_gh=24, n_gl=24):
    """Nodes and weights for E over x0 ~ N(M, S^2), x1 ~ N(0, 1), t ~ U(0, 1): Gauss-Hermite x Gauss-Legendre,
    exact for integrands polynomial in (x0, x1) of degree < 2 n_gh."""
    z, wz = np.polynomial.hermite_e.hermegauss(n_gh)
    wz = wz / wz.sum()
    u, wu = np.polynomial.legendre.leggauss(n_gl)
    t, wt = 0.5 * (u + 1.0), 0.5 * wu
    Z0, Z1, T = np.meshgrid(z, z, t, indexing="ij")
    W = np.einsum("i,j,k->ijk", wz, wz, wt)
    return M + S * Z0.ravel(), Z1.ravel(), T.ravel(), W.ravel()


def test_velocity_loss_gradient_vanishes_at_the_oracle_field():
    """d/dtheta E L(v* + theta . h) = 0 at theta = 0 for the exact 1-RF field v* (the loss's minimiser), with the
    expectation computed exactly by quadrature; nonzero at a wrong field."""
    with jax.enable_x64(True):
        x0, x1, t, w = (jnp.asarray(a, jnp.float64) for a in _gauss_expectation_nodes())
        x0, x1 = x0[:, None], x1[:, None]
        v1 = _one_rf(1)

        def expected_loss(theta, scale):
            def v(x, tt):
                return scale * v1(x, tt) + theta[0] + theta[1] * x + theta[2] * x * tt[:, None]

            return jnp.sum(w * RF.rf_velocity_loss(v, x0, x1, t))

        grad = jax.jit(jax.grad(expected_loss))
        np.testing.assert_allclose(np.asarray(grad(jnp.zeros(3, jnp.float64), 1.0)), 0.0, atol=1e-10)
        assert float(jnp.max(jnp.abs(grad(jnp.zeros(3, jnp.float64), 0.9)))) > 1e-2


def test_velocity_loss_gradient_vanishes_at_the_mixture_oracle_field():
    """The same on the 2-D mixture (a nonlinear field), by Monte Carlo: the gradient is within 4 standard
    errors of 0 at the oracle's field and far from 0 at a perturbed one."""
    gm = D.oracle_2d()
    rf = D.RectifiedFlow()
    v = I.velocity_from_denoiser(gm.denoise_fn(rf), rf)
    n = 30_000
    k0, k1, k2 = jax.random.split(jax.random.key(7), 3)
    x0, x1 = gm.sample(k0, n), jax.random.normal(k1, (n, 2))
    t = jax.random.uniform(k2, (n,))

    @jax.jit
    def per_example_grads(shift):
        def loss(theta):
            f = lambda x, tt: v(x, tt) + shift + theta[0] * jnp.tanh(x) + theta[1] * tt[:, None]  # noqa: E731
            return RF.rf_velocity_loss(f, x0, x1, t)

        return jax.jacfwd(loss)(jnp.zeros(2))  # [n, 2]

    g = np.asarray(per_example_grads(0.0), np.float64)
    mean, se = g.mean(0), g.std(0) / np.sqrt(n)
    assert np.all(np.abs(mean) < 4 * se), (mean, se)
    g_wrong = np.asarray(per_example_grads(0.1), np.float64).mean(0)
    assert np.max(np.abs(g_wrong)) > 10 * se.max(), (g_wrong, se)


def test_bad_arguments():
    with pytest.raises(ValueError, match="start_batch"):
        list(RF.reflow_pairs(lambda z: z, jax.random.key(0), 10, 4, (1,), start_batch=4))
    with pytest.raises(ValueError, match="num_pairs"):
        RF.num_pair_batches(0, 4)
