"""SiD: the generator gradient for Gaussians in closed form, its zero at the teacher, a 1-D toy that converges,
and skipped non-finite updates.

Toy: teacher N(MU, S^2), generator x_g = m + g z, fake denoiser of N(m_f, g_f^2). At a fixed sigma, with
a = S^2/(S^2 + sigma^2), b = g_f^2/(g_f^2 + sigma^2) and the fake at the generator (m_f, g_f) = (m, g), the
unnormalised SiD loss has the expected gradient (Gauss-Hermite over z and n is exact: degree 2)
    dE/dm = (1 - a)(MU - m) [(1 - 2 alpha)(a - b) + a - 1],   dE/dg = 2 g (a - b) [(1 - alpha) a + alpha b - 1].
For alpha <= 1 the bracket of dE/dg is negative at every sigma, so g always moves towards S; for alpha > 1 it
turns positive where g >> sigma >> S (a generator much wider than the teacher can widen further).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion import sid

MU, S = 1.0, 0.5
SIGMA_INIT = 2.5


def gen_apply(p, x_in, key):
    return p["m"] + p["g"] * x_in / SIGMA_INIT


def gaussian_denoiser(m, g):
    return lambda x, s: m + (g**2 / (g**2 + s[:, None] ** 2)) * (x - m)


def fake_apply(p, x, s, key):
    return gaussian_denoiser(p["m"], p["g"])(x, s)


def teacher(gm, x, s):
    return gm.denoise(x, 1.0, s)


@jax.jit
def _expected_grad(m, g, sigma, alpha):
    u, w = np.polynomial.hermite_e.hermegauss(6)
    Z, N = np.meshgrid(u, u, indexing="ij")
    W = jnp.asarray((w[:, None] * w[None, :]).reshape(-1) / (2 * math.pi))
    z, n = jnp.asarray(Z.reshape(-1, 1)), jnp.asarray(N.reshape(-1, 1))
    sig = jnp.full((z.shape[0],), sigma)
    gm = D.oracle_gaussian(MU, S)  # float64 under x64 (built while tracing)

    def loss(p):
        x_g = p["m"] + p["g"] * z
        fake = gaussian_denoiser(jax.lax.stop_gradient(p["m"]), jax.lax.stop_gradient(p["g"]))
        terms = sid.sid_generator_loss_terms(lambda x, s: teacher(gm, x, s), fake, x_g, sig, n, alpha, normalize=False)
        return jnp.sum(W * terms)

    gr = jax.grad(loss)({"m": m, "g": g})
    return gr["m"], gr["g"]


def expected_grad(m, g, sigma, alpha):
    dm, dg = _expected_grad(m, g, sigma, alpha)
    return float(dm), float(dg)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.2])
def test_expected_generator_gradient_matches_the_closed_form(alpha):
    with jax.enable_x64(True):
        for m, g, sigma in ((-1.0, 1.5, 0.3), (2.0, 0.2, 1.0), (1.3, 3.0, 1.0), (0.0, 0.8, 5.0)):
            a, b = S**2 / (S**2 + sigma**2), g**2 / (g**2 + sigma**2)
            dm = (1 - a) * (MU - m) * ((1 - 2 * alpha) * (a - b) + a - 1)
            dg = 2 * g * (a - b) * ((1 - alpha) * a + alpha * b - 1)
            np.testing.assert_allclose(expected_grad(m, g, sigma, alpha), (dm, dg), rtol=1e-9, atol=1e-12)
        # the sign pattern behind the toy: alpha > 1 widens a generator 6x wider than the teacher at sigma = 1
        assert (expected_grad(1.0, 3.0, 1.0, alpha)[1] < 0) == (alpha > 1)


def test_generator_gradient_vanishes_at_the_teacher_mean_and_std():
    """With the exact fake denoiser, the (normalised) gradient is zero at (MU, S) for every sample, and the
    expected gradient points back to (MU, S) from either side."""
    with jax.enable_x64(True):
        gm = D.oracle_gaussian(MU, S)
        key = jax.random.key(0)

        @jax.jit
        def grad_fn(m, g, alpha):
            p = {"m": m, "g": g}
            gr = jax.grad(sid.sid_generator_loss, 1)(gen_apply, p, teacher, gm, fake_apply, dict(p), key, (8_000, 1),
                                                      alpha, SIGMA_INIT)
            return gr["m"], gr["g"]

        def grad(m, g, alpha):
            return tuple(float(v) for v in grad_fn(jnp.asarray(m), jnp.asarray(g), jnp.asarray(alpha)))

        for alpha in (0.5, 1.0, 1.2):
            assert max(abs(v) for v in grad(MU, S, alpha)) < 1e-12
            assert grad(MU + 0.3, S, alpha)[0] > 0 and grad(MU - 0.3, S, alpha)[0] < 0
            assert grad(MU, 1.5 * S, alpha)[1] > 0 and grad(MU, 0.6 * S, alpha)[1] < 0


def run_toys(alpha, m0, g0, lr, teacher_scale, steps=3000, batch=256):
    """Several toy runs (arrays of alpha, m0, g0, lr, teacher_scale) in one compiled program (vmap): the compile
    dominates. The teacher's output is multiplied by teacher_scale (NaN: a broken teacher)."""
    gm = D.oracle_gaussian(MU, S)
    scaled_teacher = lambda p, x, s: teacher(p[0], x, s) * p[1]  # noqa: E731

    def run(alpha, m0, g0, lr, scale, key):
        gen_tx = optax.adam(optax.cosine_decay_schedule(lr, steps), b1=0.0)
        fake_tx = optax.adam(0.05, b1=0.0)
        state = sid.init_sid_state({"m": m0, "g": g0}, {"m": jnp.asarray(MU), "g": jnp.asarray(S)},
                                   gen_tx, fake_tx)  # the fake score starts at the teacher, as in SiD
        step = sid.make_sid_step(gen_apply, fake_apply, scaled_teacher, gen_tx, fake_tx, (batch, 1), alpha=alpha,
                                 sigma_init=SIGMA_INIT)
        return jax.lax.scan(lambda st, k: step(st, (gm, scale), k), state, jax.random.split(key, steps))

    args = [jnp.asarray(v, jnp.float32) for v in (alpha, m0, g0, lr, teacher_scale)]
    keys = jax.random.split(jax.random.key(1), len(alpha))
    return jax.jit(jax.vmap(run))(*args, keys)


