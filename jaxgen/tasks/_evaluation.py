"""Evaluation shared by the generative tasks (diffusion, consistency, shortcut, SiD): draw samples in batches
sharded over the mesh and score them against the test split, keeping one batch at a time.

    score = Scorer(config, config.eval, info, key, train_split, workdir, tag, step, inception)
    metrics, shown = score(lambda start: samples start .. start + B - 1, num_samples, B)

Vectors (2-D toys): sliced W2 and MMD against the test split (`sw2`, `mmd`); images: the Fréchet distance in a
small classifier's features (`fd`, eval.metric='classifier') or FID, Inception Score and optionally precision /
recall with the FID Inception-v3 (eval.metric='inception', `InceptionRefs`), whose running statistics are saved
after every batch (workdir/eval/) so that an interrupted evaluation resumes. Also the host/sharding helpers the
tasks share and the caches of fitted sampler parts (`cached_gamma`, `cached_pytree`).
"""

from __future__ import annotations

import functools
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgen import data as data_lib
from jaxgen import metrics, paths


def to_host(x) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class Scorer:
    """score(draw_from, n) -> (metrics, the first 64 samples): draws n samples batch by batch (draw_from(start))
    and scores them against the test split, keeping one batch at a time for images."""

    def __init__(self, config, ev, info, key, train_split, workdir, tag, step, inception=None):
        self.config, self.ev, self.info, self.key, self.train_split = config, ev, info, key, train_split
        self.inception = inception  # an InceptionRefs for eval.metric = 'inception'
        self.state_path = paths.join(workdir, "eval", f"inception_{tag}_step{step}.npz")

    def __call__(self, draw_from, n, batch, resumable=True):
        """draw_from(start) returns the `batch` samples start .. start + batch - 1."""
        if len(self.info.shape) == 1:
            x = _draw_all(draw_from, n)
            return _checked(x, ("sw2", "mmd"), lambda g: self._vector_metrics(g, n)), x[:64]
        if self.ev.metric == "inception":
            return self._inception(draw_from, n, batch, resumable)
        return self._classifier(draw_from, n)

    def _vector_metrics(self, generated, n):
        real = jnp.asarray(data_lib.load_split(self.config.data, self.config.data.split_test)["x"][:n])
        g = jnp.asarray(generated)  # equal sizes; MMD is quadratic in memory
        return {"sw2": float(metrics.sliced_wasserstein(g, real, self.key)), "mmd": float(metrics.mmd(g, real))}

    def _classifier(self, draw_from, n):
        train, test = self.train_split(), data_lib.load_split(self.config.data, self.config.data.split_test)
        extract, accuracy = metrics.classifier_features(self.info.name, train["x"], train["label"], test["x"],
                                                        test["label"], num_steps=self.ev.classifier_steps)
        stats, shown, finite = None, None, True
        for images in _batches(draw_from, n):
            finite &= bool(np.all(np.isfinite(images)))
            features = np.asarray(extract(np.nan_to_num(images)))
            stats = stats or metrics.fid.FeatureStats(features.shape[1])
            stats.update(features)
            shown = images[:64] if shown is None else shown
        if not finite:
            print("warning: some samples are not finite (the sampler diverged)", flush=True)
            return {"fd": float("inf")}, shown
        real = metrics.feature_stats(np.asarray(extract(test["x"])))
        fd = metrics.frechet_distance(stats.mu, stats.sigma, *real)
        return {"fd": float(fd), "classifier_test_accuracy": float(accuracy)}, shown

    def _inception(self, draw_from, n, batch, resumable):
        from jaxgen.metrics import fid

        refs = self.inception
        state = _read_state(self.state_path) if resumable else None
        if state is not None and int(state.pop("global_batch")) != batch:  # batch i starts at i * batch
            print(f"{self.state_path} was written with another global batch size; evaluating from the start",
                  flush=True)
            state = None
        on_batch = (lambda st: _write_state(self.state_path, dict(st, global_batch=batch))) if resumable else None
        out = fid.sample_and_score(lambda _, i: draw_from(i * batch), n, refs.extractor, key=self.key,
                                   ref_stats=refs.stats(), real_features=refs.real_features(), state=state,
                                   on_batch=on_batch, progress=jax.process_index() == 0)
        shown = draw_from(0)[:64]  # the figure's samples (recomputed: the loop keeps no images)
        scores = {"fid": float(out["fid"]), "is": float(out["is_mean"]), "is_std": float(out["is_std"])}
        scores.update({k: float(out[k]) for k in ("precision", "recall") if k in out})
        return scores, shown


