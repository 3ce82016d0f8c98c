"""Sequence classification with an SSM stack: an image read one pixel at a time -> its label.

    x (H, W, C) image  ->  u = x read row-major, (L = H W, C)  [psMNIST: u[pi(l)] for a fixed permutation pi]
    logits = Decoder(mean_l (or last l) SequenceModel(u)_l),   loss = cross-entropy(logits, label)

This is the sequential-image benchmark of S4 / S4D / LRU: sMNIST (784 steps x 1), psMNIST (the same
with a fixed random permutation of the 784 positions), sCIFAR (1024 steps x 3 channels), and on CPU
the scikit-learn digits (64 steps x 1, `configs/s4_seq_digits.py`). The network is
`jaxgen.ssm.SequenceModel` (encoder -> n_layers x [LayerNorm, SSM, GELU, GLU, dropout, residual] ->
LayerNorm -> pooling -> decoder) with the SSM named by `model.ssm` ('s4d' | 's4' | 'lru').

Config keys beyond the shared ones (defaults: `jaxgen.task_configs.seq_classify_config`):
  model: ssm, d_model, n_layers, N (state size), dropout, pooling ('mean' | 'last'),
    ssm_kwargs (passed to the SSM layer; defaults per SSM in `jaxgen.task_configs.default_ssm_kwargs`)
  sequence: permute (bool: psMNIST-style fixed permutation of the positions), permutation_seed
  eval: batch_size (the whole test split is evaluated, in batches of this size split over the devices)
The optimizer's parameter groups should give the SSM's A, B and step a lower learning rate and no
weight decay: `(jaxgen.ssm.SSM_PARAM_PATTERN, 0.1, 0.0)` (`jaxgen.task_configs.ssm_param_groups()`).

Logged per step: loss, accuracy (of the training batch). `evaluate` (EMA weights when config.ema_decay > 0):
test_accuracy and test_loss over the whole test split (`data.split_test`), and num_test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgen import data as data_lib
from jaxgen.config import ConfigError
from jaxgen.task_configs import POOLINGS
from jaxgen.tasks import Task, dataset_info
from jaxgen.tasks._evaluation import batch_sharding_like
from jaxgen.tasks._sequence import batched_sums, eval_batch, fixed_permutation, image_to_sequence, make_model
from jaxgen.train.state import check_supported, eval_params, trainable


def _validate(config, info) -> None:
    if len(info.shape) != 3:
        raise ConfigError(f"config.task='seq_classify' reads images (H, W, C) as sequences; '{info.name}' has "
                          f"shape {info.shape}")
    if not info.num_classes:
        raise ConfigError(f"config.task='seq_classify' needs labels; '{info.name}' has none")
    if config.model.pooling not in POOLINGS:
        raise ConfigError(f"config.model.pooling must be one of {POOLINGS}, got '{config.model.pooling}'")
    if config.eval.batch_size < 1:
        raise ConfigError(f"config.eval.batch_size must be >= 1, got {config.eval.batch_size}")


def build(config) -> Task:
    info = dataset_info(config)
    _validate(config, info)
    check_supported(config, "sequence model")
    H, W, C = info.shape
    L = H * W
    perm = jnp.asarray(fixed_permutation(L, config.sequence.permutation_seed)) if config.sequence.permute else None
    use_dropout = config.model.dropout > 0

    def new_model(key):
        return make_model(config.model, d_input=C, d_output=info.num_classes, l_max=L,
                          pooling=config.model.pooling, tokens=False, rngs=nnx.Rngs(params=key))

    t = trainable(config, new_model)

    def logits_fn(params, x_BHWC, key=None):
        return t.module(params)(image_to_sequence(x_BHWC, perm), key=key)

    def loss_fn(params, extra, batch, key):
        logits = logits_fn(params, batch["x"], key if use_dropout else None)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, extra)

    @jax.jit
    def eval_sums(params, batch, mask):
        logits = logits_fn(params, batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = jnp.argmax(logits, -1) == batch["label"]
        return {"loss": jnp.sum(jnp.where(mask, ce, 0.0)), "correct": jnp.sum(correct & mask), "n": jnp.sum(mask)}

    @functools.cache
    def test_split():  # loaded on the first evaluation, kept for the next ones
        return data_lib.load_split(config.data, config.data.split_test)

    def evaluate(state, key, workdir):
        test = test_split()
        params = eval_params(state)
        s = batched_sums(lambda b, m: eval_sums(params, b, m), {"x": test["x"], "label": test["label"]},
                         config.eval.batch_size, batch_sharding_like(params))
        return {"test_accuracy": float(s["correct"] / s["n"]), "test_loss": float(s["loss"] / s["n"]),
                "num_test": int(s["n"])}

    def eval_step(state):
        """One batch of evaluate()'s forward pass."""
        params = eval_params(state)
        sharding = batch_sharding_like(params)
        bs = eval_batch(config.eval.batch_size, sharding)
        batch = {"x": jax.ShapeDtypeStruct((bs, H, W, C), jnp.float32, sharding=sharding),
                 "label": jax.ShapeDtypeStruct((bs,), jnp.int32, sharding=sharding)}
        return (eval_sums, (params, batch, jax.ShapeDtypeStruct((bs,), jnp.bool_, sharding=sharding)),
                f"forward pass, batch {bs} split over the devices")

    return Task(init=t.init, train_step=t.train_step(loss_fn), evaluate=evaluate, eval_step=eval_step)
