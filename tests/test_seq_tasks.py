"""The SSM sequence tasks (seq_classify, seq_generate, seq_copy) and their configs.

Independent references: the whole autoregressive network re-implemented as a float64 NumPy loop (S4D by
its ZOH recurrence, LRU by its defining recurrence), against which both the convolution-mode and the
recurrent-mode likelihoods of the task are checked; explicit index arithmetic for image -> sequence;
NumPy accuracy over the test split for the batched, padded evaluation; the copying data by inspection
of every sequence; and every config's `:smoke` variant end to end (tfds ones on mock data).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import tasks
from jaxgen.config import ConfigError
from jaxgen import task_configs
from jaxgen.tasks import _evaluation, _sequence, seq_copy, seq_generate
from jaxgen.tasks import build_and_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_CONFIGS = ("s4_seq_digits", "s4_smnist", "s4_psmnist", "s4_scifar", "s4_copying", "s4_generate_digits")


def _config(spec, **overrides):
    c = config_lib.load_config(os.path.join(ROOT, "configs", spec))
    config_lib.apply_overrides(c, [(k, str(v)) for k, v in overrides.items()])
    return c


# --- variants and configs -------------------------------------------------------------------------------


def test_parse_variant():
    ssm_variant = task_configs.ssm_variant
    assert ssm_variant(None) == {"ssm": "s4d", "smoke": False}
    assert ssm_variant("lru") == {"ssm": "lru", "smoke": False}
    assert ssm_variant("smoke") == {"ssm": "s4d", "smoke": True}
    assert ssm_variant("lru,smoke") == ssm_variant(" smoke , lru") == {"ssm": "lru", "smoke": True}
    groups = {"ssm": task_configs.SSMS, "mode": task_configs.COPY_MODES}
    assert config_lib.parse_variant("selective,s4,smoke", groups, {"ssm": "s4d", "mode": "copy"}) == \
        {"ssm": "s4", "mode": "selective", "smoke": True}
    for bad, match in (("gru", "unknown variant 'gru'"), ("lru,s4", "more than one ssm"),
                       ("smoke,smoke", "given twice")):
        with pytest.raises(ValueError, match=match):
            ssm_variant(bad)


def test_every_variant_loads_and_names_its_ssm():
    for name in SEQ_CONFIGS:
        for ssm in ("", "s4d", "s4", "lru"):
            for smoke in (False, True):
                arg = ",".join(t for t in (ssm, "smoke" if smoke else "") if t)
                c = config_lib.load_config(os.path.join(ROOT, "configs", f"{name}.py" + (f":{arg}" if arg else "")))
                config_lib.validate(c)
                assert c.model.ssm == (ssm or "s4d")
                assert (c.train.num_steps <= 10) == smoke
                assert c.optimizer.param_groups[0][1:] == (0.1, 0.0)  # SSM A, B, step: 0.1x lr, no weight decay
    assert _config("s4_copying.py:selective,lru").copy.mode == "selective"
    assert _config("s4_psmnist.py").sequence.permute and not _config("s4_smnist.py").sequence.permute
    with pytest.raises(ConfigError, match="unknown variant"):
        config_lib.load_config(os.path.join(ROOT, "configs/s4_seq_digits.py:selective"))


def test_bad_task_values_raise_config_errors():
    for spec, key, value, match in (
            ("s4_seq_digits.py:smoke", "model.ssm", "mamba", "config.model.ssm must be one of"),
            ("s4_seq_digits.py:smoke", "model.pooling", "max", "config.model.pooling must be one of"),
            ("s4_seq_digits.py:smoke", "model.N", "5", "config.model: N must be an even integer"),
            ("s4_seq_digits.py:smoke", "model.ssm", "lru", "ssm_kwargs does not fit ssm='lru'"),
            ("s4_generate_digits.py:smoke", "sequence.levels", "1", "levels must be an integer >= 2"),
            ("s4_generate_digits.py:smoke", "eval.temperature", "0.0", "temperature must be > 0"),
            ("s4_copying.py:smoke", "copy.mode", "reverse", "config.copy.mode must be one of"),
            ("s4_copying.py:smoke", "copy.vocab_size", "1", "vocab_size must be >= 2")):
        with pytest.raises(ConfigError, match=match):
            tasks.build(_config(spec, **{key: value}))


# --- data transforms ------------------------------------------------------------------------------------


def test_image_to_sequence_is_row_major_and_permutes_positions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    u = np.asarray(_sequence.image_to_sequence(jnp.asarray(x)))
    for b in range(2):
        for r in range(3):
            for c in range(5):
                np.testing.assert_array_equal(u[b, r * 5 + c], x[b, r, c])
    perm = _sequence.fixed_permutation(15, seed=3)
    assert sorted(perm.tolist()) == list(range(15)) and not np.array_equal(perm, np.arange(15))
    up = np.asarray(_sequence.image_to_sequence(jnp.asarray(x), jnp.asarray(perm)))
    for l in range(15):
        r, c = divmod(int(perm[l]), 5)
        np.testing.assert_array_equal(up[:, l], x[:, r, c])


def test_digit_tokens_are_the_raw_integer_pixels():
    from sklearn.datasets import load_digits

    x = data_lib.load_split(data_lib.default_data_config("digits"), "train")["x"]
    tokens = np.asarray(seq_generate.image_tokens(jnp.asarray(x), 17))
    # the multiset of pixel values of scikit-learn's raw 0..16 images (the split is a subset: compare histograms)
    raw = load_digits().images.astype(np.int64)
    assert tokens.min() == 0 and tokens.max() == 16 and tokens.shape == (1500, 64)
    np.testing.assert_allclose(np.bincount(tokens.ravel(), minlength=17) / tokens.size,
                               np.bincount(raw.ravel(), minlength=17) / raw.size, atol=0.01)
    np.testing.assert_array_equal(np.asarray(seq_generate.dequantize(tokens, 17)), x.reshape(1500, 64))  # lossless
    inputs = np.asarray(seq_generate.shift_right(jnp.asarray(tokens[:3]), jnp.asarray([17, 20, 26])))
    np.testing.assert_array_equal(inputs[:, 0], [17, 20, 26])
    np.testing.assert_array_equal(inputs[:, 1:], tokens[:3, :-1])


@pytest.mark.parametrize("mode", task_configs.COPY_MODES)
def test_copy_batch_layout(mode):
    K, M, lag, B = 5, 6, 9, 200
    inputs, targets = (np.asarray(a) for a in seq_copy.copy_batch(jax.random.key(0), B, mode=mode, num_tokens=K,
                                                                   vocab_size=M, lag=lag))
    assert inputs.shape == (B, 2 * K + lag) and targets.shape == (B, K)
    assert targets.min() >= 0 and targets.max() <= M - 1 and len(np.unique(targets)) == M
    np.testing.assert_array_equal(inputs[:, K + lag:], M + 1)  # markers
    first_positions = []
    for seq, tgt in zip(inputs, targets):
        memory = seq[:K + lag]
        where = np.flatnonzero(memory)
        np.testing.assert_array_equal(memory[where], tgt + 1)  # the symbols, in order, blanks elsewhere
        assert len(where) == K
        first_positions.append(where[0])
        if mode == "copy":
            np.testing.assert_array_equal(where, np.arange(K))
    if mode == "selective":
        assert len(set(first_positions)) > 3  # positions vary between sequences


# --- the autoregressive model: convolution mode == recurrent mode == a float64 NumPy loop -------------------


def _np_layer_norm(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * _f64(ln.scale) + _f64(ln.bias)


def _f64(v):
    return np.asarray(v[...], np.float64)


def _np_gelu(x):  # jax.nn.gelu's default tanh approximation
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_ssm_sequence(ssm, u_LH, kind):
    """The SSM layer by its recurrence, float64: S4D x_k = Ab x_{k-1} + Bb u_k (ZOH), y = 2 Re C x + D u;
    LRU x_k = lambda x_{k-1} + gamma B u_k, y = Re C x + D u."""
    L, H = u_LH.shape
    D = _f64(ssm.D)
    if kind == "s4d":
        lam = -np.exp(_f64(ssm.A_re)) + 1j * _f64(ssm.A_im)  # (H, N/2)
        B = _f64(ssm.B_re) + 1j * _f64(ssm.B_im)
        C = _f64(ssm.C_re) + 1j * _f64(ssm.C_im)
        dt = np.exp(_f64(ssm.log_step))[:, None]
        Ab = np.exp(dt * lam)
        Bb = (Ab - 1.0) / lam * B  # ZOH: A^-1 (exp(dt A) - I) B
        x = np.zeros_like(lam)
        ys = []
        for k in range(L):
            x = Ab * x + Bb * u_LH[k][:, None]
            ys.append(2.0 * np.sum(C * x, -1).real + D * u_LH[k])
        return np.stack(ys)
    lam = np.exp(-np.exp(_f64(ssm.nu_log)) + 1j * np.exp(_f64(ssm.theta_log)))  # (N,)
    B = (_f64(ssm.B_re) + 1j * _f64(ssm.B_im)) * np.exp(_f64(ssm.gamma_log))[:, None]  # (N, H)
    C = _f64(ssm.C_re) + 1j * _f64(ssm.C_im)  # (H, N)
    x = np.zeros(lam.shape, complex)
    ys = []
    for k in range(L):
        x = lam * x + B @ u_LH[k]
        ys.append((C @ x).real + D * u_LH[k])
    return np.stack(ys)


def _np_sequence_nll(model, inputs_L, targets_L, kind):
    """-mean log p(targets) of the whole SequenceModel (embedding, pre-norm SSM/GELU/GLU blocks, norm, decoder)."""
    h = _f64(model.encoder.embedding)[inputs_L]
    for block in model.blocks:
        z = _np_gelu(_np_ssm_sequence(block.ssm, _np_layer_norm(h, block.norm), kind))
        ab = z @ _f64(block.out.kernel) + _f64(block.out.bias)
        a, b = np.split(ab, 2, axis=-1)
        h = h + a / (1.0 + np.exp(-b))
    logits = _np_layer_norm(h, model.norm) @ _f64(model.decoder.kernel) + _f64(model.decoder.bias)
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -np.mean(logp[np.arange(len(targets_L)), targets_L])


def _generator(c, seed):
    """The task's autoregressive model, built under jit (one compile instead of one per initialiser)."""
    info = data_lib.dataset_info(c.data)
    return nnx.jit(lambda k: seq_generate.new_model(c, info, k))(jax.random.key(seed))


