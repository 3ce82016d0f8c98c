"""Codebook health for vector-quantised models: usage and perplexity of a set of code indices
(`jaxgen.quant.usage_from_counts` / `perplexity_from_counts` of their histogram, checked)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen import _checks
from jaxgen.quant.vq import code_counts, perplexity_from_counts, usage_from_counts


def _counts(indices, codebook_size: int) -> jax.Array:
    codebook_size = _checks.number("codebook_size", codebook_size, integer=True, low=1)
    idx = jnp.asarray(indices).reshape(-1)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.size == 0:
        raise ValueError("indices must not be empty")
    # concrete indices are checked here; traced ones (under jit) are not
    _checks.values("indices", idx, lambda xp, i: (i >= 0) & (i < codebook_size),
                   f"in [0, codebook_size = {codebook_size})")
    return code_counts(idx, codebook_size, validate=False)  # checked above, naming codebook_size


def codebook_usage(indices, codebook_size: int) -> jax.Array:
    """Fraction of the codebook that occurs at least once: |{k : count_k > 0}| / K."""
    return usage_from_counts(_counts(indices, codebook_size))


def perplexity(indices, codebook_size: int) -> jax.Array:
    """exp of the entropy of the empirical code distribution: exp(-sum_k p_k log p_k).

    Ranges from 1 (one code) to K (uniform use of all K codes); 0 log 0 = 0.
    """
    return perplexity_from_counts(_counts(indices, codebook_size))
