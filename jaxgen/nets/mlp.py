"""A time-conditioned MLP denoiser for 2-D / low-dimensional data."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen.nets.embeddings import TimeEmbedding, broadcast_time, default_kernel_init, dropout


class MLPDenoiser(nnx.Module):
    """`model(x_BD, t_B, *, key=None) -> (B, D)`.

        e   = TimeEmbedding(t)                          (sinusoid of 1000 t, then a 2-layer MLP)
        h_0 = W_in x + e
        h_i = SiLU(W_i Drop(h_{i-1}) + U_i e),  i = 1..depth
        out = W_out h_depth

    The time embedding is re-injected at every hidden layer (U_i), which matters for 2-D data
    where the prediction changes shape strongly with t.

    Args:
      dim: data dimension D.  hidden: width.  depth: hidden layers.  t_embed: sinusoid width.
      dropout: rate before each hidden layer, active only when `key` is given.
      dtype: compute dtype, e.g. "bfloat16" (output float32).
      param_dtype: dtype the parameters are stored in (float32 master weights by default).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, t_embed: int = 64, *,
                 dropout: float = 0.0, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if t_embed < 2:
            raise ValueError(f"t_embed must be >= 2, got {t_embed}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)  # also names, e.g. "bfloat16"
        self.dim, self.depth, self.dropout, self.dtype = dim, depth, dropout, dtype
        init = default_kernel_init()
        kw = dict(kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.temb = TimeEmbedding(t_embed, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.inp = nnx.Linear(dim, hidden, **kw)
        self.layers = nnx.List([nnx.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.temb_proj = nnx.List([nnx.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.out = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x_BD: jax.Array, t_B: jax.Array, *, key: jax.Array | None = None
                 ) -> jax.Array:
        chex.assert_rank(x_BD, 2)
        if x_BD.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {x_BD.shape}")
        t_B = broadcast_time(t_B, x_BD.shape[0])
        keys = (jax.random.split(key, self.depth) if key is not None else [None] * self.depth)
        e = jax.nn.silu(self.temb(t_B))
        h = self.inp(x_BD.astype(self.dtype)) + e
        for layer, proj, k in zip(self.layers, self.temb_proj, keys):
            h = jax.nn.silu(layer(dropout(h, self.dropout, k)) + proj(e))
        return self.out(h).astype(jnp.float32)
