"""The general ODE construction v = a' E[x0|x_t] + b' E[x1|x_t]: continuity equation, VP probability-flow ODE,
transport of the noise to the data on the oracle, and the velocity-field solvers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion import interpolants as I
from jaxgen.metrics import sliced_wasserstein


def _f64(gm):
    return D.GaussianMixture(np.asarray(gm.weights, np.float64), np.asarray(gm.means, np.float64),
                             np.asarray(gm.stds, np.float64))


def _continuity_residual(gm, path, v):
    """d/dt log p_t(x) + div v(x, t) + v . grad log p_t(x) at one point x [D] and time t (scalar)."""

    def logp(x, s):
        return gm.log_prob(x[None], path.alpha(s), path.sigma(s))[0]

    def res(x, t):
        vt = lambda z: v(z[None], t[None])[0]  # noqa: E731
        return jax.grad(logp, argnums=1)(x, t) + jnp.trace(jax.jacfwd(vt)(x)) + vt(x) @ jax.grad(logp)(x, t)

    return jax.jit(jax.vmap(res))


@pytest.mark.parametrize("name", I.PATHS)
def test_velocity_satisfies_the_continuity_equation(name):
    """d/dt log p_t(x) = -div v(x, t) - v . grad log p_t(x), with p_t the oracle's exact noised density
    under the path's (a(t), b(t)): the defining property of the marginal velocity (float64)."""
    with jax.enable_x64(True):
        gm = _f64(D.oracle_2d())
        path = I.make_path(name)
        xs = jax.random.normal(jax.random.key(0), (24, 2), jnp.float64) * 0.8
        ts = jnp.tile(jnp.asarray([0.03, 0.3, 0.7, 0.97], jnp.float64), 6)
        res = _continuity_residual(gm, path, I.velocity_from_denoiser(gm.denoise_fn(path), path))(xs, ts)
        np.testing.assert_allclose(np.asarray(res), 0.0, atol=1e-8)


def test_continuity_check_rejects_another_paths_velocity():
    """The check has power: the RF coefficients with the VP denoiser violate the VP path's equation."""
    with jax.enable_x64(True):
        gm = _f64(D.oracle_2d())
        vp = I.make_path("vp")
        other = I.velocity_from_denoiser(gm.denoise_fn(vp), I.make_path("rf"))
        xs = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64) * 0.8
        ts = jnp.tile(jnp.asarray([0.3, 0.7], jnp.float64), 4)
        assert float(jnp.min(jnp.abs(_continuity_residual(gm, vp, other)(xs, ts)))) > 1e-3


def test_vp_path_velocity_is_the_probability_flow_ode_of_the_vp_sde():
    """Song et al. 2021: dx = -beta/2 x dt + sqrt(beta) dW has the probability-flow drift -beta(t)/2 (x + score),
    beta(t) = beta_min + t (beta_max - beta_min); the score from the oracle's exact formula (float64)."""
    with jax.enable_x64(True):
        gm = _f64(D.oracle_16d())
        vp = I.make_path("vp")
        v = I.velocity_from_denoiser(gm.denoise_fn(vp), vp)
        x = jax.random.normal(jax.random.key(1), (32, 16), jnp.float64)
        t = jnp.linspace(0.01, 1.0, 32, dtype=jnp.float64)
        beta = vp.beta_min + t * (vp.beta_max - vp.beta_min)
        pf = -0.5 * beta[:, None] * (x + gm.score(x, vp.alpha(t), vp.sigma(t)))
        np.testing.assert_allclose(np.asarray(jax.jit(v)(x, t)), np.asarray(pf), rtol=1e-9, atol=1e-10)


N = 3000


@pytest.fixture(scope="module")
def transported():
    """Noise pushed through each path's ODE (Heun, 40 uniform steps from t = 1 to 0) with the oracle's
    exact denoiser; a mismatched velocity (VP denoiser, RF coefficients) as the negative control."""
    gm = D.oracle_2d()
    ts = I.uniform_grid(40)
    fields = {name: I.velocity_from_denoiser(gm.denoise_fn(I.make_path(name)), I.make_path(name)) for name in I.PATHS}
    fields["mismatched"] = I.velocity_from_denoiser(gm.denoise_fn(I.make_path("vp")), I.make_path("rf"))

    @jax.jit
    def run(key):
        """One program: the ODE outputs' sliced W2 to fresh data, and the floor (mean over 3 data samples)."""
        k_noise, k_fresh, k_proj, k_floor = jax.random.split(key, 4)
        x1 = jax.random.normal(k_noise, (N, 2))
        fresh = gm.sample(k_fresh, N)
        sw = {k: sliced_wasserstein(I.flow_solve(f, x1, ts, "heun"), fresh, k_proj) for k, f in fields.items()}
        floor = jnp.mean(jnp.stack([sliced_wasserstein(gm.sample(k, N), fresh, k_proj)
                                    for k in jax.random.split(k_floor, 3)]))
        return sw, floor

    sw, floor = run(jax.random.key(1))
    return {k: float(v) for k, v in sw.items()}, float(floor)


@pytest.mark.parametrize("name", I.PATHS)
def test_each_path_transports_noise_to_the_data(transported, name):
    sw, floor = transported
    assert sw[name] < 1.6 * floor + 0.005, (name, sw[name], floor)


def test_mismatched_velocity_does_not_transport(transported):
    sw, floor = transported
    assert sw["mismatched"] > 5 * floor, (sw, floor)


def test_flow_solvers_on_a_linear_field():
    """dx/dt = c x: Euler multiplies by (1 + h c) per step, Heun by (1 + h c + (h c)^2 / 2) (float64). The
    adaptive solver is checked against closed forms in tests/test_rectified_flow.py."""
    with jax.enable_x64(True):
        c = -1.3
        f = lambda x, t: c * x  # noqa: E731
        x = jnp.asarray([[1.0], [-2.0]], jnp.float64)
        ts = I.uniform_grid(7)
        h = -1.0 / 7
        np.testing.assert_allclose(np.asarray(I.flow_solve(f, x, ts, "euler")), np.asarray(x) * (1 + h * c) ** 7,
                                   rtol=1e-12)
        np.testing.assert_allclose(np.asarray(I.flow_solve(f, x, ts, "heun")),
                                   np.asarray(x) * (1 + h * c + (h * c) ** 2 / 2) ** 7, rtol=1e-12)
        _, traj = I.flow_solve(f, x, ts, "euler", return_trajectory=True)
        assert traj.shape == (8, 2, 1)
        np.testing.assert_allclose(np.asarray(traj[0]), np.asarray(x))
        np.testing.assert_allclose(np.asarray(traj[3]), np.asarray(x) * (1 + h * c) ** 3, rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="path name"):
        I.make_path("edm")
    with pytest.raises(ValueError, match="solver"):
        I.flow_solve(lambda x, t: x, jnp.ones((1, 1)), I.uniform_grid(2), "rk4")
    with pytest.raises(ValueError, match="a\\(0\\) = 1"):
        I.Interpolant(lambda t: 2.0 - t, lambda t: t)
    with pytest.raises(ValueError, match="b\\(1\\) > 0"):
        I.Interpolant(lambda t: 1.0 - t, lambda t: 0.0 * t)
    with pytest.raises(ValueError, match="num_steps"):
        I.uniform_grid(0)
