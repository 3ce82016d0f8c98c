"""Autoregressive image generation pixel by pixel with an SSM stack; sampling in recurrent mode.

    tokens t_l = round((x_l + 1) / 2 (levels - 1)) in {0, ..., levels - 1},  x read row-major (l = (row W + col) C + c)
    inputs  = (BOS, t_0, ..., t_{L-2}),  BOS = levels + label (class-conditional) or levels
    p(t) = Π_l softmax(SequenceModel(inputs)_l)[t_l],   loss = -(1/L) Σ_l log p(t_l | t_<l, label)  (nats / pixel)

The scikit-learn digits take integer values 0..16, so `levels = 17` makes the quantisation lossless.
Training runs the SSM in convolution mode (FFT, all positions at once). Generation runs it in
recurrent mode (`SequenceModel.init_state` / `.step`: one pixel at a time, O(1) work per pixel), and
the evaluation computes the test likelihood both ways: they compute the same function, so
`test_nll` (convolution) and `test_nll_recurrent` must agree up to float32 rounding
(`nll_gap` = |difference| of the per-pixel means, `nll_gap_max` = the largest per-sequence difference).

Config keys beyond the shared ones:
  (defaults: `jaxgen.task_configs.seq_generate_config`)
  model: see `jaxgen.task_configs.sequence_model_config` (pooling is ignored: one output per position)
  sequence: levels (quantisation levels, >= 2), class_conditional (bool; the BOS token carries the label)
  eval: batch_size, num_samples, temperature (> 0; logits / temperature), score_samples (bool: Fréchet
    distance `fd` of the samples in the features of a small classifier trained on the data, and for
    class-conditional models `sample_class_accuracy`, how often that classifier names the requested class)

Logged per step: loss (nats / pixel), bits_per_pixel. `evaluate` (EMA weights when config.ema_decay > 0):
test_nll, test_bits_per_pixel, test_nll_recurrent, nll_gap, nll_gap_max, [fd, classifier_test_accuracy,
sample_class_accuracy], and figures/samples.png (generated in recurrent mode, left; test images, right;
class-conditional: column k of the left grid asks for class k mod num_classes).
A model that ignores its inputs scores log(levels) nats / pixel (log 17 = 2.83 for digits).
"""

from __future__ import annotations

import functools
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import viz
from jaxgen.config import ConfigError
from jaxgen.tasks import Task, dataset_info
from jaxgen.tasks._evaluation import batch_sharding_like
from jaxgen.tasks._sequence import batched_sums, make_model
from jaxgen.train.state import check_supported, eval_params, trainable


def quantize(x, levels: int):
    """x in [-1, 1] -> int32 tokens round((x + 1) / 2 (levels - 1)), clipped to {0, ..., levels - 1}."""
    t = jnp.round((jnp.asarray(x, jnp.float32) + 1.0) * (0.5 * (levels - 1)))
    return jnp.clip(t, 0, levels - 1).astype(jnp.int32)


def dequantize(tokens, levels: int):
    """tokens -> x = 2 t / (levels - 1) - 1 in [-1, 1] (the inverse of `quantize` on its grid)."""
    return jnp.asarray(tokens, jnp.float32) * (2.0 / (levels - 1)) - 1.0


def image_tokens(x_BHWC, levels: int):
    """(B, H, W, C) images -> (B, H W C) tokens, row-major with the channels of a pixel adjacent."""
    chex.assert_rank(x_BHWC, 4)
    return quantize(jnp.reshape(x_BHWC, (x_BHWC.shape[0], -1)), levels)


def shift_right(tokens_BL, bos_B):
    """Teacher-forcing inputs: (BOS, t_0, ..., t_{L-2}); position l then predicts t_l."""
    chex.assert_rank(tokens_BL, 2)
    chex.assert_shape(bos_B, (tokens_BL.shape[0],))
    return jnp.concatenate([bos_B[:, None].astype(tokens_BL.dtype), tokens_BL[:, :-1]], axis=1)


