"""Processes x_t = alpha(t) x0 + sigma(t) eps and prediction conversions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxgen import diffusion as D


def _processes():
    return [
        D.make_schedule("linear", 1000),
        D.make_schedule("cosine", 1000),
        D.ContinuousVP("linear"),
        D.ContinuousVP("cosine"),
        D.VE(),
        D.EDM(),
        D.RectifiedFlow(),
    ]


def test_conversions_round_trip():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x0, eps = rng.normal(size=(2, 6, 3))
        alpha, sigma = rng.uniform(0.1, 1.5, size=(2, 6, 1))
        dalpha, dsigma = rng.normal(size=(2, 6, 1))
        x = alpha * x0 + sigma * eps
        np.testing.assert_allclose(D.eps_to_x0(x, eps, alpha, sigma), x0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(D.x0_to_eps(x, x0, alpha, sigma), eps, rtol=1e-12, atol=1e-12)
        score = D.x0_to_score(x, x0, alpha, sigma)
        np.testing.assert_allclose(score, -eps / sigma, rtol=1e-12)  # the conditional score of N(alpha x0, sigma^2)
        np.testing.assert_allclose(D.eps_to_score(eps, sigma), score, rtol=1e-12)
        np.testing.assert_allclose(D.score_to_eps(score, sigma), eps, rtol=1e-12)
        np.testing.assert_allclose(D.score_to_x0(x, score, alpha, sigma), x0, rtol=1e-10, atol=1e-12)
        v = D.x0_eps_to_v(x0, eps, alpha, sigma)
        np.testing.assert_allclose(D.v_to_x0(x, v, alpha, sigma), x0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(D.v_to_eps(x, v, alpha, sigma), eps, rtol=1e-10, atol=1e-12)
        u = D.x0_eps_to_velocity(x0, eps, dalpha, dsigma)
        x0b, epsb = D.velocity_to_x0_eps(x, u, alpha, sigma, dalpha, dsigma)
        np.testing.assert_allclose(x0b, x0, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(epsb, eps, rtol=1e-9, atol=1e-10)


def test_vp_processes_preserve_variance():
    t = jnp.linspace(0.0, 1.0, 101)
    for p in [D.make_schedule("linear"), D.make_schedule("cosine"), D.ContinuousVP(), D.ContinuousVP("cosine")]:
        a, s = p.alpha_sigma(t)
        np.testing.assert_allclose(np.asarray(a**2 + s**2), 1.0, atol=2e-6)
        assert np.all(np.diff(np.asarray(p.log_snr(t[1:-1]))) < 0)  # SNR decreases with t


def test_continuous_vp_linear_against_quadrature():
    p = D.ContinuousVP("linear", beta_min=0.1, beta_max=20.0)
    for t in [0.1, 0.5, 0.9]:
        integral, _ = integrate.quad(lambda r: 0.1 + r * (20.0 - 0.1), 0.0, t)
        np.testing.assert_allclose(float(p.alpha(t)), np.exp(-0.5 * integral), rtol=1e-5)


def test_discrete_vp_continuous_view_is_exact_on_grid():
    s = D.make_schedule("linear", 50)
    i = np.arange(51)
    np.testing.assert_allclose(np.asarray(s.alpha(i / 50)), np.asarray(s.sqrt_alphas_cumprod), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(s.sigma(i / 50)), np.asarray(s.sqrt_one_minus_alphas_cumprod), rtol=2e-6, atol=1e-7)
    # between grid points log(abar) is linear: the geometric mean of the neighbours at the midpoint
    mid = (np.arange(50) + 0.5) / 50
    abar = np.asarray(s.alphas_cumprod, np.float64)
    np.testing.assert_allclose(np.asarray(s.alpha(mid)) ** 2, np.sqrt(abar[:-1] * abar[1:]), rtol=1e-5)


def test_derivatives_against_finite_differences_and_rf_velocity():
    with jax.enable_x64(True):
        t = jnp.array([0.2, 0.45, 0.7])
        for p in [D.ContinuousVP(), D.ContinuousVP("cosine"), D.VE(), D.EDM(), D.RectifiedFlow()]:
            da, ds = p.alpha_sigma_dt(t)
            h = 1e-6
            np.testing.assert_allclose(da, (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(ds, (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
        rf = D.RectifiedFlow()
        x0, eps = jnp.ones((3, 2)), 2 * jnp.ones((3, 2))
        da, ds = rf.alpha_sigma_dt(t)
        u = D.x0_eps_to_velocity(x0, eps, da[:, None], ds[:, None])
        np.testing.assert_allclose(u, eps - x0)


@pytest.mark.parametrize("idx", range(7))
def test_time_of_log_snr_inverts(idx):
    with jax.enable_x64(True):
        p = _processes()[idx]
        if hasattr(p, "alphas_cumprod"):
            p = D.make_schedule(p.name, 1000, dtype=jnp.float64)
        t = jnp.array([0.003, 0.1, 0.37, 0.8, 0.995])
        np.testing.assert_allclose(p.time_of_log_snr(p.log_snr(t)), t, rtol=1e-7, atol=1e-9)
        # the generic bisection agrees with each closed-form override
        np.testing.assert_allclose(D.Process.time_of_log_snr(p, p.log_snr(t)), t, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(p.sigma_ratio(p.time_of_sigma_ratio(jnp.array([0.01, 1.0, 30.0]))),
                                   [0.01, 1.0, 30.0], rtol=1e-6)


def test_processes_are_pytrees_and_jit():
    s = D.make_schedule("cosine", 100)
    f = jax.jit(lambda p, t: p.alpha_sigma(t))
    for p in [s, D.ContinuousVP(), D.VE(), D.EDM(), D.RectifiedFlow()]:
        a, b = f(p, jnp.array([0.3]))
        np.testing.assert_allclose(np.asarray(a), np.asarray(p.alpha(jnp.array([0.3]))), rtol=1e-6)


def test_marginal_and_make_process_errors():
    p = D.make_process("rf")
    x0, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
    np.testing.assert_allclose(np.asarray(p.marginal(x0, jnp.array([0.25, 1.0]), eps)), [[0.75] * 3, [0.0] * 3])
    assert isinstance(D.make_process("ddpm-cosine", num_steps=10), D.DiscreteVP)
    with pytest.raises(ValueError, match="process name"):
        D.make_process("sub-vp")
    with pytest.raises(ValueError, match="schedule"):
        D.ContinuousVP("sigmoid")
    with pytest.raises(ValueError, match="betas"):
        D.DiscreteVP.from_betas(np.array([0.1, 1.2]))
