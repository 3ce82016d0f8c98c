"""Score matching vs conditional (denoising) score matching, sliced score matching, and likelihoods.

At a noise level t with x_t = alpha x0 + sigma eps and a model s(x, t):

    ESM(s) = E ||s(x_t) - grad log p_t(x_t)||^2              (explicit: needs the true score, e.g. the oracle)
    DSM(s) = E ||s(x_t) - grad log p_t(x_t | x0)||^2 = E ||s(x_t) + eps / sigma||^2      (Vincent 2011)
    SSM(s) = E_v [v^T (d s / d x) v + 1/2 ||s||^2]            (Song et al. 2019, variance-reduced form)

ESM - DSM = E||grad log p_t||^2 - E||eps||^2 / sigma^2 is a constant independent of s (seed 000), so
both have the same minimiser; SSM = ESM / 2 - E||grad log p_t||^2 / 2 (integration by parts).
Losses here return per-example values [B] (sum over dimensions) so that gradient variances can be measured.

Likelihood: the probability-flow ODE in EDM coordinates (y = x / alpha, u = log sig) is dy/du = F = y - D(y),
and d log p(y(u)) / du = -div F, so log p_{t_min}(x) = log N(y(u_max); 0, (1 + sig_max^2) I)
+ int div F du - dim * log alpha(t_min), with div F = dim - tr(dD/dy) (exact Jacobian, or Hutchinson
v^T (dD/dy) v with Rademacher v fixed along the solve).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jaxgen.diffusion.processes import Process, broadcast_to_batch

Array = Any

__all__ = ["esm_loss", "dsm_loss", "ssm_loss", "ode_log_likelihood", "bits_per_dim"]


def _sum_sq(v):
    return jnp.sum(jnp.square(v).reshape(v.shape[0], -1), -1)


def esm_loss(score_fn: Callable, true_score_fn: Callable, x_t: Array, t: Array) -> Array:
    """Per example ||s(x_t, t) - grad log p_t(x_t)||^2, shape [B]."""
    return _sum_sq(score_fn(x_t, t) - true_score_fn(x_t, t))


def dsm_loss(score_fn: Callable, process: Process, x0: Array, t: Array, eps: Array) -> Array:
    """Per example ||s(x_t, t) + eps / sigma(t)||^2 with x_t = alpha(t) x0 + sigma(t) eps, shape [B]."""
    chex.assert_equal_shape([x0, eps])
    x_t = process.marginal(x0, t, eps)
    return _sum_sq(score_fn(x_t, t) + eps / broadcast_to_batch(process.sigma(t), eps))


def ssm_loss(score_fn: Callable, x_t: Array, t: Array, key: Array, num_projections: int = 1,
             distribution: str = "rademacher") -> Array:
    """Per example mean over projections v of v^T (ds/dx) v + 1/2 ||s||^2 (jax.jvp), shape [B]."""
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")

    def one(k):
        v = (jax.random.rademacher(k, x_t.shape, x_t.dtype) if distribution == "rademacher"
             else jax.random.normal(k, x_t.shape, x_t.dtype))
        s, jv = jax.jvp(lambda x: score_fn(x, t), (x_t,), (v,))
        return jnp.sum((v * jv).reshape(x_t.shape[0], -1), -1), s

    vals, s = jax.vmap(one)(jax.random.split(key, num_projections))
    return jnp.mean(vals, 0) + 0.5 * _sum_sq(s[0])


def ode_log_likelihood(denoise_fn: Callable, process: Process, x: Array, key: Array | None = None,
                       t_min: float = 1e-3, t_max: float = 1.0, num_probes: int = 1,
                       exact_trace: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
                       prior_var: float | None = None) -> Array:
    """log p_{t_min}(x) [B] by the probability-flow ODE (diffrax Tsit5, adaptive) from t_min to t_max.

    denoise_fn(x, t) = E[x0 | x_t = x]; x is treated as a sample of x_{t_min}. exact_trace: the Jacobian
    trace by forward-mode (dim evaluations; small dim only); otherwise Hutchinson with `num_probes`
    Rademacher probes averaged along one solve (unbiased). prior_var: variance of the Gaussian prior of
    y at t_max (default 1 + sig_max^2: exact for VP, the usual N(0, sig_max^2) up to 1 for VE/EDM).
    """
    import diffrax

    if not exact_trace and key is None:
        raise ValueError("key is required for the Hutchinson estimator (exact_trace=False)")
    b = x.shape[0]
    dim = int(math.prod(x.shape[1:]))
    dt = x.dtype
    tmin, tmax = jnp.asarray(t_min, dt), jnp.asarray(t_max, dt)
    u0, u1 = jnp.log(process.sigma_ratio(tmin)), jnp.log(process.sigma_ratio(tmax))
    probes = None if exact_trace else jax.random.rademacher(key, (num_probes,) + x.shape, dt)

    def D(y, u):
        t = process.time_of_sigma_ratio(jnp.exp(u)).astype(dt)
        return denoise_fn(process.alpha(t) * y, jnp.full((b,), t, dt)).astype(dt)

    def vf(u, state, args):
        y, _ = state
        if exact_trace:
            # per-sample Jacobians; the denoiser acts per example, so the batch Jacobian is block diagonal
            dy_den = D(y, u)
            jac = jax.jacfwd(lambda z: D(z, u).sum(0))(y)  # [dims..., B, dims...] summed over the batch
            tr = jnp.einsum("ibi->b", jac.reshape(dim, b, dim))
        else:
            dy_den, jvps = None, []
            for p in range(num_probes):
                dy_den, jv = jax.jvp(lambda z: D(z, u), (y,), (probes[p],))
                jvps.append(jnp.sum((probes[p] * jv).reshape(b, -1), -1))
            tr = jnp.mean(jnp.stack(jvps), 0)
        return y - dy_den, dim - tr

    y0 = x / process.alpha(tmin)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), diffrax.Tsit5(), t0=u0, t1=u1, dt0=(u1 - u0) / 50, y0=(y0, jnp.zeros((b,), dt)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=100_000,
    )
    y1, delta = sol.ys[0][-1], sol.ys[1][-1]
    pv = (1.0 + jnp.exp(2 * u1)) if prior_var is None else jnp.asarray(prior_var, dt)
    log_prior = -0.5 * _sum_sq(y1) / pv - 0.5 * dim * jnp.log(2 * math.pi * pv)
    return log_prior + delta - dim * jnp.log(process.alpha(tmin))


def bits_per_dim(log_prob: Array, num_dims: int, bin_width: float | None = None) -> Array:
    """-log p / (num_dims ln 2); with bin_width (e.g. 2/256 for 8-bit data in [-1, 1]) the density is turned
    into a probability per bin: bpd = (-log p / num_dims - log bin_width) / ln 2."""
    nats = -jnp.asarray(log_prob) / num_dims
    if bin_width is not None:
        nats = nats - math.log(bin_width)
    return nats / math.log(2.0)
