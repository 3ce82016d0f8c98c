"""The discrete DDPM's variational bound (DDPM as a hierarchical VAE; Ho et al. 2020, Nichol & Dhariwal 2021).

For data x0 with D dimensions, the forward chain q and the reverse model
p(x_{t-1} | x_t) = N(mu(x_t, t), sigma_t^2 I), mu = (x_t - beta_t / sqrt(1 - abar_t) eps_hat(x_t, t)) / sqrt(alpha_t),

    -log p(x0) <= L = L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T     = KL(q(x_T | x0) || N(0, I))                = 1/2 sum_i [(1 - abar_T) + abar_T x0_i^2 - 1 - log(1 - abar_T)]
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
            = E_q 1/2 sum_i [log(sigma_t^2 / beta_tilde_t) + beta_tilde_t / sigma_t^2 - 1 + (mu_tilde_i - mu_i)^2 / sigma_t^2]
    L_0     = -E_q log p(x0 | x1),

with mu_tilde the posterior mean (`DiscreteVP.posterior_mean_coef_*`). The decoder p(x0 | x1) is

    'discretized'  Ho et al.'s discretised Gaussian for data on the grid {-1, -1 + w, ..., 1}, w = 2 / 255:
                   prod_i [Phi((x0_i + w/2 - mu_i) / sigma_1) - Phi((x0_i - w/2 - mu_i) / sigma_1)], with the
                   outer edges at -inf (x0_i = -1) and +inf (x0_i = 1): a probability, so L bounds -log P(x0)
                   of the discrete data and bits/dim are comparable to the discrete data's entropy.
    'gaussian'     the continuous N(x0; mu(x1, 1), sigma_1^2 I): L bounds -log p(x0) of a density.

Each L_{t-1} is estimated with one x_t ~ q(x_t | x0) per example and step (all T steps per example, as
Nichol & Dhariwal's `calc_bpd_loop`); L_T is exact. Reverse variances sigma_t^2:

    'beta'        beta_t          ("fixedlarge")
    'beta_tilde'  beta_tilde_t    ("fixedsmall")
    an array [T]  sigma_t^2 for t = 1..T, e.g. `analytic_vb_variance` (Bao et al. 2022, Analytic-DPM).

For 'beta' and 'beta_tilde' the decoder variance at t = 1 is beta_tilde_2 (beta_tilde_1 = 0), as in Ho et
al.'s and Nichol & Dhariwal's code. Results are in nats per example; `bpd` is total / (D ln 2).

A data set's bits/dim in batches, each example with its own key (the result independent of the batch size and
the devices): `dataset_vb_bpd` (this bound) and `dataset_ode_bpd` (the probability-flow ODE's likelihood of
`score_matching.ode_log_likelihood`, for any process, with uniform dequantisation of grid data).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.analytic_dpm import analytic_variance
from jaxgen.diffusion.ddpm import q_sample
from jaxgen.diffusion.processes import DiscreteVP

Array = Any

__all__ = [
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "vb_reverse_variances",
    "analytic_vb_variance",
    "ddpm_vb",
    "dataset_vb_bpd",
    "dataset_ode_bpd",
    "DECODERS",
]

DECODERS = ("discretized", "gaussian")


def _log_prob_between(lo: Array, hi: Array) -> Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), stable in both tails."""
    upper = lo > 0  # both in the upper tail: use the symmetry Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    a = jnp.where(upper, -hi, lo)
    b = jnp.where(upper, -lo, hi)
    lb, la = jax.scipy.special.log_ndtr(b), jax.scipy.special.log_ndtr(a)
    return lb + jnp.log1p(-jnp.exp(jnp.minimum(la - lb, 0.0)))


