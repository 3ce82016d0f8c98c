"""Bad library input raises ValueError naming the argument, its value and what is accepted (issue 12).

One table of cases, each a call with one bad argument and the key words its message must contain; then
valid inputs at the edge of each range, and the jit behaviour: unchecked traced values do what the
docstrings say, `validate=True` under `checkify` catches them.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import checkify

from jaxgen import diffusion as D
from jaxgen.metrics import codebook_usage, mmd, sliced_wasserstein
from jaxgen.optim import lion
from jaxgen.quant import FSQ, VectorQuantizer, code_counts
from jaxgen.ssm import discretize, discretize_diag, discretize_legs, hippo, legs_step

NAN, INF = float("nan"), float("inf")
Q = FSQ((8, 5, 5))  # codebook_size 200; even L = 8 has codes {-4..3} / 4
A, B = hippo.legs(4)
SCH = D.make_schedule("linear", 10)
KEY = jax.random.key(0)
GM = D.oracle_gaussian()


def eps0(x, t):
    return jnp.zeros_like(x)


def ode(ts, **kw):
    return D.ode_sample(GM.denoise_fn(SCH), SCH, jnp.ones((2, 1)), ts, **kw)


def gm(w=(1.0, 1.0), m=((0.0, 0.0), (1.0, 1.0)), s=(0.5, 0.5)):
    return D.GaussianMixture(np.asarray(w), np.asarray(m), np.asarray(s))


# (id, call, words the message must contain). Every case raises ValueError.
CASES = [
    # --- FSQ
    ("fsq_levels_int", lambda: FSQ(5), ["levels", "integers >= 2", "5"]),
    ("fsq_levels_one", lambda: FSQ([8, 1]), ["levels", "integers >= 2", "entry 1"]),
    ("fsq_levels_float", lambda: FSQ([8, 2.5]), ["levels", "integers >= 2", "2.5"]),
    ("fsq_levels_str", lambda: FSQ(["a", 3]), ["levels", "'a'"]),
    ("fsq_eps_nan", lambda: FSQ([3], eps=NAN), ["eps", "[0, 1)", "nan"]),
    ("fsq_index_too_big", lambda: Q.indices_to_codes([3, 200]), ["indices", "[0, codebook_size = 200)", "200"]),
    ("fsq_index_negative", lambda: Q.indices_to_codes(jnp.array([-1])), ["indices", "[0, codebook_size = 200)", "-1"]),
    ("fsq_index_float", lambda: Q.indices_to_codes(jnp.array([1.0])), ["indices", "integer", "float32"]),
    ("fsq_code_nan", lambda: Q.codes_to_indices(jnp.array([[NAN, 0.0, 0.0]])), ["codes", "FSQ grid", "nan"]),
    ("fsq_code_off_grid", lambda: Q.codes_to_indices(np.array([[0.1, 0.0, 0.0]])), ["codes", "FSQ grid", "0.1"]),
    ("fsq_code_outside", lambda: Q.codes_to_indices(jnp.array([[1.0, 0.0, 0.0]])), ["codes", "ceil(L/2) - 1", "1.0"]),
    ("fsq_z_nan", lambda: Q(jnp.array([[0.3, NAN, 0.0]])), ["z", "NaN", "nan"]),
    ("fsq_codes_dim", lambda: Q.codes_to_indices(jnp.zeros((2, 4))), ["codes.shape[-1]", "len(levels) = 3", "(2, 4)"]),
    # --- SSM
    ("disc_step_negative", lambda: discretize(A, B, -0.5), ["step", "> 0", "-0.5"]),
    ("disc_step_zero", lambda: discretize(A, B, 0.0, "zoh"), ["step", "> 0", "0.0"]),
    ("disc_step_nan", lambda: discretize(A, B, NAN), ["step", "finite", "nan"]),
    ("disc_step_jax", lambda: discretize(jnp.asarray(A), jnp.asarray(B), jnp.asarray(-0.25)), ["step", "> 0", "-0.25"]),
    ("disc_step_str", lambda: discretize(A, B, "abc"), ["step", "> 0", "'abc'"]),
    ("disc_A_nan", lambda: discretize(A * NAN, B, 0.1), ["A", "finite", "nan"]),
    ("disc_diag_shapes", lambda: discretize_diag(-np.ones(3), np.ones(4), 0.1),
     ["Lambda", "B", "step", "(3,)", "(4,)"]),
    ("disc_diag_step", lambda: discretize_diag(-np.ones((2, 3)), np.ones(3), np.array([[0.1], [-0.1]])),
     ["step", "> 0", "-0.1", "(1, 0)"]),
    ("disc_gbt_alpha", lambda: discretize(A, B, 0.1, "gbt", alpha="abc"), ["alpha", "[0, 1]", "'abc'"]),
    ("disc_diag_B_shape", lambda: discretize(-np.ones(3), np.ones((4, 2)), 0.1), ["B", "N=3", "(4, 2)"]),
    ("legs_step_k", lambda: legs_step(A, B, 1.5), ["k", "integer >= 1", "1.5"]),
    ("discretize_legs_L", lambda: discretize_legs(A, B, 0), ["L", "integer >= 1", "0"]),
    ("legt_theta_str", lambda: hippo.legt(8, theta="abc"), ["theta", "> 0", "'abc'"]),
    ("legt_theta_zero", lambda: hippo.legt(8, theta=0), ["theta", "> 0", "0"]),
    ("legs_N_zero", lambda: hippo.legs(0), ["N", "integer >= 1", "0"]),
    ("legs_N_str", lambda: hippo.legs("8"), ["N", "integer >= 1", "'8'"]),
    ("transition_kwarg", lambda: hippo.transition("legs", 4, theta=2.0), ["legs", "theta", "keyword"]),
    ("nplr_measure", lambda: hippo.nplr("legx", 4), ["measure", "legs", "'legx'"]),
    # --- diffusion samplers
    ("ode_ts_increasing", lambda: ode([0.1, 0.5, 0.9]), ["ts", "strictly decreasing", "[0.1, 0.5, 0.9]"]),
    ("ode_ts_zero", lambda: ode([0.9, 0.5, 0.0]), ["ts", "> 0", "0.0"]),
    ("ode_ts_short", lambda: ode([0.9]), ["ts", "at least two", "(1,)"]),
    ("ode_amed_r", lambda: ode([0.9, 0.5, 0.1], solver="amed", r=1.5), ["r", "[0, 1]", "1.5"]),
    ("ddim_skip", lambda: D.ddim_sample(eps0, SCH, (2, 2), KEY, 5, skip="cubic"),
     ["skip", "'uniform'", "'quadratic'", "'cubic'"]),
    ("ddpm_skip_skip", lambda: D.ddpm_skip_sample(eps0, SCH, (2, 2), KEY, 5, skip="cubic"), ["skip", "'cubic'"]),
    ("pc_skip", lambda: D.pc_sample(eps0, SCH, (2, 2), KEY, 5, skip="cubic"), ["skip", "'cubic'"]),
    ("ddim_K_zero", lambda: D.ddim_sample(eps0, SCH, (2, 2), KEY, 0), ["num_sample_steps", "[1, 10]", "0"]),
    ("ddim_K_float", lambda: D.ddim_sample(eps0, SCH, (2, 2), KEY, 2.5), ["num_sample_steps", "integer", "2.5"]),
    ("ddim_eta_nan", lambda: D.ddim_sample(eps0, SCH, (2, 2), KEY, 5, eta=NAN), ["eta", ">= 0", "nan"]),
    ("ddim_shape", lambda: D.ddim_sample(eps0, SCH, (2, -2), KEY, 5), ["shape", "integers >= 1", "(2, -2)"]),
    ("vp_variance_negative", lambda: D.vp_sample(eps0, SCH, (2, 2), KEY, [1, 5], variance=np.array([0.1, -1.0])),
     ["variance", ">= 0", "-1.0"]),
    ("vp_x_init_shape", lambda: D.vp_sample(eps0, SCH, (2, 2), KEY, [1, 5], x_init=jnp.ones((3, 2))),
     ["x_init", "(2, 2)", "(3, 2)"]),
    ("vp_clip_nan", lambda: D.vp_sample(eps0, SCH, (2, 2), KEY, [1, 5], clip_x0=NAN), ["clip_x0", "None or", "nan"]),
    ("pc_num_corrector", lambda: D.pc_sample(eps0, SCH, (2, 2), KEY, 5, num_corrector=1.5),
     ["num_corrector", "integer >= 0", "1.5"]),
    ("pc_snr", lambda: D.pc_sample(eps0, SCH, (2, 2), KEY, 5, snr=0.0), ["snr", "> 0", "0.0"]),
    ("edm_rho", lambda: D.edm_sigmas(5, rho=0), ["rho", "> 0", "0"]),
    ("edm_sigma_order", lambda: D.edm_sigmas(5, sigma_min=0.002, sigma_max=0.001),
     ["sigma_max", "> sigma_min", "0.001"]),
    ("time_grid_n", lambda: D.time_grid(SCH, 0), ["num_intervals", "integer >= 1", "0"]),
    ("ode_nfe_solver", lambda: D.ode_nfe("rk4", 5), ["solver", "'heun'", "'rk4'"]),
    ("reference_order", lambda: D.reference_ode_solve(GM.denoise_fn(SCH), SCH, jnp.ones((2, 1)), 0.1, 0.9),
     ["t_start", "> t_end = 0.9", "0.1"]),
    # --- Gaussian-mixture oracle
    ("gm_means_nan", lambda: gm(m=((NAN, 0.0), (1.0, 1.0))), ["means", "finite", "nan"]),
    ("gm_stds_inf", lambda: gm(s=(0.5, INF)), ["stds", "finite and > 0", "inf"]),
    ("gm_stds_zero", lambda: gm(s=(0.5, 0.0)), ["stds", "> 0", "0.0"]),
    ("gm_weights_negative", lambda: gm(w=(1.0, -1.0)), ["weights", "> 0", "-1.0"]),
    ("gm_weights_nan", lambda: gm(w=(1.0, NAN)), ["weights", "finite", "nan"]),
    ("gm_means_shape", lambda: gm(m=(0.0, 1.0)), ["means", "[K, D]", "(2,)"]),
    ("gm_sample_n", lambda: GM.sample(KEY, -1), ["n", "integer >= 0", "-1"]),
    # --- schedules and processes
    ("linear_betas_zero", lambda: D.linear_betas(0), ["num_steps", "integer >= 1", "0"]),
    ("linear_betas_end", lambda: D.linear_betas(10, beta_end=1.5), ["beta_end", "(0, 1)", "1.5"]),
    ("cosine_betas_zero", lambda: D.cosine_betas(0), ["num_steps", "integer >= 1", "0"]),
    ("cosine_max_beta", lambda: D.cosine_betas(10, max_beta=1.0), ["max_beta", "(0, 1)", "1.0"]),
    ("make_schedule_bool", lambda: D.make_schedule("linear", True), ["num_steps", "integer >= 1", "True"]),
    ("from_betas", lambda: D.DiscreteVP.from_betas(np.array([0.1, 1.2])), ["betas", "(0, 1)", "1.2"]),
    ("ve_sigma_min", lambda: D.VE(sigma_min=-1.0), ["sigma_min", "> 0", "-1.0"]),
    ("ve_order", lambda: D.VE(sigma_min=1.0, sigma_max=0.5), ["sigma_max", "> sigma_min = 1.0", "0.5"]),
    ("vp_beta_min", lambda: D.ContinuousVP(beta_min=-1.0), ["beta_min", ">= 0", "-1.0"]),
    ("edm_sigma_max", lambda: D.EDM(sigma_max=0.0), ["sigma_max", "> 0", "0.0"]),
    ("make_process_kwarg", lambda: D.make_process("edm", sigma_min=1.0), ["'edm'", "sigma_max", "sigma_min"]),
    ("q_sample_i", lambda: D.q_sample(SCH, jnp.ones((2, 2)), jnp.array([3, 11]), jnp.ones((2, 2))),
     ["i", "[0, 10]", "11"]),
    ("posterior_i", lambda: D.ddpm_posterior(SCH, jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.array([0, 1])),
     ["i", "[1, 10]", "0"]),
    ("denoiser_clip", lambda: D.denoiser_from_eps(eps0, SCH, clip_x0=-1.0), ["clip_x0", "> 0", "-1.0"]),
    ("ddpm_sample_shape", lambda: D.ddpm_sample(eps0, SCH, (0, 2), KEY), ["shape", "integers >= 1", "(0, 2)"]),
    # --- Lion
    ("lion_lr_nan", lambda: lion(NAN), ["learning_rate", "> 0", "nan"]),
    ("lion_lr_zero", lambda: lion(0.0), ["learning_rate", "> 0", "0.0"]),
    ("lion_lr_negative", lambda: lion(-1e-3), ["learning_rate", "> 0", "-0.001"]),
    ("lion_lr_str", lambda: lion("abc"), ["learning_rate", "schedule", "'abc'"]),
    ("lion_b1", lambda: lion(1e-3, b1=1.5), ["b1", "[0, 1)", "1.5"]),
    ("lion_b1_jax", lambda: lion(1e-3, b1=jnp.array(1.5)), ["b1", "[0, 1)", "1.5"]),
    ("lion_b2_one", lambda: lion(1e-3, b2=1.0), ["b2", "[0, 1)", "1.0"]),
    ("lion_b2_jax_negative", lambda: lion(1e-3, b2=jnp.asarray(-0.5)), ["b2", "[0, 1)", "-0.5"]),
    ("lion_wd_nan", lambda: lion(1e-3, weight_decay=NAN), ["weight_decay", ">= 0", "nan"]),
    ("lion_mu_dtype", lambda: lion(1e-3, mu_dtype="abc"), ["mu_dtype", "floating dtype", "'abc'"]),
    # --- VQ and metrics
    ("vq_num_codes", lambda: VectorQuantizer(2.5, 4, rngs=nnx.Rngs(0)), ["num_codes", "integer", "2.5"]),
    ("vq_beta_nan", lambda: VectorQuantizer(8, 4, beta=NAN, rngs=nnx.Rngs(0)), ["beta", ">= 0", "nan"]),
    ("vq_eps_nan", lambda: VectorQuantizer(8, 4, eps=NAN, rngs=nnx.Rngs(0)), ["eps", ">= 0", "nan"]),
    ("code_counts_range", lambda: code_counts(jnp.array([0, 8]), 8), ["indices", "[0, num_codes = 8)", "8"]),
    ("codebook_usage_range", lambda: codebook_usage(jnp.array([0, -1]), 8),
     ["indices", "[0, codebook_size = 8)", "-1"]),
    ("sliced_w2_projections", lambda: sliced_wasserstein(jnp.ones((4, 2)), jnp.ones((4, 2)), KEY, 2.5),
     ["num_projections", "integer >= 1", "2.5"]),
    ("mmd_bandwidth", lambda: mmd(jnp.ones((4, 2)), jnp.ones((4, 2)), bandwidths=(1.0, -1.0)),
     ["bandwidths", "> 0", "-1.0"]),
]


def test_table_has_enough_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("call,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_named_valueerror(call, words):
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"
    assert "\n" not in msg  # one line


def test_ddim_skip_message_names_skip_not_kind():
    with pytest.raises(ValueError) as info:
        D.ddim_sample(eps0, SCH, (2, 2), KEY, 5, skip="cubic")
    assert str(info.value).startswith("skip must be") and "kind" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# Valid inputs at the edges still work
# ----------------------------------------------------------------------------------------------


def test_valid_boundary_inputs():
    # FSQ: every index of the codebook round-trips, also through bf16 codes; extreme z saturates
    idx = jnp.arange(Q.codebook_size)
    codes = Q.indices_to_codes(idx)
    np.testing.assert_array_equal(Q.codes_to_indices(codes), idx)
    np.testing.assert_array_equal(Q.codes_to_indices(codes.astype(jnp.bfloat16)), idx)
    np.testing.assert_array_equal(Q.indices_to_codes(np.array([0, 199])), codes[jnp.array([0, 199])])
    z_q, i = Q(jnp.array([[INF, -INF, 0.0]]))
    np.testing.assert_allclose(z_q, [[0.75, -1.0, 0.0]])
    assert FSQ([2, 2]).codebook_size == 4 and FSQ([8.0, 5]).levels == (8, 5) and FSQ([3], eps=0).eps == 0.0
    # discretize: a tiny positive step is nearly the identity; the ZOH of a diagonal A equals the dense one
    Ab, Bb = discretize(A, B, 1e-12, "bilinear")
    np.testing.assert_allclose(Ab, np.eye(4), atol=1e-10)
    lam = -np.arange(1.0, 4.0)
    Ab_d, Bb_d = discretize_diag(lam, np.ones(3), np.array(0.1), "zoh")
    Ab_full, Bb_full = discretize(np.diag(lam), np.ones(3), 0.1, "zoh")
    np.testing.assert_allclose(Ab_d, np.diag(Ab_full), rtol=1e-12)
    np.testing.assert_allclose(Bb_d, Bb_full, rtol=1e-12)
    assert discretize(A, B, 0.1, "gbt", alpha=1)[0].shape == (4, 4)
    assert legs_step(A, B, np.int64(1), "zoh")[0].shape == (4, 4)
    assert hippo.legt(2, theta=1e-3)[0].shape == (2, 2) and hippo.legs(np.int64(1))[0].shape == (1, 1)
    # samplers: smallest step counts, a two-point decreasing grid, eta = 0, r at both ends
    assert D.skip_timesteps(10, 1).tolist() == [1] and D.skip_timesteps(10, 10).tolist() == list(range(1, 11))
    assert ode([0.9, 1e-3]).shape == (2, 1)
    for r in (0.0, 1.0):
        assert ode([0.9, 0.5], solver="amed", r=r).shape == (2, 1)
    assert D.edm_sigmas(1, sigma_min=0.5, sigma_max=0.5000001, rho=0.01).shape == (2,)
    assert D.ode_nfe("euler", 1) == 1
    # schedules: one step, betas just inside (0, 1), constant-beta VP, weights that need normalising
    assert D.linear_betas(1).tolist() == [1e-4]
    assert D.make_schedule("cosine", 1).num_steps == 1
    assert D.DiscreteVP.from_betas(np.array([1e-12, 1 - 1e-12])).num_steps == 2
    assert D.ContinuousVP(beta_min=0.0, beta_max=1e-9).beta_max == 1e-9
    assert D.ContinuousVP(beta_min=1.0, beta_max=1.0).beta_max == 1.0
    mix = gm(w=(1.0, 3.0), s=(1e-6, 1e6))
    np.testing.assert_allclose(mix.weights, [0.25, 0.75])
    assert D.q_sample(SCH, jnp.ones((2, 1)), jnp.array([0, 10]), jnp.zeros((2, 1))).shape == (2, 1)
    assert D.ddpm_posterior(SCH, jnp.ones((2, 1)), jnp.ones((2, 1)), jnp.array([1, 10]))[0].shape == (2, 1)
    # Lion: b1 = 0 (signSGD) and b2 just below 1, a tiny learning rate, jax-array hyperparameters, a schedule
    for tx in (lion(1e-12, b1=0.0, b2=0.999999), lion(jnp.asarray(1e-3), b1=jnp.asarray(0.0)),
               lion(lambda step: 1e-3, weight_decay=0.0, mu_dtype=jnp.bfloat16)):
        params = {"w": jnp.ones(3)}
        upd, _ = tx.update({"w": jnp.array([1.0, -1.0, 0.0])}, tx.init(params), params)
        assert np.all(np.isfinite(upd["w"]))
    # metrics: the last valid index counts
    assert float(codebook_usage(jnp.array([0, 7]), 8)) == 0.25
    np.testing.assert_array_equal(code_counts(np.array([0, 7, 7]), 8)[jnp.array([0, 7])], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Under jit: unchecked by default (documented behaviour), checked with validate=True + checkify
# ----------------------------------------------------------------------------------------------


def test_fsq_under_jit_wraps_and_checkify_catches():
    bad = jnp.array([3, 200, -1])
    # documented: traced indices are not checked and wrap modulo codebook_size
    out = jax.jit(Q.indices_to_codes)(bad)
    np.testing.assert_array_equal(out, Q.indices_to_codes(jnp.array([3, 0, 199])))
    checked = jax.jit(checkify.checkify(lambda i: Q.indices_to_codes(i, validate=True)))
    err, _ = checked(bad)
    msg = r"indices must be integers in \[0, codebook_size = 200\) .*got 200 at flat index 1"
    with pytest.raises(ValueError, match=msg):
        err.throw()
    err, good = checked(jnp.array([3, 199]))
    err.throw()  # no error for valid indices
    np.testing.assert_array_equal(good, Q.indices_to_codes(jnp.array([3, 199])))
    # codes: NaN under jit is unchecked by default, caught with validate=True
    nan_codes = jnp.array([[NAN, 0.0, 0.0]])
    assert jax.jit(Q.codes_to_indices)(nan_codes).shape == (1,)
    err, _ = jax.jit(checkify.checkify(lambda c: Q.codes_to_indices(c, validate=True)))(nan_codes)
    with pytest.raises(ValueError, match="codes must be on the FSQ grid"):
        err.throw()
    # validate=True under a plain jit (no checkify) is refused at trace time, naming checkify
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(lambda i: Q.indices_to_codes(i, validate=True))(bad)
    # validate=False skips the eager check too
    np.testing.assert_array_equal(Q.indices_to_codes(bad, validate=False), out)
    # the quantiser itself still jits, NaN-free
    z = jax.random.normal(KEY, (5, 3))
    zq_jit, idx_jit = jax.jit(Q.__call__)(z)
    zq, idx = Q(z)
    np.testing.assert_array_equal(idx_jit, idx)


def test_ode_sample_under_jit_and_checkify():
    rev = jnp.array([0.1, 0.5, 0.9])
    run = jax.jit(lambda ts: ode(ts))
    assert run(jnp.array([0.9, 0.5, 0.1])).shape == (2, 1)
    assert run(rev).shape == (2, 1)  # documented: a traced grid is not checked
    checked = jax.jit(checkify.checkify(lambda ts: ode(ts, validate=True)))
    err, _ = checked(rev)
    with pytest.raises(ValueError, match="ts must be finite, > 0 and strictly decreasing"):
        err.throw()
    err, x = checked(jnp.array([0.9, 0.5, 0.1]))
    err.throw()
    np.testing.assert_allclose(x, ode([0.9, 0.5, 0.1]), rtol=1e-6)


def test_discretize_and_q_sample_under_jit():
    # traced steps: unchecked by default, so a layer's exp(log_step) path stays a plain jit
    f = jax.jit(lambda d: discretize(jnp.asarray(A), jnp.asarray(B), d))
    np.testing.assert_allclose(f(0.1)[0], discretize(A, B, 0.1)[0], rtol=1e-5, atol=1e-6)
    g = jax.jit(checkify.checkify(lambda d: discretize_diag(-jnp.ones(3), jnp.ones(3), d, validate=True)))
    err, _ = g(jnp.array([0.1, -0.1, 0.2]))
    with pytest.raises(ValueError, match="step must be a finite number > 0"):
        err.throw()
    # q_sample: traced i > T is clamped to T (documented), checkify reports it
    x0, eps = jnp.ones((2, 1)), jnp.zeros((2, 1))
    out = jax.jit(lambda i: D.q_sample(SCH, x0, i, eps))(jnp.array([10, 12]))
    np.testing.assert_allclose(out[1], out[0])
    err, _ = jax.jit(checkify.checkify(lambda i: D.q_sample(SCH, x0, i, eps, validate=True)))(jnp.array([10, 12]))
    with pytest.raises(ValueError, match=r"i must be integer steps in \[0, 10\], got 12"):
        err.throw()


def test_gaussian_mixture_and_lion_jit():
    # a validated mixture passes through jit as a pytree; one Gaussian N(mu, s^2) has the closed form
    # E[x0 | x] = mu + a s^2 / (a^2 s^2 + sigma^2) (x - a mu)
    mix = D.oracle_gaussian(mu=0.3, std=0.5, dim=2)
    x = np.array([[1.0, -2.0], [0.0, 0.5]], np.float32)
    ref = 0.3 + 0.5 * 0.25 / (0.25 * 0.25 + 0.25) * (x - 0.5 * 0.3)
    np.testing.assert_allclose(jax.jit(lambda g, x: g.denoise(x, 0.5, 0.5))(mix, x), ref, rtol=1e-5, atol=1e-6)
    # hyperparameters injected as arrays are traced under jit: the factory runs without host checks
    tx = optax.inject_hyperparams(lion)(learning_rate=1e-3, b1=0.9, b2=0.99)
    params = {"w": jnp.ones(3)}
    step = jax.jit(lambda p, s: tx.update({"w": jnp.ones(3)}, s, p))
    upd, _ = step(params, tx.init(params))
    np.testing.assert_allclose(upd["w"], -1e-3 * np.ones(3), rtol=1e-6)
    assert math.isclose(float(tx.init(params).hyperparams["b2"]), 0.99, rel_tol=1e-6)
