"""jaxgen.data: digits, 2-D toys, the tfds pipeline (mock data) and the train-iterator contract.

References are independent of the code under test: scikit-learn's load_digits / make_moons /
make_swiss_roll, closed-form moments, the documented split permutation, and the single-process
iterator for the per-process split.
"""
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as skd

from jaxgen import data


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def toy_config(name="gmm_grid", n=1000):
    c = data.default_data_config(name)
    c.num_examples = n
    return c


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_the_documented_permutation_of_sklearn_digits():
    bunch = skd.load_digits()
    order = np.random.default_rng(0).permutation(1797)
    expected_x = bunch.images[order][..., None] / 8.0 - 1.0  # 2 p / 16 - 1
    cfg = data.default_data_config("digits")
    train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
    assert train["x"].dtype == np.float32 and train["label"].dtype == np.int32
    assert train["x"].shape == (1500, 8, 8, 1) and test["x"].shape == (297, 8, 8, 1)
    np.testing.assert_array_equal(train["x"], expected_x[:1500].astype(np.float32))
    np.testing.assert_array_equal(test["x"], expected_x[1500:].astype(np.float32))
    np.testing.assert_array_equal(test["label"], bunch.target[order][1500:])
    assert train["x"].min() == -1.0 and train["x"].max() == 1.0
    assert set(np.unique(test["label"])) == set(range(10))
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("digits", (8, 8, 1), 10, 1500, 297)
    assert data.load_split(cfg, "test", max_examples=10)["x"].shape == (10, 8, 8, 1)


def test_digits_iterator_batches():
    it = data.make_train_iterator(data.default_data_config("digits"), global_batch_size=64, seed=0)
    b = next(it)  # process_index / process_count default to jax's: 0 / 1
    assert b["x"].shape == (64, 8, 8, 1) and b["x"].dtype == np.float32
    assert b["label"].shape == (64,) and b["label"].dtype == np.int32
    assert -1.0 <= b["x"].min() and b["x"].max() <= 1.0


# ----------------------------------------------------------------------------- toys


def _standardise(x):
    """Empirical version of the documented normalisation: centre, one scalar for tr(Cov) / 2 = 1."""
    x = x - x.mean(0)
    return x / np.sqrt((x**2).sum(1).mean() / 2)


def _assert_same_distribution(a, b, tol):
    """Quantiles of the two coordinates and of two diagonal projections agree."""
    qs = np.linspace(0.02, 0.98, 25)
    for d in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]) / np.sqrt(2),
              np.array([1.0, -1.0]) / np.sqrt(2)):
        np.testing.assert_allclose(np.quantile(a @ d, qs), np.quantile(b @ d, qs), atol=tol)


@pytest.mark.parametrize("name", data.TOY_NAMES)
def test_toy_moments_are_normalised(name):
    x = data.sample_toy(name, 200_000, np.random.default_rng(1)).astype(np.float64)
    assert x.shape == (200_000, 2) and np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose((x**2).sum(1).mean() / 2, 1.0, rtol=0.015)


def test_two_moons_matches_sklearn():
    ours = data.sample_toy("two_moons", 100_000, np.random.default_rng(0)).astype(np.float64)
    ref, _ = skd.make_moons(100_000, noise=0.1, random_state=0)
    _assert_same_distribution(ours, _standardise(ref), tol=0.03)


def test_swiss_roll_matches_sklearn():
    ours = data.sample_toy("swiss_roll", 100_000, np.random.default_rng(0)).astype(np.float64)
    ref, _ = skd.make_swiss_roll(100_000, noise=0.3, random_state=0)
    _assert_same_distribution(ours, _standardise(ref[:, [0, 2]]), tol=0.03)


def test_checkerboard_fills_the_dark_squares_uniformly():
    x = data.sample_toy("checkerboard", 80_000, np.random.default_rng(0)).astype(np.float64)
    raw = x * np.sqrt(4 / 3)  # marginals U[-2, 2] have variance 4/3
    assert np.abs(raw).max() <= 2.0 + 1e-6
    cells = np.floor(raw).astype(int)
    assert np.all((cells.sum(1) % 2) == 0)
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8
    np.testing.assert_allclose(counts / len(x), 1 / 8, atol=0.006)


