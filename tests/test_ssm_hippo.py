"""HiPPO matrices against their defining integrals (solve_ivp + quadrature), spectra, NPLR, inits."""
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from jaxgen.ssm import hippo


def g(n, x):
    """sqrt(2n+1) P_n(2x - 1), computed with scipy (independent of jaxgen.ssm.hippo.basis)."""
    return np.sqrt(2 * n + 1) * scipy.special.eval_legendre(n, 2 * np.asarray(x) - 1)


XQ, WQ = np.polynomial.legendre.leggauss(80)
XQ, WQ = (XQ + 1) / 2, WQ / 2  # Gauss-Legendre on [0, 1]


def legs_coeffs(u, t, N):
    return np.array([np.sum(WQ * u(XQ * t) * g(n, XQ)) for n in range(N)])


def legt_coeffs(u, t, N, theta):
    return np.array([np.sum(WQ * u(t - theta + XQ * theta) * g(n, XQ)) for n in range(N)])


def integrate(rhs, t0, t1, c0):
    sol = scipy.integrate.solve_ivp(rhs, (t0, t1), c0, method="DOP853", rtol=1e-12, atol=1e-13)
    assert sol.success
    return sol.y[:, -1]


def test_legs_state_is_the_scaled_legendre_projection():
    # LegS needs no closure: the ODE tracks the projection exactly for any u.
    N = 8
    u = lambda s: np.sin(5 * s) + s**2 - 0.3 * np.exp(s)  # noqa: E731
    A, B = hippo.legs(N)
    assert A.dtype == np.float64 and A.shape == (N, N) and B.shape == (N,)
    t0, t1 = 0.05, 1.5
    c = integrate(lambda t, c: (A @ c + B * u(t)) / t, t0, t1, legs_coeffs(u, t0, N))
    np.testing.assert_allclose(c, legs_coeffs(u, t1, N), atol=1e-9)
    # and the reconstruction covers the whole history s = x t1, x in [0, 1]
    N = 20
    A, B = hippo.legs(N)
    c = integrate(lambda t, c: (A @ c + B * u(t)) / t, t0, t1, legs_coeffs(u, t0, N))
    x = np.linspace(0, 1, 101)
    rec = sum(c[n] * g(n, x) for n in range(N))
    assert np.abs(rec - u(x * t1)).max() < 1e-6


@pytest.mark.parametrize("theta", [0.5, 2.0])
def test_legt_state_is_the_window_projection_newest_at_x1(theta):
    # exact for a polynomial u of degree < N (the boundary closure u(t - theta) ≈ Σ c_k g_k(0) is then exact)
    N = 6
    u = lambda s: 1.0 - 2 * s + 0.7 * s**3 - 0.2 * s**5  # noqa: E731
    A, B = hippo.legt(N, theta)
    t0, t1 = 0.0, 1.3
    c = integrate(lambda t, c: A @ c + B * u(t), t0, t1, legt_coeffs(u, t0, N, theta))
    np.testing.assert_allclose(c, legt_coeffs(u, t1, N, theta), atol=1e-9)
    rec = lambda x: sum(c[n] * g(n, x) for n in range(N))  # noqa: E731
    np.testing.assert_allclose(rec(1.0), u(t1), atol=1e-9)  # newest sample at x = 1
    np.testing.assert_allclose(rec(0.0), u(t1 - theta), atol=1e-9)  # oldest at x = 0
    # the mirrored orientation (x -> 1 - x) is clearly not what the state holds
    mirrored = np.array([np.sum(WQ * u(t1 - XQ * theta) * g(n, XQ)) for n in range(N)])
    assert np.abs(c - mirrored).max() > 0.1


def test_legt_tracks_a_smooth_window_approximately():
    N, theta = 24, 1.0
    u = lambda s: np.sin(4 * s) * np.exp(-0.1 * s)  # noqa: E731
    A, B = hippo.legt(N, theta)
    c = integrate(lambda t, c: A @ c + B * u(t), 0.0, 3.0, legt_coeffs(u, 0.0, N, theta))
    np.testing.assert_allclose(c, legt_coeffs(u, 3.0, N, theta), atol=1e-6)


def test_lagt_state_is_the_laguerre_projection_of_the_past():
    N = 6
    u = lambda s: np.cos(s) + 0.5 * np.sin(0.3 * s)  # noqa: E731

    def coeffs(t):
        f = lambda s, n: u(t - s) * scipy.special.eval_laguerre(n, s) * np.exp(-s / 2)  # noqa: E731
        return np.array([scipy.integrate.quad(f, 0, 120, args=(n,), limit=400, epsabs=1e-13)[0] for n in range(N)])

    A, B = hippo.lagt(N)
    c = integrate(lambda t, c: A @ c + B * u(t), 0.0, 2.0, coeffs(0.0))
    np.testing.assert_allclose(c, coeffs(2.0), atol=1e-8)


def test_fout_tracks_periodic_bandlimited_signals():
    N, theta = 7, 0.8  # frequencies up to 3 cycles per window
    w = 2 * np.pi / theta
    u = lambda s: 0.4 + np.cos(w * s) - 0.5 * np.sin(2 * w * s) + 0.3 * np.cos(3 * w * s + 1)  # noqa: E731

    def basis(n, x):
        if n == 0:
            return np.ones_like(x)
        k = (n + 1) // 2
        return np.sqrt(2) * (np.cos if n % 2 else np.sin)(2 * np.pi * k * x)

    def coeffs(t):
        return np.array([np.sum(WQ * u(t - theta + XQ * theta) * basis(n, XQ)) for n in range(N)])

    A, B = hippo.fout(N, theta)
    c = integrate(lambda t, c: A @ c + B * u(t), 0.0, 1.1, coeffs(0.0))
    np.testing.assert_allclose(c, coeffs(1.1), atol=1e-9)


