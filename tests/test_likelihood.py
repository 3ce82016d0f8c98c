"""The DDPM variational bound: closed form on Gaussian data, >= the exact NLL of discretised mixture data,
Analytic-DPM's variance gives a lower bound than beta_tilde (and beta), the discretised decoder vs scipy.
A data set's bits/dim in batches (dataset_vb_bpd, dataset_ode_bpd) equal the per-example functions they batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxgen import diffusion as D
from jaxgen.diffusion import likelihood as L

M, S = 0.3, 0.5


def _closed_form_terms(sch, var, x0):
    """Per-example E_q of each term (nats, 1-D data x0 [B] ~ N(M, S^2) given x0), the exact eps-prediction:
    mu_tilde - mu = c0_t (x0 - E[x0 | x_t]), x0 - E[x0 | x_t] = r_t (x0 - M) - k_t sigma_t eps with
    k_t = a_t S^2 / (a_t^2 S^2 + sigma_t^2), r_t = 1 - a_t k_t."""
    abar = np.asarray(sch.alphas_cumprod, np.float64)
    bt = np.asarray(sch.posterior_variance, np.float64)
    c0 = np.asarray(sch.posterior_mean_coef_x0, np.float64)
    T = sch.num_steps
    a, sig2 = np.sqrt(abar), 1.0 - abar
    k = a * S**2 / (abar * S**2 + sig2)
    r = 1.0 - a * k
    x0 = np.asarray(x0, np.float64)[:, None]
    msq = r[None, :] ** 2 * (x0 - M) ** 2 + (k**2 * sig2)[None, :]  # E (x0 - E[x0|x_t])^2 given x0, [B, T + 1]
    t = np.arange(2, T + 1)
    kl = 0.5 * (np.log(var[t - 1] / bt[t]) + bt[t] / var[t - 1] - 1.0 + c0[t] ** 2 * msq[:, t] / var[t - 1])
    prior = 0.5 * (sig2[T] + abar[T] * x0[:, 0] ** 2 - 1.0 - np.log(sig2[T]))
    dec = 0.5 * np.log(2 * np.pi * var[0]) + msq[:, 1] / (2 * var[0])  # mu(x1, 1) = E[x0 | x1]
    return prior, kl, dec


@pytest.fixture(scope="module")
def gaussian_bounds():
    """The bound of the exact model on 2000 points of N(M, S^2) (T = 1000 linear, continuous decoder), for
    the beta, beta_tilde and analytic (exact Gamma) variances, one compiled function (float64)."""
    with jax.enable_x64(True):
        sch = D.make_schedule("linear", 1000, dtype=jnp.float64)
        gm = D.oracle_gaussian(M, S, 1)
        eps = gm.eps_fn(sch)
        x0 = gm.sample(jax.random.key(0), 2000)
        abar = np.asarray(sch.alphas_cumprod, np.float64)[1:]
        gamma = (1 - abar) / (abar * S**2 + 1 - abar)  # E[eps_hat^2] for Gaussian data
        variances = {"beta": L.vb_reverse_variances(sch, "beta"), "beta_tilde": L.vb_reverse_variances(sch, "beta_tilde"),
                     "analytic": L.analytic_vb_variance(sch, gamma, data_range=None)}
        f = jax.jit(lambda x, k, v: L.ddpm_vb(eps, sch, x, k, v, "gaussian"))
        out = {n: jax.tree.map(lambda a: np.asarray(a, np.float64), f(x0, jax.random.key(1), jnp.asarray(v)))
               for n, v in variances.items()}
        return sch, np.asarray(x0)[:, 0], variances, out


@pytest.mark.parametrize("name", ["beta", "beta_tilde", "analytic"])
def test_bound_on_gaussian_data_equals_its_closed_form(gaussian_bounds, name):
    sch, x0, variances, out = gaussian_bounds
    prior, kl, dec = _closed_form_terms(sch, variances[name], x0)
    o = out[name]
    np.testing.assert_allclose(o["prior"], prior, rtol=1e-7, atol=1e-15)  # exact, no sampling
    # the sampled terms: per-example differences from the closed form given x0 average to 0
    n = x0.size
    for mc, exact in ((o["kl"].sum(-1), kl.sum(-1)), (o["decoder"], dec), (o["total"], prior + kl.sum(-1) + dec)):
        d = mc - exact
        assert abs(d.mean()) < 4 * d.std() / np.sqrt(n) + 1e-12, (name, d.mean(), d.std() / np.sqrt(n))
        # the check has power: its standard error is a small fraction of the value
        assert d.std() / np.sqrt(n) < 0.05 * abs(exact.mean()), (name, d.std() / np.sqrt(n), exact.mean())
    np.testing.assert_allclose(o["bpd"], o["total"] / np.log(2.0), rtol=1e-12)


def test_analytic_variance_on_gaussian_data_is_the_optimal_one(gaussian_bounds):
    """sigma*^2 = beta_tilde_t + c0_t^2 Var[x0 | x_t] (t >= 2) and Var[x0 | x_1] (t = 1), the per-step
    minimiser of the expected KL; its closed-form bound is below beta's and beta_tilde's."""
    sch, x0, variances, out = gaussian_bounds
    abar = np.asarray(sch.alphas_cumprod, np.float64)
    post_var = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    c0 = np.asarray(sch.posterior_mean_coef_x0, np.float64)
    expect = np.asarray(sch.posterior_variance, np.float64)[1:] + c0[1:] ** 2 * post_var[1:]
    expect[0] = post_var[1]
    np.testing.assert_allclose(variances["analytic"], expect, rtol=1e-10)
    totals = {n: sum(np.mean(np.atleast_1d(c if c.ndim < 2 else c.sum(-1))) for c in _closed_form_terms(sch, v, x0))
              for n, v in variances.items()}
    assert totals["analytic"] < totals["beta"] < totals["beta_tilde"], totals


def _discrete_nll_bits(gm, xd, w):
    """-log2 P(x) / D of the mixture discretised into bins of width w on [-1, 1] (outer bins to +-inf)."""
    lo = np.where(xd <= -1 + 1e-9, -np.inf, xd - w / 2)
    hi = np.where(xd >= 1 - 1e-9, np.inf, xd + w / 2)
    mu, sd, wt = (np.asarray(a, np.float64) for a in (gm.means, gm.stds, gm.weights))
    p = sum(wt[c] * np.prod(norm.cdf((hi - mu[c]) / sd[c]) - norm.cdf((lo - mu[c]) / sd[c]), -1)
            for c in range(wt.size))
    return -np.log(p) / (xd.shape[1] * np.log(2))


@pytest.fixture(scope="module")
def oracle_bounds():
    """8-bit-discretised oracle-2d data, cosine schedule with T = 200, the oracle's eps; Gamma estimated on the
    data (Monte Carlo, as Analytic-DPM does)."""
    gm = D.oracle_2d()
    w = 2.0 / 255
    x = np.asarray(gm.sample(jax.random.key(0), 1000), np.float64)
    xd = np.clip(np.round((x + 1) / w), 0, 255) * w - 1
    sch = D.make_schedule("cosine", 200)
    eps = gm.eps_fn(sch)
    xj = jnp.asarray(xd, jnp.float32)
    gamma = D.estimate_gamma(eps, sch, xj, jax.random.key(5), np.arange(1, 201))
    variances = {"beta": L.vb_reverse_variances(sch, "beta"), "beta_tilde": L.vb_reverse_variances(sch, "beta_tilde"),
                 "analytic": L.analytic_vb_variance(sch, gamma)}
    f = jax.jit(lambda x_, k, v: L.ddpm_vb(eps, sch, x_, k, v)["bpd"])
    bpd = {n: np.asarray(f(xj, jax.random.key(1), jnp.asarray(v, jnp.float32)), np.float64) for n, v in variances.items()}
    return bpd, _discrete_nll_bits(gm, xd, w)


def test_bound_is_above_the_exact_nll_of_the_discretised_data(oracle_bounds):
    """E L >= E[-log p_model(x)] >= E[-log P(x)] (Gibbs), P the exact bin probabilities of the mixture; with the
    exact eps and the analytic variance the bound is tight (within 0.15 bits/dim here)."""
    bpd, nll = oracle_bounds
    n = nll.size
    for name, b in bpd.items():
        gap = b - nll
        assert gap.mean() > -3 * gap.std() / np.sqrt(n), (name, gap.mean(), gap.std() / np.sqrt(n))
    assert bpd["analytic"].mean() - nll.mean() < 0.15, (bpd["analytic"].mean(), nll.mean())


def test_analytic_dpm_bound_is_below_beta_tilde_and_beta(oracle_bounds):
    """Bao et al. 2022, Table 1's direction (same noise draws for all three: paired differences)."""
    bpd, _ = oracle_bounds
    n = bpd["analytic"].size
    for other in ("beta_tilde", "beta"):
        d = bpd["analytic"] - bpd[other]
        assert d.mean() + 4 * d.std() / np.sqrt(n) < 0, (other, d.mean(), d.std() / np.sqrt(n))


