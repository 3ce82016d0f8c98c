"""The Gaussian-mixture oracle: log-density vs scipy, score vs autodiff, denoiser vs Monte Carlo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgen import diffusion as D


def _mixture64():
    rng = np.random.default_rng(0)
    return D.GaussianMixture(rng.uniform(0.5, 2.0, 3), rng.normal(size=(3, 2)), rng.uniform(0.2, 0.6, 3))


def _scipy_logpdf(gm, x, alpha, sigma):
    w, m, s = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.stds))
    dens = sum(
        w[k] * stats.multivariate_normal(alpha * m[k], (alpha**2 * s[k] ** 2 + sigma**2) * np.eye(m.shape[1])).pdf(x)
        for k in range(len(w))
    )
    return np.log(dens)


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.0), (1.0, 0.3), (0.6, 0.8), (0.05, 1.0)])
def test_log_prob_matches_scipy(alpha, sigma):
    with jax.enable_x64(True):
        gm = _mixture64()
        x = np.random.default_rng(1).normal(size=(7, 2))
        np.testing.assert_allclose(np.asarray(gm.log_prob(jnp.asarray(x), alpha, sigma)),
                                   _scipy_logpdf(gm, x, alpha, sigma), rtol=1e-10)


def test_score_is_gradient_of_log_prob_and_tweedie():
    with jax.enable_x64(True):
        gm = _mixture64()
        x = jnp.asarray(np.random.default_rng(2).normal(size=(9, 2)))
        alpha = jnp.asarray(np.linspace(0.2, 1.0, 9))
        sigma = jnp.asarray(np.linspace(0.9, 0.1, 9))
        grad = jax.vmap(jax.grad(lambda xi, a, s: gm.log_prob(xi[None], a, s)[0]))(x, alpha, sigma)
        np.testing.assert_allclose(np.asarray(gm.score(x, alpha, sigma)), np.asarray(grad), rtol=1e-9, atol=1e-12)
        # Tweedie: alpha E[x0|x] = x + sigma^2 grad log p(x)
        np.testing.assert_allclose(np.asarray(alpha[:, None] * gm.denoise(x, alpha, sigma)),
                                   np.asarray(x + sigma[:, None] ** 2 * grad), rtol=1e-9, atol=1e-12)


def test_denoise_and_posterior_variance_against_monte_carlo():
    gm = D.oracle_2d()
    alpha, sigma = 0.8, 0.35
    x0 = np.asarray(gm.sample(jax.random.key(0), 400_000), np.float64)
    x = np.array([[0.5, 0.1], [-0.3, -0.6], [0.0, 0.0]])
    mean, var = gm.posterior_moments(jnp.asarray(x, jnp.float32), alpha, sigma)
    for j in range(3):
        # self-normalised importance sampling with the prior as proposal: weights N(x; alpha x0, sigma^2)
        logw = -0.5 * np.sum((x[j] - alpha * x0) ** 2, -1) / sigma**2
        w = np.exp(logw - logw.max())
        w /= w.sum()
        m_mc = w @ x0
        v_mc = w @ (x0 - m_mc) ** 2
        ess = 1.0 / np.sum(w**2)
        assert ess > 2000
        np.testing.assert_allclose(np.asarray(mean[j]), m_mc, atol=5 * np.sqrt(v_mc.max() / ess) + 1e-4)
        np.testing.assert_allclose(np.asarray(var[j]), v_mc, rtol=0.1, atol=1e-4)


def test_sample_moments():
    gm = _mixture64()
    xs = np.asarray(gm.sample(jax.random.key(3), 200_000), np.float64)
    w, m, s = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.stds))
    mean = w @ m
    cov = sum(w[k] * (np.outer(m[k] - mean, m[k] - mean) + s[k] ** 2 * np.eye(2)) for k in range(3))
    np.testing.assert_allclose(xs.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(xs.T), cov, atol=0.02)
    np.testing.assert_allclose(np.asarray(gm.covariance()), cov, rtol=1e-5)


def test_pf_ode_velocity_matches_score_form():
    # For the continuous VP SDE dx = -beta/2 x dt + sqrt(beta) dw, the probability-flow velocity
    # -beta/2 (x + score) must equal alpha' E[x0|x] + sigma' E[eps|x] built from the denoiser.
    with jax.enable_x64(True):
        gm, p = _mixture64(), D.ContinuousVP()
        t = jnp.asarray([0.1, 0.4, 0.8])
        x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2)))
        beta = 0.1 + t * (20.0 - 0.1)
        v_score = -0.5 * beta[:, None] * (x + gm.score_fn(p)(x, t))
        da, ds = p.alpha_sigma_dt(t)
        v_den = da[:, None] * gm.denoise_fn(p)(x, t) + ds[:, None] * gm.eps_fn(p)(x, t)
        np.testing.assert_allclose(np.asarray(v_den), np.asarray(v_score), rtol=1e-8, atol=1e-10)


def test_jit_and_validation():
    gm = D.oracle_16d()
    f = jax.jit(lambda g, x: g.denoise(x, 0.5, 0.5))
    x = gm.sample(jax.random.key(0), 4)
    assert f(gm, x).shape == (4, 16)
    with pytest.raises(ValueError, match="weights"):
        D.GaussianMixture(np.array([1.0, -1.0]), np.zeros((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="stds"):
        D.GaussianMixture(np.ones(2), np.zeros((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="means"):
        D.GaussianMixture(np.ones(2), np.zeros(2), np.ones(2))