def discretized_gaussian_log_likelihood(x: Array, mean: Array, var: Array, bin_width: float = 2.0 / 255,
                                        low: float = -1.0, high: float = 1.0) -> Array:
    """Elementwise log P(x) of N(mean, var) discretised to bins of width `bin_width` centred on the grid
    {low, low + bin_width, ..., high}: log[Phi((x + w/2 - mean) / s) - Phi((x - w/2 - mean) / s)], s = sqrt(var),
    with the lower edge at -inf for x = low and the upper edge at +inf for x = high (Ho et al. 2020, Sec. 3.3)."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    s = jnp.sqrt(var)
    half = 0.5 * bin_width
    lo = jnp.where(x <= low + 1e-3 * bin_width, -jnp.inf, (x - half - mean) / s)
    hi = jnp.where(x >= high - 1e-3 * bin_width, jnp.inf, (x + half - mean) / s)
    return _log_prob_between(lo, hi)


def gaussian_log_likelihood(x: Array, mean: Array, var: Array) -> Array:
    """Elementwise log N(x; mean, var) = -1/2 [log(2 pi var) + (x - mean)^2 / var]."""
    return -0.5 * (jnp.log(2.0 * math.pi * var) + jnp.square(x - mean) / var)


def vb_reverse_variances(schedule: DiscreteVP, variance: Any = "beta_tilde") -> np.ndarray:
    """sigma_t^2 for t = 1..T (float64 [T]): 'beta', 'beta_tilde' (both with sigma_1^2 = beta_tilde_2), or an
    array [T] of positive variances returned as given (a traced array is passed through, shape-checked)."""
    T = schedule.num_steps
    if isinstance(variance, str):
        if variance not in ("beta", "beta_tilde"):
            raise ValueError(f"variance must be 'beta', 'beta_tilde' or an array of shape [{T}], got {variance!r}")
        if T < 2:
            raise ValueError(f"the '{variance}' decoder variance beta_tilde_2 needs num_steps >= 2, got {T}")
        src = schedule.betas if variance == "beta" else schedule.posterior_variance
        var = np.array(src, np.float64)[1:]
        var[0] = np.asarray(schedule.posterior_variance, np.float64)[2]
        return var
    if isinstance(variance, jax.core.Tracer):  # a traced array (jit argument): shape check only
        if variance.shape != (T,):
            raise ValueError(f"variance array must have shape [{T}] (t = 1..T), got {variance.shape}")
        return variance
    var = np.asarray(variance, np.float64)
    if var.shape != (T,):
        raise ValueError(f"variance array must have shape [{T}] (t = 1..T), got {var.shape}")
    if not np.all(var > 0):
        raise ValueError(f"variance array must be positive, got min {var.min()} at t = {int(np.argmin(var)) + 1}")
    return var


def analytic_vb_variance(schedule: DiscreteVP, gamma, data_range: float | None = 2.0) -> np.ndarray:
    """Analytic-DPM's optimal variances sigma_t^2 for t = 1..T (float64 [T]) for the full chain (eta = 1):

        t >= 2:  beta_tilde_t + (sqrt(beta_t / alpha_t) - sqrt(1 - abar_{t-1} - beta_tilde_t))^2 (1 - Gamma_t)
        t = 1:   Cov[x0 | x1] = ((1 - abar_1) / abar_1) (1 - Gamma_1)     (the optimal decoder variance)

    gamma: Gamma_t = E||eps_hat(x_t, t)||^2 / D at t = 1..T ([T], `estimate_gamma` with timesteps 1..T); the
    covariance (1 - abar_t) / abar_t (1 - Gamma_t) is clipped to [0, (data_range / 2)^2] (None: no upper clip).
    """
    T = schedule.num_steps
    g = np.asarray(gamma, np.float64)
    if g.shape != (T,):
        raise ValueError(f"gamma must have shape [{T}] (t = 1..T), got {g.shape}")
    var = analytic_variance(schedule, np.arange(1, T + 1), g, eta=1.0, data_range=data_range)
    abar1 = float(np.asarray(schedule.alphas_cumprod, np.float64)[1])
    cov1 = max((1.0 - abar1) / abar1 * (1.0 - g[0]), 0.0)
    var[0] = cov1 if data_range is None else min(cov1, (data_range / 2) ** 2)
    if not var[0] > 0:
        raise ValueError(f"the decoder variance (1 - abar_1) / abar_1 (1 - Gamma_1) is not positive: Gamma_1 = {g[0]}")
    return var


def ddpm_vb(eps_fn: Callable, schedule: DiscreteVP, x0: Array, key: Array, variance: Any = "beta_tilde",
            decoder: str = "discretized", bin_width: float = 2.0 / 255) -> dict[str, Array]:
    """The variational bound of a DDPM with eps-prediction eps_fn(x_t [B, ...], t [B]) at data x0 [B, ...].

    Returns a dict of per-example arrays (nats unless named bpd): 'prior' [B] (L_T), 'kl' [B, T - 1] (L_{t-1} for
    t = 2..T), 'decoder' [B] (L_0), 'total' [B] and 'bpd' [B] = total / (D ln 2). With the 'discretized'
    decoder x0 must lie on the grid {-1 + k bin_width} (k = 0 .. 2 / bin_width). jit-able; an array variance
    may be a jit argument.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    chex.assert_rank(x0, {2, 3, 4, 5})
    T = schedule.num_steps
    dt = x0.dtype
    var = jnp.asarray(vb_reverse_variances(schedule, variance), dt)  # [T], index t - 1
    b = x0.shape[0]
    num_dims = int(np.prod(x0.shape[1:]))
    abar_T = schedule.alphas_cumprod[T].astype(dt)

    def sum_dims(v):
        return jnp.sum(v.reshape(b, -1), -1)

    prior = 0.5 * sum_dims((1.0 - abar_T) + abar_T * jnp.square(x0) - 1.0 - jnp.log(1.0 - abar_T))

    def reverse_mean(x_t, i):
        eps_hat = eps_fn(x_t, jnp.full((b,), schedule.step_to_time(i), jnp.float32)).astype(dt)
        coef = (schedule.betas[i] / schedule.sqrt_one_minus_alphas_cumprod[i]).astype(dt)
        return (x_t - coef * eps_hat) / jnp.sqrt(schedule.alphas[i]).astype(dt)

    def step_kl(_, inp):
        i, k = inp
        x_t = q_sample(schedule, x0, jnp.full((b,), i), jax.random.normal(k, x0.shape, dt))
        mu = reverse_mean(x_t, i)
        mu_tilde = (schedule.posterior_mean_coef_x0[i].astype(dt) * x0
                    + schedule.posterior_mean_coef_xt[i].astype(dt) * x_t)
        bt, s2 = schedule.posterior_variance[i].astype(dt), var[i - 1]
        kl = 0.5 * (num_dims * (jnp.log(s2 / bt) + bt / s2 - 1.0) + sum_dims(jnp.square(mu_tilde - mu)) / s2)
        return None, kl

    k_dec, k_kl = jax.random.split(key)
    _, kl = jax.lax.scan(step_kl, None, (jnp.arange(2, T + 1), jax.random.split(k_kl, T - 1)))
    kl = kl.T  # [B, T - 1]

    x1 = q_sample(schedule, x0, jnp.ones((b,), jnp.int32), jax.random.normal(k_dec, x0.shape, dt))
    mu1 = reverse_mean(x1, 1)
    if decoder == "discretized":
        logp = discretized_gaussian_log_likelihood(x0, mu1, var[0], bin_width)
    else:
        logp = gaussian_log_likelihood(x0, mu1, var[0])
    dec = -sum_dims(logp)
    total = prior + jnp.sum(kl, -1) + dec
    return {"prior": prior, "kl": kl, "decoder": dec, "total": total, "bpd": total / (num_dims * math.log(2.0))}


