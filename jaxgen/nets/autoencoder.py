"""Convolutional quantised autoencoder: encoder -> quantiser ('vq' | 'vq_ema' | 'fsq') -> decoder.

    z_e = E(x)  (B, H/2^n, W/2^n, D),   z_q = Q(z_e) (straight-through),   x_rec = G(z_q)
    loss = mean (x_rec - x)^2 + Q's loss (vq: codebook + beta commitment; vq_ema: beta commitment; fsq: 0)

n = len(channels) - 1 downsamplings (stride-2 convs), mirrored by nearest-neighbour upsampling + conv.
D = len(levels) for FSQ, `latent_dim` for VQ. Sizes: digits 8x8x1 with channels (32, 64) -> a 4x4 grid of
codes, trains in CPU minutes; MNIST 28x28x1 with (32, 64, 128) -> 7x7; CIFAR-10 32x32x3 with
(64, 128, 256) -> 8x8.

Usage with the functional training loop (see also jaxgen.quant.vq's module docstring):

    model = QuantizedAutoencoder(in_channels=1, channels=(32, 64), quantizer='vq_ema', num_codes=64,
                                 latent_dim=8, dead_threshold=0.1, rngs=nnx.Rngs(0))
    model.init_codebook(key, x_batch)                 # optional, once, eagerly (k-means++ on E(x))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # in the jitted step, after optax.apply_updates:
    params, rest = update_quantizer_state(graphdef, params, rest, out=out, key=restart_key)

The forward pass is pure (it reads the codebook statistics and returns z_e and indices); the EMA codebook,
the EMA code counts and dead-code restarts are applied afterwards by `update_quantizer_state`. For FSQ it
returns the states unchanged, so the same step serves all three quantisers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen.quant.fsq import FSQ
from jaxgen.quant.vq import VectorQuantizer, code_counts, l2_normalize, perplexity_from_counts, usage_from_counts
from jaxgen.task_configs import QUANTIZERS  # noqa: F401 - the names config.quantizer.name accepts

Array = jax.Array


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when key is None (eval) or rate == 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class ResBlock(nnx.Module):
    """h = conv(drop(silu(norm(conv(silu(norm(x))))))),  out = skip(x) + h  (skip = 1x1 conv if widths differ)."""

    def __init__(self, c_in: int, c_out: int, *, dropout: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(c_in, num_groups=_groups(c_in), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=_groups(c_out), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs) if c_in != c_out else None
        self.dropout = float(dropout)

    def __call__(self, x: Array, *, key: Array | None = None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(_dropout(jax.nn.silu(self.norm2(h)), self.dropout, key))
        return (self.skip(x) if self.skip is not None else x) + h


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class Encoder(nnx.Module):
    """x (B, H, W, C) -> z_e (B, H/2^n, W/2^n, latent_dim); stage i works at width channels[i]."""

    def __init__(self, in_channels: int, channels: Sequence[int], latent_dim: int, *, num_res_blocks: int,
                 dropout: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.stem = nnx.Conv(in_channels, channels[0], (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        blocks, downs = [], []
        c = channels[0]
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, ch, dropout=dropout, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
                c = ch
            if i < len(channels) - 1:
                downs.append(nnx.Conv(c, c, (3, 3), strides=(2, 2), dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.downs = nnx.List(downs)
        self.norm_out = nnx.GroupNorm(c, num_groups=_groups(c), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = nnx.Conv(c, latent_dim, (1, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_res_blocks, self.num_stages = num_res_blocks, len(channels)

    def __call__(self, x: Array, *, key: Array | None = None) -> Array:
        keys = _split(key, len(self.blocks))
        h = self.stem(x)
        for i in range(self.num_stages):
            for j in range(self.num_res_blocks):
                b = i * self.num_res_blocks + j
                h = self.blocks[b](h, key=keys[b])
            if i < self.num_stages - 1:
                h = self.downs[i](h)
        return self.proj(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """z_q (B, h, w, latent_dim) -> x (B, h 2^n, w 2^n, out_channels); mirror of the encoder."""

    def __init__(self, out_channels: int, channels: Sequence[int], latent_dim: int, *, num_res_blocks: int,
                 dropout: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        rev = list(channels)[::-1]
        self.stem = nnx.Conv(latent_dim, rev[0], (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        blocks, ups = [], []
        c = rev[0]
        for i, ch in enumerate(rev):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, ch, dropout=dropout, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
                c = ch
            if i < len(rev) - 1:
                ups.append(nnx.Conv(c, c, (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.ups = nnx.List(ups)
        self.norm_out = nnx.GroupNorm(c, num_groups=_groups(c), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.out = nnx.Conv(c, out_channels, (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_res_blocks, self.num_stages = num_res_blocks, len(rev)

    def __call__(self, z: Array, *, key: Array | None = None) -> Array:
        keys = _split(key, len(self.blocks))
        h = self.stem(z)
        for i in range(self.num_stages):
            for j in range(self.num_res_blocks):
                b = i * self.num_res_blocks + j
                h = self.blocks[b](h, key=keys[b])
            if i < self.num_stages - 1:
                B, H, W, C = h.shape
                h = self.ups[i](jax.image.resize(h, (B, 2 * H, 2 * W, C), method="nearest"))
        return self.out(jax.nn.silu(self.norm_out(h)))


class QuantizedAutoencoder(nnx.Module):
    """Conv autoencoder with a VQ, EMA-VQ or FSQ bottleneck.

    Args:
      in_channels: image channels C (1 digits/MNIST, 3 CIFAR-10).
      channels: width of each resolution stage; len(channels) - 1 stride-2 downsamplings.
      quantizer: 'vq' (codebook by gradient), 'vq_ema' (EMA codebook), or 'fsq'.
      levels: FSQ levels (latent dim = len(levels), codebook size = prod(levels)); used for 'fsq'.
      num_codes, latent_dim: VQ codebook size K and code dimension D; used for 'vq' / 'vq_ema'.
      beta, decay, eps, cosine, dead_threshold: VQ options (see jaxgen.quant.vq.VectorQuantizer).
      num_res_blocks, dropout, dtype: network options (dtype = compute dtype; quantisers work in float32).
      param_dtype: dtype the parameters are stored in (float32 master weights by default).
    """

    def __init__(self, *, in_channels: int = 1, channels: Sequence[int] = (32, 64), quantizer: str = "fsq",
                 levels: Sequence[int] = (8, 5, 5, 5), num_codes: int = 512, latent_dim: int | None = None,
                 beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5, cosine: bool = False,
                 dead_threshold: float = 0.0, num_res_blocks: int = 1, dropout: float = 0.0,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if int(num_res_blocks) < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.quantizer_name = quantizer
        self.in_channels, self.num_down = int(in_channels), len(channels) - 1
        if quantizer == "fsq":
            self.fsq = FSQ(levels)
            if latent_dim is not None and latent_dim != self.fsq.dim:
                raise ValueError(f"latent_dim must be None or len(levels) = {self.fsq.dim} for 'fsq', got {latent_dim}")
            self.latent_dim = self.fsq.dim
            self.vq = None
        else:
            self.latent_dim = 8 if latent_dim is None else int(latent_dim)
            self.fsq = None
            self.vq = VectorQuantizer(num_codes, self.latent_dim, ema=(quantizer == "vq_ema"), beta=beta,
                                      decay=decay, eps=eps, cosine=cosine, dead_threshold=dead_threshold,
                                      rngs=rngs)
        kw = dict(num_res_blocks=int(num_res_blocks), dropout=float(dropout), dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder(self.in_channels, channels, self.latent_dim, **kw)
        self.decoder = Decoder(self.in_channels, channels, self.latent_dim, **kw)

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size if self.fsq is not None else self.vq.num_codes

    def _check_input(self, x: Array) -> None:
        chex.assert_rank(x, 4)
        B, H, W, C = x.shape
        f = 2**self.num_down
        if C != self.in_channels or H % f or W % f:
            raise ValueError(f"x must be (B, H, W, {self.in_channels}) with H and W divisible by 2^{self.num_down}"
                             f" = {f}, got shape {x.shape}")

    def encode(self, x: Array, *, key: Array | None = None) -> Array:
        """z_e = E(x): (B, H, W, C) -> (B, H/2^n, W/2^n, latent_dim)."""
        self._check_input(x)
        return self.encoder(x, key=key)

    def quantize(self, z_e: Array) -> dict[str, Array]:
        """z_e -> dict(z_q, indices, codebook_loss, commitment_loss, loss) (zeros for FSQ's losses)."""
        if self.fsq is not None:
            z_q, indices = self.fsq(z_e)
            zero = jnp.zeros((), jnp.float32)
            return dict(z_q=z_q, indices=indices, codebook_loss=zero, commitment_loss=zero, loss=zero)
        return self.vq(z_e)

    def decode(self, z_q: Array, *, key: Array | None = None) -> Array:
        """x_rec = G(z_q): (B, h, w, latent_dim) -> (B, h 2^n, w 2^n, C)."""
        return self.decoder(z_q, key=key)

    def indices_to_codes(self, indices: Array) -> Array:
        """Code vectors of integer indices (B, h, w) -> (B, h, w, latent_dim) (for priors and sampling)."""
        if self.fsq is not None:
            return self.fsq.indices_to_codes(indices)
        codebook = self.vq.codebook[...]
        if self.vq.cosine:
            codebook = l2_normalize(codebook)
        return jnp.take(codebook, indices, axis=0)

    def decode_indices(self, indices: Array) -> Array:
        return self.decode(self.indices_to_codes(indices))

    def __call__(self, x: Array, *, key: Array | None = None) -> dict[str, Any]:
        """Forward pass (pure). x (B, H, W, C) -> dict with

          recon (B, H, W, C) float32; z_e, z_q (B, h, w, D); indices (B, h, w) int32;
          loss_terms: recon = mean (recon - x)^2, codebook, commitment (unweighted), quant = the
            quantiser's weighted loss (vq: codebook + beta commitment; vq_ema: beta commitment; fsq: 0);
          loss = loss_terms['recon'] + loss_terms['quant'];
          metrics: usage (fraction of the codebook used in this batch), perplexity (exp entropy of the
            batch's code histogram).
        key: dropout key (None = deterministic).
        """
        k_enc, k_dec = _split(key, 2)
        z_e = self.encode(x, key=k_enc)
        q = self.quantize(z_e)
        recon = self.decode(q["z_q"], key=k_dec).astype(jnp.float32)
        rec = jnp.mean(jnp.square(recon - x.astype(jnp.float32)))
        counts = code_counts(q["indices"], self.codebook_size)
        terms = dict(recon=rec, codebook=q["codebook_loss"], commitment=q["commitment_loss"], quant=q["loss"])
        return dict(recon=recon, z_e=z_e, z_q=q["z_q"], indices=q["indices"], loss_terms=terms,
                    loss=rec + q["loss"],
                    metrics=dict(usage=usage_from_counts(counts), perplexity=perplexity_from_counts(counts)))

    def update_quantizer_state(self, out: dict[str, Any], *, key: Array | None = None) -> None:
        """In place, after the gradient step: VQ EMA statistics (and dead-code restarts if key). FSQ: no-op."""
        if self.vq is not None:
            self.vq.update_state(out["z_e"], out["indices"], key=key)

    def init_codebook(self, key: Array, x: Array, method: str = "kmeans++") -> None:
        """Data-dependent VQ codebook init from E(x) ('kmeans++' or 'batch'); once, eagerly. FSQ: no-op."""
        if self.vq is not None:
            self.vq.init_from_data(key, self.encode(x), method=method)


def update_quantizer_state(graphdef: nnx.GraphDef, *states: nnx.State, out: dict[str, Any],
                           key: Array | None = None, filters: tuple = (nnx.Param, ...)) -> tuple[nnx.State, ...]:
    """Pure: (graphdef, params, rest) + the forward pass's `out` -> (params, rest) with the quantiser updated.

    states / filters must be those of `nnx.split(model, *filters)` (default `nnx.Param, ...`). Applies
    `QuantizedAutoencoder.update_quantizer_state` (EMA codebook / counts, restarts when key is given) to a
    merged copy and splits it again. Restarts change the 'vq' codebook, an nnx.Param, so params come back too.
    """
    model = nnx.merge(graphdef, *states)
    model.update_quantizer_state(out, key=key)
    _, *new_states = nnx.split(model, *filters)
    return tuple(new_states)
