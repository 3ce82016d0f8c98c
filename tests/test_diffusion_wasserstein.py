"""Kwon et al.'s Wasserstein bound for Gaussians with affine score models: closed forms and the bound holds."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion import wasserstein as W

M0, S0 = np.array([0.5]), np.array([[0.09]])


def test_gaussian_w2_closed_forms():
    np.testing.assert_allclose(W.gaussian_w2([1.0], [[4.0]], [0.0], [[1.0]]), np.sqrt(1 + 1), rtol=1e-12)
    # commuting (diagonal) covariances: per-axis std differences
    np.testing.assert_allclose(W.gaussian_w2([0, 0], np.diag([1.0, 9.0]), [1, 1], np.diag([4.0, 1.0])),
                               np.sqrt(2 + 1 + 4), rtol=1e-10)
    # 1-D against sorted samples
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(0.3, 0.7, 200_000)), np.sort(rng.normal(-0.2, 1.1, 200_000))
    np.testing.assert_allclose(W.gaussian_w2([0.3], [[0.49]], [-0.2], [[1.21]]), np.sqrt(np.mean((a - b) ** 2)),
                               rtol=0.01)


def test_marginal_matches_the_continuous_vp_process():
    p = D.ContinuousVP()
    for t in (0.1, 0.5, 1.0):
        m, S = W.vp_gaussian_marginal(M0, S0, t)
        a = float(p.alpha(jnp.asarray(t)))
        np.testing.assert_allclose(m, a * M0, rtol=1e-5)
        np.testing.assert_allclose(S, a**2 * S0 + 1 - a**2, rtol=1e-5)


def test_exact_score_and_exact_prior_give_zero():
    A, b = W.true_affine_score(M0, S0)
    mT, ST = W.vp_gaussian_marginal(M0, S0, 1.0)
    r = W.wasserstein_bound_affine(M0, S0, A, b, prior_mean=mT, prior_cov=ST)
    assert r["w2"] < 1e-6 and r["bound"] < 1e-6


def test_model_q0_against_euler_maruyama_simulation():
    """q_0 of the reverse SDE with a wrong affine score, simulated directly (NumPy, 20k paths)."""
    A, b = W.true_affine_score(M0, S0)
    A2 = lambda t: 0.8 * A(t)  # noqa: E731
    b2 = lambda t: b(t) + 0.3  # noqa: E731
    r = W.wasserstein_bound_affine(M0, S0, A2, b2)
    rng = np.random.default_rng(1)
    n, steps = 20_000, 2000
    y = rng.normal(size=n)
    dt = 1.0 / steps
    for k in range(steps):
        t = 1.0 - k * dt
        beta = 0.1 + t * 19.9
        drift = 0.5 * beta * y + beta * (A2(t)[0, 0] * y + b2(t)[0])
        y = y + drift * dt + np.sqrt(beta * dt) * rng.normal(size=n)
    np.testing.assert_allclose(y.mean(), r["q0_mean"][0], atol=0.02)
    np.testing.assert_allclose(y.var(), r["q0_cov"][0, 0], rtol=0.05)


@pytest.mark.parametrize("d", [1, 2])
def test_bound_holds_for_perturbed_and_dsm_trained_models(d):
    rng = np.random.default_rng(2)
    m0 = np.full(d, 0.5) if d == 1 else np.array([0.5, -0.3])
    S0 = np.eye(d) * 0.09 if d == 1 else np.array([[0.09, 0.03], [0.03, 0.04]])
    A, b = W.true_affine_score(m0, S0)
    x0 = rng.multivariate_normal(m0, S0, size=2000)
    fitted = W.fit_affine_score_dsm(x0, np.linspace(0.0, 1.0, 21)[1:], rng)
    models = [(lambda t: 1.1 * A(t), b), (A, lambda t: b(t) + 0.2), fitted]
    for beta_max in (20.0, 2.0):
        for A_fn, b_fn in models:
            r = W.wasserstein_bound_affine(m0, S0, A_fn, b_fn, beta_max=beta_max, num_points=801)
            assert r["bound"] >= r["w2"] > 0, r