@pytest.fixture(scope="module")
def toys():
    return run_toys(alpha=[0.5, 1.0, 1.2, 1.2], m0=[-2.0, 1.0, 1.0, -2.0], g0=[1.5, 1.5, 1.5, 1.5],
                    lr=[0.1, 0.02, 0.02, 0.1], teacher_scale=[1.0, 1.0, 1.0, np.nan])


def test_one_dimensional_toy_converges_to_the_teacher(toys):
    """alpha = 0.5: generator 6 teacher stds away in mean and 3x wider; alpha = 1 and 1.2: 3x wider.

    Started far in the mean, the generator widens on the way to it. At alpha = 1.2 it then stalls near std 2.4 (the
    alpha > 1 sign pattern above). At alpha = 1, dE/dg = 2 g (a - b)(b - 1) vanishes as b -> 1 (a wide generator at
    small sigma), so the way back is slow and noisy: from far, 3000 steps reached std 0.5 in 5-6 of 8 seeds (lr 0.1);
    from the teacher's mean, in 16 of 16 (lr 0.02, with either XLA:CPU code splitting)."""
    state, metrics = toys
    m, g = np.asarray(state.gen_params["m"])[:3], np.abs(np.asarray(state.gen_params["g"]))[:3]
    assert np.all(np.abs(m - MU) < 0.05) and np.all(np.abs(g - S) < 0.05), (m, g)
    assert np.all(np.asarray(state.gen_skipped)[:3] == 0) and np.all(np.asarray(metrics["gen_ok"])[:3])


def test_non_finite_updates_are_skipped_and_counted(toys):
    state, metrics = toys
    steps = metrics["gen_ok"].shape[1]
    assert int(state.gen_skipped[3]) == steps and int(state.fake_skipped[3]) == 0 and int(state.step[3]) == steps
    assert not np.any(np.asarray(metrics["gen_ok"][3])) and np.all(np.asarray(metrics["gen_skipped"][3]) ==
                                                                  np.arange(1, steps + 1))
    # the generator and its optimizer state are untouched, the fake score still trained
    assert float(state.gen_params["m"][3]) == -2.0 and float(state.gen_params["g"][3]) == 1.5
    assert all(np.all(np.asarray(v)[3] == 0) for v in jax.tree.leaves(state.gen_opt_state))  # still at init
    assert abs(float(state.fake_params["m"][3]) - MU) > 0.5  # it followed the generator at -2


def test_bad_arguments_raise():
    tx = optax.adam(0.01)
    with pytest.raises(ValueError, match="sigma_init"):
        sid.make_sid_step(gen_apply, fake_apply, teacher, tx, tx, (16, 1), sigma_init=0.0)
    with pytest.raises(ValueError, match="t_max"):
        sid.sid_sigmas(jax.random.key(0), 4, t_max=1.5)
