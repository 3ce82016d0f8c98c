"""Analytic-DPM and Extended Analytic-DPM on Gaussian data, where everything is known in closed form."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion import analytic_dpm as A

MU, SD = 0.2, 0.4


def _abar(T=1000):
    return np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, T))])


def _gauss_eps_fn(sch, mu=MU, sd=SD):
    def f(x, t):
        i = jnp.round(t * sch.num_steps).astype(jnp.int32)
        a = sch.sqrt_alphas_cumprod[i].reshape((-1,) + (1,) * (x.ndim - 1))
        b = sch.sqrt_one_minus_alphas_cumprod[i].reshape((-1,) + (1,) * (x.ndim - 1))
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return f


def _true_reverse_variance(abar_r, abar_s, eta, sd=SD):
    """Var[x_s | x_r] from the joint Gaussian of (x_r, x_s) under the DDIM-family forward process:
    x_r = a_r x0 + b_r e, x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - lam2) e + lam z."""
    lam2 = eta**2 * (1 - abar_s) / (1 - abar_r) * (1 - abar_r / abar_s)
    var_r = abar_r * sd**2 + 1 - abar_r
    var_s = abar_s * sd**2 + 1 - abar_s
    cov = np.sqrt(abar_s * abar_r) * sd**2 + np.sqrt(1 - abar_s - lam2) * np.sqrt(1 - abar_r)
    return var_s - cov**2 / var_r


def test_gamma_monte_carlo_matches_gaussian_closed_form():
    sch = D.make_schedule("linear", 1000)
    ts = np.array([1, 10, 100, 400, 1000])
    data = MU + SD * jax.random.normal(jax.random.key(0), (4000, 4))
    g = A.estimate_gamma(_gauss_eps_fn(sch), sch, data, jax.random.key(1), ts, num_repeats=2, batch_size=2000)
    abar = _abar()[ts]
    expected = (1 - abar) / (abar * SD**2 + 1 - abar)  # sigma_t^2 / (a^2 s^2 + sigma_t^2)
    # E[eps_hat^2] per element; MC error of a mean of 32000 squared Gaussians (plus the data-mean term)
    np.testing.assert_allclose(g, expected, rtol=0.03, atol=1e-3)
    assert np.all(g <= 1.0 + 0.02)
    # at high noise the control variate pins down 1 - Gamma (what the variance uses) far better
    plain = A.estimate_gamma(_gauss_eps_fn(sch), sch, data, jax.random.key(1), ts, num_repeats=2, batch_size=2000,
                             control_variate=False)
    err_cv, err_plain = np.abs(g - expected)[-1], np.abs(plain - expected)[-1]  # r = T
    assert err_cv < 2e-4 and err_cv < err_plain / 5, (err_cv, err_plain)


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
def test_analytic_variance_equals_true_reverse_variance_on_gaussian_data(eta):
    sch = D.make_schedule("linear", 1000)
    abar = _abar()
    ts = D.skip_timesteps(1000, 10)
    gamma = (1 - abar[ts]) / (abar[ts] * SD**2 + 1 - abar[ts])
    var = A.analytic_variance(sch, ts, gamma, eta=eta, data_range=None)
    taus = np.concatenate([[0], ts])
    for k in range(2, len(ts) + 1):
        r, s = taus[k], taus[k - 1]
        np.testing.assert_allclose(var[k - 1], _true_reverse_variance(abar[r], abar[s], eta), rtol=1e-4)
    assert var[0] == 0.0


def test_analytic_variance_with_monte_carlo_gamma_and_clips():
    sch = D.make_schedule("linear", 1000)
    abar = _abar()
    ts = D.skip_timesteps(1000, 10)
    data = MU + SD * jax.random.normal(jax.random.key(2), (4000, 8))
    gamma = A.estimate_gamma(_gauss_eps_fn(sch), sch, data, jax.random.key(3), ts)
    var = A.analytic_variance(sch, ts, gamma, eta=1.0, data_range=None)
    taus = np.concatenate([[0], ts])
    true = [_true_reverse_variance(abar[taus[k]], abar[taus[k - 1]], 1.0) for k in range(2, 11)]
    np.testing.assert_allclose(var[1:], true, rtol=0.05)
    # the clips only ever lower the variance, to the stated bounds
    clipped = A.analytic_variance(sch, ts, np.zeros(10), eta=1.0, data_range=0.2, pixel_width=2 / 255)
    lam2 = (1 - abar[taus[:-1]]) / (1 - abar[taus[1:]]) * (1 - abar[taus[1:]] / abar[taus[:-1]])
    assert np.all(clipped[2:] >= lam2[2:] - 1e-12)
    assert clipped[1] <= (1 / 255 * np.sqrt(np.pi / 2)) ** 2 + 1e-15


def test_analytic_ddpm_sampling_is_exact_for_gaussian_data_and_beats_beta_tilde():
    """With the exact eps and the optimal variance every reverse step is the true reverse conditional,
    so 10 steps reproduce N(mu, s^2) (minus Var[x0 | x_tau1] since the last step returns the mean)."""
    sch = D.make_schedule("linear", 1000)
    abar = _abar()
    ts = D.skip_timesteps(1000, 10)
    gamma = (1 - abar[ts]) / (abar[ts] * SD**2 + 1 - abar[ts])
    n = 40000
    x = np.asarray(A.analytic_dpm_sample(_gauss_eps_fn(sch), sch, (n, 1), jax.random.key(4), ts, gamma,
                                         data_range=None))
    a1, b1 = abar[ts[0]], 1 - abar[ts[0]]
    sd_expected = np.sqrt(SD**2 - SD**2 * b1 / (a1 * SD**2 + b1))
    assert abs(x.mean() - MU) < 5 * SD / np.sqrt(n)
    assert abs(x.std() - sd_expected) < 5 * SD / np.sqrt(2 * n) + 2e-3
    y = np.asarray(D.ddpm_skip_sample(_gauss_eps_fn(sch), sch, (n, 1), jax.random.key(4), 10, "beta_tilde"))
    assert abs(y.std() - SD) > 5 * abs(x.std() - sd_expected) + 0.01  # DDPM(beta_tilde) at 10 steps is off


def test_kl_costs_match_gaussian_kl_and_dp_matches_brute_force():
    T = 14
    sch = D.DiscreteVP.from_betas(np.linspace(0.01, 0.4, T))
    abar = np.asarray(sch.alphas_cumprod, np.float64)
    gamma = (1 - abar) / (abar * SD**2 + 1 - abar)
    J = A.kl_step_costs(sch, gamma, eta=1.0, data_range=None)
    # expected KL(q(x_s|x_r,x0) || optimal Gaussian p(x_s|x_r)) per dimension, from scratch
    for s, r in [(1, 2), (3, 9), (1, 14), (6, 7)]:
        lam2 = (1 - abar[s]) / (1 - abar[r]) * (1 - abar[r] / abar[s])
        post_var_x0 = SD**2 * (1 - abar[r]) / (abar[r] * SD**2 + 1 - abar[r])
        c_x0 = np.sqrt(abar[s]) * (1 - abar[r] / abar[s]) / (1 - abar[r])  # posterior-mean coefficient of x0
        spread = c_x0**2 * post_var_x0  # Var of the posterior mean given x_r
        v = lam2 + spread
        kl = 0.5 * (lam2 / v - 1 + np.log(v / lam2) + spread / v)
        np.testing.assert_allclose(J[s, r], kl, rtol=1e-8)
    # For Gaussian data J telescopes (every trajectory has the same total), so the DP is checked on an
    # arbitrary Gamma profile against brute-force enumeration.
    gamma = np.random.default_rng(0).uniform(0.3, 1.0, T + 1)
    J = A.kl_step_costs(sch, gamma, eta=1.0, data_range=None)
    for K in (3, 4, 5):
        traj = A.optimal_trajectory(sch, gamma, K, data_range=None)
        best = min(
            (sum(J[a, b] for a, b in zip((1,) + mid, mid + (T,))), (1,) + mid + (T,))
            for mid in itertools.combinations(range(2, T), K - 2)
        )
        np.testing.assert_array_equal(traj, best[1])


def _newton_minimiser(loss_of_c):
    """The loss is quadratic in c: one Newton step from 0 is exact."""
    g = jax.grad(loss_of_c)(0.0)
    h = jax.grad(jax.grad(loss_of_c))(0.0)
    return float(-g / h)


@pytest.mark.parametrize("r", [50, 300, 800])
def test_sn_and_npr_heads_minimise_to_the_closed_form(r):
    sch = D.make_schedule("linear", 1000)
    abar = _abar()[r]
    var_eps = abar * SD**2 / (abar * SD**2 + 1 - abar)  # Var[eps | x_r] for Gaussian data
    x0 = MU + SD * jax.random.normal(jax.random.key(5), (20000, 4))
    steps = jnp.full((20000,), r)
    eps_fn = _gauss_eps_fn(sch)
    key = jax.random.key(6)
    c_sn = _newton_minimiser(lambda c: A.sn_dpm_loss(lambda x, t: eps_fn(x, t) ** 2 + c, sch, x0, key, steps))
    c_npr = _newton_minimiser(lambda c: A.npr_dpm_loss(lambda x, t: jnp.zeros_like(x) + c, eps_fn, sch, x0, key, steps))
    np.testing.assert_allclose(c_sn, var_eps, rtol=0.05, atol=2e-3)
    np.testing.assert_allclose(c_npr, var_eps, rtol=0.05, atol=2e-3)


def test_diagonal_covariance_sampler_with_exact_heads_equals_analytic_dpm():
    sch = D.make_schedule("linear", 1000)
    abar = np.asarray(sch.alphas_cumprod)
    ts = D.skip_timesteps(1000, 10)
    ab = _abar()
    gamma = (1 - ab[ts]) / (ab[ts] * SD**2 + 1 - ab[ts])
    eps_fn = _gauss_eps_fn(sch)

    def var_eps(t):
        a = jnp.asarray(abar)[jnp.round(t * 1000).astype(jnp.int32)][:, None]
        return a * SD**2 / (a * SD**2 + 1 - a)

    npr_head = lambda x, t: jnp.broadcast_to(var_eps(t), x.shape)  # noqa: E731
    sn_head = lambda x, t: eps_fn(x, t) ** 2 + var_eps(t)  # noqa: E731
    ref = A.analytic_dpm_sample(eps_fn, sch, (500, 3), jax.random.key(7), ts, gamma, data_range=None)
    for cov in (A.npr_cov_fn(npr_head, sch, None), A.sn_cov_fn(sn_head, sch, None)):
        x = D.vp_sample(eps_fn, sch, (500, 3), jax.random.key(7), ts, eta=1.0, cov_fn=cov)
        np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=2e-3, atol=2e-3)


def test_bad_arguments():
    sch = D.make_schedule("linear", 20)
    with pytest.raises(ValueError, match="gamma"):
        A.analytic_variance(sch, [1, 5, 9], np.ones(2))
    with pytest.raises(ValueError, match="eta"):
        A.kl_step_costs(sch, np.ones(20), eta=0.0)
    with pytest.raises(ValueError, match="num_sample_steps"):
        A.optimal_trajectory(sch, np.ones(20), 1)
