"""FID, Inception Score and precision/recall against the reference code and slow direct versions;
reference statistics of a tfds split (mock data) through the CLI."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen import data
from jaxgen.metrics import fid, fid_stats, precision_recall as pr
from jaxgen.metrics import inception as inc
from jaxgen.metrics.frechet import frechet_distance


def _features(seed, n, f, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(f, f)) / np.sqrt(f)
    return (rng.normal(size=(n, f)) @ mix + shift).astype(np.float32)


def test_streamed_stats_equal_numpy_mean_cov():
    x = _features(0, 301, 24, shift=50.0).astype(np.float64)  # large mean: a naive sum loses digits
    parts = np.split(x, [1, 8, 100, 163])
    a = fid.FeatureStats(24)
    for p in parts[:3]:
        a.update(p)
    b = fid.FeatureStats(24).update(parts[3]).update(parts[4])
    a.merge(b)
    assert a.n == 301
    np.testing.assert_allclose(a.mu, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(a.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(B, 24\)"):
        a.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        a.update(np.full((1, 24), np.nan))


def test_fid_equals_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance  # here, not at collection: it loads torch (~4 s)

    x1, x2 = _features(1, 400, 64), _features(2, 350, 64, shift=0.3)
    s1 = fid.FeatureStats(64)
    for chunk in np.array_split(x1, 7):
        s1.update(chunk)
    s2 = fid.FeatureStats(64).update(x2)
    ours = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    x1d, x2d = x1.astype(np.float64), x2.astype(np.float64)
    ref = calculate_frechet_distance(x1d.mean(0), np.cov(x1d, rowvar=False),
                                     x2d.mean(0), np.cov(x2d, rowvar=False))
    print(f"FID ours {ours:.12f} pytorch-fid {ref:.12f} rel {abs(ours - ref) / ref:.1e}")
    assert ours > 1.0 and abs(ours - ref) <= 1e-6 * ref


def test_inception_score_equals_direct_numpy():
    logits = np.random.default_rng(3).normal(0.0, 3.0, (1003, 50))
    acc = fid.InceptionScoreStats(1003, splits=10)
    for chunk in np.array_split(logits, 11):  # batch edges do not meet split edges
        acc.update(chunk)
    mean, std = acc.result()
    # Direct: the splits and the formula of the reference code (Salimans et al. 2016).
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(10):
        part = p[i * 1003 // 10:(i + 1) * 1003 // 10]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    assert mean > 1.5
    np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)
    assert fid.inception_score(logits) == pytest.approx((mean, std), rel=1e-12)
    with pytest.raises(ValueError, match="needs all num_samples=1003"):
        fid.InceptionScoreStats(1003).update(logits[:10]).result()


def test_precision_recall_equal_brute_force_knn():
    real, fake = _features(4, 90, 6).astype(np.float64), _features(5, 70, 6, shift=0.3)
    fake = fake.astype(np.float64)

    def radii(x):  # distance to the 3rd nearest other point
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, 3]

    def inside(q, x):
        d = np.linalg.norm(q[:, None] - x[None], axis=-1)
        return (d <= radii(x)[None]).any(axis=1).mean()

    with jax.enable_x64(True):
        got = pr.precision_recall(real, fake, k=3, block_size=32)  # blocks of 32: padded tails
    want = (inside(fake, real), inside(real, fake))
    print(f"precision/recall {got} brute force {want}")
    assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95
    assert got == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="k must be an integer in"):
        pr.knn_radii_sq(real[:3], k=3)


def test_stats_files_roundtrip_and_published_format(tmp_path):
    x = _features(6, 40, 8).astype(np.float64)
    s = fid.FeatureStats(8).update(x)
    fid.save_stats(tmp_path / "ours.npz", s.mu, s.sigma)
    mu, sigma = fid.load_stats(tmp_path / "ours.npz")
    np.testing.assert_array_equal(mu, s.mu)
    np.testing.assert_array_equal(sigma, s.sigma)
    # TTUR / pytorch-fid statistics files: float32 'mu' (F,) and 'sigma' (F, F) in an npz.
    np.savez(tmp_path / "fid_stats_published.npz", mu=s.mu.astype(np.float32),
             sigma=s.sigma.astype(np.float32))
    mu, sigma = fid.load_stats(tmp_path / "fid_stats_published.npz")
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, s.sigma, rtol=1e-6)
    np.savez(tmp_path / "wrong.npz", mean=s.mu, cov=s.sigma)
    with pytest.raises(ValueError, match=r"'mu' and 'sigma', found \['cov', 'mean'\]"):
        fid.load_stats(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match="does not exist"):
        fid.load_stats(tmp_path / "missing.npz")


def test_sample_and_score_streams_batches_and_resumes():
    w = np.random.default_rng(7).normal(size=(12, 10))
    real = _features(9, 30, 12)
    seen = []

    def sample_fn(key, i):
        seen.append(i)
        return jax.random.normal(key, (16, 2, 2, 3))

    def extractor(images):  # a stand-in for InceptionExtractor: (features, logits)
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        return flat, flat @ w

    ref = (np.zeros(12), np.eye(12))
    kw = dict(key=jax.random.key(0), ref_stats=ref, is_splits=4, real_features=real)
    states = []
    out = fid.sample_and_score(sample_fn, 40, extractor, on_batch=lambda st: states.append(
        jax.tree.map(np.copy, st)), **kw)
    assert seen == [0, 1, 2] and out["num_samples"] == 40 and len(states) == 3
    allx = np.concatenate([np.asarray(sample_fn(jax.random.fold_in(jax.random.key(0), i), i))
                           .reshape(16, -1) for i in range(3)])[:40].astype(np.float64)
    np.testing.assert_allclose(out["mu"], allx.mean(0), rtol=1e-6, atol=1e-12)
    assert out["fid"] == pytest.approx(frechet_distance(allx.mean(0), np.cov(allx, rowvar=False),
                                                        *ref), rel=1e-9)
    assert (out["is_mean"], out["is_std"]) == pytest.approx(fid.inception_score(allx @ w, 4))
    assert (out["precision"], out["recall"]) == pr.precision_recall(real, allx[:30].astype(np.float32))
    # Interrupted after batch 1 (0-based) and resumed from its state: the same numbers.
    seen.clear()
    resumed = fid.sample_and_score(sample_fn, 40, extractor, state=states[1], **kw)
    assert seen == [2]
    for k, v in out.items():
        np.testing.assert_array_equal(resumed[k], v)


def test_quantize_8bit_is_a_png_round_trip():
    x = np.random.default_rng(10).uniform(-1.2, 1.2, (4, 5, 5, 3)).astype(np.float32)
    png = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)  # what a PNG would hold
    np.testing.assert_allclose(np.asarray(fid.quantize_8bit(x)), png / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fid.quantize_8bit((x + 1) / 2, (0, 1))), png / 255.0,
                               atol=1e-6)
    data_x = png.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # jaxgen.data's images
    np.testing.assert_allclose(np.asarray(fid.quantize_8bit(data_x)), data_x, atol=1e-6)


class _PixelFeatures:
    """A cheap stand-in extractor: the first 16 pixels values, in input range (0, 1)."""

    batch_size, input_range = 8, (0.0, 1.0)

    def __call__(self, x):
        assert x.min() >= 0.0 and x.max() <= 1.0 and len(x) <= 8
        f = np.asarray(x, np.float64).reshape(len(x), -1)[:, :16]
        return f, f


def test_split_stats_reads_every_example_once():
    with tfds.testing.mock_data(num_examples=21):
        stats = fid_stats.split_stats({"name": "cifar10"}, "test", _PixelFeatures())
        x = data.load_split(data.default_data_config("cifar10"), "test")["x"]
    f = ((x.astype(np.float64) + 1.0) / 2.0).reshape(21, -1)[:, :16]
    assert stats.n == 21
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-9)


def test_fid_stats_cli_on_mock_cifar10(tmp_path, monkeypatch, capsys, random_inception_weights):
    """End to end: a random weights file, 8 mock images sharded over the 8 emulated devices."""
    monkeypatch.setenv("JAXGEN_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    out = tmp_path / "stats.npz"
    weights, _ = random_inception_weights
    with tfds.testing.mock_data(num_examples=8):
        argv = ["--data", "cifar10", "--split", "train", "--out", str(out), "--batch_size", "1"]
        assert fid_stats.main(argv + ["--no_download"]) == 2
        assert f"put the file {inc.FID_WEIGHTS_NAME}" in capsys.readouterr().err
        assert fid_stats.main(["--data", "cifar_typo", "--out", str(out)]) == 2
        assert "cifar_typo" in capsys.readouterr().err
        assert fid_stats.main(argv + ["--weights", str(weights)]) == 0
    assert "from 8 images of cifar10/train" in capsys.readouterr().out
    mu, sigma = fid.load_stats(out)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert np.all(np.isfinite(sigma)) and np.allclose(sigma, sigma.T) and np.ptp(mu) > 0
    assert np.linalg.eigvalsh(sigma).min() > -1e-8 * np.abs(sigma).max()
