"""DDPM core: schedules, posterior, L_simple and ancestral sampling, against independent closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion import ddpm_loss, ddpm_posterior, ddpm_sample, make_schedule, q_sample


def _abar_loop(betas):
    """abar_i by an explicit running product (float64)."""
    out, p = [], 1.0
    for b in betas:
        p *= 1.0 - b
        out.append(p)
    return np.array(out)


def test_linear_schedule_endpoints_and_cumprod():
    with jax.enable_x64(True):
        s = make_schedule("linear", 1000, dtype=jnp.float64)
        b = np.asarray(s.betas)
        assert b.shape == (1001,) and b[0] == 0.0
        np.testing.assert_allclose(b[1], 1e-4, rtol=1e-12)
        np.testing.assert_allclose(b[1000], 0.02, rtol=1e-12)
        np.testing.assert_allclose(np.diff(b[1:]), (0.02 - 1e-4) / 999, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[1:], _abar_loop(b[1:]), rtol=1e-12)
        # forward variance recursion v_i = alpha_i v_{i-1} + beta_i from v_0 = 0 gives 1 - abar_i
        v, vs = 0.0, []
        for bi in b[1:]:
            v = (1 - bi) * v + bi
            vs.append(v)
        np.testing.assert_allclose(np.asarray(s.sqrt_one_minus_alphas_cumprod)[1:] ** 2, vs, rtol=1e-10)


def test_cosine_schedule_matches_nichol_dhariwal():
    with jax.enable_x64(True):
        T, s0 = 1000, 0.008
        s = make_schedule("cosine", T, dtype=jnp.float64)
        t = np.arange(T + 1) / T
        f = np.cos((t + s0) / (1 + s0) * np.pi / 2) ** 2
        abar_true = f / f[0]
        b = np.asarray(s.betas)[1:]
        assert b.max() <= 0.999 + 1e-15 and np.isclose(b[-1], 0.999)
        unclipped = b < 0.999
        # where no clipping happened upstream, abar equals the closed form f(t)/f(0)
        first_clip = np.argmin(unclipped) if not unclipped.all() else T
        np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[1 : first_clip + 1], abar_true[1 : first_clip + 1], rtol=1e-10)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_coefficients_direct_and_bayes(name):
    with jax.enable_x64(True):
        s = make_schedule(name, 200, dtype=jnp.float64)
        beta = np.asarray(s.betas)
        abar = _abar_loop(beta[1:])
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        b, alpha = beta[1:], 1.0 - beta[1:]
        # the direct formulas (Ho et al. 2020)
        np.testing.assert_allclose(np.asarray(s.posterior_mean_coef_x0)[1:], b * np.sqrt(abar_prev) / (1 - abar), rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(s.posterior_mean_coef_xt)[1:], (1 - abar_prev) * np.sqrt(alpha) / (1 - abar), rtol=1e-10
        )
        np.testing.assert_allclose(np.asarray(s.posterior_variance)[1:], b * (1 - abar_prev) / (1 - abar), rtol=1e-10, atol=1e-300)
        # Bayes' rule on Gaussians: prior q(x_{i-1}|x0) = N(sqrt(abar_{i-1}) x0, 1 - abar_{i-1}),
        # likelihood q(x_i|x_{i-1}) = N(sqrt(alpha_i) x_{i-1}, beta_i); posterior by precisions.
        rng = np.random.default_rng(0)
        x0 = rng.normal(size=(b.size, 3))
        xt = rng.normal(size=(b.size, 3))
        i = np.arange(1, b.size + 1)
        mean, var = ddpm_posterior(s, jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(i))
        for k in range(b.size):
            if k == 0:  # x_0 is known exactly given x0: prior variance 0
                m_ref, v_ref = np.sqrt(abar_prev[0]) * x0[0], 0.0
            else:
                prec = 1.0 / (1 - abar_prev[k]) + alpha[k] / b[k]
                v_ref = 1.0 / prec
                m_ref = v_ref * (np.sqrt(abar_prev[k]) * x0[k] / (1 - abar_prev[k]) + np.sqrt(alpha[k]) * xt[k] / b[k])
            np.testing.assert_allclose(np.asarray(mean)[k], m_ref, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(np.asarray(var)[k], v_ref, rtol=1e-9, atol=1e-15)


def test_q_sample_and_continuous_view_on_grid():
    s = make_schedule("linear", 1000)
    key = jax.random.key(1)
    x0 = jax.random.normal(key, (5, 4))
    eps = jax.random.normal(jax.random.fold_in(key, 1), (5, 4))
    i = jnp.array([0, 1, 10, 500, 1000])
    abar = _abar_loop(np.linspace(1e-4, 0.02, 1000))
    abar = np.concatenate([[1.0], abar])[np.asarray(i)]
    ref = np.sqrt(abar)[:, None] * np.asarray(x0) + np.sqrt(1 - abar)[:, None] * np.asarray(eps)
    np.testing.assert_allclose(np.asarray(q_sample(s, x0, i, eps)), ref, rtol=1e-5, atol=1e-6)
    # the process view x_t = alpha(t) x0 + sigma(t) eps agrees at t = i / T
    np.testing.assert_allclose(np.asarray(s.marginal(x0, i / 1000, eps)), ref, rtol=1e-4, atol=1e-5)


def _gauss_eps_fn(schedule, mu, sd):
    """Exact E[eps | x_t] for x0 ~ N(mu, sd^2 I): b (x - a mu) / (a^2 sd^2 + b^2)."""

    def eps_fn(x, t):
        i = jnp.round(t * schedule.num_steps).astype(jnp.int32)
        a = schedule.sqrt_alphas_cumprod[i][:, None]
        b = schedule.sqrt_one_minus_alphas_cumprod[i][:, None]
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return eps_fn


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddpm_loss_of_exact_denoiser_equals_closed_form(name):
    mu, sd, d, n = 0.3, 0.5, 8, 8192
    s = make_schedule(name, 1000)
    x0 = mu + sd * jax.random.normal(jax.random.key(2), (n, d))
    loss = float(jax.jit(ddpm_loss, static_argnums=0)(_gauss_eps_fn(s, mu, sd), s, x0, jax.random.key(3)))
    # closed form: Var[eps | x_t] = a^2 sd^2 / (a^2 sd^2 + b^2) per element, averaged over i ~ U{1..T}
    abar = np.concatenate([[1.0], _abar_loop(np.asarray(s.betas, np.float64)[1:])])[1:]
    v = abar * sd**2 / (abar * sd**2 + 1 - abar)
    expected = v.mean()
    # per-example loss = mean of d squared N(0, v_i): variance Var_i(v) + E[2 v^2 / d]
    se = np.sqrt((v.var() + np.mean(2 * v**2 / d)) / n)
    assert abs(loss - expected) < 5 * se, (loss, expected, se)
    # a wrong predictor (zero) has a visibly larger loss: E||eps||^2 = 1
    loss0 = float(ddpm_loss(lambda x, t: jnp.zeros_like(x), s, x0, jax.random.key(3)))
    assert abs(loss0 - 1.0) < 0.05 and loss0 > expected + 20 * se


def _propagated_moments(schedule, mu, sd, variance):
    """Exact output mean/variance of ancestral sampling with the exact Gaussian eps (each step is affine)."""
    beta = np.asarray(schedule.betas, np.float64)
    abar = np.concatenate([[1.0], _abar_loop(beta[1:])])
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    m, V = 0.0, 1.0
    for i in range(schedule.num_steps, 0, -1):
        a, b2 = np.sqrt(abar[i]), 1 - abar[i]
        # eps_hat = k (x - a mu), k = sqrt(b2)/(a^2 sd^2 + b2); mean = (x - beta/sqrt(b2) eps_hat)/sqrt(1-beta)
        k = np.sqrt(b2) / (a**2 * sd**2 + b2)
        A = (1 - beta[i] / np.sqrt(b2) * k) / np.sqrt(1 - beta[i])
        C = (beta[i] / np.sqrt(b2) * k * a * mu) / np.sqrt(1 - beta[i])
        v = beta[i] if variance == "beta" else beta[i] * (1 - abar_prev[i]) / (1 - abar[i])
        m, V = A * m + C, A**2 * V + (v if i > 1 else 0.0)
    return m, V


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_sampling_reproduces_gaussian(variance):
    mu, sd, n = 0.4, 0.3, 10000
    s = make_schedule("linear", 1000)
    sample = jax.jit(ddpm_sample, static_argnums=(0, 2, 4))
    x = np.asarray(sample(_gauss_eps_fn(s, mu, sd), s, (n, 2), jax.random.key(4), variance))
    m_ref, V_ref = _propagated_moments(s, mu, sd, variance)
    # the sampler's affine chain (closed form) matches the samples, and is close to the data
    se_m, se_sd = np.sqrt(V_ref / x.size), np.sqrt(V_ref / (2 * x.size))
    assert abs(x.mean() - m_ref) < 5 * se_m
    assert abs(x.std() - np.sqrt(V_ref)) < 5 * se_sd + 1e-4
    assert abs(m_ref - mu) < 0.01 and abs(np.sqrt(V_ref) - sd) < 0.01
    assert abs(x.mean() - mu) < 0.015 and abs(x.std() - sd) < 0.015


def test_clip_path_matches_unclipped_formula_when_inactive():
    s = make_schedule("linear", 100)
    f = _gauss_eps_fn(s, 0.2, 0.5)
    a = ddpm_sample(f, s, (64, 3), jax.random.key(5), "beta_tilde")
    b = ddpm_sample(f, s, (64, 3), jax.random.key(5), "beta_tilde", clip_x0=1e6)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3)
    c = ddpm_sample(f, s, (64, 3), jax.random.key(5), "beta_tilde", clip_x0=0.1)
    assert np.abs(np.asarray(c)).max() <= 0.1 + 1e-5  # last step returns the posterior mean of a clipped x0 (coef_x0 = 1 at i = 1)


def test_bad_arguments_raise():
    s = make_schedule("linear", 10)
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(lambda x, t: x, s, (2, 2), jax.random.key(0), variance="large")
    with pytest.raises(ValueError, match="schedule name"):
        make_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="num_steps"):
        make_schedule("linear", 0)
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm_sample(lambda x, t: x, s, (2, 2), jax.random.key(0), clip_x0=-1.0)
