"""Improved precision and recall of generative models (Kynkäänniemi et al. 2019).

Each feature set approximates its manifold by the union of balls centred at its points with radius
the distance to the point's k-th nearest neighbour in the same set (k = 3; the point itself not
counted):

    f(phi, Phi) = 1  if  ||phi - phi'|| <= NND_k(phi')  for some phi' in Phi,  else 0
    precision = mean_{phi_g in Phi_g} f(phi_g, Phi_r),   recall = mean_{phi_r in Phi_r} f(phi_r, Phi_g)

Precision is the fraction of generated samples inside the real manifold (fidelity), recall the
fraction of real samples inside the generated one (diversity: mode dropping lowers it while FID
may hardly move). Pairwise squared distances are computed on the device in row blocks of
`block_size` x (size of the other set), in the dtype of the features.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _sq_dists(a, b, b_sq):
    """||a_i - b_j||^2 = |a_i|^2 - 2 a_i . b_j + |b_j|^2, clipped at 0 (round-off)."""
    a_sq = jnp.sum(a * a, axis=1, keepdims=True)
    ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(a_sq - 2.0 * ab + b_sq[None, :], 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_block(rows, points, points_sq, *, k):
    d2 = _sq_dists(rows, points, points_sq)
    return -jax.lax.top_k(-d2, k + 1)[0][:, k]  # (k+1)-th smallest: the row itself is the 1st


@jax.jit
def _covered_block(rows, points, points_sq, radii_sq):
    return jnp.any(_sq_dists(rows, points, points_sq) <= radii_sq[None, :], axis=1)


def _blocks(fn, x, block_size, *args):
    """fn(block of rows of x, *args) for fixed-size blocks (last one zero-padded, then cut)."""
    n = x.shape[0]
    out = []
    for i in range(0, n, block_size):
        rows = x[i:i + block_size]
        m = rows.shape[0]
        if m < block_size and n > block_size:
            rows = jnp.concatenate([rows, jnp.zeros((block_size - m, x.shape[1]), x.dtype)])
        out.append(np.asarray(fn(rows, *args))[:m])
    return np.concatenate(out)


def _check(name, x):
    x = jnp.asarray(x)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be float features of shape (N, F), got {x.dtype} {x.shape}")
    return x


def knn_radii_sq(features_NF, k: int = 3, block_size: int = 1024) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row of the same set, (N,)."""
    x = _check("features", features_NF)
    if not isinstance(k, (int, np.integer)) or not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be an integer in [1, N - 1] = [1, {x.shape[0] - 1}], got {k!r}")
    x_sq = jnp.sum(x * x, axis=1)
    return _blocks(functools.partial(_kth_block, k=int(k)), x, block_size, x, x_sq)


def manifold_coverage(query_QF, points_NF, radii_sq_N, block_size: int = 1024) -> np.ndarray:
    """(Q,) bool: query row inside at least one ball (points_j, sqrt(radii_sq_j))."""
    q, p = _check("query", query_QF), _check("points", points_NF)
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"query and points must have the same feature size, got {q.shape} "
                         f"and {p.shape}")
    r = jnp.asarray(radii_sq_N, p.dtype)
    if r.shape != (p.shape[0],):
        raise ValueError(f"radii_sq must have shape ({p.shape[0]},), got {r.shape}")
    return _blocks(_covered_block, q, block_size, p, jnp.sum(p * p, axis=1), r)


def precision_recall(real_NF, fake_MF, k: int = 3, block_size: int = 1024) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` against `real` (Kynkäänniemi et al.
    2019, k-NN balls with k = 3 by default). Use equally many real and generated samples (the
    paper uses 50,000 of each); both sets are held on the device."""
    real, fake = _check("real", real_NF), _check("fake", fake_MF)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same feature size, got {real.shape} "
                         f"and {fake.shape}")
    precision = manifold_coverage(fake, real, knn_radii_sq(real, k, block_size), block_size)
    recall = manifold_coverage(real, fake, knn_radii_sq(fake, k, block_size), block_size)
    return float(np.mean(precision)), float(np.mean(recall))