def test_gmm_grid_params_and_samples():
    w, mu, s = data.gmm_grid_params()
    assert w.shape == (25,) and mu.shape == (25, 2) and s.shape == (25,)
    np.testing.assert_allclose(w.sum(), 1.0)
    # Exact second moment of the mixture per coordinate: sum_k w_k (mu_k^2 + s_k^2) = 1.
    np.testing.assert_allclose(w @ (mu**2) + w @ s**2, [1.0, 1.0], rtol=1e-12)
    spacing = np.diff(np.unique(np.round(mu[:, 0], 12)))
    np.testing.assert_allclose(spacing, spacing[0])
    np.testing.assert_allclose(s / spacing[0], 0.1)  # component std is 0.1 grid units
    x, labels = data.sample_toy("gmm_grid", 50_000, 3, with_labels=True, dtype=np.float64)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == set(range(25))
    # Given its label a point is N(mu_k, s_k^2 I): ||x - mu||^2 / s^2 ~ chi^2_2 (mean 2).
    z2 = ((x - mu[labels]) ** 2).sum(1) / s[labels] ** 2
    np.testing.assert_allclose(z2.mean(), 2.0, rtol=0.03)


def test_toy_splits_fixed_and_independent():
    cfg = toy_config("two_moons", 500)
    a, b = data.load_split(cfg, "train"), data.load_split(cfg, "train")
    test = data.load_split(cfg, "test")
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (500, 2) and a["x"].dtype == np.float32 and a["label"].dtype == np.int32
    assert not np.isin(test["x"][:, 0], a["x"][:, 0]).any()
    assert data.dataset_info(cfg) == data.DatasetInfo("two_moons", (2,), 2, 500, 500)
    assert data.dataset_info(toy_config("swiss_roll", 10)).num_classes is None
    assert "label" not in data.load_split(toy_config("checkerboard", 10), "train")


# ----------------------------------------------------------------------------- iterator contract


def test_one_epoch_is_a_permutation_and_epochs_are_reshuffled():
    cfg = toy_config("swiss_roll", 1000)
    train = data.load_split(cfg, "train")["x"]
    it = data.make_train_iterator(cfg, global_batch_size=100, seed=5, process_index=0, process_count=1)
    epochs = [np.concatenate([b["x"] for b in take(it, 10)]) for _ in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e[:, 0]), np.sort(train[:, 0]))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_batches_straddle_epochs_without_dropping_examples():
    cfg = toy_config("gmm_grid", 250)
    train = data.load_split(cfg, "train")["x"]
    it = data.make_train_iterator(cfg, global_batch_size=100, seed=0, process_index=0, process_count=1)
    stream = np.concatenate([b["x"] for b in take(it, 5)])  # 500 points = 2 epochs of 250
    for e in (stream[:250], stream[250:]):
        np.testing.assert_array_equal(np.sort(e[:, 0]), np.sort(train[:, 0]))


def test_seed_determines_the_stream():
    cfg = toy_config()
    mk = lambda seed: data.make_train_iterator(cfg, global_batch_size=32, seed=seed, process_index=0,
                                               process_count=1)
    assert_batches_equal(take(mk(3), 4), take(mk(3), 4))
    assert not np.array_equal(next(mk(3))["x"], next(mk(4))["x"])


@pytest.mark.parametrize("name,k", [("digits", 3), ("gmm_grid", 37)])  # 37 * 27 crosses an epoch of 1000
def test_state_restores_exact_position(name, k):
    cfg = data.default_data_config(name) if name == "digits" else toy_config(name)
    if name == "digits":
        cfg.random_flip = True
    mk = lambda: data.make_train_iterator(cfg, global_batch_size=27, seed=11, process_index=0, process_count=1)
    it = mk()
    take(it, k)
    state = it.get_state()
    expected = take(it, 5)
    fresh = mk()
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 5), expected)


