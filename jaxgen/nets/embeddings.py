"""Time embeddings shared by the diffusion backbones.

Diffusion time is continuous, t in [0, 1] (t = 0 data, t = 1 noise). The sinusoid is evaluated at
1000 t so that its frequencies see the same range as DDPM's integer steps 0..999.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

TIME_SCALE = 1000.0


def default_kernel_init():
    """DDPM's initialiser: variance scaling, scale 1, fan_avg, uniform (Glorot uniform)."""
    return nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def zero_init():
    return nnx.initializers.zeros_init()


def sinusoidal_embedding(t_B: jax.Array, dim: int, *, scale: float = TIME_SCALE,
                         max_period: float = 10000.0) -> jax.Array:
    """Transformer / DDPM sinusoidal embedding of a (continuous) time.

    With s = scale * t, h = dim // 2 and w_k = max_period^(-k / (h - 1)), k = 0..h-1:

        emb(t) = [sin(s w_0), ..., sin(s w_{h-1}), cos(s w_0), ..., cos(s w_{h-1})]

    (a zero column is appended when dim is odd). Returns float32 (B, dim).
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    t_B = jnp.asarray(t_B, jnp.float32)
    chex.assert_rank(t_B, 1)
    half = dim // 2
    # (h - 1) in the exponent as in DDPM, so the lowest frequency is exactly 1 / max_period.
    exponent = -math.log(max_period) / max(half - 1, 1)
    freqs_H = jnp.exp(jnp.arange(half, dtype=jnp.float32) * exponent)
    args_BH = (scale * t_B)[:, None] * freqs_H[None, :]
    emb = jnp.concatenate([jnp.sin(args_BH), jnp.cos(args_BH)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def broadcast_time(t, batch: int) -> jax.Array:
    """Accept a scalar t or a (B,) vector; return float32 (B,)."""
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
        return jnp.broadcast_to(t, (batch,))
    chex.assert_shape(t, (batch,))
    return t


class TimeEmbedding(nnx.Module):
    """sinusoid(t, dim) -> Linear(dim, out) -> SiLU -> Linear(out, out)."""

    def __init__(self, dim: int, out_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dim = dim
        kw = dict(kernel_init=default_kernel_init(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense0 = nnx.Linear(dim, out_dim, **kw)
        self.dense1 = nnx.Linear(out_dim, out_dim, **kw)

    def __call__(self, t_B: jax.Array) -> jax.Array:
        h = sinusoidal_embedding(t_B, self.dim)
        return self.dense1(jax.nn.silu(self.dense0(h)))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; identity when key is None or rate == 0.

    y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) elementwise.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
