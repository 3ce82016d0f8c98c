"""Samplers: DDIM/DDPM with skipped steps vs Bayes' rule, ODE solver orders vs the exact Gaussian flow,
AMED(1/2, 1) == DPM-Solver-2, and every sampler with the oracle reproduces the mixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D


def _bayes_posterior(abar_r, abar_s, x0, x_r):
    """q(x_s | x_r, x0) from prior q(x_s|x0) = N(sqrt(abar_s) x0, 1 - abar_s) and
    likelihood q(x_r|x_s) = N(sqrt(abar_r/abar_s) x_s, 1 - abar_r/abar_s)."""
    a = np.sqrt(abar_r / abar_s)
    v_lik = 1 - abar_r / abar_s
    v_pri = 1 - abar_s
    if v_pri == 0:
        return np.sqrt(abar_s) * x0, 0.0
    prec = 1 / v_pri + a**2 / v_lik
    var = 1 / prec
    return var * (np.sqrt(abar_s) * x0 / v_pri + a * x_r / v_lik), var


def test_skip_timesteps():
    np.testing.assert_array_equal(D.skip_timesteps(1000, 50), np.arange(0, 1000, 20) + 1)
    q = D.skip_timesteps(1000, 10, "quadratic")
    np.testing.assert_array_equal(q, (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int) + 1)
    q = D.skip_timesteps(1000, 100, "quadratic")
    assert q.size == 100 and np.all(np.diff(q) > 0) and q[-1] <= 1000
    with pytest.raises(ValueError, match="num_sample_steps"):
        D.skip_timesteps(10, 11)
    with pytest.raises(ValueError, match="kind"):
        D.skip_timesteps(10, 5, "cubic")


@pytest.mark.parametrize("r,s", [(1000, 980), (500, 100), (37, 1), (20, 0), (900, 3)])
def test_ddim_eta1_is_the_ddpm_posterior_with_skipped_steps(r, s):
    with jax.enable_x64(True):
        sch = D.make_schedule("linear", 1000, dtype=jnp.float64)
        abar = np.asarray(sch.alphas_cumprod)
        rng = np.random.default_rng(r + s)
        x0, x_r = rng.normal(size=(2, 4))
        eps_hat = (x_r - np.sqrt(abar[r]) * x0) / np.sqrt(1 - abar[r])  # the eps of this (x0, x_r)
        mean = np.asarray(D.ddim_step(x_r, eps_hat, abar[r], abar[s], 1.0, np.zeros(4)))
        sd = np.asarray(D.ddim_step(x_r, eps_hat, abar[r], abar[s], 1.0, np.ones(4))) - mean
        m_ref, v_ref = _bayes_posterior(abar[r], abar[s], x0, x_r)
        np.testing.assert_allclose(mean, m_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(sd**2, v_ref, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_vp_sample_over_all_steps_equals_ddpm_sample(variance):
    sch = D.make_schedule("linear", 100)
    gm = D.oracle_2d()
    eps_fn = gm.eps_fn(sch)
    a = D.ddpm_sample(eps_fn, sch, (256, 2), jax.random.key(0), variance)
    b = D.ddpm_skip_sample(eps_fn, sch, (256, 2), jax.random.key(0), 100, variance)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _gauss_eps_fn(sch, mu, sd):
    def f(x, t):
        i = jnp.round(t * sch.num_steps).astype(jnp.int32)
        a, b = sch.sqrt_alphas_cumprod[i][:, None], sch.sqrt_one_minus_alphas_cumprod[i][:, None]
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return f


@pytest.mark.parametrize("eta,variance", [(1.0, "lambda"), (1.0, "beta"), (0.0, "lambda")])
def test_skipped_sampler_moments_follow_bayes_chain(eta, variance):
    """Gaussian data and the exact eps make every step affine: propagate mean/variance through the
    Bayes-rule posterior (eta = 1) or the deterministic map (eta = 0) and compare with the samples."""
    mu, sd = 0.3, 0.4
    sch = D.make_schedule("linear", 1000)
    abar = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))])
    ts = D.skip_timesteps(1000, 10, "quadratic")
    x = np.asarray(D.vp_sample(_gauss_eps_fn(sch, mu, sd), sch, (40000, 1), jax.random.key(1), ts, eta=eta,
                               variance=variance))
    taus = np.concatenate([[0], ts])
    m, V = 0.0, 1.0
    for k in range(len(ts), 0, -1):
        r, s = taus[k], taus[k - 1]
        a, b2 = np.sqrt(abar[r]), 1 - abar[r]
        # x0_hat = A x + C (exact posterior mean of x0 for Gaussian data)
        A, C = a * sd**2 / (a**2 * sd**2 + b2), mu * b2 / (a**2 * sd**2 + b2)
        if eta == 1.0:
            # posterior mean is linear in (x0, x_r): evaluate it on x0 = 0, x_r = 1 and x0 = 1, x_r = 0
            c_x0 = _bayes_posterior(abar[r], abar[s], 1.0, 0.0)[0]
            c_xr, v = _bayes_posterior(abar[r], abar[s], 0.0, 1.0)
            if variance == "beta" and s > 0:
                v = 1 - abar[r] / abar[s]
            G, H = c_xr + c_x0 * A, c_x0 * C
        else:
            v = 0.0
            c_dir = np.sqrt(1 - abar[s]) / np.sqrt(b2)  # x_s = sqrt(abar_s) x0_hat + sqrt(1-abar_s) (x - a x0_hat)/b
            G = np.sqrt(abar[s]) * A + c_dir * (1 - a * A)
            H = np.sqrt(abar[s]) * C - c_dir * a * C
        m, V = G * m + H, G**2 * V + (v if s > 0 else 0.0)
    assert abs(x.mean() - m) < 5 * np.sqrt(V / x.size) + 1e-4
    assert abs(x.std() - np.sqrt(V)) < 5 * np.sqrt(V / (2 * x.size)) + 1e-4


def test_ode_orders_on_exact_gaussian_flow():
    """For N(mu, s^2) data the EDM flow is y(sig) = mu + (y0 - mu) sqrt(s^2 + sig^2) / sqrt(s^2 + sig0^2).
    Heun and DPM-Solver-2 are second order (error / 4 when the step halves), Euler first order."""
    with jax.enable_x64(True):
        mu, s = 0.3, 0.5
        gm = D.GaussianMixture(np.ones(1), np.full((1, 3), mu), np.array([s]))
        for proc in [D.EDM()]:  # the solvers work in EDM coordinates: other processes give identical errors
            x_unit = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
            errs = {k: [] for k in ("euler", "heun", "dpm2")}
            for n in (16, 32, 64):
                ts = D.time_grid(proc, n, sigma_min=0.01, sigma_max=20.0)
                s0, s1 = 20.0, 0.01
                x_init = proc.alpha(ts[0]) * s0 * x_unit
                y1 = mu + (s0 * x_unit - mu) * np.sqrt(s**2 + s1**2) / np.sqrt(s**2 + s0**2)
                for k in errs:
                    x = D.ode_sample(gm.denoise_fn(proc), proc, x_init, ts, k)
                    errs[k].append(float(jnp.max(jnp.abs(x / proc.alpha(ts[-1]) - y1))))
            for k, lo, hi in (("heun", 3.5, 5.0), ("dpm2", 3.5, 5.0), ("euler", 1.7, 2.3)):
                e = np.array(errs[k])
                ratios = e[:-1] / e[1:]
                assert np.all((ratios > lo) & (ratios < hi)), (k, e, ratios)
            ref = D.reference_ode_solve(gm.denoise_fn(proc), proc, x_init, ts[0], ts[-1], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(np.asarray(ref / proc.alpha(ts[-1])), np.asarray(y1), atol=1e-7)


@pytest.mark.parametrize("afs,proc_name", [(False, "ddpm-cosine"), (True, "vp")])
def test_amed_with_half_and_one_equals_dpm_solver_2(afs, proc_name):
    """AMED's step in EDM coordinates with r = 1/2, c = 1 against DPM-Solver-2 written in its own
    x-space exponential-integrator form, on VP processes (alpha != 1)."""
    with jax.enable_x64(True):
        gm = D.GaussianMixture(np.array([1.0, 2.0, 1.5]), np.array([[0.5, 0.2], [-0.4, 0.1], [0.0, -0.6]]),
                               np.array([0.1, 0.2, 0.15]))
        proc = D.make_schedule("cosine", 1000, dtype=jnp.float64) if proc_name == "ddpm-cosine" else D.ContinuousVP()
        ts = D.time_grid(proc, 4)
        x_init = proc.sigma(ts[0]) * jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)
        dpm2 = D.ode_sample(gm.denoise_fn(proc), proc, x_init, ts, "dpm2", afs=afs)
        amed = D.ode_sample(gm.denoise_fn(proc), proc, x_init, ts, "amed", afs=afs, r=0.5, c=1.0)
        amed_fn = D.ode_sample(gm.denoise_fn(proc), proc, x_init, ts, "amed", afs=afs,
                               rc_fn=lambda k, y, d, s0, s1: (jnp.full((64,), 0.5), jnp.ones(64)))
        np.testing.assert_allclose(np.asarray(amed), np.asarray(dpm2), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(amed_fn), np.asarray(dpm2), rtol=1e-9, atol=1e-9)
        # a different r really changes the result (the comparison can fail)
        other = D.ode_sample(gm.denoise_fn(proc), proc, x_init, ts, "amed", afs=afs, r=0.3, c=1.0)
        assert float(jnp.max(jnp.abs(other - dpm2))) > 1e-3


def _sliced_w2(x, y, key, n_proj=128):
    """Sliced 2-Wasserstein between equal-size samples: random unit directions, sorted projections."""
    v = jax.random.normal(key, (x.shape[1], n_proj))
    v = v / jnp.linalg.norm(v, axis=0)
    px, py = jnp.sort(x @ v, axis=0), jnp.sort(y @ v, axis=0)
    return float(jnp.sqrt(jnp.mean((px - py) ** 2)))


N = 3000


def _samplers():
    gm = D.oracle_2d()
    sch = D.make_schedule("linear", 1000)
    edm = D.EDM()
    eps = gm.eps_fn(sch)
    x_edm = lambda k: 80.0 * jax.random.normal(k, (N, 2))  # noqa: E731
    x_vp = lambda k: jax.random.normal(k, (N, 2))  # noqa: E731
    vp_ts = np.concatenate([[1.0], D.time_grid(sch, 40)[1:]])
    g200, g30 = D.time_grid(edm, 200), D.time_grid(edm, 30)
    return {
        "ddpm_beta_1000": lambda k: D.ddpm_sample(eps, sch, (N, 2), k, "beta"),
        "ddpm_beta_tilde_100": lambda k: D.ddpm_skip_sample(eps, sch, (N, 2), k, 100, "beta_tilde"),
        "ddim_eta0_50_quadratic": lambda k: D.ddim_sample(eps, sch, (N, 2), k, 50, eta=0.0, skip="quadratic"),
        "ddim_eta1_100": lambda k: D.ddim_sample(eps, sch, (N, 2), k, 100, eta=1.0),
        "pc_100": lambda k: D.pc_sample(eps, sch, (N, 2), k, 100),
        "euler_edm_200": lambda k: D.ode_sample(gm.denoise_fn(edm), edm, x_edm(k), g200, "euler"),
        "heun_edm_30": lambda k: D.ode_sample(gm.denoise_fn(edm), edm, x_edm(k), g30, "heun"),
        "dpm2_vp_40": lambda k: D.ode_sample(gm.denoise_fn(sch), sch, x_vp(k), vp_ts, "dpm2"),
        "amed_edm_30_afs": lambda k: D.ode_sample(gm.denoise_fn(edm), edm, x_edm(k), g30, "amed",
                                                  afs=True, r=0.4, c=1.0),
    }


@pytest.mark.parametrize("name", list(_samplers()))
def test_samplers_with_the_oracle_reproduce_the_mixture(name):
    gm = D.oracle_2d()
    x = jax.jit(_samplers()[name])(jax.random.key(11))
    fresh = gm.sample(jax.random.key(12), N)
    baseline = _sliced_w2(gm.sample(jax.random.key(13), N), fresh, jax.random.key(14))
    sw = _sliced_w2(x, fresh, jax.random.key(14))
    assert sw < 1.6 * baseline + 0.005, (name, sw, baseline)


def test_sliced_w2_detects_a_wrong_distribution():
    """Negative control for the threshold above: the mixture with stds x 1.5 fails it."""
    gm = D.oracle_2d()
    wrong = D.GaussianMixture(gm.weights, gm.means, 1.5 * gm.stds)
    fresh = gm.sample(jax.random.key(12), N)
    baseline = _sliced_w2(gm.sample(jax.random.key(13), N), fresh, jax.random.key(14))
    assert _sliced_w2(wrong.sample(jax.random.key(15), N), fresh, jax.random.key(14)) > 1.6 * baseline + 0.005


def test_bad_sampler_arguments():
    sch = D.make_schedule("linear", 10)
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="solver"):
        D.ode_sample(f, sch, jnp.ones((2, 2)), np.array([0.9, 0.1]), "rk4")
    with pytest.raises(ValueError, match="variance"):
        D.vp_sample(f, sch, (2, 2), jax.random.key(0), [1, 5], variance=np.ones(3))
    with pytest.raises(ValueError, match="timesteps"):
        D.vp_sample(f, sch, (2, 2), jax.random.key(0), [5, 5])
    with pytest.raises(ValueError, match="eta"):
        D.vp_sample(f, sch, (2, 2), jax.random.key(0), [1, 5], eta=-1.0)
    with pytest.raises(ValueError, match="r must"):
        D.ode_sample(f, sch, jnp.ones((2, 2)), np.array([0.9, 0.5, 0.1]), "amed", r=np.ones(3))
    with pytest.raises(ValueError, match="kind"):
        D.time_grid(sch, 5, kind="cosine")