@pytest.mark.parametrize("name,flip", [("digits", True), ("two_moons", False)])
@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_the_global_batch_in_order(name, flip, process_count):
    cfg = data.default_data_config(name) if name == "digits" else toy_config(name)
    cfg.random_flip = flip
    whole = take(data.make_train_iterator(cfg, global_batch_size=64, seed=7, process_index=0, process_count=1), 40)
    parts = [take(data.make_train_iterator(cfg, global_batch_size=64, seed=7, process_index=p,
                                           process_count=process_count), 40) for p in range(process_count)]
    for step, b in enumerate(whole):
        for key in b:
            assert parts[0][step][key].shape[0] == 64 // process_count
            np.testing.assert_array_equal(np.concatenate([part[step][key] for part in parts]), b[key])


def test_random_flip_flips_half_of_the_images_horizontally():
    cfg = data.default_data_config("digits")
    plain = take(data.make_train_iterator(cfg, global_batch_size=100, seed=2, process_index=0, process_count=1), 30)
    cfg.random_flip = True
    flipped = take(data.make_train_iterator(cfg, global_batch_size=100, seed=2, process_index=0, process_count=1), 30)
    x0 = np.concatenate([b["x"] for b in plain])
    x1 = np.concatenate([b["x"] for b in flipped])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in plain]),
                                  np.concatenate([b["label"] for b in flipped]))
    same = (x1 == x0).all(axis=(1, 2, 3))
    mirrored = (x1 == x0[:, :, ::-1]).all(axis=(1, 2, 3))
    assert np.all(same | mirrored)
    asym = ~(x0 == x0[:, :, ::-1]).all(axis=(1, 2, 3))
    frac = mirrored[asym].mean()  # an asymmetric image is either unchanged or mirrored
    assert 0.45 < frac < 0.55, frac


# ----------------------------------------------------------------------------- validation


def test_bad_input_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="digits.*gmm_grid.*cifar10"):
        data.default_data_config("not_a_dataset_xyz")
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        data.dataset_info({"name": "cifar1O"})
    cfg = data.default_data_config("digits")
    with pytest.raises(ValueError, match="did you mean 'data.random_flip'"):
        data.dataset_info({**cfg.to_dict(), "random_flp": True})
    kw = dict(seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="global_batch_size"):
        data.make_train_iterator(cfg, global_batch_size=10, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="global_batch_size"):
        data.make_train_iterator(cfg, global_batch_size=-8, **kw)
    with pytest.raises(ValueError, match="process_index"):
        data.make_train_iterator(cfg, global_batch_size=8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        data.make_train_iterator(cfg, global_batch_size=8, seed=-1, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="split"):
        data.load_split(cfg, "validation")
    with pytest.raises(ValueError, match="random_flip"):
        data.make_train_iterator({"name": "two_moons", "random_flip": True}, global_batch_size=8, **kw)
    with pytest.raises(ValueError, match="max_examples"):
        data.load_split({"name": "digits", "max_examples": 0}, "train")
    with pytest.raises(ValueError, match="toy name"):
        data.sample_toy("moons", 3, 0)


# ----------------------------------------------------------------------------- tfds (mock data, no TensorFlow)

MOCK_N = 48


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_N):
        yield


def _raw_split(name, split):
    """Reference: the images / labels as tfds.data_source itself returns them, scaled by hand."""
    src = tfds.data_source(name, split=split)
    records = [src[i] for i in range(len(src))]
    x = np.stack([r["image"] for r in records]).astype(np.float64) / 127.5 - 1.0
    labels = np.array([r["label"] for r in records]) if "label" in records[0] else None
    return x, labels


