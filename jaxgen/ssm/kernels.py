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
    "dplr_auto_chunk",
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


def _dplr_weights(Lambda, P, Q, B, C, batch):
    """The four Cauchy sums' mode weights as columns, W (..., N, 1 + 2r + r^2) =
    [C~_n B_n | C~_n P_{s,n} | conj(Q_{r,n}) B_n | conj(Q_{r,n}) P_{s,n}] (broadcast to `batch`)."""
    N, r = Lambda.shape[-1], P.shape[-2]
    Lambda, B, C = (jnp.broadcast_to(x, batch + (N,)) for x in (Lambda, B, C))
    P, Q = (jnp.broadcast_to(x, batch + (r, N)) for x in (P, Q))
    Qc = jnp.conj(Q)
    W = jnp.concatenate(
        [(C * B)[..., None], jnp.swapaxes(C[..., None, :] * P, -1, -2), jnp.swapaxes(Qc * B[..., None, :], -1, -2),
         (Qc[..., :, None, :] * P[..., None, :, :]).reshape(batch + (r * r, N)).swapaxes(-1, -2)],
        axis=-1,
    )
    return Lambda, W


def _woodbury(S, b, d, r):
    """K^ = d [k00 - b k01 (I_r + b k11)^{-1} k10] from the stacked Cauchy sums S (..., M, 1 + 2r + r^2)."""
    k00, k01, k10 = S[..., 0], S[..., 1 : 1 + r], S[..., 1 + r : 1 + 2 * r]
    if r == 1:  # S4's LegS: a scalar division, no batched tiny solves
        corr = k01[..., 0] * k10[..., 0] / (1.0 + b * S[..., -1])
    else:
        k11 = S[..., 1 + 2 * r :].reshape(S.shape[:-1] + (r, r))
        M = jnp.eye(r, dtype=S.dtype) + b[..., None, None] * k11
        corr = jnp.sum(k01 * jnp.linalg.solve(M, k10[..., None])[..., 0], -1)
    return d * (k00 - b * corr)


def _pair_inv(a, e, gamma, sigma, *, roots_major: bool = False):
    """U = [Re u | Im u] (..., N, 2M), u = 1/den, den = (a gamma - sigma)(a gamma + sigma) + i e sigma gamma;
    roots_major: U^T (..., 2M, N) instead.

    Written as one elementwise expression over the 2M-wide layout (the den is computed for both
    halves) so that XLA emits a single pass with no intermediates. The difference of squares is
    factored: nothing cancels beyond the one subtraction near the pole."""
    M = sigma.shape[-1]
    gamma2, sigma2 = jnp.concatenate([gamma, gamma], -1), jnp.concatenate([sigma, sigma], -1)
    if roots_major:
        on_n, on_m = (lambda x: x[..., None, :]), (lambda x: x[..., :, None])
    else:
        on_n, on_m = (lambda x: x[..., :, None]), (lambda x: x[..., None, :])
    g = on_n(a) * on_m(gamma2)
    Dr = (g - on_m(sigma2)) * (g + on_m(sigma2))
    Di = on_n(e) * on_m(sigma2 * gamma2)
    return jnp.where(on_m(jnp.arange(2 * M) < M), Dr, -Di) / (Dr * Dr + Di * Di)


@jax.custom_vjp
def _pair_sums(a, e, coef, gamma, sigma):
    """T (..., 2J, 2M) = coef @ U with U = `_pair_inv`(a, e, gamma, sigma): one real matmul per channel.

    a = |Lambda|, e = -2 Re Lambda (..., N); coef (..., 2J, N); gamma (..., M); sigma (M,) (no gradient).
    Custom VJP: recomputes U instead of storing it; with u = 1/den, d(sum G T) / d den = -conj(u)^2 (gr + i gi),
    [gr | gi] = coef^T G, then through den to a, e, gamma. Autodiff's version of this split the
    elementwise part into many passes over (..., N, 2M) and ran several times slower."""
    return jnp.einsum("...cn,...nm->...cm", coef, _pair_inv(a, e, gamma, sigma))


def _pair_sums_fwd(a, e, coef, gamma, sigma):
    return _pair_sums(a, e, coef, gamma, sigma), (a, e, coef, gamma, sigma)


