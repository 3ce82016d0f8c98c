"""Consistency models: boundary condition, the exact consistency function of Gaussian data, CD / CT / iCT.

Expectations over Gaussian data are computed exactly with Gauss-Hermite quadrature over (x0, z) and every
grid index i: with f* affine in x and an affine teacher, every integrand is a polynomial of degree 2.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen import diffusion as D
from jaxgen.diffusion import consistency as C
from jaxgen.nets import MLPDenoiser

MU, STD = 0.7, 0.4
SPEC = C.ConsistencySpec()


@pytest.fixture(scope="module")
def mlp():
    """A random network F (with dropout, active when a key is given) shared by the tests."""
    graph, params = nnx.split(MLPDenoiser(2, hidden=32, depth=2, dropout=0.5, rngs=nnx.Rngs(0)))

    def apply(p, x_in, c_noise, key):
        return nnx.merge(graph, p)(x_in, c_noise, key=key)

    return apply, params


def fstar_apply(mu, std, spec=SPEC):
    """F_theta = (1 + a) F* + b, where F* makes c_skip x + c_out F* the exact consistency function."""

    def apply(theta, x_in, c_noise, key):
        sigma = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = spec.scalings(sigma)
        x = x_in / c_in[:, None]
        fstar = C.gaussian_consistency_function(x, sigma, mu, std, spec.sigma_min)
        F = (fstar - c_skip[:, None] * x) / jnp.where(c_out == 0, 1.0, c_out)[:, None]
        return (1.0 + theta["a"]) * F + theta["b"]

    return apply


def quadrature(num_scales, q=4):
    """Nodes (x0 [M, 1], z [M, 1], i [M]) and weights [M] for E over x0 ~ N(MU, STD^2), z ~ N(0, 1), i ~ U{0..N-2}."""
    u, w = np.polynomial.hermite_e.hermegauss(q)
    w = w / math.sqrt(2 * math.pi)
    U, V, I = np.meshgrid(u, u, np.arange(num_scales - 1), indexing="ij")
    W = (w[:, None, None] * w[None, :, None]) * np.ones_like(I) / (num_scales - 1)
    return (jnp.asarray(MU + STD * U.reshape(-1, 1)), jnp.asarray(V.reshape(-1, 1)), jnp.asarray(I.reshape(-1)),
            jnp.asarray(W.reshape(-1)))


def theta(a=0.0, b=0.0):
    return {"a": jnp.asarray(a), "b": jnp.asarray(b)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_boundary_condition_holds_exactly_for_a_random_network(dtype, mlp):
    with jax.enable_x64(dtype == jnp.float64):
        apply, params = mlp
        f = jax.jit(lambda x, s: C.consistency_function(apply, params, x, s, jax.random.key(1), spec=SPEC))
        x = 5.0 * jax.random.normal(jax.random.key(0), (64, 2), dtype)
        np.testing.assert_array_equal(np.asarray(f(x, jnp.full((64,), SPEC.sigma_min, dtype))), np.asarray(x))
        grid = jnp.broadcast_to(C.karras_sigma(0, 18, SPEC), (64,)).astype(dtype)
        np.testing.assert_array_equal(np.asarray(f(x, grid)), np.asarray(x))
        # away from the boundary the network matters
        assert float(jnp.max(jnp.abs(f(x, jnp.ones((64,), dtype)) - x))) > 0.1


def test_karras_grid_ends_and_spacing_match_edm_sigmas():
    s = np.asarray(C.karras_sigma(jnp.arange(18), 18, SPEC))
    np.testing.assert_allclose(s, D.edm_sigmas(17)[::-1], rtol=1e-6)
    assert s[0] == np.float32(0.002) and s[-1] == 80.0
    np.testing.assert_allclose(C.consistency_sample_sigmas(4), D.edm_sigmas(4)[:-1], rtol=1e-12)
    # a traced N gives the same grid (no recompilation when N grows)
    traced = jax.jit(lambda n: C.karras_sigma(jnp.arange(18), n, SPEC))(18)
    np.testing.assert_allclose(np.asarray(traced), s, rtol=1e-6)
    with pytest.raises(ValueError, match="num_scales"):
        C.karras_sigma(0, 1)
    with pytest.raises(ValueError, match="sigma_min"):
        C.ConsistencySpec(sigma_min=1.0, sigma_max=0.5)


def test_gaussian_consistency_function_is_the_pf_ode_solution():
    """f* against the package's Heun solver of the oracle's probability-flow ODE (EDM process): f* maps every
    point of one trajectory to its end point."""
    with jax.enable_x64(True):
        gm, p = D.oracle_gaussian(MU, STD, dim=2), D.EDM()
        x = 80.0 * jax.random.normal(jax.random.key(1), (32, 2), jnp.float64)
        ts = D.time_grid(p, 1600, sigma_min=SPEC.sigma_min, sigma_max=80.0)
        end, traj = D.ode_sample(gm.denoise_fn(p), p, x, ts, "heun", return_trajectory=True)  # error O(h^2)
        sig = np.asarray(p.sigma(jnp.asarray(ts)))
        for k in (0, 400, 1200, 1590):
            exact = C.gaussian_consistency_function(traj[k], sig[k], MU, STD, SPEC.sigma_min)
            np.testing.assert_allclose(np.asarray(end), np.asarray(exact), rtol=0, atol=1e-5)


def _teacher():
    gm = D.oracle_gaussian(MU, STD)
    return lambda x, s: gm.denoise(x, 1.0, s)


def _expected(terms_fn, th, n, q=4):
    x0, z, i, w = quadrature(n, q)
    return jax.jit(lambda th: jnp.sum(w * terms_fn(th, x0, z, i, n)))(th)


def _cd(solver):
    teacher, apply = _teacher(), fstar_apply(MU, STD)
    return lambda th, x0, z, i, n: C.cd_loss_terms(apply, th, theta(), x0, z, i, None, teacher, n, solver, SPEC)


def _ct():
    apply = fstar_apply(MU, STD)
    return lambda th, x0, z, i, n: C.ct_loss_terms(apply, th, theta(), x0, z, i, None, n, SPEC)


def test_cd_loss_vanishes_at_the_exact_consistency_function_to_the_ode_step_error():
    with jax.enable_x64(True):
        loss = {(s, n): float(_expected(_cd(s), theta(), n)) for s in ("euler", "heun") for n in (18, 72)}
        off = float(_expected(_cd("heun"), theta(0.05, 0.02), 18))
        assert off > 1e-5
        assert loss["heun", 72] < 1e-5 * off and loss["euler", 72] < 1e-3 * off, (loss, off)
        # local errors O(h^3) (Heun) and O(h^2) (Euler), squared and averaged over the N - 1 pairs
        assert loss["euler", 18] / loss["euler", 72] > 4**3, loss
        assert loss["heun", 18] / loss["heun", 72] > 4**5, loss


def test_exact_consistency_function_is_a_fixed_point_of_cd_and_ct():
    with jax.enable_x64(True):
        g = {}
        for name, fn in (("heun", _cd("heun")), ("euler", _cd("euler")), ("ct", _ct())):
            for n in (18, 72):
                gr = jax.grad(lambda th: _expected(fn, th, n))(theta())
                g[name, n] = math.hypot(float(gr["a"]), float(gr["b"]))
        gr_off = jax.grad(lambda th: _expected(_ct(), th, 18))(theta(0.05, 0.02))
        off = math.hypot(float(gr_off["a"]), float(gr_off["b"]))
        assert g["heun", 72] < 1e-3 * off and g["ct", 72] < 1e-2 * off, (g, off)
        # the residual gradient is the ODE step's: O(h^3) for Heun, O(h^2) for CD-Euler and for CT
        assert g["heun", 18] / g["heun", 72] > 32, g
        assert g["ct", 18] / g["ct", 72] > 8 and g["euler", 18] / g["euler", 72] > 8, g


def test_ct_has_the_gradient_of_cd_euler_with_the_exact_teacher():
    """E[CT target | x_hi] is the Euler step with the exact score (f* affine), so L_CT - L_CD-Euler is a
    constant: the variance of the CT target. The CT loss itself is not zero at f*."""
    with jax.enable_x64(True):
        n = 18
        diffs = [float(_expected(_ct(), th, n) - _expected(_cd("euler"), th, n))
                 for th in (theta(), theta(0.3, -0.2), theta(-0.5, 0.4))]
        np.testing.assert_allclose(diffs, diffs[0], rtol=1e-9)
        assert diffs[0] > 1e-4


def test_ct_and_ict_losses_are_exactly_zero_for_point_mass_data():
    """Data = a point mass: x0 + sigma z determines the ODE trajectory, so f* makes every CT pair agree."""
    with jax.enable_x64(True):
        apply = fstar_apply(MU, 0.0)
        x0 = jnp.full((256, 4), MU)
        key = jax.random.key(3)
        losses = jax.jit(lambda a: (C.ct_loss(apply, theta(a), theta(), x0, key, 40, SPEC),
                                    C.ict_loss(apply, theta(a), x0, key, 40)))
        ct0, ict0 = losses(0.0)
        assert float(ct0) < 1e-20 and float(ict0) < 1e-12
        assert float(losses(0.1)[1]) > 1e-3


def test_online_and_target_share_the_dropout_key(mlp):
    apply, params = mlp
    x0 = jax.random.normal(jax.random.key(4), (16, 2))
    z = jax.random.normal(jax.random.key(5), (16, 2))
    i = jnp.arange(16) % 17
    kd = jax.random.key(6)

    @jax.jit
    def terms_and_manual(k_target):
        terms = C.ct_loss_terms(apply, params, params, x0, z, i, kd, 18, SPEC)
        s_hi, s_lo = C.karras_sigma(i + 1, 18), C.karras_sigma(i, 18)
        a = C.consistency_function(apply, params, x0 + s_hi[:, None] * z, s_hi, kd)
        b = C.consistency_function(apply, params, x0 + s_lo[:, None] * z, s_lo, k_target)
        return terms, jnp.mean((a - b) ** 2, -1)

    terms, same = terms_and_manual(kd)
    np.testing.assert_allclose(np.asarray(terms), np.asarray(same), rtol=1e-5, atol=1e-7)
    _, other = terms_and_manual(jax.random.key(7))
    assert not np.allclose(np.asarray(terms), np.asarray(other), rtol=1e-2)


def test_multistep_sampling_matches_the_closed_form_moments():
    """With f*, each step maps N(m, v) to N(MU + k (m - MU), k^2 v), k = sqrt(std^2 + eps^2)/sqrt(std^2 + tau^2)."""
    with jax.enable_x64(True):
        f = lambda x, s: C.gaussian_consistency_function(x, s, MU, STD, SPEC.sigma_min)  # noqa: E731
        eps = SPEC.sigma_min
        for steps in (1, 2, 4):
            sig = C.consistency_sample_sigmas(steps)
            x = C.consistency_sample(f, jax.random.key(steps), (200_000, 1), sig, dtype=jnp.float64)
            m, v = 0.0, sig[0] ** 2
            for j, tau in enumerate(sig):
                if j:
                    v += tau**2 - eps**2
                k = math.sqrt(STD**2 + eps**2) / math.sqrt(STD**2 + tau**2)
                m, v = MU + k * (m - MU), k**2 * v
            np.testing.assert_allclose(float(jnp.mean(x)), m, atol=4e-3)
            np.testing.assert_allclose(float(jnp.var(x)), v, rtol=1e-2)
        with pytest.raises(ValueError, match="sigmas"):
            C.consistency_sample(f, jax.random.key(0), (4, 1), [1.0, 2.0])


def test_ct_and_ict_schedules():
    K = 400_000
    n = [int(C.ct_num_scales(k, K)) for k in (0, K // 2, K)]
    # N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 with s0 = 2, s1 = 150
    assert n == [2, math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1, 151]
    np.testing.assert_allclose(float(C.ct_target_ema(0, K)), 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(C.ct_target_ema(K, K)), math.exp(2 * math.log(0.9) / 151), rtol=1e-6)
    # iCT: 10, 20, ..., 1280 (+1), eight stages of K' = 50000 steps
    stages = [int(C.ict_num_scales(k, K)) for k in (0, 49_999, 50_000, 100_000, 350_000, 399_999, 10**7)]
    assert stages == [11, 11, 21, 41, 1281, 1281, 1281]


def test_ict_sigma_probs_match_binned_lognormal_samples():
    n = 41
    p = np.asarray(C.ict_sigma_probs(n))
    sig = np.asarray(C.karras_sigma(jnp.arange(n), n), np.float64)
    rng = np.random.default_rng(0)
    s = np.exp(rng.normal(-1.1, 2.0, 2_000_000))
    s = s[(s >= sig[0]) & (s < sig[-1])]
    freq = np.bincount(np.searchsorted(sig, s, side="right") - 1, minlength=n - 1) / s.size
    np.testing.assert_allclose(p, freq, atol=2e-3)
    # traced N inside jit with a fixed maximum size: the same probabilities, zero beyond N - 1
    pj = np.asarray(jax.jit(lambda m: C.ict_sigma_probs(m, max_scales=81))(n))
    np.testing.assert_allclose(pj[: n - 1], p, rtol=1e-5)
    assert np.all(pj[n - 1:] == 0)


def test_pseudo_huber_and_ict_loss_under_jit_with_a_traced_curriculum(mlp):
    a, b = np.random.default_rng(1).normal(size=(2, 5, 3, 4, 4))
    c = 0.00054 * math.sqrt(48)
    ref = np.sqrt(np.sum((a - b) ** 2, axis=(1, 2, 3)) + c**2) - c
    np.testing.assert_allclose(np.asarray(C.pseudo_huber(jnp.asarray(a), jnp.asarray(b))), ref, rtol=1e-5)
    apply, params = mlp
    x0 = jax.random.normal(jax.random.key(8), (32, 2))

    @jax.jit
    def loss_and_grad(params, k):
        n = C.ict_num_scales(k, 8000)
        return jax.value_and_grad(C.ict_loss, 1)(apply, params, x0, jax.random.key(9), n, max_scales=1281)

    l0, g0 = loss_and_grad(params, 0)
    l1, _ = loss_and_grad(params, 7999)
    assert np.isfinite(float(l0)) and np.isfinite(float(l1)) and float(l0) != float(l1)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g0))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="solver"):
        C.pf_ode_step(lambda x, s: x, jnp.zeros((2, 1)), 1.0, 0.5, "rk4")
    with pytest.raises(ValueError, match="distance"):
        C.ct_loss(fstar_apply(MU, STD), theta(), theta(), jnp.zeros((2, 1)), jax.random.key(0), 10, distance="l1")
    with pytest.raises(ValueError, match="max_scales"):
        jax.jit(lambda n: C.ict_sigma_probs(n))(10)
    with pytest.raises(ValueError, match="mu0"):
        C.ct_target_ema(0, 10, mu0=1.5)
