"""Input pipelines: data config, the per-process train iterator (grain), whole splits, dataset info.

Train stream (same for every data set):

    positions g = 0, 1, 2, ...  ->  example index  perm_e(g mod N),  e = g div N (epoch)

where N is the split size and perm_e a permutation drawn by NumPy from (seed, e): infinite,
reshuffled every epoch, and a function of the seed alone. The global batch of step s is
positions [s B, (s + 1) B); process p of P reads only positions [s B + p B/P, s B + (p + 1) B/P) of it. Concatenating the
per-process batches in process order therefore gives exactly the single-process global batch,
in the same order, which is what makes a P-process run log the same losses as a 1-process one.
Random augmentation (horizontal flip) is a hash of (seed, g), so it is independent of the
process layout too.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import threading
from typing import Any, Mapping

import grain
import ml_collections
import numpy as np

from jaxgen.data import digits as digits_lib
from jaxgen.data import toy as toy_lib

KNOWN_TFDS = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
ACCEPTED_NAMES = ("digits",) + toy_lib.TOY_NAMES + KNOWN_TFDS
MOCK_EXAMPLES = 256  # examples per split with data.mock=True
_ACCEPTED_TEXT = f"{', '.join(ACCEPTED_NAMES)}, or any other tfds data set with an 'image' feature"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set as the pipeline delivers it (after crop/resize and max_examples)."""

    name: str
    shape: tuple[int, ...]  # one example's 'x'
    num_classes: int | None  # None: no 'label'
    num_train: int
    num_test: int


def _kind(name: str) -> str:
    if name == "digits":
        return "digits"
    if name in toy_lib.TOY_NAMES:
        return "toy"
    return "tfds"


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"data.name must be one of {_ACCEPTED_TEXT}; got {name!r}")
    if _kind(name) == "tfds" and name not in KNOWN_TFDS:
        from jaxgen.data import tfds_source

        if not tfds_source.is_registered(name):
            close = difflib.get_close_matches(name, ACCEPTED_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"data.name={name!r} is not a known data set{hint}; accepted: {_ACCEPTED_TEXT}")