def _pair_sums_bwd(res, G):
    a, e, coef, gamma, sigma = res
    M = sigma.shape[0]
    # G is read once per mode below: without the barrier XLA fuses its producers into those reads
    G = jax.lax.optimization_barrier(G)
    # U^T computed in the (2M, N) layout: the product is then a plain (2J, 2M) @ (2M, N)
    dcoef = jnp.einsum("...cm,...mn->...cn", G, _pair_inv(a, e, gamma, sigma, roots_major=True))
    # the elementwise pass on a (modes, roots) grid with the longer axis minor, where it vectorises
    # (S4's N/2 = 128 pairs against a block of 16 roots: 1.3x faster than roots minor)
    if a.shape[-1] > M:
        on_n, on_m, sub = (lambda x: x[..., None, :]), (lambda x: x[..., :, None]), "mn"
    else:
        on_n, on_m, sub = (lambda x: x[..., :, None]), (lambda x: x[..., None, :]), "nm"
    # gu = coef^T G is a sum of 2J rank-one terms: written out, XLA fuses it into the elementwise pass
    # below instead of running a matmul with inner size 2J
    gr = sum(on_n(coef[..., j, :]) * on_m(G[..., j, :M]) for j in range(coef.shape[-2]))
    gi = sum(on_n(coef[..., j, :]) * on_m(G[..., j, M:]) for j in range(coef.shape[-2]))
    g = on_n(a) * on_m(gamma)
    Dr = (g - on_m(sigma)) * (g + on_m(sigma))
    Di = on_n(e) * on_m(sigma * gamma)
    s = 1.0 / (Dr * Dr + Di * Di)
    # cotangent of den = -conj(u)^2 (gr + i gi), conj(u) = (Dr + i Di) s (u = 1/den is holomorphic);
    # formed from Dr s, Di s (~ 1/|den|), not s^2 (~ 1/|den|^4, which overflows first)
    ur, vi = Dr * s, Di * s
    p, q = ur * ur - vi * vi, 2.0 * ur * vi
    dDr = -(p * gr - q * gi)
    dDi = -(p * gi + q * gr)
    # Dr = (a gamma)^2 - sigma^2, Di = e sigma gamma; the reductions as matrix-vector products
    to_n, to_m = f"...{sub},...m->...n", f"...{sub},...n->...m"
    da = 2.0 * a * jnp.einsum(to_n, dDr, gamma * gamma)
    de = jnp.einsum(to_n, dDi, sigma * gamma)
    dgamma = gamma * jnp.einsum(to_m, dDr, 2.0 * a * a) + sigma * jnp.einsum(to_m, dDi, e)
    return da, de, dcoef, dgamma, jnp.zeros_like(sigma)


_pair_sums.defvjp(_pair_sums_fwd, _pair_sums_bwd)


def _khat_rank1(a, e, coef, gamma, sigma, phase):
    """One block of K^ for rank r = 1 (..., c): K^ = phase [k0 - gamma k1 k2 / (1 + gamma k3)],
    k_j = i sigma A_j - gamma B_j, with [A | B] the rows of T = `_pair_sums`(a, e, coef, gamma, sigma).

    Complex values are (real, imaginary) pairs throughout: XLA:CPU does not vectorise complex arithmetic."""
    return _khat_rank1_fwd(a, e, coef, gamma, sigma, phase)[0]


def _cmul(x, y):
    return x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0]


def _cmulc(x, y):  # x conj(y)
    return x[0] * y[0] + x[1] * y[1], x[1] * y[0] - x[0] * y[1]


def _rank1_terms(T, gamma, sigma):
    """B_j, k_j (j = 0..3), 1/D, q = gamma / D, k1 k2 and x = k0 - q k1 k2 (pairs of (..., c) arrays)."""
    c = sigma.shape[-1]
    B = [(T[..., 4 + j, :c], T[..., 4 + j, c:]) for j in range(4)]
    k = [(-sigma * T[..., j, c:] - gamma * B[j][0], sigma * T[..., j, :c] - gamma * B[j][1]) for j in range(4)]
    Dr, Di = 1.0 + gamma * k[3][0], gamma * k[3][1]
    s = 1.0 / (Dr * Dr + Di * Di)
    inv_D = (Dr * s, -Di * s)
    q = (gamma * inv_D[0], gamma * inv_D[1])
    k12 = _cmul(k[1], k[2])
    qk12 = _cmul(q, k12)
    x = (k[0][0] - qk12[0], k[0][1] - qk12[1])
    return B, k, inv_D, q, k12, x