def test_spectra():
    for N in (1, 5, 64):
        np.testing.assert_allclose(np.sort(np.linalg.eigvals(hippo.legs(N)[0]).real), -np.arange(N, 0, -1.0))
        np.testing.assert_allclose(np.linalg.eigvals(hippo.lagt(N)[0]), -0.5)
    for N in (2, 9, 32):
        assert np.linalg.eigvals(hippo.legt(N, 0.7)[0]).real.max() < 0
        assert np.linalg.eigvals(hippo.fout(2 * N + 1)[0]).real.max() < 1e-9  # stable up to the marginal mode


@pytest.mark.parametrize("measure", ["legs", "legt", "lagt", "fout"])
@pytest.mark.parametrize("N", [8, 16, 64])
def test_nplr_reconstructs_A_with_a_unitary_basis(measure, N):
    A, B = hippo.transition(measure, N)
    d = hippo.nplr(measure, N)
    V, Vh = d.V, d.V.conj().T
    np.testing.assert_allclose(Vh @ V, np.eye(N), atol=1e-12)
    rebuilt = V @ (np.diag(d.Lambda) - d.P.T @ d.P.conj()) @ Vh
    assert np.abs(rebuilt - A).max() <= 1e-12 * np.abs(A).max() * N
    np.testing.assert_allclose(V @ d.B, B, atol=1e-12 * N)
    # Lambda = eigenvalues of the normal part, found independently by a general eigensolver
    Pr = hippo.rank_correction(measure, N)
    ref = np.linalg.eigvals(A + Pr.T @ Pr)
    np.testing.assert_allclose(np.sort_complex(np.round(d.Lambda, 8)), np.sort_complex(np.round(ref, 8)), atol=1e-6)
    # first half: Im > 0; the conjugate closure of the first half is again an exact NPLR form of A
    if measure == "fout":  # even N: an unpaired zero mode, no conjugate closure
        return
    h = N // 2
    assert d.Lambda[:h].imag.min() > 0
    Vf = np.concatenate([V[:, :h], V[:, :h].conj()], 1)
    Lf = np.concatenate([d.Lambda[:h], d.Lambda[:h].conj()])
    Pf = np.concatenate([d.P[:, :h], d.P[:, :h].conj()], 1)
    rebuilt = Vf @ (np.diag(Lf) - Pf.T @ Pf.conj()) @ Vf.conj().T
    assert np.abs(rebuilt - A).max() <= 1e-12 * np.abs(A).max() * N


def test_naive_diagonalisation_is_hopeless_where_nplr_is_exact():
    A, _ = hippo.legs(16)
    _, W = np.linalg.eig(A)
    assert np.linalg.cond(W) > 1e8
    assert np.linalg.cond(hippo.nplr("legs", 16).V) < 1 + 1e-10


def test_legs_and_legt_rank_corrections_closed_form():
    N = 10
    n = np.arange(N)
    A, _ = hippo.legs(N)
    S = A + np.outer(np.sqrt(n + 0.5), np.sqrt(n + 0.5)) + 0.5 * np.eye(N)
    np.testing.assert_allclose(S, -S.T, atol=1e-13)
    A, _ = hippo.legt(N, 0.3)
    P = hippo.rank_correction("legt", N, theta=0.3)
    assert P.shape == (2, N)
    S = A + P.T @ P
    np.testing.assert_allclose(S, -S.T, atol=1e-12)


def test_s4d_inits_closed_form():
    N = 8
    lin = hippo.s4d_lin(N)
    inv = hippo.s4d_inv(N)
    for n in range(N // 2):
        assert lin[n] == pytest.approx(-0.5 + 1j * np.pi * n)
        assert inv[n] == pytest.approx(-0.5 + 1j * N / np.pi * (N / (2 * n + 1) - 1))
    legs = hippo.s4d_legs(N)
    A, _ = hippo.legs(N)
    normal = A + np.outer(np.sqrt(np.arange(N) + 0.5), np.sqrt(np.arange(N) + 0.5))
    ref = np.linalg.eigvals(normal)
    ref = np.sort(ref[ref.imag > 0].imag)
    np.testing.assert_allclose(legs.real, -0.5, atol=1e-12)
    np.testing.assert_allclose(np.sort(legs.imag), ref, atol=1e-10)
    lam, B = hippo.s4d_init("legs", N)
    assert lam.shape == B.shape == (N // 2,)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_bad_N_raises(bad):
    with pytest.raises(ValueError, match="N must be"):
        hippo.legs(bad)
    with pytest.raises(ValueError, match="N must be"):
        hippo.legt(bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_theta_raises(bad):
    with pytest.raises(ValueError, match="theta must be"):
        hippo.legt(4, theta=bad)


def test_bad_measure_and_odd_s4d_raise():
    with pytest.raises(ValueError, match="measure must be"):
        hippo.nplr("legx", 4)
    with pytest.raises(ValueError, match="even"):
        hippo.s4d_lin(5)
    with pytest.raises(ValueError, match="kind must be"):
        hippo.s4d_init("foo", 4)