# ----------------------------------------------------------------------------------------------
# A data set's bits/dim in batches (the diffusion task's eval.likelihood)
# ----------------------------------------------------------------------------------------------


def _batched_per_example(one: Callable, x: np.ndarray, key: Array, batch_size: int, sharding=None) -> np.ndarray:
    """[one(x[j], fold_in(key, j)) for j] (float64 [N]) in batches of `batch_size` (the last one padded), one
    jitted vmap for every batch; sharding: the batch's sharding (e.g. over a mesh; None: default device).
    Example j depends only on (x[j], key, j), so the result does not depend on batch_size or the devices."""
    x = np.asarray(x)
    n = len(x)
    if n < 1:
        raise ValueError("no examples given")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def run(xb, start):
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(batch_size))
        if sharding is not None:
            xb, keys = (jax.lax.with_sharding_constraint(a, sharding) for a in (xb, keys))
        return jax.vmap(one)(xb, keys)

    fn = jax.jit(run, out_shardings=sharding)
    out = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size]
        pad = batch_size - len(xb)
        if pad:
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
        vals = fn(xb, jnp.int32(start))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            vals = multihost_utils.process_allgather(vals, tiled=True)
        out.append(np.asarray(vals, np.float64)[:batch_size - pad])
    return np.concatenate(out)


