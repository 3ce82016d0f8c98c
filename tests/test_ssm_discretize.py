"""Discretisation against scipy.signal.cont2discrete, stability facts, diagonal path, LegS recurrences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.signal
import scipy.special

from jaxgen.ssm import discretize, discretize_diag, discretize_legs, hippo, legs_step

SCIPY_NAME = {
    "forward_euler": ("euler", None),
    "backward_euler": ("backward_diff", None),
    "bilinear": ("bilinear", None),
    "zoh": ("zoh", None),
    "gbt": ("gbt", 0.3),
}


def stable_random(N, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(N, N))
    return M - (np.abs(np.linalg.eigvals(M).real).max() + 0.5) * np.eye(N), rng.normal(size=N)


@pytest.mark.parametrize("method", list(SCIPY_NAME))
@pytest.mark.parametrize("which", ["random", "legs", "legt"])
def test_matches_scipy_cont2discrete(method, which):
    A, B = {"random": lambda: stable_random(5), "legs": lambda: hippo.legs(6), "legt": lambda: hippo.legt(6, 0.5)}[which]()
    step = 0.07
    name, alpha = SCIPY_NAME[method]
    ref = scipy.signal.cont2discrete((A, B[:, None], np.eye(len(B)), 0), step, method=name, alpha=alpha)
    Ab, Bb = discretize(A, B, step, method, alpha=alpha)
    assert Ab.dtype == np.float64 and isinstance(Ab, np.ndarray)
    np.testing.assert_allclose(Ab, ref[0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(Bb, ref[1][:, 0], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", ["backward_euler", "bilinear", "zoh"])
@pytest.mark.parametrize("step", [1e-3, 0.1, 1.0, 10.0, 1e3])
def test_implicit_methods_are_stable_for_every_step(method, step):
    for A, _ in (hippo.legs(64), hippo.legt(32), stable_random(12, 1)):
        Ab, _ = discretize(A, np.ones(len(A)), step, method)
        assert np.abs(np.linalg.eigvals(Ab)).max() < 1.0


def test_forward_euler_blows_up_on_legs():
    A, B = hippo.legs(64)
    Ab, _ = discretize(A, B, 0.1, "forward_euler")
    # eig(A) = -1..-64, so eig(Ab) = 1 - 0.1 k and the spectral radius is |1 - 6.4| = 5.4
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(Ab)).max(), 5.4, rtol=1e-8)


@pytest.mark.parametrize("method", ["forward_euler", "backward_euler", "bilinear", "zoh", "gbt"])
def test_diagonal_fast_path_equals_dense(method):
    alpha = 0.3 if method == "gbt" else None
    rng = np.random.default_rng(2)
    lam = -rng.uniform(0.1, 2, 6) + 1j * rng.normal(size=6) * 3
    lam[0] = 0.0  # ZOH limit at lam = 0 is d B
    B = rng.normal(size=6) + 1j * rng.normal(size=6)
    Abd, Bbd = discretize(lam, B, 0.2, method, alpha=alpha)
    Ab, Bb = discretize(np.diag(lam), B, 0.2, method, alpha=alpha)
    np.testing.assert_allclose(np.diag(Ab), Abd, atol=1e-13)
    np.testing.assert_allclose(Bb, Bbd, atol=1e-13)
    # per-channel steps broadcast: Lambda (N,), step (H, 1)
    steps = np.array([0.01, 0.2, 3.0])
    Ab3, Bb3 = discretize_diag(lam, B, steps[:, None], method, alpha=alpha)
    assert Ab3.shape == Bb3.shape == (3, 6)
    for h, s in enumerate(steps):
        Ab, Bb = discretize(np.diag(lam), B, s, method, alpha=alpha)
        np.testing.assert_allclose(Ab3[h], np.diag(Ab), atol=1e-12)
        np.testing.assert_allclose(Bb3[h], Bb, atol=1e-12)


@pytest.mark.parametrize("method", ["bilinear", "zoh", "gbt"])
def test_jax_path_jits_and_agrees_with_numpy(method):
    alpha = 0.7 if method == "gbt" else None
    A, B = hippo.legt(5, 0.4)
    ref = discretize(A, B, 0.05, method, alpha=alpha)
    with jax.enable_x64(True):
        f = jax.jit(lambda A, B, d: discretize(A, B, d, method, alpha=alpha))
        Ab, Bb = f(jnp.asarray(A), jnp.asarray(B), jnp.asarray(0.05))
        assert isinstance(Ab, jax.Array) and Ab.dtype == jnp.float64
        np.testing.assert_allclose(Ab, ref[0], atol=1e-12)
        np.testing.assert_allclose(Bb, ref[1], atol=1e-12)
        # differentiable in the step (ZOH: d/dd exp(dA) = A exp(dA))
        if method == "zoh":
            dAb = jax.jacfwd(lambda d: discretize(jnp.asarray(A), jnp.asarray(B), d, "zoh")[0])(0.05)
            np.testing.assert_allclose(dAb, A @ ref[0], atol=1e-10)


def test_bad_arguments_raise():
    A, B = hippo.legs(3)
    with pytest.raises(ValueError, match="method must be one of"):
        discretize(A, B, 0.1, "euler")
    with pytest.raises(ValueError, match="alpha must be"):
        discretize(A, B, 0.1, "gbt")
    with pytest.raises(ValueError, match="alpha must be"):
        discretize(A, B, 0.1, "gbt", alpha=1.5)
    with pytest.raises(ValueError, match="alpha is only accepted"):
        discretize(A, B, 0.1, "zoh", alpha=0.5)
    with pytest.raises(ValueError, match="B must"):
        discretize(A, np.ones(4), 0.1, "zoh")
    with pytest.raises(ValueError, match="A must"):
        discretize(np.ones((3, 4)), B, 0.1, "zoh")
    with pytest.raises(ValueError, match="k must be"):
        legs_step(A, B, 0)


def _run(A, B, u, method):
    c = np.zeros(len(B))
    for k, u_k in enumerate(u, start=1):
        Ab, Bb = legs_step(A, B, k, method)
        c = Ab @ c + Bb * u_k
    return c


def test_legs_zoh_in_log_time_is_exact_for_held_inputs():
    N = 6
    A, B = hippo.legs(N)
    # a constant is represented exactly from the first sample on: c = (u, 0, ..., 0)
    for k in (1, 2, 7):
        np.testing.assert_allclose(_run(A, B, [1.5] * k, "zoh"), [1.5] + [0] * (N - 1), atol=1e-12)
    # piecewise-constant input held on (k-1, k]: compare with solve_ivp of c' = (A c + B u)/t
    u = np.array([0.3, -1.0, 2.0, 0.5, 0.5, -0.7])
    c = np.array([0.3] + [0.0] * (N - 1))  # exact state at t = 1 (constant 0.3 on (0, 1])
    for k in range(2, len(u) + 1):
        sol = scipy.integrate.solve_ivp(
            lambda t, c: (A @ c + B * u[k - 1]) / t, (k - 1, k), c, method="DOP853", rtol=1e-12, atol=1e-13
        )
        c = sol.y[:, -1]
    np.testing.assert_allclose(_run(A, B, u, "zoh"), c, atol=1e-9)
    Ab, Bb = discretize_legs(A, B, 3, "zoh")
    assert Ab.shape == (3, N, N) and Bb.shape == (3, N)


@pytest.mark.parametrize("method", ["backward_euler", "bilinear", "zoh"])
def test_legs_recurrence_converges_to_the_projection(method):
    # first order in the sampling interval (the input is held at the newest sample)
    N = 8
    f = lambda s: np.sin(4 * s) + s  # noqa: E731
    A, B = hippo.legs(N)
    x, w = np.polynomial.legendre.leggauss(60)
    x, w = (x + 1) / 2, w / 2
    ref = np.array([np.sum(w * f(x) * np.sqrt(2 * n + 1) * scipy.special.eval_legendre(n, 2 * x - 1)) for n in range(N)])
    err = [np.abs(_run(A, B, f(np.arange(1, L + 1) / L), method) - ref).max() for L in (100, 400)]
    assert err[1] < 5e-3 and err[0] / err[1] > 3.5
