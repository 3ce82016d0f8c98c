"""Remote storage: gs:// workdirs, data dirs and outputs end to end against a GCS API server on localhost
(`gcs_fixture.gcs_emulator`), and metrics.jsonl written whole / read back despite damaged lines."""

import contextlib
import io
import json
import os
import signal
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds
from gcs_fixture import BUCKET, gcs_emulator  # noqa: F401 - the session fixture

from jaxgen import config as config_lib
from jaxgen import paths
from jaxgen.train.logging import MetricWriter, read_metrics
from signals import signal_self_when

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs", "ddpm_toy2d.py") + ":smoke"
NUM_STEPS = 100  # the SIGTERM lands after step 1: the rest is the margin for it to arrive before the end
# Log every step (the losses are compared step by step); no periodic checkpoint: the SIGTERM one and the final one;
# no untrained-baseline sampling (one compile less).
OVERRIDES = {"train.num_steps": str(NUM_STEPS), "train.log_every": "1", "train.checkpoint_every": "1000",
             "eval.untrained_baseline": "False"}


def _load(spec, overrides):
    c = config_lib.load_config(spec)
    config_lib.apply_overrides(c, list(overrides.items()))
    return c


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def _tb_tags(data: bytes) -> set:
    """Scalar tags in a TensorBoard event file (TFRecord framing: u64 length, u32 crc, payload, u32 crc)."""
    from tensorboardX.proto import event_pb2

    tags, i = set(), 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 8], "little")
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        tags.update(v.tag for v in event.summary.value)
        i += 12 + n + 4
    return tags


@pytest.fixture(scope="module")
def gs_run(gcs_emulator, tmp_path_factory):  # noqa: F811
    """The toy smoke config with --workdir gs://test-bucket/run: the CLI's main in this process (working
    directory: an empty folder), a SIGTERM from a thread once the run's own handler is installed (inside the
    step loop), then resumed to the end (and evaluated); plus an uninterrupted run in gs://.../ref. The three
    runs share this process's compilation caches (the same executables, compiled once)."""
    from jaxgen import run, tasks
    from jaxgen.train.loop import train_and_evaluate

    cwd = tmp_path_factory.mktemp("cwd")
    repo_before = set(os.listdir(ROOT))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        err = io.StringIO()
        with signal_self_when(signal.SIGTERM) as sig, contextlib.redirect_stderr(err):
            rc = run.main(["--config", TOY, "--workdir", f"gs://{BUCKET}/run",
                           *(f"--config.{k}={v}" for k, v in OVERRIDES.items())])
        cut = dict(returncode=rc, stderr=err.getvalue(), sent=sig.sent.is_set(), strays=sig.strays,
                   checkpoints=gcs_emulator.list("run/checkpoints/"))
        config = _load(TOY, OVERRIDES)
        task = tasks.build(config)  # one task: its jitted samplers are traced once for both runs
        train_and_evaluate(config, f"gs://{BUCKET}/ref", task=task)
        final = train_and_evaluate(config, f"gs://{BUCKET}/run", task=task)  # resumes from the SIGTERM checkpoint
    return dict(cut=cut, final=final, cwd=cwd, repo_before=repo_before)


def _steps(names, prefix):
    return sorted({int(n[len(prefix):].split("/")[0]) for n in names if n[len(prefix):].split("/")[0].isdigit()})


def test_gs_workdir_sigterm_resume_is_bitwise_and_evaluates(gs_run, gcs_emulator):  # noqa: F811
    cut = gs_run["cut"]
    assert cut["sent"] and not cut["strays"], "the SIGTERM missed the run: " + cut["stderr"][-3000:]
    assert cut["returncode"] == 143, cut["stderr"][-3000:]
    assert "preempted: checkpoint of step" in cut["stderr"]
    (cut_at,) = _steps(cut["checkpoints"], "run/checkpoints/")  # the SIGTERM checkpoint, nothing else
    assert 0 < cut_at < NUM_STEPS
    ref, resumed = _losses(f"gs://{BUCKET}/ref"), _losses(f"gs://{BUCKET}/run")
    assert sorted(ref) == sorted(resumed) == list(range(1, NUM_STEPS + 1))
    assert [resumed[s] for s in ref] == [ref[s] for s in ref]  # bitwise, including the steps after the cut
    final = json.loads(paths.read_text(f"gs://{BUCKET}/run/final_metrics.json"))
    assert np.isfinite(final["eval/sw2"]) and final["eval/sw2"] == pytest.approx(gs_run["final"]["eval/sw2"])
    assert _steps(gcs_emulator.list("run/checkpoints/"), "run/checkpoints/") == [cut_at, NUM_STEPS]


