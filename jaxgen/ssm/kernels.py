"""SSM convolution kernels and the recurrent / parallel-scan forms of a linear SSM.

A discrete SSM x_k = Ab x_{k-1} + Bb u_k, y_k = C x_k (x_{-1} = 0) is the causal convolution
y = K * u with the kernel K_l = C Ab^l Bb, l = 0..L-1. Three ways to compute K:

* `kernel_naive`: L matrix-vector products (the obvious reference; O(L N^2)).
* `kernel_vandermonde` (S4D): A diagonal, K_l = Σ_n C_n Bb_n Ab_n^l: a Vandermonde product (O(L N)).
* `kernel_dplr` (S4): A = diag(Lambda) - P Q^*, bilinear discretisation. The truncated generating
  function K^(z) = Σ_{l<L} K_l z^l is evaluated at the L roots of unity z_k = exp(-2 pi i k / L),
  where z^L = 1 turns it into a resolvent: K^(z) = C~ (I - Ab z)^{-1} Bb with
  C~ = C (I - Ab^L). For the bilinear Ab, (I - Ab z)^{-1} Bb = d [(1 - z) I - (d/2)(1 + z) A]^{-1} B,
  the diagonal-plus-low-rank inverse is a Woodbury identity over four Cauchy sums, and K = IFFT(K^).

Conjugate symmetry (`conj=True`): arrays hold N modes; the system is the conjugate closure with
2N modes [x, conj x] (real kernel), as in S4/S4D. For the low-rank term the closure means
P_full = [P, conj P], which couples all 2N modes.

Shapes: any leading batch axes `...` (e.g. channels H) broadcast; the mode axis is last, the
low-rank axis r sits before it (P, Q: (..., r, N)); step is (...) (one step per channel).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxgen.ssm.discretize import discretize_diag

__all__ = [
    "conj_closure",
    "dplr_dense",
    "bilinear_dense",
    "kernel_naive",
    "kernel_vandermonde",
    "kernel_dplr",
    "c_tilde",
    "c_from_c_tilde",
    "causal_conv",
    "scan_ssm",
    "scan_diag",
    "linear_recurrence",
]


def conj_closure(x):
    """[x, conj(x)] along the last (mode) axis."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def dplr_dense(Lambda, P, Q=None, *, conj: bool = True):
    """Dense A = diag(Lambda) - P^T conj(Q) (P, Q: (..., r, N)); conj=True builds the 2N-mode closure."""
    Q = P if Q is None else Q
    if conj:
        Lambda, P, Q = conj_closure(Lambda), conj_closure(P), conj_closure(Q)
    N = Lambda.shape[-1]
    return Lambda[..., :, None] * jnp.eye(N, dtype=Lambda.dtype) - jnp.einsum("...rn,...rm->...nm", P, jnp.conj(Q))


def bilinear_dense(A, B, step):
    """Batched bilinear discretisation: Ab = (I - d/2 A)^{-1}(I + d/2 A), Bb = (I - d/2 A)^{-1} d B.

    A (..., N, N), B (..., N), step (...)."""
    N = A.shape[-1]
    step = jnp.asarray(step)
    batch = jnp.broadcast_shapes(A.shape[:-2], B.shape[:-1], step.shape)
    d = step[..., None, None]
    I = jnp.eye(N, dtype=A.dtype)
    lhs = jnp.broadcast_to(I - 0.5 * d * A, batch + (N, N))
    rhs = jnp.concatenate(
        [jnp.broadcast_to(I + 0.5 * d * A, batch + (N, N)), jnp.broadcast_to(d * B[..., :, None], batch + (N, 1))], -1
    )
    sol = jnp.linalg.solve(lhs, rhs)
    return sol[..., :N], sol[..., N]


