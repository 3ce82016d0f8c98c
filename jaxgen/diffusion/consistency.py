"""Consistency models: CD, CT (Song et al. 2023) and improved CT, iCT (Song & Dhariwal 2023).

Noise levels are EDM's (Karras et al. 2022): x_sigma = x0 + sigma n, sigma in [sigma_min, sigma_max]. This is
the package's `EDM` process read through sigma = sigma_max t, so sigma grows with t (sigma_min is the data
end) and nothing is flipped. A teacher written for another process (t in [0, 1], x_t = alpha x0 + sigma eps)
enters through `edm_denoiser`, which converts at the edge.

The consistency function is parameterised so that the boundary condition holds by construction:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = sd (sigma - sigma_min) / sqrt(sd^2 + sigma^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),                  c_noise = log(sigma) / 4,

so f(x, sigma_min) = x exactly (c_skip = 1, c_out = 0 in floating point). `F` is a prediction function
`apply(params, x_in, c_noise, key) -> F` (key: dropout, or None), never a network object. The package's
nets scale their time input by 1000, which reproduces the reference code's 1000 log(sigma) / 4.

Training pairs sit on the Karras grid sigma_i = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) -
sigma_min^(1/rho)))^rho, i = 0..N-1 (increasing). A pair draws i in {0..N-2} and compares

    online  f_theta(x_hi, sigma_{i+1})        with    target  sg f_theta-(x_lo, sigma_i)
    CD:   x_hi = x0 + sigma_{i+1} z,  x_lo = one Euler or Heun step of the teacher's PF-ODE
          dx/dsigma = (x - D(x, sigma)) / sigma from sigma_{i+1} to sigma_i
    CT:   x_hi = x0 + sigma_{i+1} z,  x_lo = x0 + sigma_i z        (the same z: the teacher replaced by x0)

and theta- is an EMA of theta (CD: fixed mu; CT: mu(k) with the adaptive N(k)); iCT uses theta- = sg(theta).

Dropout: the online and target evaluations must use the same dropout mask (the reference code restores the
RNG state between them). Every loss here takes one key, splits off a single dropout key and hands that same
key to both evaluations, so a caller cannot give them different masks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.processes import Process, broadcast_to_batch

Array = Any
Apply = Callable[[Any, Array, Array, Any], Array]

__all__ = [
    "ConsistencySpec",
    "karras_sigma",
    "consistency_function",
    "gaussian_consistency_function",
    "edm_denoiser",
    "pf_ode_step",
    "consistency_sample",
    "consistency_sample_sigmas",
    "pseudo_huber",
    "cd_loss_terms",
    "cd_loss",
    "ct_loss_terms",
    "ct_loss",
    "ct_num_scales",
    "ct_target_ema",
    "ict_num_scales",
    "ict_sigma_probs",
    "ict_loss",
]


@dataclasses.dataclass(frozen=True)
class ConsistencySpec:
    """Noise range and preconditioning of a consistency model (defaults: Song et al. 2023, CIFAR-10)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")
        if not self.rho > 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")

    def scalings(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise) at sigma (see the module docstring)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / ((sigma - self.sigma_min) ** 2 + sd2)
        c_out = self.sigma_data * (sigma - self.sigma_min) / jnp.sqrt(sd2 + sigma**2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
        c_noise = 0.25 * jnp.log(sigma)
        return c_skip, c_out, c_in, c_noise


def _check_choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _check_num_scales(num_scales, lo=2):
    if isinstance(num_scales, (int, np.integer)) and num_scales < lo:
        raise ValueError(f"num_scales must be an integer >= {lo}, got {num_scales}")


def karras_sigma(i: Array, num_scales: Array, spec: ConsistencySpec = ConsistencySpec()) -> Array:
    """sigma_i = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 0..N-1.

    Increasing in i; i and N may be traced integers (N changes during CT / iCT training without recompiling).
    """
    _check_num_scales(num_scales)
    dtype = jnp.result_type(float)
    lo, hi = spec.sigma_min ** (1.0 / spec.rho), spec.sigma_max ** (1.0 / spec.rho)
    i = jnp.asarray(i)
    n = jnp.asarray(num_scales)
    frac = i.astype(dtype) / (n.astype(dtype) - 1.0)
    sigma = (lo + frac * (hi - lo)) ** spec.rho
    # the ends exactly (the rho-th power of the rho-th root is not exact in floating point)
    return jnp.where(i == 0, spec.sigma_min, jnp.where(i == n - 1, spec.sigma_max, sigma)).astype(dtype)


def consistency_function(apply: Apply, params, x: Array, sigma: Array, key=None,
                         spec: ConsistencySpec = ConsistencySpec()) -> Array:
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)); f(x, sigma_min) = x.

    apply(params, x_in [B, ...], c_noise [B], key) -> F [B, ...]; sigma: scalar or [B].
    """
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    c_skip, c_out, c_in, c_noise = spec.scalings(sigma)
    out = apply(params, broadcast_to_batch(c_in, x) * x, c_noise, key)
    return broadcast_to_batch(c_skip, x) * x + broadcast_to_batch(c_out, x) * out.astype(x.dtype)


def gaussian_consistency_function(x: Array, sigma: Array, mean: Array, std: float,
                                  sigma_min: float = 0.002) -> Array:
    """The exact consistency function for data N(mean, std^2 I) and x_sigma = x0 + sigma n.

    The PF-ODE dx/dsigma = (x - D)/sigma with D = mean + std^2 (x - mean)/(std^2 + sigma^2) keeps
    (x - mean)/sqrt(std^2 + sigma^2) constant, so its solution at sigma_min is
        f*(x, sigma) = mean + (x - mean) sqrt(std^2 + sigma_min^2) / sqrt(std^2 + sigma^2).
    """
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    k = jnp.sqrt(std**2 + sigma_min**2) / jnp.sqrt(std**2 + sigma**2)
    return mean + broadcast_to_batch(k, x) * (x - mean)


def edm_denoiser(denoise_fn: Callable, process: Process) -> Callable:
    """A teacher `denoise_fn(x, t)` = E[x0 | x_t = x] of `process` (package time: t = 0 data, t = 1 noise)
    as an EDM denoiser D(y, sigma) = E[x0 | x0 + sigma n = y]: with t(sigma) such that sigma(t)/alpha(t) = sigma,
    D(y, sigma) = denoise_fn(alpha(t) y, t)."""

    def D(y, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape[:1])
        t = process.time_of_sigma_ratio(sigma).astype(y.dtype)
        return denoise_fn(broadcast_to_batch(process.alpha(t), y).astype(y.dtype) * y, t).astype(y.dtype)

    return D


def pf_ode_step(denoise: Callable, x: Array, sigma_from: Array, sigma_to: Array, solver: str = "heun") -> Array:
    """One step of the EDM probability-flow ODE dx/dsigma = (x - D(x, sigma))/sigma (Karras et al. 2022):

    euler:  x' = x + (s1 - s0) d0,             d0 = (x - D(x, s0)) / s0
    heun:   x' = x + (s1 - s0) (d0 + d1) / 2,  d1 = (x_e - D(x_e, s1)) / s1 at the Euler point x_e.
    denoise(x [B, ...], sigma [B]); sigma_from / sigma_to: scalars or [B] (sigma_to > 0).
    """
    _check_choice("solver", solver, ("euler", "heun"))
    b = x.shape[0]
    s0 = jnp.broadcast_to(jnp.asarray(sigma_from, x.dtype), (b,))
    s1 = jnp.broadcast_to(jnp.asarray(sigma_to, x.dtype), (b,))
    d0 = (x - denoise(x, s0)) / broadcast_to_batch(s0, x)
    x_e = x + broadcast_to_batch(s1 - s0, x) * d0
    if solver == "euler":
        return x_e
    d1 = (x_e - denoise(x_e, s1)) / broadcast_to_batch(s1, x)
    return x + broadcast_to_batch(s1 - s0, x) * 0.5 * (d0 + d1)


def consistency_sample_sigmas(num_steps: int, spec: ConsistencySpec = ConsistencySpec()) -> np.ndarray:
    """Default noise levels for multistep sampling: sigma_max followed by the interior points of the Karras
    (rho) grid with num_steps intervals, i.e. edm_sigmas(num_steps)[:-1] (float64, decreasing).
    The papers tune the intermediate levels per dataset (e.g. 0.821 for 2-step CD on CIFAR-10)."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    i = np.arange(num_steps) / num_steps
    hi, lo = spec.sigma_max ** (1 / spec.rho), spec.sigma_min ** (1 / spec.rho)
    return (hi + i * (lo - hi)) ** spec.rho