def _khat_rank1_fwd(a, e, coef, gamma, sigma, phase):
    T = _pair_sums(a, e, coef, gamma, sigma)
    x = _rank1_terms(T, gamma, sigma)[-1]
    # the backward pass needs T (..., 8, 2c): kept when recomputing it (O(N c) per channel) costs more than
    # storing it (O(c)), i.e. with more modes than roots in the block (measured: N/2 = 128 modes, 16 roots:
    # 10 % faster kept; 32 modes, 64 roots: 20 % faster recomputed)
    keep = a.shape[-1] > sigma.shape[-1]
    return jax.lax.complex(*_cmul(x, (phase.real, phase.imag))), (a, e, coef, gamma, sigma, phase, T if keep else None)


def _khat_rank1_bwd(res, ct):
    """Written out: autodiff split the few-element Woodbury algebra into many passes, each recomputing
    the others' terms. Cotangents of complex values here are g = dl/dRe + i dl/dIm (JAX passes conj(g));
    for holomorphic w = f(z), g_z = g_w conj(f'(z))."""
    a, e, coef, gamma, sigma, phase, T = res
    if T is None:
        T = _pair_sums(a, e, coef, gamma, sigma)
    B, k, inv_D, q, k12, x = _rank1_terms(T, gamma, sigma)
    g = (ct.real, -ct.imag)
    gx = _cmulc(g, (phase.real, phase.imag))
    # dx/dk0 = 1, dx/dk1 = -q k2, dx/dk2 = -q k1, dx/dk3 = q^2 k1 k2
    k12_D2 = _cmul(inv_D, _cmul(inv_D, k12))
    neg = lambda x: (-x[0], -x[1])  # noqa: E731
    gk = [gx, neg(_cmulc(gx, _cmul(q, k[2]))), neg(_cmulc(gx, _cmul(q, k[1]))),
          _cmulc(gx, (gamma * gamma * k12_D2[0], gamma * gamma * k12_D2[1]))]
    # gamma enters x directly (dx/dgamma = -k1 k2 / D^2) and through every k_j = i sigma A_j - gamma B_j
    dgamma = -_cmulc(gx, k12_D2)[0] - sum(_cmulc(gk[j], B[j])[0] for j in range(4))
    # g_A = conj(i sigma) g_k, g_B = -gamma g_k; rows of G = [Re | Im] of g_A0..3, g_B0..3
    rows = [(sigma * gkj[1], -sigma * gkj[0]) for gkj in gk] + [(-gamma * gkj[0], -gamma * gkj[1]) for gkj in gk]
    G = jnp.stack([jnp.concatenate(row, -1) for row in rows], -2)
    da, de, dcoef, dgamma_sums, dsigma = _pair_sums_bwd((a, e, coef, gamma, sigma), G)
    gphase = _cmulc(g, x)
    return da, de, dcoef, dgamma + dgamma_sums, dsigma, jax.lax.complex(gphase[0], -gphase[1])


_khat_rank1 = jax.custom_vjp(_khat_rank1)
_khat_rank1.defvjp(_khat_rank1_fwd, _khat_rank1_bwd)


