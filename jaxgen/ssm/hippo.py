"""HiPPO transition matrices, their normal-plus-low-rank (NPLR) form and the S4D diagonal inits.

Everything here is closed-form host setup: NumPy float64 in, NumPy float64 / complex128 out.
Cast to the training dtype at the point of use.

Conventions (stable sign, x' = A x + B u):

* Basis on the unit interval: g_n(x) = sqrt(2n+1) P_n(2x - 1), orthonormal on [0, 1].
* LegS: the state of c'(t) = (A c(t) + B u(t)) / t is c_n(t) = ∫_0^1 u(x t) g_n(x) dx, so
  u(s) ≈ Σ_n c_n(t) g_n(s / t) reconstructs the whole history s ∈ [0, t].
* LegT (window theta): the state of c'(t) = A c(t) + B u(t) is
  c_n(t) = ∫_0^1 u(t - theta + x theta) g_n(x) dx, so u(t - theta + x theta) ≈ Σ_n c_n g_n(x):
  x = 1 is the newest sample, x = 0 the oldest one in the window. The ODE is exact when u is a
  polynomial of degree < N on the window (it closes the boundary term u(t - theta) with the
  truncated expansion).
* LagT: c_n(t) = ∫_0^∞ u(t - s) L_n(s) e^{-s/2} ds (Laguerre polynomials L_n; the functions
  L_n(s) e^{-s/2} are orthonormal on [0, ∞)), so u(t - s) ≈ Σ_n c_n L_n(s) e^{-s/2}.
* FouT (window theta): basis f_0 = 1, f_{2k-1} = sqrt2 cos(2 pi k x), f_{2k} = sqrt2 sin(2 pi k x) on
  [0, 1]; c_n(t) ≈ ∫_0^1 u(t - theta + x theta) f_n(x) dx, with the boundary value u(t - theta)
  closed by the truncated series at the seam (exact for theta-periodic, band-limited u).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.polynomial import laguerre as _lag
from numpy.polynomial import legendre as _leg

from jaxgen import _checks

__all__ = [
    "legs",
    "legt",
    "lagt",
    "fout",
    "transition",
    "rank_correction",
    "NPLR",
    "nplr",
    "s4d_lin",
    "s4d_inv",
    "s4d_legs",
    "s4d_init",
    "basis",
    "reconstruct",
]

MEASURES = ("legs", "legt", "lagt", "fout")


def _check_N(N) -> int:
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"N must be an integer >= 1, got {N!r}")
    return int(N)


def _check_theta(theta) -> float:
    return float(_checks.number("theta", theta, low=0, low_open=True))


def legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS (scaled Legendre), stable sign.

    A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k),  -(n+1) (n = k),  0 (n < k);   B_n = sqrt(2n+1).
    eig(A) = {-1, ..., -N}. Use with c'(t) = (A c + B u) / t.
    """
    N = _check_N(N)
    q = np.sqrt(2.0 * np.arange(N) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(N) + 1.0)
    return A, q.copy()


def legt(N: int, theta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegT (translated Legendre) on the sliding window [t - theta, t], stable sign.

    A_nk = -(1/theta) sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)^(n-k));   B_n = sqrt(2n+1) / theta.
    """
    N = _check_N(N)
    theta = _check_theta(theta)
    n = np.arange(N)
    q = np.sqrt(2.0 * n + 1.0)
    sign = np.where(n[:, None] >= n[None, :], 1.0, (-1.0) ** (n[:, None] - n[None, :]))
    A = -np.outer(q, q) * sign / theta
    return A, q / theta


def lagt(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LagT (translated Laguerre, exponentially decaying memory), stable sign.

    A = ½ I - tril(ones),  B = ones:  A_nn = -½, A_nk = -1 (n > k), 0 (n < k).
    """
    N = _check_N(N)
    return 0.5 * np.eye(N) - np.tril(np.ones((N, N))), np.ones(N)


def _fourier_boundary(N: int) -> np.ndarray:
    """Values of the FouT basis at the seam x = 0 (= x = 1): [1, sqrt2, 0, sqrt2, 0, ...]."""
    b = np.zeros(N)
    b[0] = 1.0
    b[1::2] = np.sqrt(2.0)
    return b


