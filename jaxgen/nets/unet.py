"""The DDPM UNet (Ho et al. 2020), in Flax NNX, channels-last.

Layout (as in DDPM's `diffusion_tf/models/unet.py`):

    temb   = Dense(4ch) . SiLU . Dense(4ch) . sinusoid_ch(1000 t)
    h      = Conv3x3(ch)(x)
    down:  per level l: num_res_blocks x [ResBlock(ch * mult[l]) (+ Attn if res in attn_resolutions)],
           then a stride-2 Conv3x3 (except at the last level); every output is kept as a skip
    middle: ResBlock, Attn, ResBlock
    up:    per level l (reversed): (num_res_blocks + 1) x [ResBlock(concat(h, skip)) (+ Attn)],
           then nearest x2 + Conv3x3 (except at level 0)
    out    = Conv3x3(C_out) . SiLU . GroupNorm(h)       (zero-initialised)

ResBlock(x) = skip(x) + Conv(Drop(SiLU(GN(Conv(SiLU(GN(x))) + Dense(SiLU(temb))))));
Attn(x) = x + Proj(softmax(Q K^T / sqrt(C)) V) over all H*W positions, one head by default.
The last layer of every residual branch and the output conv start at zero, as in DDPM, so the
network starts as the identity on its residual stream and outputs 0.

The CIFAR-10 recipe (ch 128, mult (1, 2, 2, 2), 2 res blocks, attention at 16, dropout 0.1)
has 35.75M parameters (the paper's 35.7M).
"""
from __future__ import annotations

import math
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen.nets.embeddings import (TimeEmbedding, broadcast_time, default_kernel_init, dropout,
                                    zero_init)


def group_count(channels: int, num_groups: int) -> int:
    """The largest g <= num_groups that divides channels (GroupNorm needs C % g == 0)."""
    g = max(1, min(num_groups, channels))
    while channels % g:
        g -= 1
    return g


