"""Copying and selective copying: can the SSM stack hold K tokens in its state and recall them later?

Tokens: 0 = blank, 1..M = symbols, M + 1 = marker. A sequence has a memory region of K + lag
positions followed by K markers (L = 2K + lag); at the K marker positions the model must output
the K symbols in their order of appearance (a classification over the M symbols at each of them):

    copy      (Arjovsky et al. 2016; S4 / HiPPO):  memory = s_1 .. s_K, blank x lag
              every symbol is recalled exactly K + lag steps after it appeared: a fixed delay, which
              one linear time-invariant convolution kernel can implement.
    selective (Gu & Dao 2023, "selective copying"): the K symbols sit at random, sorted positions of
              the memory region, blanks elsewhere; the delay differs per symbol and per example, so
              the model must decide from the content what to keep: hard for time-invariant SSMs.

The data are synthetic and drawn inside the jitted train step from the step's key (`copy_batch`),
with the batch size of the loop's batch; the loop's data pipeline (config.data, the digits) only sets
that size and is otherwise unused. Generated inside the step, the batch is computed on every device
(the task is small: minutes on a CPU). Evaluation uses a fixed held-out set drawn from
`eval.test_seed`, the same at every evaluation.

Config keys beyond the shared ones:
  (defaults: `jaxgen.task_configs.seq_copy_config`)
  model: see `jaxgen.task_configs.sequence_model_config` (pooling is ignored: one output per position)
  copy: mode ('copy' | 'selective'), num_tokens (K), vocab_size (M), lag
  eval: num_examples, batch_size, test_seed

Logged per step: loss (cross-entropy at the marker positions), accuracy (per recalled token).
`evaluate`: test_accuracy (per token), test_sequence_accuracy (all K tokens right), test_loss;
chance is 1 / M per token.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgen.config import ConfigError
from jaxgen.task_configs import COPY_MODES
from jaxgen.tasks import Task
from jaxgen.tasks._sequence import make_model
from jaxgen.train.state import check_supported, eval_params, trainable


def copy_batch(key, batch_size: int, *, mode: str, num_tokens: int, vocab_size: int, lag: int):
    """(inputs (B, 2K + lag) int32, targets (B, K) int32 in [0, M)) of the copying task `mode`.

    inputs = [memory region (K + lag) | marker x K]; symbols s ~ U{1..M}; targets = s - 1.
    copy: symbols at positions 0..K-1; selective: at K distinct random positions, in increasing order.
    """
    if mode not in COPY_MODES:
        raise ValueError(f"mode must be one of {COPY_MODES}, got {mode!r}")
    K, M = num_tokens, vocab_size
    if K < 1 or M < 2 or lag < 0:
        raise ValueError(f"need num_tokens >= 1, vocab_size >= 2, lag >= 0; got {K}, {M}, {lag}")
    region = K + lag
    k_sym, k_pos = jax.random.split(key)
    symbols = jax.random.randint(k_sym, (batch_size, K), 1, M + 1, jnp.int32)
    if mode == "copy":
        positions = jnp.broadcast_to(jnp.arange(K), (batch_size, K))
    else:  # the first K of a random permutation of the region, sorted: uniform over K-subsets
        positions = jnp.sort(jnp.argsort(jax.random.uniform(k_pos, (batch_size, region)), axis=1)[:, :K], axis=1)
    memory = jnp.zeros((batch_size, region), jnp.int32).at[jnp.arange(batch_size)[:, None], positions].set(symbols)
    inputs = jnp.concatenate([memory, jnp.full((batch_size, K), M + 1, jnp.int32)], axis=1)
    return inputs, symbols - 1


def recall_logits(model, inputs_BL, num_tokens: int, key=None):
    """The model's logits at the K marker positions (the last K), (B, K, M)."""
    chex.assert_rank(inputs_BL, 2)
    return model(inputs_BL, key=key)[:, -num_tokens:]


def _validate(config) -> None:
    cp, e = config.copy, config.eval
    if cp.mode not in COPY_MODES:
        raise ConfigError(f"config.copy.mode must be one of {COPY_MODES}, got '{cp.mode}'")
    if cp.num_tokens < 1:
        raise ConfigError(f"config.copy.num_tokens must be >= 1, got {cp.num_tokens}")
    if cp.vocab_size < 2:
        raise ConfigError(f"config.copy.vocab_size must be >= 2, got {cp.vocab_size}")
    if cp.lag < 0:
        raise ConfigError(f"config.copy.lag must be >= 0, got {cp.lag}")
    if e.num_examples < 1 or e.batch_size < 1:
        raise ConfigError(f"config.eval.num_examples and config.eval.batch_size must be >= 1, got "
                          f"{e.num_examples} and {e.batch_size}")


def build(config) -> Task:
    _validate(config)
    check_supported(config, "sequence model")
    cp = config.copy
    K, M = cp.num_tokens, cp.vocab_size
    L = 2 * K + cp.lag
    make = dict(mode=cp.mode, num_tokens=K, vocab_size=M, lag=cp.lag)
    use_dropout = config.model.dropout > 0

    def new_model(key):
        return make_model(config.model, d_input=M + 2, d_output=M, l_max=L, pooling=None, tokens=True,
                          rngs=nnx.Rngs(params=key))

    t = trainable(config, new_model)

    def scores(params, inputs, targets, key=None):
        logits = recall_logits(t.module(params), inputs, K, key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, K)
        correct = jnp.argmax(logits, -1) == targets
        return ce, correct

    def loss_fn(params, extra, batch, key):
        k_data, k_drop = jax.random.split(key)
        inputs, targets = copy_batch(k_data, batch["x"].shape[0], **make)
        ce, correct = scores(params, inputs, targets, k_drop if use_dropout else None)
        return jnp.mean(ce), ({"accuracy": jnp.mean(correct)}, extra)

    n_batches = -(-config.eval.num_examples // config.eval.batch_size)

    @jax.jit
    def test_sums(params):
        """Σ over the fixed held-out set (n_batches x eval.batch_size examples from eval.test_seed)."""
        def one(i):
            inputs, targets = copy_batch(jax.random.fold_in(jax.random.key(config.eval.test_seed), i),
                                         config.eval.batch_size, **make)
            ce, correct = scores(params, inputs, targets)
            return jnp.sum(ce), jnp.sum(correct), jnp.sum(jnp.all(correct, axis=1))

        ce, correct, seq = jax.lax.map(one, jnp.arange(n_batches))
        return jnp.sum(ce), jnp.sum(correct), jnp.sum(seq)

    def evaluate(state, key, workdir):
        ce, correct, seq = (float(v) for v in jax.device_get(test_sums(eval_params(state))))
        n = n_batches * config.eval.batch_size
        return {"test_accuracy": correct / (n * K), "test_sequence_accuracy": seq / n, "test_loss": ce / (n * K),
                "num_test": n}

    def eval_step(state):
        """evaluate()'s one jitted call: the sums over the whole held-out set."""
        return test_sums, (eval_params(state),), f"held-out sums, {n_batches} batches of {config.eval.batch_size}"

    return Task(init=t.init, train_step=t.train_step(loss_fn), evaluate=evaluate, eval_step=eval_step)