def fout(N: int, theta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-FouT (truncated Fourier on the window [t - theta, t]), stable sign.

    A = -(b b^T + D) / theta, B = b / theta, with b = f(0) = [1, sqrt2, 0, sqrt2, 0, ...] and
    D_nk = ∫_0^1 f_n'(x) f_k(x) dx (skew): D[cos_k, sin_k] = -2 pi k, D[sin_k, cos_k] = 2 pi k.
    Derived from c_n' = (f_n(1) u(t) - f_n(0) u(t - theta) - ∫ u f_n') / theta with
    u(t - theta) ≈ b^T c. Odd N pairs every cosine with its sine; for even N the last cosine is
    unpaired and A has an eigenvalue 0 (marginally stable), so prefer odd N.
    """
    N = _check_N(N)
    theta = _check_theta(theta)
    b = _fourier_boundary(N)
    D = np.zeros((N, N))
    for c in range(1, N - 1, 2):  # (cos_k, sin_k) at indices (2k-1, 2k)
        k = (c + 1) // 2
        D[c, c + 1] = -2.0 * np.pi * k
        D[c + 1, c] = 2.0 * np.pi * k
    return -(np.outer(b, b) + D) / theta, b / theta


def transition(measure: str, N: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) for measure in {'legs', 'legt', 'lagt', 'fout'}; kwargs (theta) go to the builder."""
    builders = {"legs": legs, "legt": legt, "lagt": lagt, "fout": fout}
    _checks.one_of("measure", measure, MEASURES)
    _check_kwargs(measure, kwargs)
    return builders[measure](N, **kwargs)


def _check_kwargs(measure: str, kwargs: dict) -> None:
    allowed = ("theta",) if measure in ("legt", "fout") else ()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"measure {measure!r} accepts the keyword arguments {allowed}, got {unknown}")


def rank_correction(measure: str, N: int, **kwargs) -> np.ndarray:
    """Real P of shape (r, N) such that A + P^T P = c I + S with S skew-symmetric (A is NPLR).

    legs: P = sqrt(n + ½) (r = 1), A + P P^T = -½ I + S.
    legt: P = [q on even n, q on odd n] / sqrt(theta), q_n = sqrt(2n+1) (r = 2), A + P^T P = S.
    lagt: P = sqrt(½) ones (r = 1).   fout: P = b / sqrt(theta) (r = 1).
    """
    N = _check_N(N)
    _checks.one_of("measure", measure, MEASURES)
    _check_kwargs(measure, kwargs)
    n = np.arange(N)
    if measure == "legs":
        return np.sqrt(n + 0.5)[None, :]
    if measure == "legt":
        theta = _check_theta(kwargs.get("theta", 1.0))
        q = np.sqrt(2.0 * n + 1.0)
        return np.stack([np.where(n % 2 == 0, q, 0.0), np.where(n % 2 == 1, q, 0.0)]) / np.sqrt(theta)
    if measure == "lagt":
        return np.full((1, N), np.sqrt(0.5))
    if measure == "fout":
        theta = _check_theta(kwargs.get("theta", 1.0))
        return _fourier_boundary(N)[None, :] / np.sqrt(theta)
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


class NPLR(NamedTuple):
    """A = V diag(Lambda) V^* - P_orig^T P_orig, expressed in the unitary eigenbasis V.

    Lambda: (N,) complex eigenvalues of the normal part, sorted by decreasing imaginary part
        (so for even N the first N//2 have Im > 0 and the rest are their conjugates).
    P: (r, N) complex, rows V^* p_r (the low-rank factor in the V basis).
    B: (N,) complex, V^* B.
    V: (N, N) complex unitary.
    In the V basis: V^* A V = diag(Lambda) - P^T conj(P).
    """

    Lambda: np.ndarray
    P: np.ndarray
    B: np.ndarray
    V: np.ndarray


