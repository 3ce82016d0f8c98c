"""Sequence classification with an SSM stack: an image read one pixel at a time -> its label.

    x (H, W, C) image  ->  u = x read row-major, (L = H W, C)  [psMNIST: u[pi(l)] for a fixed permutation pi]
    logits = Decoder(mean_l (or last l) SequenceModel(u)_l),   loss = cross-entropy(logits, label)

This is the sequential-image benchmark of S4 / S4D / LRU: sMNIST (784 steps x 1), psMNIST (the same
with a fixed random permutation of the 784 positions), sCIFAR (1024 steps x 3 channels), and on CPU
the scikit-learn digits (64 steps x 1, `configs/s4_seq_digits.py`). The network is
`jaxgen.ssm.SequenceModel` (encoder -> n_layers x [LayerNorm, SSM, GELU, GLU, dropout, residual] ->
LayerNorm -> pooling -> decoder) with the SSM named by `model.ssm` ('s4d' | 's4' | 'lru').

Config keys beyond the shared ones:
  model: ssm, d_model, n_layers, N (state size), dropout, pooling ('mean' | 'last'),
    ssm_kwargs (passed to the SSM layer; defaults per SSM in `default_ssm_kwargs`)
  sequence: permute (bool: psMNIST-style fixed permutation of the positions), permutation_seed
  eval: batch_size (the whole test split is evaluated, in batches of this size)
The optimizer's parameter groups should give the SSM's A, B and step a lower learning rate and no
weight decay: `(jaxgen.ssm.SSM_PARAM_PATTERN, 0.1, 0.0)` (`ssm_param_groups()`).

Logged per step: loss, accuracy (of the training batch). `evaluate` (EMA weights when config.ema_decay > 0):
test_accuracy and test_loss over the whole test split (`data.split_test`), and num_test.

Variants (`parse_variant`): the config files accept `get_config('lru')`, `get_config('smoke')`,
`get_config('lru,smoke')`: at most one SSM name and an optional 'smoke', comma-separated, any order.

This module also holds what the sequence tasks share (seq_generate, seq_copy): the variant parser,
the model block of the config, building a `SequenceModel` from it, and image -> sequence conversion.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import config as config_lib
from jaxgen.config import ConfigError
from jaxgen.optim import make_optimizer
from jaxgen.tasks import Task
from jaxgen.train.state import (check_supported, create_train_state, make_train_step, optimizer_updates,
                                 with_grad_accum)

SSMS = ("s4d", "s4", "lru")
POOLINGS = ("mean", "last")


# ---------------------------------------------------------------------------------------------------------
# shared by the sequence tasks


def parse_variant(arg: str | None, groups: dict[str, tuple[str, ...]] | None = None,
                  defaults: dict[str, str] | None = None) -> dict:
    """`jaxgen.config.parse_variant` with the SSM group: 'lru,smoke' -> {'ssm': 'lru', 'smoke': True}."""
    return config_lib.parse_variant(arg, {"ssm": SSMS} if groups is None else groups, defaults or {"ssm": "s4d"})


def default_ssm_kwargs(ssm: str) -> ml_collections.ConfigDict:
    """Keyword arguments of the SSM layer, with the usual defaults for each SSM.

    s4d: S4D-Lin init, ZOH, step log-uniform in [1e-3, 1e-1] (Gu et al. 2022);
    s4: HiPPO-LegS, same step range; lru: ring r in [0.5, 0.99], phase in [0, pi] (Orvieto et al. 2023
    use r_min 0.9 and a smaller max phase for the long LRA tasks; short sequences want faster decay).
    """
    if ssm == "s4d":
        return ml_collections.ConfigDict(dict(init="lin", method="zoh", step_min=1e-3, step_max=1e-1))
    if ssm == "s4":
        return ml_collections.ConfigDict(dict(measure="legs", step_min=1e-3, step_max=1e-1))
    if ssm == "lru":
        return ml_collections.ConfigDict(dict(r_min=0.5, r_max=0.99, max_phase=float(np.pi)))
    raise ValueError(f"ssm must be one of {SSMS}, got {ssm!r}")


def model_config(ssm: str = "s4d", **overrides) -> ml_collections.ConfigDict:
    """`config.model` of a sequence task: ssm, d_model, n_layers, N, dropout, pooling, ssm_kwargs."""
    c = ml_collections.ConfigDict(dict(ssm=ssm, d_model=64, n_layers=4, N=64, dropout=0.1, pooling="mean",
                                       ssm_kwargs=default_ssm_kwargs(ssm)))
    for k, v in overrides.items():
        if k not in c:
            raise ValueError(f"unknown model key '{k}'; accepted: {sorted(c.keys())}")
        c[k] = v
    return c


def ssm_param_groups(lr_mult: float = 0.1) -> tuple:
    """`config.optimizer.param_groups` for SSM models: A, B, step at lr_mult x the learning rate, no weight decay."""
    from jaxgen.ssm import SSM_PARAM_PATTERN

    return ((SSM_PARAM_PATTERN, lr_mult, 0.0),)


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


def data_info(config):
    """`jaxgen.data.dataset_info(config.data)`, its errors as ConfigError."""
    try:
        return data_lib.dataset_info(config.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def image_to_sequence(x_BHWC, permutation=None):
    """(B, H, W, C) -> (B, H W, C), row-major (position l = row * W + column); then u_l <- u_{pi(l)}."""
    chex.assert_rank(x_BHWC, 4)
    B, H, W, C = x_BHWC.shape
    u = jnp.reshape(x_BHWC, (B, H * W, C))
    return u if permutation is None else jnp.take(u, permutation, axis=1)


def fixed_permutation(length: int, seed: int) -> np.ndarray:
    """The psMNIST permutation: NumPy's default_rng(seed).permutation(length), fixed for the whole run."""
    return np.random.default_rng(seed).permutation(length).astype(np.int32)