class InceptionRefs:
    """The FID Inception network on this process's devices of the model's mesh, the reference statistics
    (eval.fid_stats, else the test split's) and, for precision / recall (Kynkaenniemi et al. 2019, k = 3), the first
    eval.precision_recall test images' features; each computed once and kept for the run's evaluations."""

    def __init__(self, config, ev, devices):
        from jaxgen.metrics import fid, inception

        self.config, self.ev = config, ev
        self.extractor = fid.InceptionExtractor(inception.load_fid_inception(ev.inception_weights or None),
                                                batch_size_per_device=ev.batch_size, devices=devices)

    @functools.cache
    def stats(self):
        from jaxgen.metrics import fid, fid_stats

        if self.ev.fid_stats:
            return fid.load_stats(self.ev.fid_stats)
        stats = fid_stats.split_stats(self.config.data, self.config.data.split_test, self.extractor)
        return stats.mu, stats.sigma

    @functools.cache
    def real_features(self):
        if not self.ev.precision_recall:
            return None
        test = data_lib.load_split(self.config.data, self.config.data.split_test, max_examples=self.ev.precision_recall)
        return self.extractor(test["x"])[0]


def _batches(draw_from, n):
    start = 0
    while start < n:
        images = draw_from(start)[:n - start]
        start += len(images)
        yield images


def _draw_all(draw_from, n):
    return np.concatenate(list(_batches(draw_from, n)))


def _checked(generated, names, score):
    if np.all(np.isfinite(generated)):
        return score(generated)
    bad = np.mean(~np.all(np.isfinite(generated.reshape(len(generated), -1)), 1))
    print(f"warning: {bad:.1%} of the samples are not finite (the sampler diverged)", flush=True)
    return dict.fromkeys(names, float("inf"))


def _read_state(path):
    if not paths.exists(path):
        return None
    with np.load(io.BytesIO(paths.read_bytes(path))) as f:
        flat = {k: f[k] for k in f.files}
    state = {}
    for k, v in flat.items():  # nested dicts were flattened as "a/b"
        *parents, leaf = k.split("/")
        node = state
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    print(f"resuming the evaluation from {path} (batch {int(state['batch'])})", flush=True)
    return state


def _write_state(path, state):
    if jax.process_index() != 0:
        return
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v)
            else:
                flat[prefix + k] = np.asarray(v)

    walk("", state)
    buf = io.BytesIO()
    np.savez(buf, **flat)
    paths.write_bytes(path, buf.getvalue())


def replicated_like(tree):
    """A sharding that replicates over the devices holding `tree`'s first leaf."""
    sharding = jax.tree.leaves(tree)[0].sharding
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, P())
    return sharding


def batch_sharding_like(tree):
    """The batch split over every device of the mesh holding `tree`'s first leaf (one device if none)."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, P(sharding.mesh.axis_names))
    return sharding if sharding is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])


def local_devices_like(tree) -> list:
    """This process's devices among those holding `tree`'s first leaf."""
    devices = jax.tree.leaves(tree)[0].sharding.device_set
    return sorted((d for d in devices if d.process_index == jax.process_index()), key=lambda d: d.id)


def cached_gamma(path, timesteps, estimate):
    """Gamma at `timesteps` from the JSON cache at `path`, or estimated and written there."""
    if paths.exists(path):
        cached = json.loads(paths.read_text(path))
        if cached["timesteps"] == [int(t) for t in timesteps]:
            return np.asarray(cached["gamma"])
    gamma = estimate()
    if jax.process_index() == 0:
        paths.write_text(path, json.dumps({"timesteps": [int(t) for t in timesteps],
                                           "gamma": [float(g) for g in gamma]}))
    return gamma


def cached_pytree(path, abstract, fit):
    """The pytree orbax-saved at `path` (restored onto `abstract`'s structure), or fit() saved there."""
    path = paths.absolute(path)  # orbax wants an absolute local path; a URL stays a URL
    with ocp.StandardCheckpointer() as checkpointer:
        if paths.exists(path):
            return checkpointer.restore(path, abstract)
        value = fit()
        checkpointer.save(path, value)
        checkpointer.wait_until_finished()
    return value