def dplr_auto_chunk(channels: int, modes: int, method: str = "paired") -> int:
    """kernel_dplr's chunk='auto': roots per block so that a block holds about 2^19 (channel, mode, root)
    entries (modes = Lambda.shape[-1]; 'direct' counts the closure's 2x modes); a power of two >= 8."""
    per_root = channels * modes * (1 if method == "paired" else 2)
    return 2 ** max(3, round(math.log2(max(1, 2**19 // per_root))))


def kernel_dplr(Lambda, P, B, C, step, L: int, *, Q=None, conj: bool = True, c_is_tilde: bool = False, chunk=None,
                method=None):
    """S4 kernel of A = diag(Lambda) - P^T conj(Q) with bilinear discretisation, through Cauchy sums.

    At z_k = exp(-2 pi i k/L), with a = 1 - z, b = (d/2)(1 + z) and R = diag(1/(a - b Lambda)):
        K^(z) = d [k00 - b k01 (I_r + b k11)^{-1} k10],
        k00 = C~ R B,  k01 = C~ R P^T,  k10 = Q^* R B,  k11 = Q^* R P^T   (the four Cauchy sums),
    K = IFFT(K^). This is the S4 formula multiplied through by (1 + z), which removes its 0/0 at
    z = -1. C~ = C (I - Ab^L) is formed here from the dense Ab (one O(N^3 log L) power) unless
    c_is_tilde (the layer trains C~ directly, as S4 does). Without the correction, the result is
    the kernel of C (I - Ab^L) instead of C: wrong by the (large) Ab^L term.

    method='direct': R at every root of unity and every mode of the closure, times the weights.
    method='paired' (the default when conj; needs conj): K is real, so K^ is needed at k = 0..L/2 only,
    and each mode is summed with its conjugate in real arithmetic. With phi = 2 pi k/L,
    sigma = 2 sin(phi/2), gamma = d cos(phi/2): a - b Lambda = e^{-i phi/2} (i sigma - gamma Lambda), so
        w/(a - b La) + conj(w)/(a - b conj La)
          = e^{i phi/2} [i sigma 2 Re(w) - gamma 2 Re(w conj La)] / [(gamma|La| - sigma)(gamma|La| + sigma) - 2 i sigma gamma Re La],
    each sum is e^{i phi/2} k~ with k~ = i sigma A - gamma B, where [A | B] = (1/den) @ [2 Re W | 2 Re(W conj La)]
    is one real matmul, and K^ = d e^{i phi/2} [k~00 - gamma k~01 (I_r + gamma k~11)^{-1} k~10]; K = irfft(K^).
    Per channel: (L/2 + 1)(N/2 pairs) reciprocals and 8 (L/2)(N/2)(1 + r)^2 real FLOPs of matmul
    (N here = the closure's 2 x Lambda.shape[-1]); the direct form does 8 L N (1 + r)^2 (complex).
    Both are elementwise accurate (each Cauchy term to rounding), which S4 needs: the low-rank
    correction cancels large diagonal-resolvent peaks. (Evaluating the sums as the FFT of a Vandermonde
    product is exact algebra too but only normwise accurate; in float32 it loses 1e-3 .. 1 relative on
    HiPPO-LegS kernels.)
    chunk: evaluate `chunk` roots at a time (lax.map over blocks whose backward pass recomputes the
    block from its inputs: memory O(chunk N) in the forward and the backward pass, plus, for r = 1 with
    more modes than roots per block, the block's 8 sums per channel and root); None = all at once; 'auto' = blocks of about 2^19 (channel, mode, root) entries (a power of two >= 8 roots),
    which keeps a block in cache.
    Lambda, B, C (..., N); P, Q (..., r, N); step (...). Returns (..., L), real if conj.
    """
    method = ("paired" if conj else "direct") if method is None else method
    if method not in ("paired", "direct"):
        raise ValueError(f"method must be 'paired' or 'direct', got {method!r}")
    if method == "paired" and not conj:
        raise ValueError("method='paired' needs conj=True (conjugate mode pairs)")
    Q = P if Q is None else Q
    step = jnp.asarray(step)
    if not c_is_tilde:
        Lf, Pf, Qf, Bf, Cf = (conj_closure(x) for x in (Lambda, P, Q, B, C)) if conj else (Lambda, P, Q, B, C)
        Ab, _ = bilinear_dense(dplr_dense(Lf, Pf, Qf, conj=False), Bf, step)
        C = c_tilde(Ab, Cf, L)
        C = C[..., : Lambda.shape[-1]] if conj else C  # C~ of a conjugate-closed system is conjugate-closed
    r = P.shape[-2]
    dtype = jnp.result_type(Lambda, P, B, C, 1j)
    if chunk == "auto":
        batch = jnp.broadcast_shapes(Lambda.shape[:-1], P.shape[:-2], B.shape[:-1], C.shape[:-1], step.shape)
        chunk = dplr_auto_chunk(math.prod(batch), Lambda.shape[-1], method)

    def blocked(f, xs):  # f(*xs) -> (..., M) for per-root arrays xs (M,), `chunk` roots at a time
        n_roots = xs[0].shape[0]
        if chunk is None or chunk >= n_roots:
            return f(*xs)
        n = -(-n_roots // chunk)
        # pad by repeating the last root: a zero root would divide by 0 and put NaNs into the gradient
        xs = tuple(jnp.pad(x, (0, n * chunk - n_roots), mode="edge").reshape(n, chunk) for x in xs)
        # checkpointed: the backward pass recomputes each block instead of storing all (..., L, N)
        out = jax.lax.map(jax.checkpoint(lambda x: f(*x)), xs)  # (n, ..., chunk)
        return jnp.moveaxis(out, 0, -2).reshape(out.shape[1:-1] + (n * chunk,))[..., :n_roots]

    if method == "paired":
        batch = jnp.broadcast_shapes(Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C.shape[:-1],
                                     step.shape)
        Lambda, W = _dplr_weights(Lambda, P, Q, B, C, batch)
        W = W.astype(dtype)
        coef = 2.0 * jnp.swapaxes(jnp.concatenate([W.real, (W * jnp.conj(Lambda)[..., None]).real], -1), -1, -2)
        st = jnp.broadcast_to(step, batch).astype(coef.dtype)
        M, J = L // 2 + 1, coef.shape[-2] // 2
        # the trig per root only, materialised: fused into its consumers XLA would recompute it per
        # (channel, root) or per (channel, mode, root)
        half = (jnp.pi / L) * jnp.arange(M, dtype=coef.dtype)  # phi/2
        cos, sin = jax.lax.optimization_barrier((jnp.cos(half), jnp.sin(half)))
        a, e = jnp.abs(Lambda), -2.0 * Lambda.real

        def khat(cos, sin):  # one block of roots -> K^ (..., c)
            sigma, gamma = 2.0 * sin, st[..., None] * cos
            phase = st[..., None] * jax.lax.complex(cos, sin)  # d e^{i phi/2}
            if r == 1:  # S4's LegS / LegT: custom VJP
                return _khat_rank1(a, e, coef, gamma, sigma, phase)
            T = _pair_sums(a, e, coef, gamma, sigma)  # (..., 2J, 2c): rows [A | B], columns [Re | Im]
            c = sigma.shape[0]
            # k~ = i sigma A - gamma B
            kt = (1j * sigma * jax.lax.complex(T[..., :J, :c], T[..., :J, c:])
                  - gamma[..., None, :] * jax.lax.complex(T[..., J:, :c], T[..., J:, c:]))
            return _woodbury(jnp.swapaxes(kt, -1, -2), gamma, phase, r)

        c = M if chunk is None else min(chunk, M)
        nb = -(-M // c)
        if nb == 1:
            Khat = khat(cos, sin)
        else:  # pad by repeating the last root (a zero root would divide by 0 and put NaNs in the gradient)
            pad = lambda x: jnp.pad(x, (0, nb * c - M), mode="edge").reshape(nb, c)  # noqa: E731
            # small blocks stay in cache; the rank-1 VJP recomputes what it needs from the block's inputs,
            # otherwise checkpointed: the backward pass keeps only each block's inputs
            body = (lambda x: khat(*x)) if r == 1 else jax.checkpoint(lambda x: khat(*x))
            Khat = jax.lax.map(body, (pad(cos), pad(sin)))  # (nb, ..., c)
            Khat = jnp.moveaxis(Khat, 0, -2).reshape(batch + (nb * c,))[..., :M]
        return jnp.fft.irfft(Khat, n=L, axis=-1)

    if conj:
        Lambda, P, Q, B, C = (conj_closure(x) for x in (Lambda, P, Q, B, C))
    batch = jnp.broadcast_shapes(Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C.shape[:-1])
    # the four Cauchy sums share R: stack their weights as columns and take one matmul
    Lambda, W = _dplr_weights(Lambda, P, Q, B, C, batch)
    W = W.astype(dtype)
    d = step.astype(dtype)[..., None]

    def khat(z):  # K^ at the roots of unity z (M,) -> (..., M)
        a = 1.0 - z
        b = 0.5 * d * (1.0 + z)
        R = 1.0 / (a[..., :, None] - b[..., :, None] * Lambda[..., None, :])
        return _woodbury(jnp.einsum("...mn,...nk->...mk", R, W), b, d, r)

    K = jnp.fft.ifft(blocked(khat, (jnp.exp((-2j * jnp.pi / L) * jnp.arange(L)).astype(dtype),)), axis=-1)
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