def test_gs_workdir_objects_are_in_the_bucket_and_nothing_local(gs_run, gcs_emulator):  # noqa: F811
    names = gcs_emulator.list("run/")
    for want in ("run/config.json", "run/metrics.jsonl", "run/final_metrics.json"):
        assert want in names
    assert any(n.startswith("run/figures/samples_") and n.endswith(".png") for n in names)
    assert any(n.startswith(f"run/checkpoints/{NUM_STEPS}/") for n in names)
    events = [n for n in names if n.startswith("run/tensorboard/events.out.tfevents")]
    assert len(events) == 2  # one per run (the cut run and the resumed one)
    blob = gcs_emulator.client().bucket(BUCKET).blob(events[-1]).download_as_bytes()
    assert {"loss", "grad_norm", "eval/sw2"} <= _tb_tags(blob)
    assert not [n for n in names if ".jaxgen_write_probe" in n]
    assert os.listdir(gs_run["cwd"]) == []  # the working directory of the runs gained nothing
    assert set(os.listdir(ROOT)) - gs_run["repo_before"] == set()
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_missing_bucket_exits_2_with_one_line_naming_it(gcs_emulator, tmp_path, monkeypatch, capsys):  # noqa: F811
    from jaxgen import run

    monkeypatch.chdir(tmp_path)
    argv = ["--config", TOY, "--workdir", "gs://no-such-bucket/run", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gs://no-such-bucket/run" in err[0] and "does not exist" in err[0], err
    assert os.listdir(tmp_path) == []


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """12 train / 6 test random 8x8x1 uint8 images with labels 0..2 (written without TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
        for i, img in enumerate(_tiny_images(n, seed)):
            yield i, {"image": img, "label": i % 3}


def _tiny_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_tfds_data_dir_on_gs_is_staged_and_read_by_the_pipeline(gcs_emulator, tmp_path, monkeypatch):  # noqa: F811
    from jaxgen import data as data_lib

    local = tmp_path / "prepared"
    TinyDigits(data_dir=str(local), file_format="array_record").download_and_prepare()
    version_dir = local / "tiny_digits" / "1.0.0"
    files = sorted(os.listdir(version_dir))
    assert any(".array_record-" in f for f in files)
    remote = f"gs://{BUCKET}/tfds"
    for f in files:
        paths.copy(version_dir / f, f"{remote}/tiny_digits/1.0.0/{f}")
    monkeypatch.setenv("JAXGEN_STAGE_DIR", str(tmp_path / "stage"))
    cfg = data_lib.default_data_config("tiny_digits")
    cfg.data_dir = remote
    train = data_lib.load_split(cfg, "train")
    # tfds stores records in its own order: compare (image, label) pairs as sets, against the generator's arrays.
    want = _tiny_images(12, 0).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    got = sorted((x.tobytes(), int(y)) for x, y in zip(train["x"], train["label"]))
    assert got == sorted((x.tobytes(), i % 3) for i, x in enumerate(want))
    staged = tmp_path / "stage" / BUCKET / "tfds" / "tiny_digits" / "1.0.0"
    assert sorted(os.listdir(staged)) == files
    mtimes = {f: os.stat(staged / f).st_mtime_ns for f in files}
    it = data_lib.make_train_iterator(cfg, global_batch_size=4, seed=0)
    assert next(it)["x"].shape == (4, 8, 8, 1)
    assert {f: os.stat(staged / f).st_mtime_ns for f in files} == mtimes  # staged once, not copied again


def test_metrics_partial_last_line_is_cut_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match="cut off a partial last line"):
        w = MetricWriter(str(tmp_path))
    w.write(2, {"loss": 0.25})
    w.close()
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["loss"] for r in read_metrics(str(tmp_path))] == [0.5, 0.25]


def test_read_metrics_skips_and_reports_bad_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 1.0}\ngarbage\n[1, 2]\n{"loss": 3.0}\n{"step": "2"}\n{"step": 2, "loss": 2.0}\n'
        '{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match=r"skipped 5 bad line\(s\) \(line 2, 3, 4, 5, 7\)"):
        rows = read_metrics(str(tmp_path))
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_metrics_on_gs_rewritten_whole_and_partial_line_cut(gcs_emulator):  # noqa: F811
    url = f"gs://{BUCKET}/metrics_unit"
    paths.write_text(f"{url}/metrics.jsonl", '{"step": 1, "loss": 0.5}\n{"st')
    with pytest.warns(RuntimeWarning, match="cut off a partial last line"):
        w = MetricWriter(url, sync_every_s=3600.0)
    w.write(2, {"loss": 0.25})
    assert paths.read_text(f"{url}/metrics.jsonl").endswith('{"st')  # buffered until a sync
    w.sync()
    w.write(3, {"loss": 0.125})
    w.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(url)] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert paths.read_text(f"{url}/metrics.jsonl").endswith("\n")


def test_paths_on_gs_and_local(gcs_emulator, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    base = f"gs://{BUCKET}/paths_unit"
    assert paths.is_remote(base) and not paths.is_remote("runs/x")
    assert paths.join(base, "a", "b.txt") == f"{base}/a/b.txt" and paths.absolute(base) == base
    assert paths.absolute("runs/x") == os.path.join(str(tmp_path), "runs", "x")
    paths.makedirs(f"{base}/d")  # nothing to create on an object store, and never locally
    paths.write_text(f"{base}/d/x.json", "1")
    paths.replace(f"{base}/d/x.json", f"{base}/d/y.json")
    assert paths.listdir(f"{base}/d") == ["y.json"] and paths.read_text(f"{base}/d/y.json") == "1"
    with pytest.raises(ValueError, match="mode='a' is not supported"):
        paths.open(f"{base}/d/y.json", "a")
    paths.check_writable(base, "workdir")
    with pytest.raises(ValueError, match="workdir 'gs://no-such-bucket/x' cannot be written: bucket 'no-such-bucket'"):
        paths.check_writable("gs://no-such-bucket/x", "workdir")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        paths.check_writable(str(tmp_path / "file" / "run"), "workdir")
    paths.check_writable(str(tmp_path / "new" / "run"), "workdir")
    assert sorted(os.listdir(tmp_path)) == ["file"]  # checks create nothing; no local 'gs:' anywhere


def test_experiment_outputs_on_gs(gcs_emulator, capsys):  # noqa: F811
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments import _report

    out = _report.prepare_out(f"gs://{BUCKET}/exp")
    _report.write_rows(f"{out}/r.json", [{"setting": "a", "x": 1}, {"setting": "b", "x": 2}], ["a", "b"])
    rows = _report.write_rows(f"{out}/r.json", [{"setting": "b", "x": 3}], ["b"])  # re-run one setting
    assert rows == [{"setting": "a", "x": 1}, {"setting": "b", "x": 3}]
    fig = plt.figure()
    _report.save_figure(fig, f"{out}/f.png", dpi=50)
    plt.close(fig)
    assert paths.read_bytes(f"{out}/f.png")[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as e:
        _report.prepare_out("gs://no-such-bucket/exp")
    assert e.value.code == 2 and "gs://no-such-bucket/exp" in capsys.readouterr().err


def test_sampling_and_classifier_caches_on_gs(gcs_emulator, monkeypatch):  # noqa: F811
    import jax
    import jax.numpy as jnp

    from jaxgen import metrics
    from jaxgen.tasks import _evaluation as evaluation

    base = f"gs://{BUCKET}/caches"
    calls = []

    def estimate():
        calls.append(1)
        return np.array([0.5, 0.25])

    for _ in range(2):  # the second call reads the cache
        np.testing.assert_array_equal(evaluation.cached_gamma(f"{base}/gamma.json", [10, 20], estimate), [0.5, 0.25])
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    for _ in range(2):
        got = evaluation.cached_pytree(f"{base}/head_step1", abstract, lambda: calls.append(2) or tree)
        jax.tree.map(np.testing.assert_array_equal, got, tree)
    assert calls == [1, 2]

    from flax import nnx

    class TinyClassifier(nnx.Module):  # Classifier's interface, no RNG initialisers to compile
        made = 0

        def __init__(self, in_channels, num_classes, image_size, width=32, *, rngs=None):
            TinyClassifier.made += 1  # each instance has other weights: a loaded one shows the cached values
            d = image_size * image_size * in_channels
            self.feature_dim = 3
            self.w = nnx.Param(jnp.asarray(np.random.default_rng(TinyClassifier.made).normal(size=(d, 3)), jnp.float32))
            self.head = nnx.Param(jnp.ones((3, num_classes), jnp.float32))

        def features(self, x):
            return x.reshape(x.shape[0], -1) @ self.w[...]

        def __call__(self, x):
            return self.features(x) @ self.head[...]

    # The cache is what is tested, not the training: a fresh network stands in for the trained one.
    monkeypatch.setattr(metrics.features, "Classifier", TinyClassifier)
    monkeypatch.setattr(metrics.features, "train_classifier", lambda xtr, ytr, *, num_classes, width, **k:
                        TinyClassifier(xtr.shape[-1], num_classes, xtr.shape[1], width))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32), np.arange(16) % 2
    kw = dict(cache_dir=f"{base}/cls", width=4, num_steps=2, batch_size=8)
    extractor, acc = metrics.classifier_features("d", x, y, x, y, **kw)

    def fail(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(metrics.features, "train_classifier", fail)
    extractor2, acc2 = metrics.classifier_features("d", x, y, x, y, **kw)
    assert acc2 == acc
    np.testing.assert_array_equal(extractor2(x), extractor(x))
    assert [n.startswith("caches/cls/classifier_d_") for n in gcs_emulator.list("caches/cls/")] == [True]
