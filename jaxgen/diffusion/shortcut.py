"""Shortcut models (Frans et al. 2024): a flow model conditioned on its step size.

Time convention. The paper puts noise at tau = 0 and data at tau = 1, x_tau = (1 - tau) noise + tau data, and
steps forward, x_{tau + d} = x_tau + d s_paper. This package puts data at t = 0 (the `RectifiedFlow` process):

    x_t = (1 - t) x0 + t eps,    t = 1 - tau,    s = -s_paper  (the rectified-flow velocity eps - x0),
    a step of size d goes from t to t - d:  x_{t-d} = x_t - d s(x_t, t, d).

Everything below (and the network's time input t) is in the package convention.

Training batch (the paper's objective, with the EMA weights giving the self-consistency targets):

    flow-matching rows:       || s(x_t, t, 0) - (eps - x0) ||^2,  t uniform on {1/M, 2/M, ..., 1}
    self-consistency rows:    || s(x_t, t, 2d) - sg[(s(x_t, t, d) + s(x', t - d, d)) / 2] ||^2,
                              x' = x_t - d s(x_t, t, d),  t uniform on {2d, 4d, ..., 1}  (so t - 2d >= 0)

with M = num_base_steps (128) base steps. The step size is given to the network as log2(1/d) in
{0, 1, ..., log2 M}; "d = 0" (the flow) is the base step 1/M, embedded as log2 M, as in the reference code, so
the finest shortcut (2d = 2/M) is built from two flow steps. The self-consistency rows cycle through the
levels 2d = 1, 1/2, ..., 2/M, so every level gets at least one row in every batch (the reference code gives
each level B/(8 log2 M) rows, rounded down: zero for batches under 56, leaving most step sizes untrained).

Prediction functions: `apply(params, x, t [B], log2_inv_d [B], key) -> s [B, ...]` (key: dropout, or None).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks
from jaxgen.diffusion.processes import broadcast_to_batch

Array = Any

__all__ = [
    "shortcut_levels",
    "shortcut_batch_split",
    "shortcut_rows",
    "shortcut_targets",
    "shortcut_loss",
    "shortcut_sample",
]


def shortcut_levels(num_base_steps: int = 128) -> int:
    """L = log2(num_base_steps); the step sizes are d = 2^-l, l = 0..L (l = L: the flow's base step)."""
    m = _checks.number("num_base_steps", num_base_steps, integer=True, low=2)
    if m & (m - 1):
        raise ValueError(f"num_base_steps must be a power of two >= 2, got {num_base_steps!r}")
    return int(math.log2(m))


def shortcut_batch_split(batch_size: int, num_base_steps: int = 128, bootstrap_fraction: float = 0.25
                         ) -> np.ndarray:
    """Levels of the self-consistency rows (host-side, int64): the first n rows of a batch, with
    n = max(L, round(bootstrap_fraction B)) and row j at level j mod L (target step 2d = 2^-level); the
    other B - n rows are flow-matching rows. Every level 0..L-1 gets floor(n/L) or ceil(n/L) >= 1 rows."""
    L = shortcut_levels(num_base_steps)
    b = _checks.number("batch_size", batch_size, integer=True, low=L + 1,
                       accepted=f"an integer >= {L + 1} (one row per step size {L} and one flow row)")
    frac = _checks.number("bootstrap_fraction", bootstrap_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n = min(max(L, int(round(frac * b))), b - 1)
    return np.arange(n) % L


def shortcut_rows(key: Array, batch_size: int, num_base_steps: int = 128, bootstrap_fraction: float = 0.25
                  ) -> dict:
    """Times and step levels of one batch: {'t' [B], 'level' [B] (log2(1/d), float), 'num_sc' (static int)}.

    Rows [0, num_sc): self-consistency at target step 2d = 2^-level (level = `shortcut_batch_split`), t = k 2d,
    k uniform in {1, ..., 2^level}. Rows [num_sc, B): flow matching, level log2 M, t = k / M, k in {1..M}.
    """
    L = shortcut_levels(num_base_steps)
    sc_levels = shortcut_batch_split(batch_size, num_base_steps, bootstrap_fraction)
    n_sc, n_fm = sc_levels.size, batch_size - sc_levels.size
    k_sc, k_fm = jax.random.split(key)
    sections = jnp.asarray(2.0**sc_levels, jnp.float32)  # 1 / (2d)
    t_sc = (jax.random.randint(k_sc, (n_sc,), 0, 2**sc_levels) + 1) / sections
    t_fm = (jax.random.randint(k_fm, (n_fm,), 0, num_base_steps) + 1) / num_base_steps
    t = jnp.concatenate([t_sc, t_fm]).astype(jnp.result_type(float))
    level = jnp.concatenate([jnp.asarray(sc_levels, jnp.float32), jnp.full((n_fm,), float(L))])
    return {"t": t, "level": level.astype(jnp.result_type(float)), "num_sc": int(n_sc)}


def shortcut_targets(s_fn: Callable, x0: Array, eps: Array, rows: dict) -> tuple[Array, Array]:
    """(x_t, target) for the rows of `shortcut_rows`, x_t = (1 - t) x0 + t eps, target under stop_gradient:

    flow rows: eps - x0.  Self-consistency rows (level l, 2d = 2^-l, d = 2^-(l+1)):
        v1 = s_fn(x_t, t, l + 1),  v2 = s_fn(x_t - d v1, t - d, l + 1),  target = (v1 + v2) / 2.
    s_fn(x, t [B], log2_inv_d [B]) is the target network (the EMA weights, no dropout).
    """
    t, level, n = rows["t"].astype(x0.dtype), rows["level"].astype(x0.dtype), rows["num_sc"]
    x_t = broadcast_to_batch(1.0 - t, x0) * x0 + broadcast_to_batch(t, x0) * eps
    target = eps - x0
    if n:
        xs, ts, half_level = x_t[:n], t[:n], level[:n] + 1.0
        d = jnp.exp2(-half_level)
        v1 = s_fn(xs, ts, half_level)
        v2 = s_fn(xs - broadcast_to_batch(d, xs) * v1, ts - d, half_level)
        target = jnp.concatenate([0.5 * (v1 + v2), target[n:]], 0)
    return x_t, jax.lax.stop_gradient(target)


def shortcut_loss(apply: Callable, params, ema_params, x0: Array, key: Array, num_base_steps: int = 128,
                  bootstrap_fraction: float = 0.25, noise: Array | None = None) -> tuple[Array, dict]:
    """Shortcut-model loss: mean over the batch of ||s_theta(x_t, t, d) - target||^2 (mean over dimensions),
    targets from `shortcut_targets` with the EMA weights; returns (loss, {'loss_fm', 'loss_sc'}).
    noise: the eps paired with each x0 (e.g. ReFlow pairs); default independent N(0, I)."""
    k_rows, k_eps, k_drop = jax.random.split(key, 3)
    rows = shortcut_rows(k_rows, x0.shape[0], num_base_steps, bootstrap_fraction)
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}")
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype) if noise is None else noise.astype(x0.dtype)
    x_t, target = shortcut_targets(lambda x, t, lv: apply(ema_params, x, t, lv, None), x0, eps, rows)
    pred = apply(params, x_t, rows["t"].astype(x0.dtype), rows["level"].astype(x0.dtype), k_drop)
    per_row = jnp.mean(((pred - target) ** 2).reshape(x0.shape[0], -1), -1)
    n = rows["num_sc"]
    return jnp.mean(per_row), {"loss_sc": jnp.mean(per_row[:n]), "loss_fm": jnp.mean(per_row[n:])}


def shortcut_sample(s_fn: Callable, x_noise: Array, num_steps: int, num_base_steps: int = 128) -> Array:
    """Sample with n = num_steps equal steps d = 1/n (a power of two, 1..num_base_steps) from t = 1 to 0:
    x_{t - d} = x_t - d s_fn(x_t, t, log2 n). One step: x0 = eps - s_fn(eps, 1, 0)."""
    shortcut_levels(num_base_steps)
    n = _checks.number("num_steps", num_steps, integer=True, low=1, high=num_base_steps)
    if n & (n - 1):
        raise ValueError(f"num_steps must be a power of two in [1, {num_base_steps}], got {num_steps!r}")
    b, dt = x_noise.shape[0], x_noise.dtype
    level = jnp.full((b,), math.log2(n), dt)

    def body(x, k):
        t = jnp.full((b,), 1.0, dt) - k.astype(dt) / n
        return x - s_fn(x, t, level).astype(dt) / n, None

    x, _ = jax.lax.scan(body, x_noise, jnp.arange(n))
    return x