@nnx.jit
def _conv_logits(model, inputs):
    return model(inputs)


@pytest.mark.parametrize("ssm", ["s4d", "lru"])
def test_conv_and_recurrent_likelihoods_match_a_numpy_float64_loop(ssm):
    c = _config(f"s4_generate_digits.py:{ssm},smoke", **{"model.n_layers": 2, "model.d_model": 6, "model.N": 8})
    model = _generator(c, 1)
    test = data_lib.load_split(c.data, "test", max_examples=3)
    tokens = seq_generate.image_tokens(jnp.asarray(test["x"]), 17)
    inputs = seq_generate.shift_right(tokens, seq_generate.bos_tokens(c, jnp.asarray(test["label"])))
    conv = np.asarray(seq_generate.token_nll(_conv_logits(model, inputs), tokens)).mean(1)
    rec = np.asarray(seq_generate.token_nll(jax.jit(seq_generate.recurrent_logits)(model, inputs), tokens)).mean(1)
    ref = np.array([_np_sequence_nll(model, np.asarray(i), np.asarray(t), ssm) for i, t in zip(inputs, tokens)])
    assert np.all(ref > 0.5)  # a real likelihood, not a degenerate one
    np.testing.assert_allclose(conv, ref, rtol=2e-5)
    np.testing.assert_allclose(rec, ref, rtol=2e-5)