def kernel_naive(Ab, Bb, C, L: int):
    """K_l = C Ab^l Bb for l = 0..L-1 by repeated matrix-vector products (no conjugation, no Re).

    Ab (..., N, N), Bb (..., N), C (..., N) -> K (..., L).
    """

    def body(x, _):
        return jnp.einsum("...nm,...m->...n", Ab, x), jnp.sum(C * x, axis=-1)

    x0 = jnp.broadcast_to(Bb, jnp.broadcast_shapes(Ab.shape[:-1], Bb.shape)).astype(jnp.result_type(Ab, Bb))
    _, K = jax.lax.scan(body, x0, None, length=L)
    return jnp.moveaxis(K, 0, -1)


def kernel_vandermonde(Lambda, B, C, step, L: int, method: str = "zoh", *, conj: bool = True, chunk=None):
    """S4D kernel K_l = Σ_n C_n Bb_n Ab_n^l (conj: 2 Re of it), Ab, Bb = discretize_diag(Lambda, B, step).

    Ab^l = exp(l log Ab) (for ZOH log Ab = d Lambda exactly). Lambda, B, C (..., N); step (...).
    chunk=None: the direct product with the (..., N, L) Vandermonde matrix. chunk=c: blocked,
    l = b c + j, K_{bc+j} = Σ_n [C_n Bb_n Ab_n^{bc}] Ab_n^j — a batched (L/c x N) @ (N x c) matmul
    with only N (L/c + c) exponentials and O(N (L/c + c)) memory. chunk='auto': c = the power of
    two nearest sqrt(L).
    """
    step = jnp.asarray(step)[..., None]
    Ab, Bb = discretize_diag(Lambda, B, step, method)
    log_Ab = step * Lambda if method == "zoh" else jnp.log(Ab)
    CB = C * Bb
    rdtype = jnp.real(log_Ab).dtype
    if chunk == "auto":
        chunk = 2 ** round(math.log2(math.sqrt(L)))
    if chunk is None:
        K = jnp.einsum("...n,...nl->...l", CB, jnp.exp(log_Ab[..., None] * jnp.arange(L, dtype=rdtype)))
    else:
        c = int(min(chunk, L))
        n_blocks = -(-L // c)
        inner = jnp.exp(log_Ab[..., None] * jnp.arange(c, dtype=rdtype))  # (..., N, c)
        outer = CB[..., None, :] * jnp.exp(log_Ab[..., None, :] * (c * jnp.arange(n_blocks, dtype=rdtype))[:, None])
        K = jnp.einsum("...bn,...nj->...bj", outer, inner)  # (..., n_blocks, c)
        K = K.reshape(K.shape[:-2] + (n_blocks * c,))[..., :L]
    return 2.0 * K.real if conj else K


def c_tilde(Ab, C, L: int):
    """C~ = C (I - Ab^L) (row-vector C (..., N), Ab (..., N, N)); Ab^L by repeated squaring."""
    AbL = jnp.linalg.matrix_power(Ab, L)
    return C - jnp.einsum("...n,...nm->...m", C, AbL)


def c_from_c_tilde(Ab, Ct, L: int):
    """Inverse of `c_tilde`: C = C~ (I - Ab^L)^{-1}."""
    N = Ab.shape[-1]
    M = jnp.eye(N, dtype=Ab.dtype) - jnp.linalg.matrix_power(Ab, L)
    return jnp.linalg.solve(jnp.swapaxes(M, -1, -2), Ct[..., None])[..., 0]


def kernel_dplr(Lambda, P, B, C, step, L: int, *, Q=None, conj: bool = True, c_is_tilde: bool = False, chunk=None):
    """S4 kernel of A = diag(Lambda) - P^T conj(Q) with bilinear discretisation, through Cauchy sums.

    At z_k = exp(-2 pi i k/L), with a = 1 - z, b = (d/2)(1 + z) and R = diag(1/(a - b Lambda)):
        K^(z) = d [k00 - b k01 (I_r + b k11)^{-1} k10],
        k00 = C~ R B,  k01 = C~ R P^T,  k10 = Q^* R B,  k11 = Q^* R P^T   (the four Cauchy sums),
    K = IFFT(K^). This is the S4 formula multiplied through by (1 + z), which removes its 0/0 at
    z = -1. C~ = C (I - Ab^L) is formed here from the dense Ab (one O(N^3 log L) power) unless
    c_is_tilde (the layer trains C~ directly, as S4 does). Without the correction, the result is
    the kernel of C (I - Ab^L) instead of C: wrong by the (large) Ab^L term.
    chunk: evaluate `chunk` roots at a time (lax.map over checkpointed blocks: memory O(chunk N)
    in the forward and the backward pass); None = all L at once.
    Lambda, B, C (..., N); P, Q (..., r, N); step (...). Returns (..., L), real if conj.
    """
    Q = P if Q is None else Q
    step = jnp.asarray(step)
    if conj:
        Lambda, P, Q, B, C = (conj_closure(x) for x in (Lambda, P, Q, B, C))
    if not c_is_tilde:
        Ab, _ = bilinear_dense(dplr_dense(Lambda, P, Q, conj=False), B, step)
        C = c_tilde(Ab, C, L)
    batch = jnp.broadcast_shapes(Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C.shape[:-1])
    N, r = Lambda.shape[-1], P.shape[-2]
    Lambda, B, C = (jnp.broadcast_to(x, batch + (N,)) for x in (Lambda, B, C))
    P, Q = (jnp.broadcast_to(x, batch + (r, N)) for x in (P, Q))
    Qc = jnp.conj(Q)
    dtype = jnp.result_type(Lambda, P, B, C, 1j)
    # the four Cauchy sums share R: stack their weights as columns and take one matmul
    # W = [C~ B | C~ P_s | conj(Q_r) B | conj(Q_r) P_s]  (..., N, 1 + 2r + r^2)
    W = jnp.concatenate(
        [(C * B)[..., None], jnp.swapaxes(C[..., None, :] * P, -1, -2), jnp.swapaxes(Qc * B[..., None, :], -1, -2),
         (Qc[..., :, None, :] * P[..., None, :, :]).reshape(batch + (r * r, N)).swapaxes(-1, -2)],
        axis=-1,
    ).astype(dtype)
    d = step.astype(dtype)[..., None]

    def khat(z):  # K^ at the roots of unity z (M,) -> (..., M)
        a = 1.0 - z
        b = 0.5 * d * (1.0 + z)
        R = 1.0 / (a[..., :, None] - b[..., :, None] * Lambda[..., None, :])
        S = jnp.einsum("...mn,...nk->...mk", R, W)
        k00, k01, k10 = S[..., 0], S[..., 1 : 1 + r], S[..., 1 + r : 1 + 2 * r]
        if r == 1:  # S4's LegS: a scalar division, no batched tiny solves
            corr = k01[..., 0] * k10[..., 0] / (1.0 + b * S[..., -1])
        else:
            k11 = S[..., 1 + 2 * r :].reshape(S.shape[:-1] + (r, r))
            M = jnp.eye(r, dtype=dtype) + b[..., None, None] * k11
            corr = jnp.sum(k01 * jnp.linalg.solve(M, k10[..., None])[..., 0], -1)
        return d * (k00 - b * corr)

    z_all = jnp.exp((-2j * jnp.pi / L) * jnp.arange(L)).astype(dtype)
    if chunk is None or chunk >= L:
        Khat = khat(z_all)
    else:
        n = -(-L // chunk)
        z_pad = jnp.concatenate([z_all, jnp.zeros(n * chunk - L, dtype)]).reshape(n, chunk)
        # checkpointed: the backward pass recomputes each block's R instead of storing all (..., L, N)
        Khat = jax.lax.map(jax.checkpoint(khat), z_pad)  # (n, ..., chunk)
        Khat = jnp.moveaxis(Khat, 0, -2).reshape(Khat.shape[1:-1] + (n * chunk,))[..., :L]
    K = jnp.fft.ifft(Khat, axis=-1)
    return K.real if conj else K


def causal_conv(u, K, *, pad: bool = True):
    """y_l = Σ_{j=0}^{l} K_j u_{l-j} along the last axis, by FFT.

    pad=True zero-pads to 2L so the FFT's circular convolution equals the linear one; pad=False
    (circular, wraps the tail of the kernel onto the start) is wrong by O(1) and exists only to show it.
    u (..., L), K (..., L) real, broadcasting.
    """
    L = u.shape[-1]
    n = 2 * L if pad else L
    y = jnp.fft.irfft(jnp.fft.rfft(u, n=n) * jnp.fft.rfft(K, n=n), n=n)
    return y[..., :L]


def scan_ssm(Ab, Bb, C, u, x0=None):
    """Recurrent mode, dense: x_k = Ab x_{k-1} + Bb u_k, y_k = C x_k, by lax.scan over the last axis of u.

    Ab (..., N, N), Bb (..., N), C (..., N), u (..., L). Returns (y (..., L), x_L (..., N)).
    """
    shape = jnp.broadcast_shapes(Ab.shape[:-1], Bb.shape, C.shape, u.shape[:-1] + (1,))
    dtype = jnp.result_type(Ab, Bb, C, u)
    x = jnp.zeros(shape, dtype) if x0 is None else jnp.broadcast_to(x0, shape).astype(dtype)

    def body(x, u_k):
        x = jnp.einsum("...nm,...m->...n", Ab, x) + Bb * u_k[..., None]
        return x, jnp.sum(C * x, -1)

    x, y = jax.lax.scan(body, x, jnp.moveaxis(u, -1, 0))
    return jnp.moveaxis(y, 0, -1), x


def scan_diag(Ab, Bb, C, u, x0=None):
    """Recurrent mode, diagonal: x_k = Ab * x_{k-1} + Bb u_k, y_k = Σ_n C_n x_{k,n} (lax.scan).

    Ab, Bb, C (..., N), u (..., L). Returns (y (..., L), x_L (..., N)).
    """
    shape = jnp.broadcast_shapes(Ab.shape, Bb.shape, C.shape, u.shape[:-1] + (1,))
    dtype = jnp.result_type(Ab, Bb, C, u)
    x = jnp.zeros(shape, dtype) if x0 is None else jnp.broadcast_to(x0, shape).astype(dtype)

    def body(x, u_k):
        x = Ab * x + Bb * u_k[..., None]
        return x, jnp.sum(C * x, -1)

    x, y = jax.lax.scan(body, x, jnp.moveaxis(u, -1, 0))
    return jnp.moveaxis(y, 0, -1), x


def linear_recurrence(a, b, *, axis: int = 0, parallel: bool = True, x0=None):
    """All states of x_k = a_k * x_{k-1} + b_k (elementwise, x_{-1} = x0 or 0) along `axis`.

    parallel=True: jax.lax.associative_scan with (a_i, b_i) o (a_j, b_j) = (a_j a_i, a_j b_i + b_j)
    (O(log L) depth); parallel=False: jax.lax.scan. a broadcasts against b (e.g. a (N,), b (L, N)).
    """
    b = jnp.asarray(b)
    a = jnp.broadcast_to(jnp.asarray(a), b.shape).astype(jnp.result_type(a, b))
    b = b.astype(a.dtype)
    if x0 is not None:  # fold the initial state into the first input
        first = jax.lax.index_in_dim(b, 0, axis) + jax.lax.index_in_dim(a, 0, axis) * jnp.expand_dims(x0, axis)
        b = jax.lax.dynamic_update_index_in_dim(b, first, 0, axis)
    if parallel:

        def combine(left, right):
            a_i, b_i = left
            a_j, b_j = right
            return a_j * a_i, a_j * b_i + b_j

        return jax.lax.associative_scan(combine, (a, b), axis=axis)[1]

    def body(x, ab):
        x = ab[0] * x + ab[1]
        return x, x

    a0, b0 = jnp.moveaxis(a, axis, 0), jnp.moveaxis(b, axis, 0)
    _, xs = jax.lax.scan(body, jnp.zeros_like(b0[0]), (a0, b0))
    return jnp.moveaxis(xs, 0, axis)