def test_discretized_decoder_matches_scipy():
    with jax.enable_x64(True):
        w = 2.0 / 255
        x = np.array([-1.0, -1 + w, -0.5 + 0.5 * w, 0.0 + w / 2, 1 - w, 1.0, 1.0, -1.0])
        mean = np.array([-0.9, 0.3, -0.5, 0.01, 0.99, 0.2, 4.0, -4.0])
        var = np.array([0.01, 0.5, 1e-6, 1e-4, 0.02, 0.3, 0.01, 0.01])
        f = jax.jit(lambda a, b, c: L.discretized_gaussian_log_likelihood(a, b, c, w))
        got = np.asarray(f(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(var)))
        s = np.sqrt(var)
        lo = np.where(x <= -1 + 1e-9, -np.inf, (x - w / 2 - mean) / s)
        hi = np.where(x >= 1 - 1e-9, np.inf, (x + w / 2 - mean) / s)
        expect = np.log(norm.cdf(hi) - norm.cdf(lo))
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)
        # far in the upper tail the difference of two cdfs underflows; the log-space form does not
        far = f(jnp.asarray(0.0), jnp.asarray(-0.3), jnp.asarray(1e-3))
        expect_far = norm.logsf((0.0 - w / 2 + 0.3) / np.sqrt(1e-3)) + np.log1p(
            -np.exp(norm.logsf((w / 2 + 0.3) / np.sqrt(1e-3)) - norm.logsf((-w / 2 + 0.3) / np.sqrt(1e-3))))
        np.testing.assert_allclose(float(far), expect_far, rtol=1e-9)
        # the probabilities of all 256 bins sum to 1
        grid = jnp.asarray(np.arange(256) * w - 1)
        total = jnp.sum(jnp.exp(f(grid, jnp.asarray(0.37), jnp.asarray(0.2))))
        np.testing.assert_allclose(float(total), 1.0, rtol=1e-12)