def _rows(x):
    return np.ascontiguousarray(x.reshape(len(x), -1))


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_pipeline_on_mock_data(mock_tfds, name, shape):
    ref_x, ref_labels = _raw_split(name, "train")
    cfg = data.default_data_config(name)
    assert data.dataset_info(cfg) == data.DatasetInfo(name, shape, 10, MOCK_N, MOCK_N)
    test = data.load_split(cfg, "test")
    ref_test_x, ref_test_labels = _raw_split(name, "test")
    np.testing.assert_allclose(test["x"], ref_test_x, atol=1e-6)
    np.testing.assert_array_equal(test["label"], ref_test_labels)
    assert test["x"].dtype == np.float32 and test["label"].dtype == np.int32

    # One epoch (3 steps of 16) returns every training example once, with its label; cifar10 flips.
    it = data.make_train_iterator(cfg, global_batch_size=16, seed=1, process_index=0, process_count=1)
    batches = take(it, 3)
    for b in batches:
        assert b["x"].shape == (16, *shape) and b["x"].dtype == np.float32
        assert b["label"].shape == (16,) and b["label"].dtype == np.int32
        assert -1.0 <= b["x"].min() and b["x"].max() <= 1.0
    x = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    labels = np.concatenate([b["label"] for b in batches])
    found = []
    for xi, li in zip(x, labels):
        match = [j for j in range(MOCK_N) if np.allclose(ref_x[j], xi, atol=1e-6)
                 or (cfg.random_flip and np.allclose(ref_x[j][:, ::-1], xi, atol=1e-6))]
        assert match, "a batch row is not a (flipped) source image"
        found.append(match[0])
        assert ref_labels[match[0]] == li
    assert sorted(found) == list(range(MOCK_N))
    assert cfg.random_flip == (name == "cifar10")

    # Checkpointable position and per-process split.
    state = it.get_state()
    expected = take(it, 4)
    fresh = data.make_train_iterator(cfg, global_batch_size=16, seed=1, process_index=0, process_count=1)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), expected)
    whole = take(data.make_train_iterator(cfg, global_batch_size=16, seed=1, process_index=0, process_count=1), 7)
    parts = [take(data.make_train_iterator(cfg, global_batch_size=16, seed=1, process_index=p, process_count=2), 7)
             for p in range(2)]
    for step, b in enumerate(whole):
        for key in b:
            np.testing.assert_array_equal(np.concatenate([parts[0][step][key], parts[1][step][key]]), b[key])


def test_tfds_celeb_a_center_crop_and_resize(mock_tfds):
    cfg = data.default_data_config("celeb_a")
    assert (cfg.center_crop, cfg.image_size) == (140, 64)
    info = data.dataset_info(cfg)
    assert info.shape == (64, 64, 3) and info.num_classes is None
    out = data.load_split(cfg, "train", max_examples=4)
    assert out.keys() == {"x"} and out["x"].shape == (4, 64, 64, 3)
    src = tfds.data_source("celeb_a", split="train")
    raw = np.stack([src[i]["image"] for i in range(4)]).astype(np.float32)  # (218, 178)
    crop = raw[:, 39:179, 19:159]  # central 140 x 140
    ref = np.asarray(jax.image.resize(crop, (4, 64, 64, 3), "bicubic", antialias=True)) / 127.5 - 1.0
    err = np.abs(out["x"] - ref)
    assert err.max() < 0.04 and err.mean() < 0.005, (err.max(), err.mean())  # PIL vs jax bicubic, uint8 rounding
    b = next(data.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1))
    assert b["x"].shape == (4, 64, 64, 3) and "label" not in b


def test_tfds_other_image_dataset_passes_through(mock_tfds):
    cfg = data.default_data_config("svhn_cropped")
    assert data.dataset_info(cfg) == data.DatasetInfo("svhn_cropped", (32, 32, 3), 10, MOCK_N, MOCK_N)
    with pytest.raises(ValueError, match="no 'image' feature"):
        data.dataset_info(data.default_data_config("imdb_reviews"))


def test_tfds_not_prepared_error_says_how_to_prepare(tmp_path):
    cfg = data.default_data_config("cifar10")
    cfg.data_dir = str(tmp_path)
    for call in (lambda: data.dataset_info(cfg),
                 lambda: data.make_train_iterator(cfg, global_batch_size=8, seed=0, process_index=0, process_count=1)):
        with pytest.raises(data.DatasetNotPreparedError) as e:
            call()
        msg = str(e.value)
        assert isinstance(e.value, ValueError) and "\n" not in msg
        for part in ("'cifar10'", str(tmp_path), "download_and_prepare", "file_format='array_record'",
                     "TFDS_DATA_DIR", "tensorflow"):
            assert part in msg, part
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written
    assert "tensorflow" not in sys.modules  # the tfds path never imports TensorFlow
