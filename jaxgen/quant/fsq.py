"""Finite Scalar Quantization (Mentzer et al. 2023, "FSQ: VQ-VAE Made Simple").

Each of the d = len(levels) latent channels is bounded and rounded to one of L_i values; the implicit
codebook is the product grid, of size prod(L_i), and a code's index is its mixed-radix number.
No codebook parameters, no auxiliary losses, no collapse.

    z_q = round_ste(f(z)) / floor(L/2),
    f(z) = tanh(z + shift) * half_l - offset,
    half_l = (L - 1)(1 + eps) / 2,  offset = 0.5 (even L) or 0 (odd L),  shift = atanh(offset / half_l).

The shift is the corrected one (the paper's listing has tan, which does not map z = 0 to the code 0).
With it, f(0) = 0 and the values of round(f) are {-floor(L/2), ..., ceil(L/2) - 1}, i.e. exactly L of them.
For L = 2 the atanh shift is atanh(1 / (1 + eps)) ~ 3.8, so every z > -3.8 would land on the same code;
for L = 2 we use shift = 0 instead, which puts the single decision boundary at z = 0 (values {-1, 0}).

Quantisation runs in float32 whatever the input dtype: bf16 has 8 mantissa bits, not enough to round
f(z) near the half-integers consistently (about half of the indices come out wrong), so the result is
computed in float32 and only cast back to the input dtype at the end.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks

# Levels recommended by the paper for each target codebook size (Mentzer et al. 2023, Table 1).
RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def round_ste(x: jax.Array) -> jax.Array:
    """Round to the nearest integer with a straight-through gradient: y = x + sg(round(x) - x), dy/dx = 1."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ:
    """Finite scalar quantiser over the last axis, with the implicit codebook prod(levels).

    Args:
      levels: number of values per latent channel, each an integer >= 2; the latent dimension is len(levels).
      eps: the small margin in half_l = (L - 1)(1 + eps) / 2 that lets tanh reach the outermost values.

    Plain Python object (hashable, no parameters): usable inside NNX modules and as a static jit argument.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        accepted = "a non-empty sequence of integers >= 2"
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) and not isinstance(levels, np.ndarray):
            raise ValueError(f"levels must be {accepted}, got {levels!r}")
        levels = tuple(levels)
        if len(levels) == 0:
            raise ValueError(f"levels must be {accepted}, got ()")
        for lv in levels:
            integral = isinstance(lv, (int, np.integer)) or (
                isinstance(lv, (float, np.floating)) and float(lv).is_integer())
            if isinstance(lv, (bool, np.bool_)) or not integral or lv < 2:
                raise ValueError(f"levels must be {accepted}, got {levels!r} (entry {lv!r})")
        if math.prod(levels) > 2**31 - 1:
            raise ValueError(
                f"prod(levels) must be < 2**31 (int32 indices), got {math.prod(levels)} for levels {levels}")
        eps = _checks.number("eps", eps, low=0, high=1, high_open=True)
        self.levels = tuple(int(lv) for lv in levels)
        self.eps = float(eps)

    # Static per-dimension constants, computed in float64 on the host and cast to float32.
    def _consts(self):
        L = np.asarray(self.levels, np.float64)
        half_l = (L - 1.0) * (1.0 + self.eps) / 2.0
        offset = np.where(np.asarray(self.levels) % 2 == 0, 0.5, 0.0)
        shift = np.where(np.asarray(self.levels) == 2, 0.0, np.arctanh(offset / half_l))
        half_width = np.asarray(self.levels) // 2
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        return f32(half_l), f32(offset), f32(shift), f32(half_width)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def basis(self) -> np.ndarray:
        """Mixed-radix place values: basis_i = prod_{j < i} L_j (int64 NumPy)."""
        return np.concatenate([[1], np.cumprod(self.levels[:-1])]).astype(np.int64)

    def _check_last_dim(self, z, name: str):
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(
                f"{name}.shape[-1] must equal len(levels) = {self.dim} (levels {self.levels}), got shape {z.shape}")

    def bound(self, z: jax.Array) -> jax.Array:
        """f(z) = tanh(z + shift) * half_l - offset, in float32 (see module docstring)."""
        self._check_last_dim(z, "z")
        half_l, offset, shift, _ = self._consts()
        return jnp.tanh(z.astype(jnp.float32) + shift) * half_l - offset

    def quantize(self, z: jax.Array) -> jax.Array:
        """z_q = round_ste(f(z)) / floor(L/2) on the grid {k / floor(L/2)}; straight-through gradient.

        Computed in float32; returned in z's dtype. Shape (..., len(levels)) -> same shape.
        """
        *_, half_width = self._consts()
        return (round_ste(self.bound(z)) / half_width).astype(z.dtype)

    def codes_to_indices(self, codes: jax.Array, *, validate: bool | None = None) -> jax.Array:
        """index = sum_i digit_i * basis_i, digit_i = codes_i * floor(L_i/2) + floor(L_i/2) in {0..L_i-1}.

        codes: (..., len(levels)) on the normalised grid (any float dtype) -> int32 indices (...).
        Valid codes are the grid values {k / floor(L_i/2) : k = -floor(L_i/2), ..., ceil(L_i/2) - 1}, up to a
        quarter of a grid step (what bf16 rounding leaves). A NaN or off-grid code raises ValueError when
        `codes` is concrete. Under jit (traced codes) it is not checked by default: the digit is rounded to
        the nearest integer (NaN gives an arbitrary index, a digit outside [0, L_i - 1] mixes into the
        neighbouring dimensions); validate=True checks traced codes with checkify (see `jaxgen._checks`),
        validate=False skips the check.
        """
        codes = jnp.asarray(codes) if not isinstance(codes, np.ndarray) else codes
        self._check_last_dim(codes, "codes")
        levels = np.asarray(self.levels)
        accepted = (f"on the FSQ grid k / floor(L/2), k in [-floor(L/2), ceil(L/2) - 1] per channel for levels "
                    f"{self.levels} (finite, within a quarter step)")

        def on_grid(xp, c):
            d = c.astype(xp.float32) * (levels // 2) + levels // 2
            r = xp.round(d)
            return xp.isfinite(d) & (xp.abs(d - r) <= 0.25) & (r >= 0) & (r <= levels - 1)

        _checks.values("codes", codes, on_grid, accepted, validate=validate)
        *_, half_width = self._consts()
        # Rounding makes this exact for codes that went through bf16 (k/3 is not representable).
        digits = jnp.round(jnp.asarray(codes).astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits * jnp.asarray(self.basis, jnp.int32), axis=-1)

    def indices_to_codes(self, indices: jax.Array, *, validate: bool | None = None) -> jax.Array:
        """Inverse of codes_to_indices: digit_i = (index // basis_i) mod L_i, code_i = (digit_i - h_i) / h_i.

        indices: integer array (...) in [0, codebook_size) -> float32 codes (..., len(levels)).
        An index outside [0, codebook_size) raises ValueError when `indices` is concrete. Under jit (traced
        indices) it is not checked by default and wraps: the result is the code of index mod codebook_size.
        validate=True checks traced indices with checkify (see `jaxgen._checks`); validate=False skips it.
        """
        if isinstance(indices, (bool, np.bool_)):
            raise ValueError(f"indices must be an integer array, got {indices!r}")
        indices = indices if isinstance(indices, np.ndarray) else jnp.asarray(indices)
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"indices must be an integer array, got dtype {indices.dtype}")
        size = self.codebook_size
        _checks.values("indices", indices, lambda xp, i: (i >= 0) & (i < size),
                       f"integers in [0, codebook_size = {size}) for levels {self.levels}", validate=validate)
        *_, half_width = self._consts()
        idx = jnp.asarray(indices).astype(jnp.int32)[..., None]
        digits = (idx // jnp.asarray(self.basis, jnp.int32)) % jnp.asarray(self.levels, jnp.int32)
        return (digits.astype(jnp.float32) - half_width) / half_width

    def implicit_codebook(self) -> jax.Array:
        """All codebook_size codes, (codebook_size, len(levels)) float32, row k = indices_to_codes(k)."""
        return self.indices_to_codes(jnp.arange(self.codebook_size, dtype=jnp.int32), validate=False)

    def __call__(self, z: jax.Array, *, validate: bool | None = None) -> tuple[jax.Array, jax.Array]:
        """(z_q, indices) = (quantize(z), codes_to_indices(quantize(z))).

        A NaN z has no code: ValueError when z is concrete; under jit it is not checked unless validate=True
        (checkify), and its index is arbitrary. (An infinite z saturates tanh: the outermost code.)
        """
        _checks.values("z", z, lambda xp, v: ~xp.isnan(v), "free of NaN", validate=validate)
        z_q = self.quantize(z)
        return z_q, self.codes_to_indices(z_q, validate=False)

    def __repr__(self):
        return f"FSQ(levels={self.levels}, eps={self.eps})"

    def __eq__(self, other):
        return isinstance(other, FSQ) and (self.levels, self.eps) == (other.levels, other.eps)

    def __hash__(self):
        return hash((FSQ, self.levels, self.eps))