def eval_params(state):
    """The weights to evaluate: the EMA when config.ema_decay > 0, else the trained parameters."""
    return state.ema_params if state.ema_params is not None else state.params


def batched_sums(fn, arrays: dict, batch_size: int) -> dict:
    """Σ over the rows of `arrays` of fn(batch, mask) -> {name: sum over the batch}, in fixed-size batches.

    Names starting with 'max_' are reduced by max instead of sum. The last batch is zero-padded to
    batch_size (one compiled shape) and `mask` marks its real rows.
    """
    n = len(next(iter(arrays.values())))
    totals: dict = {}
    for i in range(0, n, batch_size):
        chunk = {k: v[i:i + batch_size] for k, v in arrays.items()}
        m = len(next(iter(chunk.values())))
        if m < batch_size:
            chunk = {k: np.concatenate([v, np.zeros((batch_size - m,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
        mask = np.arange(batch_size) < m
        out = jax.device_get(fn({k: jnp.asarray(v) for k, v in chunk.items()}, jnp.asarray(mask)))
        for k, v in out.items():
            v = np.asarray(v, np.float64)
            totals[k] = v if k not in totals else (np.maximum(totals[k], v) if k.startswith("max_") else totals[k] + v)
    return totals


# ---------------------------------------------------------------------------------------------------------
# the classification task


def default_config(dataset: str = "digits", ssm: str = "s4d") -> ml_collections.ConfigDict:
    """Shared keys plus this task's model / sequence / eval blocks (digits-sized defaults)."""
    from jaxgen.config import base_config

    c = base_config()
    c.task = "seq_classify"
    c.data = data_lib.default_data_config(dataset)
    c.data.random_flip = False  # a flipped row is another sequence; S4's sequential benchmarks use no augmentation
    c.model = model_config(ssm)
    c.sequence = ml_collections.ConfigDict(dict(permute=False, permutation_seed=0))
    c.eval = ml_collections.ConfigDict(dict(batch_size=500))
    c.optimizer.param_groups = ssm_param_groups(0.1)
    return c


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
    info = data_info(config)
    _validate(config, info)
    check_supported(config, "sequence model")
    H, W, C = info.shape
    L = H * W
    perm = jnp.asarray(fixed_permutation(L, config.sequence.permutation_seed)) if config.sequence.permute else None
    tx_builder, lr_schedule = make_optimizer(config.optimizer, optimizer_updates(config.train))
    use_dropout = config.model.dropout > 0

    def new_model(key):
        return make_model(config.model, d_input=C, d_output=info.num_classes, l_max=L,
                          pooling=config.model.pooling, tokens=False, rngs=nnx.Rngs(params=key))

    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: new_model(jax.random.key(0))), nnx.Param)
    tx = with_grad_accum(tx_builder(abstract_params), config.train)

    def logits_fn(params, x_BHWC, key=None):
        return nnx.merge(graphdef, params)(image_to_sequence(x_BHWC, perm), key=key)

    def init(key):
        _, params = nnx.split(new_model(key), nnx.Param)
        return create_train_state(params, tx, config.ema_decay)

    def loss_fn(params, extra, batch, key):
        logits = logits_fn(params, batch["x"], key if use_dropout else None)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, extra)

    train_step = make_train_step(loss_fn, tx, lr_schedule, config.ema_decay)

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
                         config.eval.batch_size)
        return {"test_accuracy": float(s["correct"] / s["n"]), "test_loss": float(s["loss"] / s["n"]),
                "num_test": int(s["n"])}

    def eval_step(state):
        """One batch of evaluate()'s forward pass."""
        bs = config.eval.batch_size
        batch = {"x": jax.ShapeDtypeStruct((bs, H, W, C), jnp.float32), "label": jax.ShapeDtypeStruct((bs,), jnp.int32)}
        return eval_sums, (eval_params(state), batch, jax.ShapeDtypeStruct((bs,), jnp.bool_)), f"forward pass, batch {bs}"

    return Task(init=init, train_step=train_step, evaluate=evaluate, eval_step=eval_step)
