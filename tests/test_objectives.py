"""Parameterisations, the one diffusion loss and the sampler dispatch against closed forms and direct calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion import objectives as O
from jaxgen.diffusion import sampling as S

PROCESSES = {
    "ddpm": lambda: D.make_schedule("linear", 100),
    "vp": lambda: D.ContinuousVP("linear"),
    "ve": lambda: D.VE(),
    "edm": lambda: D.EDM(),
    "rf": lambda: D.RectifiedFlow(),
}


def _net(x, t):  # any smooth function of (x, t) serves as a network
    return jnp.tanh(0.7 * x + jnp.sin(3.0 * t)[:, None] - 0.2)


def _point(process, key, batch=64, dim=3):
    k0, ke, kt = jax.random.split(key, 3)
    x0 = jax.random.normal(k0, (batch, dim))
    eps = jax.random.normal(ke, (batch, dim))
    t = jax.random.uniform(kt, (batch,), minval=0.05, maxval=0.95)
    return x0, eps, t, process.marginal(x0, t, eps)


def test_l_simple_is_ddpm_loss_bitwise():
    schedule = PROCESSES["ddpm"]()
    x0 = jax.random.normal(jax.random.key(0), (32, 4))
    key = jax.random.key(1)
    got = O.diffusion_loss(_net, O.Parameterization(schedule, "eps"), x0, key)
    assert got == D.ddpm_loss(_net, schedule, x0, key)


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize("prediction", O.PREDICTIONS)
def test_target_gives_back_x0_and_error_scale_converts_errors(process, prediction):
    """D(target) = x0 exactly, and |D(target + delta) - x0| = r(t) |delta| (D is affine in the output)."""
    with jax.enable_x64(True):
        p = PROCESSES[process]()
        param = O.Parameterization(p, prediction, sigma_data=0.7)
        x0, eps, t, x = _point(p, jax.random.key(2))
        target = param.target(x0, eps, x, t)
        tol = 1e-6 if process == "ddpm" else 1e-9  # the discrete VP keeps float32 coefficient tables
        np.testing.assert_allclose(param.to_x0(target, x, t), x0, rtol=tol, atol=tol)
        delta = jax.random.normal(jax.random.key(3), x.shape)
        moved = param.to_x0(target + delta, x, t) - x0
        np.testing.assert_allclose(jnp.abs(moved), param.error_scale(t)[:, None] * jnp.abs(delta), rtol=100 * tol)


def _obvious_draw(process, key, x0, t_min=1e-3):
    """The (t, eps, x_t) diffusion_loss draws for continuous processes with uniform times."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],), jnp.float32, t_min, 1.0)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    return t, eps, process.marginal(x0, t, eps)


@pytest.mark.parametrize("prediction", O.PREDICTIONS)
def test_snr_weighting_is_the_eps_mse_whatever_the_prediction(prediction):
    p = D.ContinuousVP("linear")
    param = O.Parameterization(p, prediction)
    x0 = jax.random.normal(jax.random.key(4), (128, 2))
    key = jax.random.key(5)
    t, eps, x = _obvious_draw(p, key, x0)
    eps_hat = O.model_fns(_net, param).eps(x, t)
    expected = jnp.mean(jnp.mean((eps_hat - eps) ** 2, axis=1))
    got = O.diffusion_loss(_net, param, x0, key, weighting="snr")
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_edm_loss_is_lambda_weighted_x0_error():
    """Karras et al. (2022) eq. 8: E lambda(sigma) |D - x0|^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2; with the
    'edm' prediction this is the plain MSE on F ('uniform') and also the 'edm' weighting."""
    p, sd = D.EDM(), 0.5
    param = O.Parameterization(p, "edm", sd)
    x0 = 0.5 * jax.random.normal(jax.random.key(6), (256, 2))
    key = jax.random.key(7)
    t, _, x = _obvious_draw(p, key, x0)
    sigma = p.sigma(t)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    d = O.model_fns(_net, param).denoise(x, t)
    expected = jnp.mean(lam * jnp.mean((d - x0) ** 2, axis=1))
    for weighting in ("uniform", "edm"):
        np.testing.assert_allclose(O.diffusion_loss(_net, param, x0, key, weighting=weighting), expected, rtol=2e-4)