def nplr(measure: str, N: int, **kwargs) -> NPLR:
    """Normal-plus-low-rank decomposition of a HiPPO matrix, computed stably.

    A + P^T P = c I + S with S real skew-symmetric; -i S is Hermitian, so eigh(-i S) = (w, V) gives
    S = V diag(i w) V^* with V unitary (well conditioned). Hence Lambda = c + i w and
    A = V (diag(Lambda) - (V^* P^T)(V^* P^T)^*) V^*. (Diagonalising A directly is hopeless:
    cond(V) ~ 1e10 already at N = 16 for LegS.)
    """
    A, B = transition(measure, N, **kwargs)
    P = rank_correction(measure, N, **kwargs)
    AP = A + P.T @ P
    c = np.mean(np.diag(AP))
    S = AP - c * np.eye(N)
    scale = max(np.abs(A).max(), 1.0)
    if np.abs(S + S.T).max() > 1e-12 * scale:  # guards the closed forms above
        raise RuntimeError(f"internal error: A + P^T P - cI is not skew for measure {measure!r}")
    S = 0.5 * (S - S.T)
    w, V = np.linalg.eigh(-1j * S)
    order = np.argsort(-w, kind="stable")
    w, V = w[order], V[:, order]
    Vh = V.conj().T
    return NPLR(Lambda=c + 1j * w, P=(Vh @ P.T).T, B=Vh @ B, V=V)


def _check_even(N) -> int:
    N = _check_N(N)
    if N % 2:
        raise ValueError(f"N must be even (the state holds N//2 conjugate pairs), got {N}")
    return N


def s4d_lin(N: int) -> np.ndarray:
    """S4D-Lin: A_n = -½ + i pi n, n = 0..N/2-1 (the N//2 modes; the real system adds conjugates)."""
    N = _check_even(N)
    return -0.5 + 1j * np.pi * np.arange(N // 2)


def s4d_inv(N: int) -> np.ndarray:
    """S4D-Inv: A_n = -½ + i (N/pi) (N/(2n+1) - 1), n = 0..N/2-1."""
    N = _check_even(N)
    n = np.arange(N // 2)
    return -0.5 + 1j * (N / np.pi) * (N / (2.0 * n + 1.0) - 1.0)


def s4d_legs(N: int) -> np.ndarray:
    """S4D-LegS: the diagonal part of LegS's NPLR form, the N//2 eigenvalues with Im > 0 (Re = -½)."""
    N = _check_even(N)
    return nplr("legs", N).Lambda[: N // 2]


def s4d_init(kind: str, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(Lambda, B) of an S4D init, each (N//2,) complex128.

    kind 'lin' / 'inv': B = 1. kind 'legs': B = V^* B_LegS restricted to the same modes.
    """
    if kind == "lin":
        return s4d_lin(N), np.ones(N // 2, complex)
    if kind == "inv":
        return s4d_inv(N), np.ones(N // 2, complex)
    if kind == "legs":
        N = _check_even(N)
        d = nplr("legs", N)
        return d.Lambda[: N // 2], d.B[: N // 2]
    raise ValueError(f"kind must be one of ('lin', 'inv', 'legs'), got {kind!r}")


def basis(measure: str, N: int, x: np.ndarray) -> np.ndarray:
    """Reconstruction functions, shape (N, len(x)).

    legs/legt: g_n(x) = sqrt(2n+1) P_n(2x - 1), x ∈ [0, 1] (legs: s = x t; legt: s = t - theta + x theta).
    lagt: L_n(x) e^{-x/2}, x = t - s >= 0 (the lag). fout: f_n(x), x ∈ [0, 1] as for legt.
    """
    N = _check_N(N)
    _checks.one_of("measure", measure, MEASURES)
    x = np.asarray(x, np.float64)
    eye = np.eye(N)
    if measure in ("legs", "legt"):
        q = np.sqrt(2.0 * np.arange(N) + 1.0)
        return q[:, None] * np.stack([_leg.legval(2 * x - 1, eye[n]) for n in range(N)])
    if measure == "lagt":
        return np.stack([_lag.lagval(x, eye[n]) for n in range(N)]) * np.exp(-x / 2)
    if measure == "fout":
        out = np.empty((N, x.size))
        out[0] = 1.0
        for n in range(1, N):
            k = (n + 1) // 2
            trig = np.cos if n % 2 else np.sin
            out[n] = np.sqrt(2.0) * trig(2 * np.pi * k * x)
        return out
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def reconstruct(measure: str, c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """u ≈ Σ_n c_n f_n(x) for state(s) c of shape (..., N); returns (..., len(x))."""
    c = np.asarray(c)
    return c @ basis(measure, c.shape[-1], x)