def test_s4_recurrent_likelihood_equals_convolution_likelihood():
    c = _config("s4_generate_digits.py:s4,smoke", **{"model.n_layers": 2, "model.d_model": 6, "model.N": 8})
    model = _generator(c, 2)
    tokens = jax.random.randint(jax.random.key(3), (4, 64), 0, 17)
    inputs = seq_generate.shift_right(tokens, seq_generate.bos_tokens(c, jnp.arange(4)))
    conv = np.asarray(seq_generate.token_nll(_conv_logits(model, inputs), tokens))
    rec = np.asarray(seq_generate.token_nll(jax.jit(seq_generate.recurrent_logits)(model, inputs), tokens))
    np.testing.assert_allclose(rec, conv, rtol=1e-4, atol=1e-5)
    assert conv.mean() > 1.0


def test_recurrent_sampling_draws_from_the_models_conditionals():
    """With the recurrent sampler's own draws as inputs, the convolution-mode conditionals give each drawn
    token a probability; over many draws the empirical frequency of the first token matches it."""
    c = _config("s4_generate_digits.py:smoke", **{"model.d_model": 6, "model.N": 4})
    model = _generator(c, 4)
    bos = jnp.full((4000,), 17 + 3, jnp.int32)
    toks = np.asarray(jax.jit(lambda k: seq_generate.sample_recurrent(model, bos, 3, k))(jax.random.key(5)))
    assert toks.shape == (4000, 3) and toks.min() >= 0 and toks.max() <= 16
    p0 = np.asarray(jax.nn.softmax(_conv_logits(model, bos[:1, None])[0, 0]))
    np.testing.assert_allclose(np.bincount(toks[:, 0], minlength=17) / 4000, p0, atol=0.025)


