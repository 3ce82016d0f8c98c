"""The 8x8 handwritten digits bundled with scikit-learn (offline): 1797 images, 10 classes.

Pixels are integers 0..16, mapped to x = 2 p / 16 - 1 in [-1, 1], float32, shape (8, 8, 1).
Fixed held-out split: the images are permuted once with ``np.random.default_rng(0)``; the
first 1500 of that order are 'train' and the last 297 are 'test'. The permutation does not
depend on any training seed, so every run and every process sees the same split.
"""
from __future__ import annotations

import functools

import numpy as np

NUM_EXAMPLES = 1797
NUM_TEST = 297
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLITS = ("train", "test")


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: it pulls in much of scikit-learn

    bunch = load_digits()
    images = np.asarray(bunch.images, np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target)
    if images.shape != (NUM_EXAMPLES, 8, 8):
        raise RuntimeError(f"scikit-learn's load_digits returned shape {images.shape}, expected (1797, 8, 8)")
    x = (images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]
    order = np.random.default_rng(0).permutation(NUM_EXAMPLES)
    x, labels = x[order], labels[order].astype(np.int32)
    for a in (x, labels):
        a.setflags(write=False)  # cached: callers get copies
    return x, labels


def digits_split(split: str) -> dict[str, np.ndarray]:
    """{'x': float32 (n, 8, 8, 1) in [-1, 1], 'label': int32 (n,)}; n = 1500 (train) or 297 (test)."""
    if split not in SPLITS:
        raise ValueError(f"split for 'digits' must be one of {SPLITS}, got {split!r}")
    x, labels = _load_all()
    sl = slice(0, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, NUM_EXAMPLES)
    return {"x": x[sl].copy(), "label": labels[sl].copy()}
