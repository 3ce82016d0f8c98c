"""Rectified flow (Liu et al. 2023, "Flow straight and fast"): velocity loss, reflow pairs, straightness, distillation.

Time convention of jaxgen: t = 0 is data x0, t = 1 is noise x1 ~ N(0, I) (the paper has noise at t = 0
and data at t = 1; every formula below is the paper's with t -> 1 - t, so the velocity changes sign):

    x_t = (1 - t) x0 + t x1,      dx_t/dt = x1 - x0,      sampling integrates dx/dt = v(x, t) from t = 1 to 0.

k-RF: the 1-RF is trained on independent pairs (x0 ~ data, x1 ~ N(0, I)); the (k+1)-RF on the pairs
(x1, x0 = ODE_k(x1)) of the k-RF's own ODE ("reflow"), which straightens the paths: the (k+1)-RF's
coupling is the same deterministic map, with no larger convex transport cost (Liu et al. 2023).

    velocity loss     L(v) = E_{t ~ U(0, 1)} E ||(x1 - x0) - v(x_t, t)||^2      (minimiser E[x1 - x0 | x_t])
    straightness      S(v) = int_0^1 E ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt         (Z the ODE's own path)
    distillation      L(G) = E ||G(x1) - ODE_k(x1)||^2   for a one-step generator G (l2;
                      the paper also uses LPIPS, which needs pretrained weights: pass it as `distance_fn`).

A straight flow (S = 0) is solved exactly by one Euler step, x0 = x1 - v(x1, 1).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import chex
import jax
import jax.numpy as jnp

from jaxgen.diffusion.interpolants import flow_solve, uniform_grid
from jaxgen.diffusion.processes import broadcast_to_batch

Array = Any

__all__ = [
    "rf_interpolate",
    "rf_velocity_loss",
    "reflow_pairs",
    "num_pair_batches",
    "straightness",
    "one_step_generator",
    "distill_loss",
]


def _sum_sq(v):
    return jnp.sum(jnp.square(v).reshape(v.shape[0], -1), -1)


def rf_interpolate(x0: Array, x1: Array, t: Array) -> Array:
    """x_t = (1 - t) x0 + t x1 with x0 (data), x1 (noise) [B, ...] and t [B] (or a scalar)."""
    chex.assert_equal_shape([x0, x1])
    t = broadcast_to_batch(jnp.asarray(t, x0.dtype), x0)
    return (1.0 - t) * x0 + t * x1


def rf_velocity_loss(velocity_fn: Callable, x0: Array, x1: Array, t: Array) -> Array:
    """Per-example ||(x1 - x0) - v(x_t, t)||^2 summed over dimensions, shape [B], x_t = (1 - t) x0 + t x1.

    velocity_fn(x [B, ...], t [B]) -> dx/dt [B, ...]. 1-RF: x0 ~ data, x1 ~ N(0, I) independent, t ~ U(0, 1);
    (k+1)-RF: (x1, x0) a pair from `reflow_pairs`. Average over the batch for the training loss.
    """
    chex.assert_equal_shape([x0, x1])
    t = jnp.asarray(t, x0.dtype)
    chex.assert_shape(t, (x0.shape[0],))
    x_t = rf_interpolate(x0, x1, t)
    return _sum_sq((x1 - x0) - velocity_fn(x_t, t))


def num_pair_batches(num_pairs: int, batch_size: int) -> int:
    """ceil(num_pairs / batch_size), the number of batches `reflow_pairs` yields from index 0."""
    if int(num_pairs) < 1 or int(batch_size) < 1:
        raise ValueError(f"num_pairs and batch_size must be >= 1, got {num_pairs}, {batch_size}")
    return -(-int(num_pairs) // int(batch_size))


def reflow_pairs(sample_fn: Callable, key: Array, num_pairs: int, batch_size: int, noise_shape: tuple[int, ...],
                 start_batch: int = 0, dtype=jnp.float32) -> Iterator[tuple[int, Array, Array]]:
    """Generate the reflow coupling (x1, x0 = ODE_k(x1)) batch by batch: yields (index, x1, x0).

    Batch `index` uses the noise x1 = N(0, I) drawn from fold_in(key, index), shape [batch_size, *noise_shape]
    (the last batch is cut to the remaining pairs), and x0 = sample_fn(x1), the teacher's ODE solve from t = 1
    to 0 (e.g. `flow_solve` / `flow_solve_adaptive` on the k-RF velocity, jitted by the caller). Batches are
    independent of each other, so a run restarted at `start_batch` yields exactly the batches a full run
    would have yielded from there: the caller writes each batch (a shard) and records the next index.
    """
    n_batches = num_pair_batches(num_pairs, batch_size)
    if not 0 <= int(start_batch) <= n_batches:
        raise ValueError(f"start_batch must be in [0, {n_batches}], got {start_batch}")
    for index in range(int(start_batch), n_batches):
        x1 = jax.random.normal(jax.random.fold_in(key, index), (int(batch_size),) + tuple(noise_shape), dtype)
        x0 = sample_fn(x1)
        chex.assert_equal_shape([x0, x1])
        keep = min(int(batch_size), int(num_pairs) - index * int(batch_size))
        yield index, x1[:keep], x0[:keep]


def straightness(velocity_fn: Callable, x1: Array, num_steps: int = 64, solver: str = "heun") -> Array:
    """S = int_0^1 ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt per trajectory, shape [B] (sum over dimensions).

    Z solves dZ/dt = v(Z, t) from Z_1 = x1 at t = 1 to Z_0 at t = 0 with `solver` on 2 num_steps uniform
    intervals; the time integral is the midpoint rule over num_steps intervals (v at the odd grid points).
    In jaxgen's direction Z_1 - Z_0 (noise end minus data end) is the slope of the straight path, so S = 0
    exactly when every trajectory is a straight line traversed at constant speed. Average over the batch
    for the paper's E; cost 2 num_steps (euler) or 4 num_steps (heun) + num_steps evaluations.
    """
    ts = uniform_grid(2 * int(num_steps), 1.0, 0.0)
    z0, traj = flow_solve(velocity_fn, x1, ts, solver, return_trajectory=True)
    slope = x1 - z0
    mids, t_mid = traj[1::2], jnp.asarray(ts[1::2], x1.dtype)

    def one(_, zt):
        z, t = zt
        return None, _sum_sq(slope - velocity_fn(z, jnp.full((z.shape[0],), t, z.dtype)))

    _, per = jax.lax.scan(one, None, (mids, t_mid))
    return jnp.mean(per, 0)


def one_step_generator(velocity_fn: Callable) -> Callable:
    """G(x1) = x1 - v(x1, 1): one Euler step from t = 1 to t = 0 (exact for a straight flow)."""

    def G(x1):
        return x1 - velocity_fn(x1, jnp.ones((x1.shape[0],), x1.dtype))

    return G


def distill_loss(generator_fn: Callable, x1: Array, x0: Array, distance_fn: Callable | None = None) -> Array:
    """Per-example distance between G(x1) and the teacher's ODE output x0, shape [B].

    distance_fn(a, b) -> [B]; default the squared l2 norm ||G(x1) - x0||^2 (summed over dimensions). Liu et al.
    use LPIPS for images; it needs pretrained VGG/AlexNet weights, so pass it here when available.
    """
    chex.assert_equal_shape([x0, x1])
    g = generator_fn(x1)
    chex.assert_equal_shape([g, x0])
    return _sum_sq(g - x0) if distance_fn is None else distance_fn(g, x0)