def token_nll(logits_BLK, targets_BL):
    """-log softmax(logits)[target] per position, (B, L)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BLK.astype(jnp.float32), targets_BL)


def recurrent_logits(model, inputs_BL):
    """The model's logits computed one position at a time with its recurrent step mode (lax.scan over L).

    Same function as `model(inputs_BL)` (convolution mode); O(L) sequential steps.
    """
    chex.assert_rank(inputs_BL, 2)
    state = model.init_state(inputs_BL.shape[0])

    def body(state, tok_B):
        state, logits = model.step(state, tok_B)
        return state, logits

    _, logits_LBK = jax.lax.scan(body, state, jnp.swapaxes(inputs_BL, 0, 1))
    return jnp.swapaxes(logits_LBK, 0, 1)


def sample_recurrent(model, bos_B, length: int, key, temperature: float = 1.0):
    """Ancestral sampling in recurrent mode: t_l ~ softmax(step(state, t_{l-1}) / temperature), t_{-1} = BOS.

    Returns tokens (B, length). Each step costs O(1) in the sequence length (state update + heads).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    state = model.init_state(bos_B.shape[0])

    def body(carry, k):
        state, tok = carry
        state, logits = model.step(state, tok)
        nxt = jax.random.categorical(k, logits.astype(jnp.float32) / temperature, axis=-1).astype(tok.dtype)
        return (state, nxt), nxt

    _, toks_LB = jax.lax.scan(body, (state, bos_B.astype(jnp.int32)), jax.random.split(key, length))
    return jnp.swapaxes(toks_LB, 0, 1)


def _validate(config, info) -> None:
    s, e = config.sequence, config.eval
    if len(info.shape) != 3:
        raise ConfigError(f"config.task='seq_generate' models images (H, W, C) as pixel sequences; '{info.name}' "
                          f"has shape {info.shape}")
    if not isinstance(s.levels, int) or s.levels < 2:
        raise ConfigError(f"config.sequence.levels must be an integer >= 2, got {s.levels!r}")
    if s.class_conditional and not info.num_classes:
        raise ConfigError(f"config.sequence.class_conditional needs labels; '{info.name}' has none")
    if not e.temperature > 0:
        raise ConfigError(f"config.eval.temperature must be > 0, got {e.temperature}")
    if e.num_samples < 2 or e.batch_size < 1:
        raise ConfigError(f"config.eval.num_samples must be >= 2 and config.eval.batch_size >= 1, got "
                          f"{e.num_samples} and {e.batch_size}")


def new_model(config, info, key):
    """The autoregressive SequenceModel of this task (tokens in, levels logits out, no pooling)."""
    vocab = config.sequence.levels + (info.num_classes if config.sequence.class_conditional else 1)
    L = math.prod(info.shape)
    return make_model(config.model, d_input=vocab, d_output=config.sequence.levels, l_max=L, pooling=None,
                      tokens=True, rngs=nnx.Rngs(params=key))


def bos_tokens(config, labels_B):
    """BOS = levels + label (class-conditional) or levels."""
    base = jnp.full(labels_B.shape, config.sequence.levels, jnp.int32)
    return base + labels_B.astype(jnp.int32) if config.sequence.class_conditional else base


