"""DDPM (Ho et al. 2020): forward noising, L_simple and ancestral sampling on a DiscreteVP schedule.

Time convention: step i in {1, ..., T} is t = i / T in [0, 1] (t = 0 is data). `eps_fn(x_t, t)` is any
function of the noisy batch x_t [B, ...] and t [B] (float32) returning the predicted noise, same shape
as x_t; the caller closes over the network.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jaxgen import _checks
from jaxgen.diffusion.processes import DiscreteVP, broadcast_to_batch

Array = Any
EpsFn = Callable[[Array, Array], Array]

__all__ = ["q_sample", "ddpm_loss", "ddpm_sample", "ddpm_posterior", "VARIANCES"]

VARIANCES = ("beta", "beta_tilde")


def _check_steps(schedule: DiscreteVP, i, low: int, validate) -> None:
    """Integer steps in [low, T]. Concrete i: ValueError; traced i: unchecked unless validate=True (checkify)."""
    if not jnp.issubdtype(jnp.result_type(i), jnp.integer):
        raise ValueError(f"i must be integer steps in [{low}, {schedule.num_steps}], got dtype {jnp.result_type(i)}")
    T = schedule.num_steps
    _checks.values("i", i, lambda xp, v: (v >= low) & (v <= T), f"integer steps in [{low}, {T}]", validate=validate)


def q_sample(schedule: DiscreteVP, x0: Array, i: Array, eps: Array, *, validate: bool | None = None) -> Array:
    """Forward noising x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps.

    x0, eps: [B, ...]; i: integer steps [B] in {0, ..., T} (0 returns x0) or a scalar.
    A concrete i outside [0, T] raises ValueError. Under jit (traced i) it is not checked unless
    validate=True (checkify): jnp indexing then clamps i > T to T and wraps negative i from the end.
    """
    chex.assert_equal_shape([x0, eps])
    _check_steps(schedule, i, 0, validate)
    i = jnp.asarray(i)
    if i.ndim:
        chex.assert_shape(i, (x0.shape[0],))
    a = schedule.sqrt_alphas_cumprod[i]
    s = schedule.sqrt_one_minus_alphas_cumprod[i]
    return broadcast_to_batch(a, x0).astype(x0.dtype) * x0 + broadcast_to_batch(s, x0).astype(x0.dtype) * eps


def ddpm_posterior(schedule: DiscreteVP, x0: Array, x_t: Array, i: Array, *,
                   validate: bool | None = None) -> tuple[Array, Array]:
    """q(x_{i-1} | x_i, x0) = N(mean, var I):

    mean = beta_i sqrt(abar_{i-1}) / (1 - abar_i) x0 + (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i) x_i,
    var  = beta_tilde_i = beta_i (1 - abar_{i-1}) / (1 - abar_i).   Returns (mean [B, ...], var [B] or scalar).
    i: integer steps in [1, T]; checked as in `q_sample` (concrete: ValueError; traced: validate=True).
    """
    chex.assert_equal_shape([x0, x_t])
    _check_steps(schedule, i, 1, validate)
    c0 = broadcast_to_batch(schedule.posterior_mean_coef_x0[i], x0)
    ct = broadcast_to_batch(schedule.posterior_mean_coef_xt[i], x0)
    return c0 * x0 + ct * x_t, schedule.posterior_variance[i]


def ddpm_loss(eps_fn: EpsFn, schedule: DiscreteVP, x0: Array, key: Array) -> Array:
    """L_simple = mean over all elements of (eps - eps_fn(x_i, i / T))^2, i ~ U{1..T}, eps ~ N(0, I).

    One step i per example. Returns a float32 scalar.
    """
    chex.assert_rank(x0, {1, 2, 3, 4, 5, 6})
    k_i, k_eps = jax.random.split(key)
    b = x0.shape[0]
    i = jax.random.randint(k_i, (b,), 1, schedule.num_steps + 1)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, i, eps, validate=False)  # i in [1, T] by construction
    pred = eps_fn(x_t, schedule.step_to_time(i))
    chex.assert_equal_shape([pred, eps])
    return jnp.mean(jnp.square(eps.astype(jnp.float32) - pred.astype(jnp.float32)))


def _reverse_variance(schedule: DiscreteVP, variance: str) -> Array:
    if variance == "beta":
        return schedule.betas
    if variance == "beta_tilde":
        return schedule.posterior_variance
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def ddpm_sample(
    eps_fn: EpsFn,
    schedule: DiscreteVP,
    shape: tuple[int, ...],
    key: Array,
    variance: str = "beta",
    clip_x0: float | None = None,
    dtype=jnp.float32,
) -> Array:
    """Ancestral sampling over all T steps (jax.lax.scan; jit-able with shape/variance/clip static).

    x_T ~ N(0, I); for i = T, ..., 1:
        eps_hat = eps_fn(x_i, i / T)
        mean    = (x_i - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i)
                 (= posterior mean with x0_hat = (x_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i))
        x_{i-1} = mean + sqrt(v_i) z,   v_i = beta_i ('beta', "large") or beta_tilde_i ('beta_tilde', "small"),
    and no noise at the last step (returns the mean at i = 1, i.e. x at t = 0).

    clip_x0: None (default, no clipping) or c > 0: x0_hat is clipped to [-c, c] and the mean is taken
    from the posterior formula (the DDPM reference code clips to [-1, 1] for images in [-1, 1]).
    """
    var = _reverse_variance(schedule, variance)
    _checks.optional_number("clip_x0", clip_x0, low=0, low_open=True)
    shape = _checks.shape_tuple("shape", shape)
    b = shape[0]
    k_init, k_loop = jax.random.split(key)
    x_T = jax.random.normal(k_init, shape, dtype)
    steps = jnp.arange(schedule.num_steps, 0, -1)
    keys = jax.random.split(k_loop, schedule.num_steps)

    def body(x, inp):
        i, k = inp
        t = jnp.full((b,), schedule.step_to_time(i), jnp.float32)
        eps_hat = eps_fn(x, t).astype(dtype)
        if clip_x0 is None:
            mean = (x - (schedule.betas[i] / schedule.sqrt_one_minus_alphas_cumprod[i]) * eps_hat) / jnp.sqrt(
                schedule.alphas[i]
            )
        else:
            x0_hat = (x - schedule.sqrt_one_minus_alphas_cumprod[i] * eps_hat) / schedule.sqrt_alphas_cumprod[i]
            x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
            mean = schedule.posterior_mean_coef_x0[i] * x0_hat + schedule.posterior_mean_coef_xt[i] * x
        z = jax.random.normal(k, shape, dtype)
        noise_scale = jnp.where(i > 1, jnp.sqrt(var[i]), 0.0)
        return (mean + noise_scale * z).astype(dtype), None

    x0, _ = jax.lax.scan(body, x_T, (steps, keys))
    return x0