# --- evaluation of the classification task ------------------------------------------------------------


def _direct_nll_and_accuracy(c, state, seq_BLC, labels):
    """The classifier applied to whole sequences at once, then NumPy log-softmax and accuracy."""
    model = nnx.eval_shape(lambda: _sequence.make_model(c.model, d_input=1, d_output=10, l_max=64,
                                                           pooling="mean", tokens=False,
                                                           rngs=nnx.Rngs(params=jax.random.key(0))))
    graphdef, _ = nnx.split(model, nnx.Param)
    logits = np.asarray(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(state.params, jnp.asarray(seq_BLC)),
                        np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels]), np.mean(logits.argmax(1) == labels)


@pytest.mark.parametrize("permute, devices", [(False, 1), (True, 8)])
def test_classify_evaluation_equals_numpy_over_the_whole_test_split(permute, devices):
    """Batched, padded evaluation (297 = 2 x 128 + 41 on one device; on 8, batches of 100 rounded up to 104 rows
    split over the devices) == one pass over the NumPy-built sequences (row-major; with permute, positions
    reordered by default_rng(7).permutation(64))."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    c = _config("s4_seq_digits.py:smoke", **{"eval.batch_size": 128 if devices == 1 else 100,
                                              "sequence.permute": permute, "sequence.permutation_seed": 7})
    task = tasks.build(c)
    state = jax.jit(task.init)(jax.random.key(0))
    if devices > 1:
        state = jax.device_put(state, NamedSharding(Mesh(np.array(jax.devices()[:devices]), ("data",)), P()))
        assert _sequence.eval_batch(100, _evaluation.batch_sharding_like(state.params)) == 104
    out = task.evaluate(state, jax.random.key(1), "/nonexistent")
    test = data_lib.load_split(c.data, "test")
    seq = test["x"].reshape(-1, 64)
    if permute:
        seq = seq[:, np.random.default_rng(7).permutation(64)]
    nll, accuracy = _direct_nll_and_accuracy(c, state, seq[..., None], test["label"])
    assert out["num_test"] == 297
    np.testing.assert_allclose(out["test_accuracy"], accuracy, atol=1e-12)
    np.testing.assert_allclose(out["test_loss"], nll, rtol=1e-5)


# --- every config's smoke variant end to end ----------------------------------------------------------


def test_digits_smoke_end_to_end(tmp_path):
    out = build_and_train(_config("s4_seq_digits.py:lru,smoke"), str(tmp_path))
    assert out["eval/num_test"] == 297 and 0.0 <= out["eval/test_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [2, 4]
    assert all(np.isfinite(row["accuracy"]) for row in rows if "loss" in row)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["ssm"] == "lru"


def test_generate_smoke_end_to_end(tmp_path):
    out = build_and_train(_config("s4_generate_digits.py:smoke", **{"eval.score_samples": False}), str(tmp_path))
    assert 0.5 < out["eval/test_nll"] < 2 * math.log(17)
    assert out["eval/nll_gap"] < 1e-4 and out["eval/nll_gap_max"] < 1e-4
    np.testing.assert_allclose(out["eval/test_bits_per_pixel"], out["eval/test_nll"] / math.log(2), rtol=1e-12)
    assert (tmp_path / "figures" / "samples.png").exists()


def test_copying_smoke_end_to_end(tmp_path):
    out = build_and_train(_config("s4_copying.py:selective,smoke"), str(tmp_path))
    assert out["eval/num_test"] == 64 and 0.0 <= out["eval/test_sequence_accuracy"] <= out["eval/test_accuracy"] <= 1
    assert np.isfinite(out["eval/test_loss"])


@pytest.mark.parametrize("spec", ["s4_smnist.py:smoke", "s4_psmnist.py:smoke", "s4_scifar.py:smoke"])
def test_tfds_smoke_configs_end_to_end(tmp_path, spec):
    import tensorflow_datasets as tfds

    c = _config(spec)
    with tfds.testing.mock_data(num_examples=64):  # MNIST / CIFAR-10 are not prepared on the test machine
        out = build_and_train(c, str(tmp_path))
    assert out["eval/num_test"] == 64 and np.isfinite(out["eval/test_loss"])