def default_data_config(name: str = "digits") -> ml_collections.ConfigDict:
    """A data config with every key, with defaults suited to ``name``.

    Keys: name; data_dir (tfds root, None: $TFDS_DATA_DIR or ~/tensorflow_datasets);
    split_train / split_test (tfds split strings, 'train' / 'test' for digits and toys);
    random_flip (horizontal flip of train images; default on for cifar10 and celeb_a);
    num_examples (toy sets: size of each fixed split); max_examples (cap on every split, None: all);
    image_size / center_crop (tfds images: crop the central center_crop x center_crop square,
    or the largest central square when only image_size is set, then resize to image_size;
    celeb_a: crop 140, resize 64, the usual CelebA-64 recipe); num_threads / prefetch_buffer_size
    (grain read options, None: 0 / 1 for in-memory sets, 8 / 16 for tfds); mock (tfds sets only:
    random examples of the data set's own shapes and label range from ``tfds.testing.mock_data``,
    MOCK_EXAMPLES per split or data.max_examples if smaller, no files read; for smoke runs and
    compile checks before the data is prepared); pairs (None, or a directory of a teacher's (sample, noise)
    pairs, `jaxgen.data.pairs`: they replace the training split, whose batches then also carry 'noise').
    """
    _check_name(name)
    return ml_collections.ConfigDict(dict(
        name=name,
        data_dir=None,
        split_train="train",
        split_test="test",
        random_flip=name in ("cifar10", "celeb_a"),
        num_examples=65536,
        max_examples=None,
        image_size=64 if name == "celeb_a" else None,
        center_crop=140 if name == "celeb_a" else None,
        num_threads=None,
        prefetch_buffer_size=None,
        mock=False,
        pairs=None,
    ))


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _resolve(data_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Defaults for ``data_config['name']`` overlaid with ``data_config``, validated."""
    if "name" not in data_config:
        raise ValueError(f"data config has no 'name' (one of {_ACCEPTED_TEXT})")
    cfg = ml_collections.ConfigDict(default_data_config(data_config["name"]).to_dict(), type_safe=False)
    for key, value in data_config.items():
        if key not in cfg:
            close = difflib.get_close_matches(key, list(cfg.keys()), n=1)
            hint = f"; did you mean 'data.{close[0]}'?" if close else ""
            raise ValueError(f"unknown data config key 'data.{key}'{hint}")
        cfg[key] = value
    kind = _kind(cfg.name)
    for key in ("split_train", "split_test"):
        if not isinstance(cfg[key], str) or not cfg[key]:
            raise ValueError(f"data.{key} must be a non-empty split name, got {cfg[key]!r}")
    if not isinstance(cfg.random_flip, bool):
        raise ValueError(f"data.random_flip must be true or false, got {cfg.random_flip!r}")
    if cfg.random_flip and kind == "toy":
        raise ValueError(f"data.random_flip applies to images; {cfg.name!r} is a 2-D point set (set it to false)")
    if not _is_int(cfg.num_examples) or cfg.num_examples < 1:
        raise ValueError(f"data.num_examples must be an integer >= 1, got {cfg.num_examples!r}")
    for key in ("max_examples", "image_size", "center_crop"):
        if cfg[key] is not None and (not _is_int(cfg[key]) or cfg[key] < 1):
            raise ValueError(f"data.{key} must be None or an integer >= 1, got {cfg[key]!r}")
    for key in ("num_threads", "prefetch_buffer_size"):
        if cfg[key] is not None and (not _is_int(cfg[key]) or cfg[key] < 0):
            raise ValueError(f"data.{key} must be None or an integer >= 0, got {cfg[key]!r}")
    if not isinstance(cfg.mock, bool):
        raise ValueError(f"data.mock must be true or false, got {cfg.mock!r}")
    if cfg.mock and kind != "tfds":
        raise ValueError(f"data.mock applies to tfds data sets; {cfg.name!r} is bundled (set it to false)")
    if cfg.data_dir is not None and not isinstance(cfg.data_dir, str):
        raise ValueError(f"data.data_dir must be None or a path, got {cfg.data_dir!r}")
    if cfg.pairs is not None and (not isinstance(cfg.pairs, str) or not cfg.pairs):
        raise ValueError(f"data.pairs must be None or the path of a pairs directory, got {cfg.pairs!r}")
    if kind != "tfds" and (cfg.image_size is not None or cfg.center_crop is not None):
        raise ValueError(f"data.image_size / data.center_crop apply to tfds images, not {cfg.name!r} (leave them None)")
    return cfg


class _ArraySplit:
    """A split held in memory as a dict of arrays with a common leading axis."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["x"])

    def load(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


def _open_split(cfg: ml_collections.ConfigDict, split: str):
    """An object with ``len()`` and ``load(indices) -> {'x': float32, ['label': int32]}``."""
    kind = _kind(cfg.name)
    if cfg.pairs and split == cfg.split_train:
        from jaxgen.data.pairs import PairSplit

        return PairSplit(cfg.pairs)
    if kind == "digits":
        return _ArraySplit(digits_lib.digits_split(split))
    if kind == "toy":
        return _ArraySplit(toy_lib.toy_split(cfg.name, split, cfg.num_examples))
    from jaxgen.data import tfds_source

    def open_tfds(data_dir):
        return tfds_source.TfdsSplit(cfg.name, split, data_dir=data_dir, image_size=cfg.image_size,
                                     center_crop=cfg.center_crop)

    if not cfg.mock:
        return open_tfds(cfg.data_dir)
    import tensorflow_datasets as tfds

    # The mocked source keeps generating its records after the context exits; train and test are the same.
    # data_dir is not read (nor staged from gs://) for mock data.
    with tfds.testing.mock_data(num_examples=min(MOCK_EXAMPLES, cfg.max_examples or MOCK_EXAMPLES)):
        return open_tfds(None)


def _capped_len(split_obj, max_examples: int | None) -> int:
    n = len(split_obj)
    return n if max_examples is None else min(n, max_examples)


def _flip_bits(key: np.uint64, positions: np.ndarray) -> np.ndarray:
    """Fair coin per stream position: top bit of splitmix64(key + (g + 1) * golden_gamma)."""
    z = key + (positions.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(63)).astype(bool)


class _EpochShuffle:
    """Example index of stream position g: perm_e(g mod n) with e = g div n, perm_e seeded by (seed, e).

    One permutation is materialised per epoch (n int64s) and the last few are cached, so a batch
    costs one vectorised gather; batches straddling an epoch boundary read two permutations.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                if len(self._perms) >= 4:  # prefetching threads work on nearby epochs only
                    del self._perms[min(self._perms)]
                self._perms[epoch] = perm
            return perm

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.n)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            mask = epochs == e
            out[mask] = self._perm(int(e))[offsets[mask]]
        return out


def _load_step(split_obj, shuffle: _EpochShuffle, flip_key: np.uint64 | None, global_batch_size: int,
               offset: int, size: int, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch ``step``: stream positions step * B + offset + [0, size)."""
    positions = np.int64(step) * global_batch_size + offset + np.arange(size, dtype=np.int64)
    batch = split_obj.load(shuffle(positions))
    if flip_key is not None:
        flip = _flip_bits(flip_key, positions)
        x = batch["x"].copy()
        x[flip] = x[flip][:, :, ::-1]  # NHWC: reverse W
        batch["x"] = x
    return batch


def make_train_iterator(data_config, *, global_batch_size: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None):
    """This process's infinite, checkpointable train iterator (a ``grain.DatasetIterator``).

    Yields ``{'x': float32 (global_batch_size // process_count, *shape), 'label': int32 (...)}``
    ('label' only for labelled data sets), images NHWC in [-1, 1]. Epochs repeat forever,
    reshuffled each epoch; batches may straddle epochs (no partial batches). ``get_state()`` /
    ``set_state()`` restore the exact position. process_index / process_count default to
    ``jax.process_index()`` / ``jax.process_count()``; see the module docstring for how the
    global batch is split so that any process count yields the same global batches.
    """
    cfg = _resolve(data_config)
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not _is_int(process_count) or process_count < 1:
        raise ValueError(f"process_count must be an integer >= 1, got {process_count!r}")
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be an integer in [0, {process_count}), got {process_index!r}")
    if not _is_int(global_batch_size) or global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size must be a positive multiple of process_count={process_count}, "
                         f"got {global_batch_size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    per_process = global_batch_size // process_count

    split_obj = _open_split(cfg, cfg.split_train)
    n = _capped_len(split_obj, cfg.max_examples)
    flip_key = None
    if cfg.random_flip:
        flip_key = np.random.SeedSequence([int(seed), 0x666C6970]).generate_state(1, np.uint64)[0]
    in_memory = isinstance(split_obj, _ArraySplit)
    read_options = grain.ReadOptions(
        num_threads=cfg.num_threads if cfg.num_threads is not None else (0 if in_memory else 8),
        prefetch_buffer_size=(cfg.prefetch_buffer_size if cfg.prefetch_buffer_size is not None
                              else (1 if in_memory else 16)),
    )
    load = functools.partial(_load_step, split_obj, _EpochShuffle(n, int(seed)), flip_key,
                             int(global_batch_size), int(process_index) * per_process, per_process)
    # Element s of this dataset is this process's part of global batch s; the iterator state is s.
    ds = grain.MapDataset.range(2**62 // global_batch_size).map(load)  # "infinite", int64-safe
    return iter(ds.to_iter_dataset(read_options))


def load_split(data_config, split: str, max_examples: int | None = None) -> dict[str, np.ndarray]:
    """The whole ``split`` (first ``max_examples`` examples, else data.max_examples, else all).

    Returns ``{'x': float32 (n, *shape), 'label': int32 (n,)}`` ('label' where the data set has
    labels), in the data set's fixed order, without augmentation.
    """
    cfg = _resolve(data_config)
    if max_examples is not None and (not _is_int(max_examples) or max_examples < 1):
        raise ValueError(f"max_examples must be None or an integer >= 1, got {max_examples!r}")
    split_obj = _open_split(cfg, split)
    n = _capped_len(split_obj, max_examples if max_examples is not None else cfg.max_examples)
    if isinstance(split_obj, _ArraySplit):
        return {k: v[:n].copy() for k, v in split_obj.arrays.items()}
    chunks = [split_obj.load(np.arange(i, min(i + 1024, n))) for i in range(0, n, 1024)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def dataset_info(data_config) -> DatasetInfo:
    """Name, per-example shape, number of classes and split sizes (after data.max_examples)."""
    cfg = _resolve(data_config)
    kind = _kind(cfg.name)
    cap = (lambda n: n) if cfg.max_examples is None else (lambda n: min(n, cfg.max_examples))
    if kind == "digits":
        return DatasetInfo("digits", digits_lib.SHAPE, digits_lib.NUM_CLASSES,
                           cap(digits_lib.NUM_TRAIN), cap(digits_lib.NUM_TEST))
    if kind == "toy":
        n = cap(cfg.num_examples)
        return DatasetInfo(cfg.name, (2,), toy_lib.TOY_NUM_CLASSES[cfg.name], n, n)
    train = _open_split(cfg, cfg.split_train)
    test = _open_split(cfg, cfg.split_test)
    return DatasetInfo(cfg.name, tuple(train.shape), train.num_classes,
                       _capped_len(train, cfg.max_examples), _capped_len(test, cfg.max_examples))