def build(config) -> Task:
    info = dataset_info(config)
    _validate(config, info)
    check_supported(config, "sequence model")
    levels, L = config.sequence.levels, math.prod(info.shape)
    use_dropout = config.model.dropout > 0
    t = trainable(config, lambda key: new_model(config, info, key))

    def sequences(batch):
        tokens = image_tokens(batch["x"], levels)
        labels = batch["label"] if config.sequence.class_conditional else jnp.zeros(tokens.shape[:1], jnp.int32)
        return shift_right(tokens, bos_tokens(config, labels)), tokens

    def loss_fn(params, extra, batch, key):
        inputs, targets = sequences(batch)
        logits = t.module(params)(inputs, key=key if use_dropout else None)
        loss = jnp.mean(token_nll(logits, targets))
        return loss, ({"bits_per_pixel": loss / math.log(2.0)}, extra)

    @jax.jit
    def eval_sums(params, batch, mask):
        model = t.module(params)
        inputs, targets = sequences(batch)
        conv = jnp.mean(token_nll(model(inputs), targets), axis=1)  # per sequence, nats / pixel
        rec = jnp.mean(token_nll(recurrent_logits(model, inputs), targets), axis=1)
        return {"conv": jnp.sum(jnp.where(mask, conv, 0.0)), "rec": jnp.sum(jnp.where(mask, rec, 0.0)),
                "max_gap": jnp.max(jnp.where(mask, jnp.abs(conv - rec), 0.0)), "n": jnp.sum(mask)}

    n_samples = config.eval.num_samples
    sample_labels = jnp.arange(n_samples, dtype=jnp.int32) % (info.num_classes or 1)

    @jax.jit
    def draw(params, key):
        model = t.module(params)
        toks = sample_recurrent(model, bos_tokens(config, sample_labels), L, key, config.eval.temperature)
        return dequantize(toks, levels).reshape((n_samples,) + tuple(info.shape))

    @functools.cache
    def test_split():
        return data_lib.load_split(config.data, config.data.split_test)

    def evaluate(state, key, workdir):
        test = test_split()
        params = eval_params(state)
        arrays = {"x": test["x"], "label": test.get("label", np.zeros(len(test["x"]), np.int32))}
        s = batched_sums(lambda b, m: eval_sums(params, b, m), arrays, config.eval.batch_size,
                         batch_sharding_like(params))
        out = {"test_nll": float(s["conv"] / s["n"]), "test_nll_recurrent": float(s["rec"] / s["n"])}
        out["test_bits_per_pixel"] = out["test_nll"] / math.log(2.0)
        out["nll_gap"] = abs(out["test_nll"] - out["test_nll_recurrent"])
        out["nll_gap_max"] = float(s["max_gap"])
        generated = np.asarray(jax.device_get(draw(params, key)))
        if config.eval.score_samples and info.num_classes:
            out.update(_score(config, info, test, generated, np.asarray(sample_labels)))
        if jax.process_index() == 0:
            conditional = config.sequence.class_conditional
            title = (f"sampled in recurrent mode{' (column k: class k)' if conditional else ''}; "
                     f"test nll {out['test_nll']:.3f} nats/pixel")
            viz.save_samples_figure(os.path.join(workdir, "figures", "samples.png"), generated,
                                    test["x"][:n_samples], title, ncols=info.num_classes if conditional else None,
                                    max_images=None)
        return out

    def eval_step(state):
        """evaluate()'s recurrent sampler."""
        return draw, (eval_params(state), jax.eval_shape(lambda: jax.random.key(0))), \
            f"recurrent sampler, {n_samples} samples of {L} tokens"

    return Task(init=t.init, train_step=t.train_step(loss_fn), evaluate=evaluate, eval_step=eval_step)


def _score(config, info, test, generated, labels) -> dict:
    """Fréchet distance to the test split in a small classifier's features; class agreement when conditional."""
    from jaxgen import metrics

    train = data_lib.load_split(config.data, config.data.split_train)
    extract, accuracy = metrics.classifier_features(info.name, train["x"], train["label"], test["x"], test["label"])
    out = {"fd": float(metrics.frechet_distance_from_features(np.asarray(extract(generated)),
                                                               np.asarray(extract(test["x"])))),
           "classifier_test_accuracy": float(accuracy)}
    if config.sequence.class_conditional:
        out["sample_class_accuracy"] = float(np.mean(extract.logits(generated).argmax(-1) == labels))
    return out
