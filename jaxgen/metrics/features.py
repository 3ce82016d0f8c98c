"""Feature extractors for Fréchet distances.

A `FeatureExtractor` is any callable `images_BHWC -> features_BF`. This module provides one
built from a small classifier trained on the dataset itself (cheap, CPU-friendly, cached);
Inception-v3 pool features for standard FID on TPU/GPU would be another callable with the same
signature, and `frechet_distance_from_features` does not care which one produced the features.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx, serialization

from jaxgen import paths
from jaxgen.nets.classifier import Classifier

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (B, H, W, C), in the range the extractor was trained on -> features (B, F)."""

    def __call__(self, images_BHWC) -> np.ndarray: ...


class ClassifierFeatures:
    """The penultimate features (and logits) of a trained `Classifier`; a `FeatureExtractor`."""

    def __init__(self, model: Classifier, test_accuracy: float, batch_size: int = 512):
        self.model, self.test_accuracy, self.batch_size = model, float(test_accuracy), batch_size
        self.feature_dim = model.feature_dim
        graphdef, state = nnx.split(model)
        self._state = state
        self._features = jax.jit(lambda s, x: nnx.merge(graphdef, s).features(x))
        self._logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    def _batched(self, fn, images) -> np.ndarray:
        x = np.asarray(images, np.float32)
        if x.ndim != 4:
            raise ValueError(f"images must have shape (B, H, W, C), got {x.shape}")
        out, b = [], self.batch_size
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b and x.shape[0] > b:  # pad the tail so every call has one shape
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
            out.append(np.asarray(fn(self._state, jnp.asarray(chunk)))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    def __call__(self, images_BHWC) -> np.ndarray:
        return self._batched(self._features, images_BHWC)

    def logits(self, images_BHWC) -> np.ndarray:
        return self._batched(self._logits, images_BHWC)


def default_cache_dir() -> epath.Path:
    """$JAXGEN_CACHE (a local path or a gs:// URL), else ~/.cache/jaxgen."""
    return paths.path(os.environ.get("JAXGEN_CACHE") or Path.home() / ".cache" / "jaxgen")


def _data_hash(arrays, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": _CACHE_VERSION, **settings}, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _flat_params(model) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _load_params(model, flat: dict) -> bool:
    """Load a flat {path: array} dict into `model`; False (and no change) if it does not fit."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    new = []
    for path, leaf in leaves:
        arr = flat.get(jax.tree_util.keystr(path))
        if arr is None or tuple(arr.shape) != tuple(leaf.shape):
            return False
        new.append(jnp.asarray(arr, leaf.dtype))
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return True


def _check_images(name, images, labels):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"{name}_images must have shape (N, H, W, C), got {images.shape}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}_labels must be integers of shape ({images.shape[0]},), got "
                         f"{labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}_labels must be >= 0")
    return images.astype(np.float32), labels.astype(np.int32)


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 3, 4))
def _new_classifier(channels, num_classes, size, width, seed) -> Classifier:
    """Classifier(..., rngs=nnx.Rngs(seed)), initialised in one jitted program (eagerly, each parameter's
    initialiser compiles on its own)."""
    return Classifier(channels, num_classes, size, width, rngs=nnx.Rngs(seed))


def train_classifier(train_images, train_labels, *, num_classes: int, width: int = 32,
                     num_steps: int = 500, batch_size: int = 128, learning_rate: float = 3e-3,
                     weight_decay: float = 1e-4, seed: int = 0) -> Classifier:
    """Train `Classifier` with AdamW (cosine decay) on softmax cross-entropy; returns the model."""
    n, size, _, channels = train_images.shape
    model = _new_classifier(channels, num_classes, size, width, seed)
    graphdef, params = nnx.split(model)
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps),
                     weight_decay=weight_decay)
    opt_state = jax.jit(tx.init)(params)
    x_all, y_all = jnp.asarray(train_images), jnp.asarray(train_labels)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x_all, y_all, idx):  # the data as arguments, not constants of the program
        loss, grads = jax.value_and_grad(loss_fn)(params, x_all[idx], y_all[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # Epoch-wise shuffles drawn on the host; a Python loop over the jitted step (XLA:CPU runs
    # convolutions inside a scan/while loop far slower than as a top-level computation).
    rng = np.random.default_rng(seed)
    b = min(batch_size, n)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-num_steps * b // n))])
    losses = []
    for i in range(num_steps):
        params, opt_state, loss = step(params, opt_state, x_all, y_all, jnp.asarray(order[i * b:(i + 1) * b]))
        losses.append(loss)
    log.info("classifier trained: loss %.4f -> %.4f", float(losses[0]), float(losses[-1]))
    return nnx.merge(graphdef, params)


def classifier_features(dataset_name: str, train_images, train_labels, test_images, test_labels,
                        cache_dir: str | os.PathLike | None = None, *, width: int = 32,
                        num_steps: int = 500, batch_size: int = 128,
                        learning_rate: float = 3e-3, seed: int = 0
                        ) -> tuple[ClassifierFeatures, float]:
    """Train (once) a small classifier on the dataset and return its feature extractor.

    The parameters are cached in `cache_dir` (default `$JAXGEN_CACHE` or `~/.cache/jaxgen`) in
    a file keyed by the dataset name and a hash of the data and training settings, written
    atomically (temporary file + rename), so concurrent runs never read a partial file. A
    second call with the same data loads the file instead of training.

    Images are (N, H, W, C) with square H == W, in the same range as the images that will be
    compared (e.g. [-1, 1]); labels are ints in [0, num_classes).

    Returns (extractor, test_accuracy): `extractor(images) -> (B, feature_dim)` float32
    penultimate features; test_accuracy is the accuracy on (test_images, test_labels).
    """
    if not dataset_name:
        raise ValueError("dataset_name must be a non-empty string")
    xtr, ytr = _check_images("train", train_images, train_labels)
    xte, yte = _check_images("test", test_images, test_labels)
    if xtr.shape[1] != xtr.shape[2]:
        raise ValueError(f"train_images must be square, got {xtr.shape}")
    if xte.shape[1:] != xtr.shape[1:]:
        raise ValueError(f"test_images must have shape (N, {', '.join(map(str, xtr.shape[1:]))}), "
                         f"got {xte.shape}")
    if xtr.shape[0] < 1 or xte.shape[0] < 1:
        raise ValueError("train and test sets must be non-empty")
    num_classes = int(max(ytr.max(), yte.max())) + 1
    if num_classes < 2:
        raise ValueError("labels must contain at least 2 classes")
    settings = dict(width=width, num_steps=num_steps, batch_size=batch_size,
                    learning_rate=learning_rate, seed=seed, num_classes=num_classes)
    digest = _data_hash([xtr, ytr, xte, yte], settings)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    path = paths.join(cache_dir or default_cache_dir(), f"classifier_{safe}_{digest}.msgpack")

    if paths.exists(path):
        _, size, _, channels = xtr.shape
        model = _new_classifier(channels, num_classes, size, width, seed)
        try:
            blob = serialization.msgpack_restore(paths.read_bytes(path))
            if _load_params(model, blob["params"]):
                acc = float(blob["test_accuracy"])
                log.info("classifier for %s loaded from %s (test accuracy %.4f)",
                         dataset_name, path, acc)
                return ClassifierFeatures(model, acc), acc
        except Exception as e:  # a damaged cache file is rebuilt, never fatal
            log.warning("ignoring unreadable classifier cache %s: %s", path, e)

    model = train_classifier(xtr, ytr, num_classes=num_classes, **{
        k: settings[k] for k in ("width", "num_steps", "batch_size", "learning_rate", "seed")})
    extractor = ClassifierFeatures(model, 0.0)
    acc = float(np.mean(extractor.logits(xte).argmax(-1) == yte))
    extractor.test_accuracy = acc
    blob = {"params": _flat_params(model), "test_accuracy": acc,
            "dataset_name": dataset_name, "settings": json.dumps(settings)}
    paths.write_bytes(path, serialization.msgpack_serialize(blob))  # whole file or nothing
    log.info("classifier for %s trained, test accuracy %.4f, cached at %s",
             dataset_name, acc, path)
    return extractor, acc