def dataset_vb_bpd(eps_fn: Callable, schedule: DiscreteVP, x: Array, key: Array, *, variance: Any = "beta_tilde",
                   decoder: str = "discretized", bin_width: float = 2.0 / 255, batch_size: int = 128,
                   sharding=None) -> np.ndarray:
    """`ddpm_vb`'s bits/dim of every example of x [N, ...] (float64 [N]), in batches of batch_size.

    Example j is ddpm_vb(eps_fn, schedule, x[j:j+1], fold_in(key, j), ...)['bpd'][0]: the same for any batch
    size or device count. variance: as `ddpm_vb` ('beta', 'beta_tilde' or the array of `analytic_vb_variance`).
    """
    var = np.asarray(vb_reverse_variances(schedule, variance))  # checked once, a constant of the program

    def one(x0, k):
        return ddpm_vb(eps_fn, schedule, x0[None], k, var, decoder, bin_width)["bpd"][0]

    return _batched_per_example(one, x, key, batch_size, sharding)


def dataset_ode_bpd(denoise_fn: Callable, process, x: Array, key: Array, *, t_min: float = 1e-3,
                    t_max: float | None = None, bin_width: float | None = None, dequantize: bool = True,
                    batch_size: int = 128, sharding=None, **ode_kwargs) -> np.ndarray:
    """The probability-flow ODE's bits/dim of every example of x [N, ...] (float64 [N]), in batches.

    Example j, with k = fold_in(key, j) split into (k_deq, k_ode): with bin_width (data on a grid of that width,
    e.g. 2/255 for 8-bit images in [-1, 1]) and dequantize, u ~ U(-w/2, w/2)^D from k_deq is added (uniform
    dequantisation: E_u[-log p(x + u)] - D log w bounds -log P(x) of the discrete data; Song et al. 2021);
    then `bits_per_dim(ode_log_likelihood(denoise_fn, process, x_j[None], k_ode, t_min, t_max, ...), D,
    bin_width)`. t_max None: 1, or 1 - t_min where alpha(1) = 0 (rectified flow: sigma / alpha is infinite at
    t = 1). ode_kwargs: ode_log_likelihood's num_probes, exact_trace, rtol, atol, prior_var.
    """
    from jaxgen.diffusion.score_matching import bits_per_dim, ode_log_likelihood

    if t_max is None:
        with jax.ensure_compile_time_eval():
            t_max = 1.0 if float(process.alpha(jnp.float32(1.0))) > 0 else 1.0 - t_min
    num_dims = int(np.prod(np.shape(x)[1:]))

    def one(x0, k):
        k_deq, k_ode = jax.random.split(k)
        if bin_width is not None and dequantize:
            x0 = x0 + jax.random.uniform(k_deq, x0.shape, x0.dtype, -0.5 * bin_width, 0.5 * bin_width)
        logp = ode_log_likelihood(denoise_fn, process, x0[None], k_ode, t_min=t_min, t_max=t_max, **ode_kwargs)
        return bits_per_dim(logp, num_dims, bin_width)[0]

    return _batched_per_example(one, x, key, batch_size, sharding)
