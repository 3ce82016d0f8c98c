"""What the sequence tasks (seq_classify, seq_generate, seq_copy) share: the `jaxgen.ssm.SequenceModel`
built from config.model, image -> sequence conversion, the psMNIST permutation and batched evaluation sums.
Their configs are built in `jaxgen.task_configs` (`sequence_model_config`, ...)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen.config import ConfigError
from jaxgen.task_configs import SSMS, default_ssm_kwargs


def make_model(model_config, *, d_input: int, d_output: int, l_max: int, pooling, tokens: bool, rngs: nnx.Rngs):
    """The `jaxgen.ssm.SequenceModel` described by `model_config`; bad values raise ConfigError."""
    from jaxgen.ssm import SequenceModel

    m = model_config
    if m.ssm not in SSMS:
        raise ConfigError(f"config.model.ssm must be one of {SSMS}, got '{m.ssm}'")
    try:
        return SequenceModel(d_input, m.d_model, m.n_layers, d_output, ssm=m.ssm, N=m.N, l_max=l_max,
                             dropout=m.dropout, pooling=pooling, tokens=tokens,
                             ssm_kwargs=dict(m.ssm_kwargs) if m.ssm_kwargs is not None else None, rngs=rngs)
    except TypeError as e:  # an ssm_kwargs key the layer does not take
        raise ConfigError(f"config.model.ssm_kwargs does not fit ssm='{m.ssm}' ({e}); "
                          f"its keys for '{m.ssm}' are {sorted(default_ssm_kwargs(m.ssm).keys())}") from None
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from None


def image_to_sequence(x_BHWC, permutation=None):
    """(B, H, W, C) -> (B, H W, C), row-major (position l = row * W + column); then u_l <- u_{pi(l)}."""
    chex.assert_rank(x_BHWC, 4)
    B, H, W, C = x_BHWC.shape
    u = jnp.reshape(x_BHWC, (B, H * W, C))
    return u if permutation is None else jnp.take(u, permutation, axis=1)


def fixed_permutation(length: int, seed: int) -> np.ndarray:
    """The psMNIST permutation: NumPy's default_rng(seed).permutation(length), fixed for the whole run."""
    return np.random.default_rng(seed).permutation(length).astype(np.int32)


def eval_batch(batch_size: int, sharding) -> int:
    """`batch_size` rounded up to a multiple of the devices `sharding` splits a batch over."""
    n = sharding.mesh.size if isinstance(sharding, jax.sharding.NamedSharding) else 1
    return -(-batch_size // n) * n


def batched_sums(fn, arrays: dict, batch_size: int, sharding=None) -> dict:
    """Σ over the rows of `arrays` of fn(batch, mask) -> {name: sum over the batch}, in fixed-size batches.

    Names starting with 'max_' are reduced by max instead of sum. Each batch is `eval_batch(batch_size,
    sharding)` rows split over `sharding`'s devices (every process holds all of `arrays` and places its own
    devices' rows; default: the first device); the last batch is zero-padded (one compiled shape) and `mask`
    marks its real rows.
    """
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batch_size = eval_batch(batch_size, sharding)
    n = len(next(iter(arrays.values())))
    totals: dict = {}
    for i in range(0, n, batch_size):
        chunk = {k: v[i:i + batch_size] for k, v in arrays.items()}
        m = len(next(iter(chunk.values())))
        if m < batch_size:
            chunk = {k: np.concatenate([v, np.zeros((batch_size - m,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
        chunk["mask"] = np.arange(batch_size) < m
        placed = {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in chunk.items()}
        mask = placed.pop("mask")
        out = jax.device_get(fn(placed, mask))
        for k, v in out.items():
            v = np.asarray(v, np.float64)
            totals[k] = v if k not in totals else (np.maximum(totals[k], v) if k.startswith("max_") else totals[k] + v)
    return totals