def consistency_sample(f: Callable, key: Array, shape: Sequence[int], sigmas: Sequence[float],
                       spec: ConsistencySpec = ConsistencySpec(), dtype=jnp.float32) -> Array:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1), one evaluation per level:

    x = f(sigma_0 z_0, sigma_0);  for each later level tau:  x = f(x + sqrt(tau^2 - sigma_min^2) z, tau).
    f(x [B, ...], sigma [B]) -> x0 estimate; sigmas: decreasing levels in (sigma_min, sigma_max], first one
    usually sigma_max (`consistency_sample_sigmas`).
    """
    sig = np.asarray(sigmas, np.float64)
    if sig.ndim != 1 or sig.size < 1 or np.any(np.diff(sig) >= 0) or sig[-1] <= spec.sigma_min:
        raise ValueError(f"sigmas must be a non-empty strictly decreasing sequence above sigma_min = "
                         f"{spec.sigma_min}, got {sig}")
    b = shape[0]
    keys = jax.random.split(key, sig.size)
    x = sig[0] * jax.random.normal(keys[0], tuple(shape), dtype)
    x = f(x, jnp.full((b,), sig[0], dtype))
    for k, tau in zip(keys[1:], sig[1:]):
        z = jax.random.normal(k, tuple(shape), dtype)
        x = f(x + math.sqrt(tau**2 - spec.sigma_min**2) * z, jnp.full((b,), tau, dtype))
    return x


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def pseudo_huber(a: Array, b: Array, c: float | None = None) -> Array:
    """Per-example pseudo-Huber distance sqrt(||a - b||^2 + c^2) - c (Song & Dhariwal 2023), norm over all
    non-batch dimensions; c defaults to 0.00054 sqrt(d), d the number of those dimensions."""
    d = int(np.prod(a.shape[1:]))
    if c is None:
        c = 0.00054 * math.sqrt(d)
    sq = jnp.sum(((a - b) ** 2).reshape(a.shape[0], -1), -1)
    return jnp.sqrt(sq + c**2) - c


def _distance(a, b, distance):
    if distance == "l2":  # mean over non-batch dims, as the reference code's mean_flat
        return jnp.mean(((a - b) ** 2).reshape(a.shape[0], -1), -1)
    _check_choice("distance", distance, ("l2", "pseudo_huber"))
    return pseudo_huber(a, b)


def _pair_terms(apply, params, target_params, x_hi, s_hi, x_lo, s_lo, dropout_key, spec, distance):
    """d(f_theta(x_hi, s_hi), sg f_theta-(x_lo, s_lo)), both evaluated with the same dropout key."""
    pred = consistency_function(apply, params, x_hi, s_hi, dropout_key, spec)
    target = jax.lax.stop_gradient(consistency_function(apply, target_params, x_lo, s_lo, dropout_key, spec))
    return _distance(pred, target, distance)


def _draw(key, x0, num_scales):
    k_idx, k_noise, k_drop = jax.random.split(key, 3)
    i = jax.random.randint(k_idx, x0.shape[:1], 0, jnp.asarray(num_scales) - 1)
    return i, jax.random.normal(k_noise, x0.shape, x0.dtype), k_drop


def cd_loss_terms(apply: Apply, params, target_params, x0: Array, noise: Array, i: Array, dropout_key,
                  teacher: Callable, num_scales, solver: str = "heun", spec: ConsistencySpec = ConsistencySpec(),
                  distance: str = "l2") -> Array:
    """Per-example consistency-distillation loss with explicit noise z [B, ...] and indices i [B] in {0..N-2}:

    x_hi = x0 + sigma_{i+1} z,  x_lo = PF-ODE step of the teacher D(x, sigma) from sigma_{i+1} to sigma_i,
    loss_b = d(f_theta(x_hi, sigma_{i+1}), sg f_theta-(x_lo, sigma_i)).
    """
    dt = x0.dtype
    s_hi = karras_sigma(i + 1, num_scales, spec).astype(dt)
    s_lo = karras_sigma(i, num_scales, spec).astype(dt)
    x_hi = x0 + broadcast_to_batch(s_hi, x0) * noise
    x_lo = jax.lax.stop_gradient(pf_ode_step(teacher, x_hi, s_hi, s_lo, solver))
    return _pair_terms(apply, params, target_params, x_hi, s_hi, x_lo, s_lo, dropout_key, spec, distance)


def cd_loss(apply: Apply, params, target_params, x0: Array, key: Array, teacher: Callable, num_scales: int = 18,
            solver: str = "heun", spec: ConsistencySpec = ConsistencySpec(), distance: str = "l2") -> Array:
    """Consistency distillation (Song et al. 2023, Algorithm 2), lambda = 1: the batch mean of `cd_loss_terms`
    with i ~ U{0..N-2}, z ~ N(0, I). N = 18 and an EMA target with mu = 0.95 are the CIFAR-10 settings."""
    _check_choice("solver", solver, ("euler", "heun"))
    _check_choice("distance", distance, ("l2", "pseudo_huber"))
    i, z, k_drop = _draw(key, x0, num_scales)
    return jnp.mean(cd_loss_terms(apply, params, target_params, x0, z, i, k_drop, teacher, num_scales, solver,
                                  spec, distance))


def ct_loss_terms(apply: Apply, params, target_params, x0: Array, noise: Array, i: Array, dropout_key, num_scales,
                  spec: ConsistencySpec = ConsistencySpec(), distance: str = "l2") -> Array:
    """Per-example consistency-training loss: x_hi = x0 + sigma_{i+1} z, x_lo = x0 + sigma_i z (shared z),
    loss_b = d(f_theta(x_hi, sigma_{i+1}), sg f_theta-(x_lo, sigma_i))."""
    dt = x0.dtype
    s_hi = karras_sigma(i + 1, num_scales, spec).astype(dt)
    s_lo = karras_sigma(i, num_scales, spec).astype(dt)
    x_hi = x0 + broadcast_to_batch(s_hi, x0) * noise
    x_lo = x0 + broadcast_to_batch(s_lo, x0) * noise
    return _pair_terms(apply, params, target_params, x_hi, s_hi, x_lo, s_lo, dropout_key, spec, distance)


def ct_loss(apply: Apply, params, target_params, x0: Array, key: Array, num_scales,
            spec: ConsistencySpec = ConsistencySpec(), distance: str = "l2") -> Array:
    """Consistency training (Song et al. 2023, Algorithm 3), lambda = 1: the batch mean of `ct_loss_terms` with
    i ~ U{0..N-2}; N = ct_num_scales(k) and the target EMA rate ct_target_ema(k) (N may be traced)."""
    _check_choice("distance", distance, ("l2", "pseudo_huber"))
    i, z, k_drop = _draw(key, x0, num_scales)
    return jnp.mean(ct_loss_terms(apply, params, target_params, x0, z, i, k_drop, num_scales, spec, distance))


def ct_num_scales(k: Array, total_steps: int, s0: int = 2, s1: int = 150) -> Array:
    """Adaptive N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 (Song et al. 2023, appendix C;
    s0 = 2, s1 = 150 on CIFAR-10); int32, k may be traced."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 1 <= s0 <= s1:
        raise ValueError(f"need 1 <= s0 <= s1, got s0={s0}, s1={s1}")
    kf = jnp.minimum(jnp.asarray(k, jnp.float32), float(total_steps))
    n = jnp.ceil(jnp.sqrt(kf / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1.0)
    return jnp.maximum(n, 1.0).astype(jnp.int32) + 1


def ct_target_ema(k: Array, total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> Array:
    """Target EMA rate mu(k) = exp(s0 log(mu0) / N(k)) (Song et al. 2023, appendix C; mu0 = 0.9 on CIFAR-10).
    (The reference code divides by N(k) - 1 instead; the paper's form is used here.)"""
    if not 0 < mu0 < 1:
        raise ValueError(f"mu0 must be in (0, 1), got {mu0}")
    return jnp.exp(s0 * math.log(mu0) / ct_num_scales(k, total_steps, s0, s1).astype(jnp.float32))


def ict_num_scales(k: Array, total_steps: int, s0: int = 10, s1: int = 1280) -> Array:
    """iCT's doubling curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1))
    (Song & Dhariwal 2023, s0 = 10, s1 = 1280); int32, k may be traced."""
    if not 1 <= s0 <= s1:
        raise ValueError(f"need 1 <= s0 <= s1, got s0={s0}, s1={s1}")
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    if k_prime < 1:
        raise ValueError(f"total_steps = {total_steps} is too small for the curriculum from {s0} to {s1}")
    doublings = jnp.asarray(k, jnp.int32) // k_prime
    n = jnp.minimum(s0 * jnp.exp2(jnp.minimum(doublings, 30).astype(jnp.float32)), float(s1))
    return n.astype(jnp.int32) + 1


def ict_sigma_probs(num_scales, max_scales: int | None = None, p_mean: float = -1.1, p_std: float = 2.0,
                    spec: ConsistencySpec = ConsistencySpec()) -> Array:
    """Discretised lognormal over the pairs (sigma_i, sigma_{i+1}), i = 0..N-2 (Song & Dhariwal 2023):

    p(i) ∝ erf((log sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((log sigma_i - P_mean) / (sqrt(2) P_std)).
    Returns an array of length max_scales - 1 (default N - 1; needed when N is traced) with zeros for i >= N - 1.
    """
    if max_scales is None:
        if not isinstance(num_scales, (int, np.integer)):
            raise ValueError("max_scales is required when num_scales is traced")
        max_scales = int(num_scales)
    _check_num_scales(max_scales)
    i = jnp.arange(max_scales - 1)
    cdf = lambda s: jax.scipy.special.erf((jnp.log(s) - p_mean) / (math.sqrt(2.0) * p_std))  # noqa: E731
    w = cdf(karras_sigma(i + 1, num_scales, spec)) - cdf(karras_sigma(i, num_scales, spec))
    w = jnp.where(i < jnp.asarray(num_scales) - 1, w, 0.0)
    return w / jnp.sum(w)


def ict_loss(apply: Apply, params, x0: Array, key: Array, num_scales, max_scales: int | None = None,
             p_mean: float = -1.1, p_std: float = 2.0, spec: ConsistencySpec = ConsistencySpec()) -> Array:
    """Improved consistency training (Song & Dhariwal 2023):

    E_i [ lambda_i pseudo_huber(f_theta(x0 + sigma_{i+1} z, sigma_{i+1}), sg f_theta(x0 + sigma_i z, sigma_i)) ],
    lambda_i = 1 / (sigma_{i+1} - sigma_i), i ~ `ict_sigma_probs`, the target is the online network itself
    (no EMA), c = 0.00054 sqrt(d); N from `ict_num_scales` (pass max_scales = s1 + 1 when N is traced).
    """
    k_idx, k_noise, k_drop = jax.random.split(key, 3)
    probs = ict_sigma_probs(num_scales, max_scales, p_mean, p_std, spec)
    i = jax.random.categorical(k_idx, jnp.log(probs), shape=x0.shape[:1])
    z = jax.random.normal(k_noise, x0.shape, x0.dtype)
    s_hi = karras_sigma(i + 1, num_scales, spec).astype(x0.dtype)
    s_lo = karras_sigma(i, num_scales, spec).astype(x0.dtype)
    terms = ct_loss_terms(apply, params, params, x0, z, i, k_drop, num_scales, spec, "pseudo_huber")
    return jnp.mean(terms / (s_hi - s_lo))