def test_min_snr_caps_the_eps_mse_weight():
    p = D.ContinuousVP("linear")
    param = O.Parameterization(p, "x0")
    t = jnp.linspace(0.01, 0.99, 50)
    snr = np.asarray((p.alpha(t) / p.sigma(t)) ** 2)
    np.testing.assert_allclose(O.loss_weight("min_snr", param, t, gamma=5.0), np.minimum(snr, 5.0), rtol=1e-5)
    np.testing.assert_allclose(O.loss_weight("snr", param, t), snr, rtol=1e-5)


def test_lognormal_times_give_edm_noise_levels():
    """log sigma(t) ~ N(P_mean, P_std^2) for the lognormal training times (no clipping at t_min = 1e-6)."""
    for p in (D.EDM(), D.RectifiedFlow()):
        t = O.sample_times(jax.random.key(8), p, 20000, "lognormal", t_min=1e-6)
        log_sigma = np.log(np.asarray(p.sigma_ratio(t), np.float64))
        assert abs(log_sigma.mean() + 1.2) < 0.04 and abs(log_sigma.std() - 1.2) < 0.04
    t = O.sample_times(jax.random.key(9), D.RectifiedFlow(), 20000, "logit_normal", t_min=0.0)
    logit = np.log(np.asarray(t, np.float64) / (1 - np.asarray(t, np.float64)))
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1.0) < 0.03


def test_sampler_dispatch_is_the_direct_solver_call():
    gm = D.oracle_2d()
    rf, vp = D.RectifiedFlow(), D.make_schedule("linear", 50)
    key = jax.random.key(10)
    shape = (256, 2)
    fns = O.model_fns(gm.denoise_fn(rf), O.Parameterization(rf, "x0"))
    x1 = jax.random.normal(key, shape)
    np.testing.assert_array_equal(S.sample(fns, rf, shape, key, S.SamplerSpec("flow_heun", 8)),
                                  D.flow_solve(fns.velocity, x1, D.uniform_grid(8), "heun"))
    fns = O.model_fns(gm.eps_fn(vp), O.Parameterization(vp, "eps"))
    spec = S.SamplerSpec("heun", 7, clip_x0=None)
    ts, afs = S.pf_ode_grid(vp, 7, "heun")
    x_init = vp.sigma(jnp.asarray(ts[0], jnp.float32)) * jax.random.normal(key, shape)
    np.testing.assert_array_equal(S.sample(fns, vp, shape, key, spec),
                                  D.ode_sample(fns.denoise, vp, x_init, ts, "heun", afs=afs))
    np.testing.assert_array_equal(S.sample(fns, vp, shape, key, S.SamplerSpec("ddim", 5, clip_x0=None)),
                                  D.ddim_sample(fns.eps, vp, shape, key, 5, eta=0.0))


def test_per_example_keys_make_samples_independent_of_the_batch():
    vp = D.make_schedule("linear", 50)
    fns = O.model_fns(D.oracle_2d().eps_fn(vp), O.Parameterization(vp, "eps"))
    keys = jax.random.split(jax.random.key(11), 4)
    spec = S.SamplerSpec("ddpm", 5)
    four = S.sample_per_example(fns, vp, (2,), keys, spec)
    two = S.sample_per_example(fns, vp, (2,), keys[:2], spec)
    np.testing.assert_allclose(four[:2], two, rtol=1e-6, atol=1e-6)
    assert not np.allclose(four[0], four[1])


def test_bad_settings_name_what_is_accepted():
    with pytest.raises(ValueError, match="prediction must be one of"):
        O.Parameterization(D.EDM(), "score")
    with pytest.raises(ValueError, match="weighting must be one of"):
        O.loss_weight("p2", O.Parameterization(D.EDM()), jnp.ones(2))
    with pytest.raises(ValueError, match="time sampling must be one of"):
        O.sample_times(jax.random.key(0), D.EDM(), 4, "beta")
    with pytest.raises(ValueError, match="needs the discrete VP"):
        S.SamplerSpec("pc", 10).check(D.EDM())
