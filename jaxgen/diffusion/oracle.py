"""The Gaussian-mixture oracle: exact denoiser, score and log-density of a noised isotropic mixture.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I_D). For x = alpha x0 + sigma eps, the noised density is again a
mixture, sum_k w_k N(alpha mu_k, v_k I) with v_k = alpha^2 s_k^2 + sigma^2, so everything is exact:

    log p(x)       = logsumexp_k [log w_k - D/2 log(2 pi v_k) - ||x - alpha mu_k||^2 / (2 v_k)]
    r_k(x)         = posterior responsibility of component k (softmax of the terms above)
    E[x0 | x, k]   = mu_k + (alpha s_k^2 / v_k) (x - alpha mu_k)
    Var[x0 | x, k] = s_k^2 sigma^2 / v_k            (per coordinate)
    E[x0 | x]      = sum_k r_k E[x0 | x, k]                                  (denoise)
    grad log p(x)  = sum_k r_k (alpha mu_k - x) / v_k = (alpha E[x0|x] - x) / sigma^2   (score)

With a process (x_t = alpha(t) x0 + sigma(t) eps) the oracle becomes the perfect network:
`denoise_fn(process)`, `eps_fn(process)` and `score_fn(process)` return functions of (x [B, D], t [B]).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks
from jaxgen.diffusion.processes import Process, broadcast_to_batch

Array = Any

__all__ = ["GaussianMixture", "oracle_2d", "oracle_16d", "oracle_gaussian"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture. weights [K] (finite, > 0; divided by their sum here, so relative weights
    such as [1, 2, 1] are accepted), means [K, D] (finite), stds [K] or a scalar (finite, > 0).

    Construct with `GaussianMixture(weights, means, stds)`; concrete arrays are validated (ValueError naming
    the argument, the first bad entry and the accepted range) and stored as float32 (or float64 when x64 is
    enabled and float64 arrays are passed). Traced leaves (the mixture passed through jit) are not checked.
    """

    weights: Array
    means: Array
    stds: Array

    def __post_init__(self):
        # Skip validation for tracers / placeholder leaves created by pytree unflattening.
        w, m, s = self.weights, self.means, self.stds
        if not all(isinstance(a, (np.ndarray, jnp.ndarray, list, tuple, float, int)) for a in (w, m, s)):
            return
        if isinstance(w, jax.core.Tracer) or isinstance(m, jax.core.Tracer) or isinstance(s, jax.core.Tracer):
            return
        w, m, s = np.asarray(w), np.asarray(m), np.asarray(s)
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"means must have shape [K, D] with K, D >= 1, got {m.shape}")
        K = m.shape[0]
        if s.ndim == 0:
            s = np.full((K,), s)
        if w.shape != (K,) or s.shape != (K,):
            raise ValueError(f"weights and stds must have shape [K] = [{K}], got {w.shape} and {s.shape}")
        positive = lambda xp, v: xp.isfinite(v) & (v > 0)  # noqa: E731
        _checks.values("weights", w, positive, "finite and > 0 (normalised to sum 1 here)")
        _checks.values("means", m, _checks.finite, "finite")
        _checks.values("stds", s, positive, "finite and > 0")
        w, s = w.astype(np.float64), s.astype(np.float64)
        dtype = jnp.float64 if (m.dtype == np.float64 and jax.config.jax_enable_x64) else jnp.float32
        object.__setattr__(self, "weights", jnp.asarray(w / w.sum(), dtype))
        object.__setattr__(self, "means", jnp.asarray(m, dtype))
        object.__setattr__(self, "stds", jnp.asarray(s, dtype))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # --- data distribution
    @functools.partial(jax.jit, static_argnames="n")  # one program per n (eagerly: ~8 op compiles)
    def sample(self, key: Array, n: int) -> Array:
        """n samples [n, D]: component k ~ Cat(w), x0 = mu_k + s_k z. n: an integer >= 0 (static)."""
        n = _checks.number("n", n, integer=True, low=0)
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(k2, (n, self.dim), self.means.dtype)
        return self.means[comp] + self.stds[comp][:, None] * z

    def mean(self) -> Array:
        return self.weights @ self.means

    def covariance(self) -> Array:
        """Full covariance [D, D] of the data distribution."""
        mu = self.mean()
        dm = self.means - mu
        return jnp.einsum("k,ki,kj->ij", self.weights, dm, dm) + jnp.eye(self.dim) * (self.weights @ self.stds**2)

    # --- the noised distribution x = alpha x0 + sigma eps
    def _terms(self, x, alpha, sigma):
        """log w_k + log N(x; alpha mu_k, v_k I) [B, K] and v_k [B, K]; alpha, sigma scalars or [B]."""
        chex.assert_rank(x, 2)
        a = jnp.reshape(jnp.asarray(alpha, x.dtype), (-1, 1))  # [B or 1, 1]
        s = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1, 1))
        v = a**2 * self.stds[None, :] ** 2 + s**2  # [B, K]
        diff2 = (
            jnp.sum(x**2, -1, keepdims=True)
            - 2.0 * a * (x @ self.means.T)
            + a**2 * jnp.sum(self.means**2, -1)[None, :]
        )  # ||x - a mu_k||^2, [B, K]
        diff2 = jnp.maximum(diff2, 0.0)
        D = self.dim
        logits = jnp.log(self.weights)[None, :] - 0.5 * D * jnp.log(2 * math.pi * v) - 0.5 * diff2 / v
        return logits, v, a

    @jax.jit  # the public densities: one program per shape when called eagerly
    def log_prob(self, x: Array, alpha: Array = 1.0, sigma: Array = 0.0) -> Array:
        """log p(x) [B] of the noised mixture (alpha = 1, sigma = 0: the data density)."""
        logits, _, _ = self._terms(x, alpha, sigma)
        return jax.nn.logsumexp(logits, axis=-1)

    @jax.jit
    def responsibilities(self, x: Array, alpha: Array = 1.0, sigma: Array = 0.0) -> Array:
        """p(k | x) [B, K]."""
        logits, _, _ = self._terms(x, alpha, sigma)
        return jax.nn.softmax(logits, axis=-1)

    @jax.jit
    def denoise(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """E[x0 | x] [B, D], exact."""
        return self.posterior_moments(x, alpha, sigma)[0]

    @jax.jit
    def posterior_moments(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array]:
        """(E[x0 | x], Var[x0 | x] per coordinate), both [B, D], exact (law of total variance)."""
        logits, v, a = self._terms(x, alpha, sigma)
        r = jax.nn.softmax(logits, axis=-1)  # [B, K]
        gain = a * self.stds[None, :] ** 2 / v  # [B, K]
        # E[x0|x,k] = mu_k (1 - a gain) + gain x
        m_k = self.means[None, :, :] * (1.0 - a * gain)[..., None] + gain[..., None] * x[:, None, :]
        var_k = (self.stds[None, :] ** 2) * (v - a**2 * self.stds[None, :] ** 2) / v  # s^2 sigma^2 / v
        mean = jnp.einsum("bk,bkd->bd", r, m_k)
        second = jnp.einsum("bk,bkd->bd", r, m_k**2) + jnp.sum(r * var_k, -1, keepdims=True)
        return mean, jnp.maximum(second - mean**2, 0.0)

    @jax.jit
    def score(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """grad_x log p(x) [B, D] = sum_k r_k (alpha mu_k - x) / v_k, exact."""
        logits, v, a = self._terms(x, alpha, sigma)
        r = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("bk,bkd->bd", r / v, a[..., None] * self.means[None, :, :] - x[:, None, :])

    # --- as the perfect network for a process
    def denoise_fn(self, process: Process):
        """(x [B, D], t [B]) -> E[x0 | x_t = x]."""

        def f(x, t):
            a, s = process.alpha_sigma(t)
            return self.denoise(x, a, s)

        return f

    def eps_fn(self, process: Process):
        """(x, t) -> E[eps | x_t = x] = (x - alpha E[x0|x]) / sigma."""

        def f(x, t):
            a, s = process.alpha_sigma(t)
            return (x - broadcast_to_batch(a, x) * self.denoise(x, a, s)) / broadcast_to_batch(s, x)

        return f

    def score_fn(self, process: Process):
        """(x, t) -> grad log p_t(x)."""

        def f(x, t):
            a, s = process.alpha_sigma(t)
            return self.score(x, a, s)

        return f


def oracle_2d() -> GaussianMixture:
    """8 components on a ring of radius 0.7 plus one at the origin, stds 0.05-0.12, unequal weights (data in ~[-1, 1])."""
    ang = np.arange(8) * 2 * np.pi / 8
    means = np.concatenate([0.7 * np.stack([np.cos(ang), np.sin(ang)], -1), [[0.0, 0.0]]])
    stds = np.array([0.06, 0.08, 0.05, 0.1, 0.06, 0.08, 0.05, 0.1, 0.12])
    weights = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0])
    return GaussianMixture(weights, means, stds)


def oracle_16d(seed: int = 0) -> GaussianMixture:
    """6 components in 16-D, means uniform in [-0.6, 0.6]^16, stds 0.08-0.25 (fixed seed)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.6, 0.6, size=(6, 16))
    stds = rng.uniform(0.08, 0.25, size=6)
    weights = rng.uniform(0.5, 1.5, size=6)
    return GaussianMixture(weights, means, stds)


def oracle_gaussian(mu: float = 0.0, std: float = 0.5, dim: int = 1) -> GaussianMixture:
    """A single Gaussian N(mu, std^2 I) as a one-component mixture (closed forms are easy to check)."""
    return GaussianMixture(np.ones(1), np.full((1, dim), mu), np.array([std]))