def test_bad_arguments():
    sch = D.make_schedule("linear", 10)
    with pytest.raises(ValueError, match="variance"):
        L.vb_reverse_variances(sch, "large")
    with pytest.raises(ValueError, match="shape"):
        L.vb_reverse_variances(sch, np.ones(9))
    with pytest.raises(ValueError, match="positive"):
        L.vb_reverse_variances(sch, np.zeros(10))
    with pytest.raises(ValueError, match="decoder"):
        L.ddpm_vb(lambda x, t: x, sch, jnp.zeros((2, 1)), jax.random.key(0), decoder="logistic")
    with pytest.raises(ValueError, match="gamma"):
        L.analytic_vb_variance(sch, np.ones(9))


def test_dataset_vb_bpd_is_ddpm_vb_per_example():
    """Example j is ddpm_vb of x[j] alone with key fold_in(key, j) (so any batch size gives the same; the last
    batch padded), here with an array variance (Analytic-DPM's)."""
    gm = D.oracle_2d()
    sch = D.make_schedule("linear", 20)
    eps = gm.eps_fn(sch)
    w = 2.0 / 255
    x = np.clip(np.round((np.asarray(gm.sample(jax.random.key(0), 5)) + 1) / w), 0, 255).astype(np.float32) * w - 1
    key = jax.random.key(3)
    var = L.analytic_vb_variance(sch, np.linspace(0.05, 0.99, 20))
    got = L.dataset_vb_bpd(eps, sch, x, key, variance=var, batch_size=3)
    f = jax.jit(lambda x_, k: L.ddpm_vb(eps, sch, x_, k, var)["bpd"])
    expect = [float(f(jnp.asarray(x[j:j + 1]), jax.random.fold_in(key, j))[0]) for j in range(len(x))]
    assert got.shape == (5,) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_dataset_ode_bpd_is_the_ode_likelihood_per_example():
    """Example j: ode_log_likelihood at x[j] + u (u ~ U(-w/2, w/2) from the first half of fold_in(key, j)) in
    bits/dim with the bin (so any batch size gives the same); rectified flow's default t_max is 1 - t_min (sigma /
    alpha is infinite at t = 1)."""
    from jaxgen.diffusion.score_matching import bits_per_dim, ode_log_likelihood

    gm = D.oracle_gaussian(M, S, 2)
    rf = D.make_process("rf")
    den = gm.denoise_fn(rf)
    x = np.asarray(gm.sample(jax.random.key(0), 3), np.float32)
    key, w, t_min, tol = jax.random.key(4), 2.0 / 255, 1e-3, dict(rtol=1e-3, atol=1e-3)
    got = L.dataset_ode_bpd(den, rf, x, key, t_min=t_min, bin_width=w, batch_size=2, **tol)

    @jax.jit
    def one(xj, k):
        k_deq, k_ode = jax.random.split(k)
        xj = xj + jax.random.uniform(k_deq, xj.shape, jnp.float32, -w / 2, w / 2)
        return bits_per_dim(ode_log_likelihood(den, rf, xj, k_ode, t_min=t_min, t_max=1 - t_min, **tol), 2, w)[0]

    expect = [float(one(jnp.asarray(x[j:j + 1]), jax.random.fold_in(key, j))) for j in range(len(x))]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
