"""A small convolutional image classifier, used as the feature extractor for Fréchet distances."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen.nets.unet import group_count


class _ConvBlock(nnx.Module):
    """Conv3x3 -> GroupNorm -> SiLU (GroupNorm: no batch statistics to carry around)."""

    def __init__(self, cin, cout, *, rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
        self.norm = nnx.GroupNorm(cout, num_groups=group_count(cout, 8), rngs=rngs)

    def __call__(self, x):
        return jax.nn.silu(self.norm(self.conv(x)))


class Classifier(nnx.Module):
    """`model(x_BHWC) -> logits (B, num_classes)`; `model.features(x_BHWC) -> (B, 4 width)`.

    Stages of two conv blocks; between stages a 2x2 average pool, until the map is at most
    8x8 (8x8 digits: no pooling before the last stage; 28/32: two pools). Widths w, 2w, 2w, ...
    Then global average pooling, Dense(4w) + SiLU (the penultimate features), Dense(classes).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32, *,
                 rngs: nnx.Rngs):
        for name, v in (("in_channels", in_channels), ("image_size", image_size),
                        ("width", width)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.in_channels, self.image_size = in_channels, image_size
        # number of 2x pools so the deepest stage sees <= 4x4 (at least one pool)
        num_pools, s = 0, image_size
        while s > 4:
            s, num_pools = -(-s // 2), num_pools + 1
        num_pools = max(num_pools, 1)
        widths = [width * min(2 ** i, 2) for i in range(num_pools + 1)]
        blocks, c = [], in_channels
        for w in widths:
            blocks.append(nnx.List([_ConvBlock(c, w, rngs=rngs), _ConvBlock(w, w, rngs=rngs)]))
            c = w
        self.stages = nnx.List(blocks)
        self.feature_dim = 4 * width
        self.fc = nnx.Linear(c, self.feature_dim, rngs=rngs)
        self.head = nnx.Linear(self.feature_dim, num_classes, rngs=rngs)

    def features(self, x_BHWC: jax.Array) -> jax.Array:
        chex.assert_rank(x_BHWC, 4)
        if x_BHWC.shape[1:] != (self.image_size, self.image_size, self.in_channels):
            raise ValueError(f"x must have shape (B, {self.image_size}, {self.image_size}, "
                             f"{self.in_channels}), got {x_BHWC.shape}")
        h = x_BHWC.astype(jnp.float32)
        for i, stage in enumerate(self.stages):
            if i:
                # SAME-padded 2x2 average pool (handles odd sizes such as 7)
                h = nnx.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            for block in stage:
                h = block(h)
        return jax.nn.silu(self.fc(h.mean(axis=(1, 2))))

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        return self.head(self.features(x_BHWC))
