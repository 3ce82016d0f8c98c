"""Distances between point clouds: sliced Wasserstein-2 and the (unbiased) RBF MMD."""
from __future__ import annotations

import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks


def _check_clouds(x, y):
    x, y = jnp.asarray(x, jnp.result_type(x, jnp.float32)), jnp.asarray(y, jnp.result_type(y, jnp.float32))
    chex.assert_rank([x, y], 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape} and {y.shape}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"x and y must hold at least one point, got {x.shape} and {y.shape}")
    return x, y


def wasserstein2_1d_squared(u_PN: jax.Array, v_PM: jax.Array) -> jax.Array:
    """Exact W2^2 between 1-D empirical measures, batched over the leading axis.

        W2^2(mu, nu) = int_0^1 (F_mu^{-1}(q) - F_nu^{-1}(q))^2 dq

    The quantile functions are step functions with jumps at i / N and j / M; the integral is
    summed exactly over the merged breakpoints. For N == M this is mean((sort u - sort v)^2).
    """
    n, m = u_PN.shape[-1], v_PM.shape[-1]
    u, v = jnp.sort(u_PN, axis=-1), jnp.sort(v_PM, axis=-1)
    if n == m:
        return jnp.mean((u - v) ** 2, axis=-1)
    # Breakpoints i/n and j/m, merged, as integers i*m and j*n (static, exact, on the host).
    num = np.sort(np.concatenate([np.arange(1, n + 1) * m, np.arange(1, m + 1) * n]))
    widths = jnp.asarray(np.diff(num, prepend=0) / (n * m), u.dtype)
    # On (e_{k-1}, e_k] the u-quantile is u[ceil(e_k n) - 1] = u[ceil(num_k / m) - 1].
    iu = jnp.asarray(((num + m - 1) // m - 1).astype(np.int32))
    iv = jnp.asarray(((num + n - 1) // n - 1).astype(np.int32))
    return jnp.sum(widths * (u[..., iu] - v[..., iv]) ** 2, axis=-1)


def sliced_wasserstein(x_ND: jax.Array, y_MD: jax.Array, key: jax.Array,
                       num_projections: int = 256) -> jax.Array:
    """Sliced Wasserstein-2 distance between two point clouds (empirical measures).

        SW2(x, y) = ( E_{theta ~ U(S^{D-1})} W2^2(theta . x, theta . y) )^(1/2)

    estimated with `num_projections` random unit directions. Each 1-D W2^2 is exact for the
    empirical measures (sorted projections; for N != M the quantile functions are integrated
    over their merged breakpoints, no subsampling). For D = 1, theta = +-1 and SW2 = W2.
    For isotropic Gaussians N(m1, s1^2 I) and N(m2, s2^2 I):
    SW2^2 = |m1 - m2|^2 / D + (s1 - s2)^2.
    """
    num_projections = _checks.number("num_projections", num_projections, integer=True, low=1)
    x, y = _check_clouds(x_ND, y_MD)
    return _sliced_wasserstein(x, y, key, num_projections)


@functools.partial(jax.jit, static_argnums=3)  # called eagerly: one program, not one per op
def _sliced_wasserstein(x, y, key, num_projections):
    theta_PD = jax.random.normal(key, (num_projections, x.shape[1]), x.dtype)
    theta_PD = theta_PD / jnp.linalg.norm(theta_PD, axis=-1, keepdims=True)
    w2sq = wasserstein2_1d_squared(theta_PD @ x.T, theta_PD @ y.T)
    return jnp.sqrt(jnp.mean(w2sq))


def _sq_dists(a, b):
    # |a|^2 + |b|^2 - 2 a.b, clipped: cancellation can make it slightly negative
    d = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d, 0.0)


def mmd(x_ND: jax.Array, y_MD: jax.Array,
        bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)) -> jax.Array:
    """Unbiased estimate of the squared maximum mean discrepancy with a sum of RBF kernels.

        k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))
        MMD_u^2 = 1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(N M) sum_{i, j} k(x_i, y_j)

    Unbiased, so it can be slightly negative when the distributions agree. The default
    bandwidths suit data of unit scale (e.g. standardised 2-D toy sets); pass your own otherwise.
    """
    x, y = _check_clouds(x_ND, y_MD)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd needs at least 2 points in each set, got {n} and {m}")
    h = jnp.asarray(bandwidths, x.dtype)
    chex.assert_rank(h, 1)
    if h.shape[0] < 1:
        raise ValueError("bandwidths must be a non-empty sequence of positive floats")
    _checks.values("bandwidths", h, lambda xp, v: xp.isfinite(v) & (v > 0), "finite and > 0")
    return _mmd(x, y, h)


@jax.jit  # called eagerly: one program, not one per op
def _mmd(x, y, h):
    n, m = x.shape[0], y.shape[0]

    def k(a, b):
        d = _sq_dists(a, b)
        return jnp.sum(jnp.exp(-d[..., None] / (2.0 * h ** 2)), axis=-1)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)