class _Norm(nnx.Module):
    """GroupNorm computed in float32 (statistics in low precision are fragile), cast back."""

    def __init__(self, channels: int, num_groups: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=group_count(channels, num_groups),
                                  epsilon=1e-6, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


def _conv(cin, cout, k=3, stride=1, *, zero=False, dtype, param_dtype, rngs):
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding="SAME",
                    kernel_init=zero_init() if zero else default_kernel_init(),
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _dense(cin, cout, *, zero=False, dtype, param_dtype, rngs):
    return nnx.Linear(cin, cout, kernel_init=zero_init() if zero else default_kernel_init(),
                      dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int, *, dropout: float, num_groups: int,
                 dtype, param_dtype, remat: bool = False, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout, self.remat = dropout, remat
        self.norm0 = _Norm(cin, num_groups, param_dtype=param_dtype, rngs=rngs)
        self.conv0 = _conv(cin, cout, **kw)
        self.temb_proj = _dense(temb_dim, cout, **kw)
        self.norm1 = _Norm(cout, num_groups, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = _conv(cout, cout, zero=True, **kw)
        self.skip = _dense(cin, cout, **kw) if cin != cout else None

    def __call__(self, x_BHWC, temb_BT, key):
        if self.remat:  # keep only the block's inputs for the backward pass; recompute the rest
            # jax.checkpoint of a pure function of the block's state: nnx.remat writes the state back
            # after the call, which fails when the UNet was merged outside the current trace (sampling).
            graphdef, state = nnx.split(self)

            def forward(state, x, temb, key):
                return nnx.merge(graphdef, state)._forward(x, temb, key)

            return jax.checkpoint(forward)(state, x_BHWC, temb_BT, key)
        return self._forward(x_BHWC, temb_BT, key)

    def _forward(self, x_BHWC, temb_BT, key):
        h = self.conv0(jax.nn.silu(self.norm0(x_BHWC)))
        h = h + self.temb_proj(jax.nn.silu(temb_BT))[:, None, None, :].astype(h.dtype)
        h = jax.nn.silu(self.norm1(h))
        h = self.conv1(dropout(h, self.dropout, key))
        x = self.skip(x_BHWC) if self.skip is not None else x_BHWC
        return x + h


class AttnBlock(nnx.Module):
    def __init__(self, channels: int, *, num_heads: int, num_groups: int, dtype, param_dtype, rngs: nnx.Rngs):
        if channels % num_heads:
            raise ValueError(f"num_heads must divide the channel count {channels}, got {num_heads}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.norm = _Norm(channels, num_groups, param_dtype=param_dtype, rngs=rngs)
        self.q = _dense(channels, channels, **kw)
        self.k = _dense(channels, channels, **kw)
        self.v = _dense(channels, channels, **kw)
        self.proj = _dense(channels, channels, zero=True, **kw)

    def __call__(self, x_BHWC):
        B, H, W, C = x_BHWC.shape
        n = self.num_heads
        h = self.norm(x_BHWC)
        split = lambda a: a.reshape(B, H * W, n, C // n)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        # Logits and softmax are taken in float32 by the XLA implementation.
        o = jax.nn.dot_product_attention(q, k, v)
        return x_BHWC + self.proj(o.reshape(B, H, W, C))


class Downsample(nnx.Module):
    def __init__(self, channels, *, dtype, param_dtype, rngs):
        self.conv = _conv(channels, channels, stride=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        # DDPM pads (0, 1) before a VALID stride-2 conv; SAME padding on even sizes is the same.
        return self.conv(x)


class Upsample(nnx.Module):
    def __init__(self, channels, *, dtype, param_dtype, rngs):
        self.conv = _conv(channels, channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour x2
        return self.conv(x)


class _Level(nnx.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then a resampler."""

    def __init__(self, res, attn, sample):
        self.res = nnx.List(res)
        self.attn = nnx.List(attn)
        self.sample = sample

    def __call__(self, h, temb, keys, skips_in=None, skips_out=None):
        for res, attn in zip(self.res, self.attn):
            if skips_in is not None:
                h = jnp.concatenate([h, skips_in.pop()], axis=-1)
            h = res(h, temb, next(keys))
            if attn is not None:
                h = attn(h)
            if skips_out is not None:
                skips_out.append(h)
        if self.sample is not None:
            h = self.sample(h)
            if skips_out is not None:
                skips_out.append(h)
        return h


class UNet(nnx.Module):
    """DDPM UNet: `model(x_BHWC, t_B, *, key=None) -> (B, H, W, out_channels)`.

    Args:
      in_channels: image channels C.
      out_channels: output channels (default: in_channels, e.g. an eps prediction).
      ch: base width; the time embedding has 4 ch features.
      ch_mult: width multiplier per resolution level; the image halves between levels, so
        image_size must be divisible by 2^(len(ch_mult) - 1).
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attn_resolutions: spatial sizes (of the square feature maps) that get self-attention.
      dropout: dropout rate inside residual blocks, active only when `key` is passed.
      image_size: side length the attention layout is built for (H == W == image_size).
      num_groups: GroupNorm groups, lowered to the largest divisor of each channel count.
      num_heads: attention heads (DDPM: 1).
      dtype: compute dtype (e.g. jnp.bfloat16 or "bfloat16"); GroupNorm and softmax run in
        float32, and the output is float32.
      param_dtype: dtype the parameters are stored in (float32 master weights by default).
      remat: recompute each residual block's activations in the backward pass (nnx.remat) instead of
        storing them: less memory for about one more forward pass of compute.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 image_size: int = 32, num_groups: int = 32, num_heads: int = 1, *,
                 dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        out_channels = in_channels if out_channels is None else out_channels
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if ch < 1:
            raise ValueError(f"ch must be >= 1, got {ch}")
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        levels = len(ch_mult)
        if image_size < 1 or image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size must be a positive multiple of 2^(len(ch_mult) - 1) = "
                             f"{2 ** (levels - 1)}, got {image_size}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        resolutions = [image_size // 2 ** i for i in range(levels)]
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if bad := [r for r in attn_resolutions if r not in resolutions]:
            raise ValueError(f"attn_resolutions must be among the feature-map sizes {resolutions}, "
                             f"got {bad}")

        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)  # also names, e.g. "bfloat16"
        self.dtype = dtype
        temb_dim = 4 * ch
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        res_kw = dict(dropout=dropout, num_groups=num_groups, remat=bool(remat), **kw)
        attn_kw = dict(num_heads=num_heads, num_groups=num_groups, **kw)

        self.temb = TimeEmbedding(ch, temb_dim, **kw)
        self.conv_in = _conv(in_channels, ch, **kw)

        # Down path: remember every skip's width for the up path.
        down, skips, c = [], [ch], ch
        for lvl, mult in enumerate(ch_mult):
            res, attn = [], []
            for _ in range(num_res_blocks):
                res.append(ResBlock(c, ch * mult, temb_dim, **res_kw))
                c = ch * mult
                use_attn = resolutions[lvl] in attn_resolutions
                attn.append(AttnBlock(c, **attn_kw) if use_attn else None)
                skips.append(c)
            sample = Downsample(c, **kw) if lvl != levels - 1 else None
            if sample is not None:
                skips.append(c)
            down.append(_Level(res, attn, sample))
        self.down = nnx.List(down)

        self.mid_res0 = ResBlock(c, c, temb_dim, **res_kw)
        self.mid_attn = AttnBlock(c, **attn_kw)
        self.mid_res1 = ResBlock(c, c, temb_dim, **res_kw)

        up = []
        for lvl in reversed(range(levels)):
            res, attn = [], []
            for _ in range(num_res_blocks + 1):
                res.append(ResBlock(c + skips.pop(), ch * ch_mult[lvl], temb_dim, **res_kw))
                c = ch * ch_mult[lvl]
                use_attn = resolutions[lvl] in attn_resolutions
                attn.append(AttnBlock(c, **attn_kw) if use_attn else None)
            up.append(_Level(res, attn, Upsample(c, **kw) if lvl != 0 else None))
        assert not skips
        self.up = nnx.List(up)

        self.norm_out = _Norm(c, num_groups, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = _conv(c, out_channels, zero=True, **kw)
        self.num_dropout_sites = (levels * num_res_blocks + 2 + levels * (num_res_blocks + 1))

    def __call__(self, x_BHWC: jax.Array, t_B: jax.Array, *, key: jax.Array | None = None
                 ) -> jax.Array:
        chex.assert_rank(x_BHWC, 4)
        B, H, W, C = x_BHWC.shape
        if (H, W, C) != (self.image_size, self.image_size, self.in_channels):
            raise ValueError(f"x must have shape (B, {self.image_size}, {self.image_size}, "
                             f"{self.in_channels}), got {x_BHWC.shape}")
        t_B = broadcast_time(t_B, B)
        keys = iter(jax.random.split(key, self.num_dropout_sites) if key is not None
                    else [None] * self.num_dropout_sites)

        temb = self.temb(t_B)
        h = self.conv_in(x_BHWC.astype(self.dtype))
        hs = [h]
        for level in self.down:
            h = level(h, temb, keys, skips_out=hs)

        h = self.mid_res0(h, temb, next(keys))
        h = self.mid_attn(h)
        h = self.mid_res1(h, temb, next(keys))

        for level in self.up:
            h = level(h, temb, keys, skips_in=hs)
        assert not hs

        h = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return h.astype(jnp.float32)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (nnx.Param leaves) in a module."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
