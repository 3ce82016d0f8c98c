"""FID and Inception Score from streamed Inception-v3 features.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the pool3 features of
two image sets; IS (Salimans et al. 2016) is exp E_x KL(p(y|x) || p(y)) over the 1008-class
softmax, averaged over 10 splits. Both are accumulated batch by batch in float64 on the host, so
an evaluation of 50,000 samples never holds more than one batch of images or features:

    stats = FeatureStats(2048); iscore = InceptionScoreStats(num_samples)
    for images in batches:  pool3, logits = extractor(images); stats.update(pool3); iscore.update(logits)
    fid = frechet_distance(stats.mu, stats.sigma, *load_stats("cifar10_train.npz"))

`sample_and_score` does exactly that for a sampling function. Statistics files are .npz with keys
`mu` (F,) and `sigma` (F, F): the format of TTUR's and pytorch-fid's published files, which
`load_stats` reads as they are.
"""
from __future__ import annotations

import io
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen import paths
from jaxgen.metrics.frechet import frechet_distance
from jaxgen.metrics.inception import InceptionV3


class FeatureStats:
    """Running mean and covariance of features, float64, merged batch by batch (Chan et al. 1979).

    With n, mean m and scatter M = sum (x - m)(x - m)^T so far and a batch of b rows with mean
    m_b and scatter M_b:

        n' = n + b,  d = m_b - m,  m' = m + d b / n',  M' = M + M_b + d d^T n b / n'

    `mu` = m and `sigma` = M / (n - 1) (np.cov's unbiased estimate, as the reference FID code uses),
    equal to the statistics of all rows at once up to float64 round-off.
    """

    def __init__(self, dim: int):
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        self.dim, self.n = int(dim), 0
        self.mean = np.zeros(self.dim, np.float64)
        self.scatter = np.zeros((self.dim, self.dim), np.float64)

    def update(self, features_BF) -> "FeatureStats":
        x = np.asarray(features_BF, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf (diverged samples?)")
        b = x.shape[0]
        if b == 0:
            return self
        mb = x.mean(axis=0)
        xc = x - mb
        self._combine(b, mb, xc.T @ xc)
        return self

    def _combine(self, b: int, mb: np.ndarray, mb_scatter: np.ndarray) -> None:
        n = self.n + b
        d = mb - self.mean
        self.scatter += mb_scatter + np.outer(d, d) * (self.n * b / n)
        self.mean += d * (b / n)
        self.n = n

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's rows (e.g. another host's share)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        if other.n:
            self._combine(other.n, other.mean, other.scatter)
        return self

    def get_state(self) -> dict:
        return dict(n=np.int64(self.n), mean=self.mean.copy(), scatter=self.scatter.copy())

    @classmethod
    def from_state(cls, state: dict) -> "FeatureStats":
        out = cls(int(np.shape(state["mean"])[0]))
        out.n = int(state["n"])
        out.mean[...] = state["mean"]
        out.scatter[...] = state["scatter"]
        return out

    @property
    def mu(self) -> np.ndarray:
        return self.mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"the covariance needs at least 2 feature rows, got {self.n}")
        return self.scatter / (self.n - 1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class InceptionScoreStats:
    """Inception Score of `num_samples` logits fed in order, in `splits` contiguous splits.

    Split j holds samples [j N / S, (j + 1) N / S) (integer division, as in the code of Salimans
    et al. 2016). With p_i = softmax(logits_i) and pbar the mean of p_i over the split's n_j rows,

        IS_j = exp( (1/n_j) sum_i sum_y p_i(y) log p_i(y)  -  sum_y pbar(y) log pbar(y) )

    which equals exp of the mean KL(p_i || pbar), so only sum_i p_i and sum_i p_i . log p_i are
    kept per split. `result()` -> (mean, std) of IS_j over the splits (np.std, ddof = 0).
    """

    def __init__(self, num_samples: int, splits: int = 10):
        if not isinstance(splits, (int, np.integer)) or splits < 1:
            raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < splits:
            raise ValueError(f"num_samples must be an integer >= splits={splits}, got {num_samples!r}")
        self.num_samples, self.splits, self.seen = int(num_samples), int(splits), 0
        self.bounds = [j * self.num_samples // self.splits for j in range(self.splits + 1)]
        self.p_sum = None
        self.plogp_sum = np.zeros(self.splits, np.float64)

    def update(self, logits_BK) -> "InceptionScoreStats":
        lg = np.asarray(logits_BK, np.float64)
        if lg.ndim != 2:
            raise ValueError(f"logits must have shape (B, K), got {lg.shape}")
        if self.seen + lg.shape[0] > self.num_samples:
            raise ValueError(f"more logits than num_samples={self.num_samples} "
                             f"({self.seen} seen, {lg.shape[0]} more)")
        if self.p_sum is None:
            self.p_sum = np.zeros((self.splits, lg.shape[1]), np.float64)
        elif lg.shape[1] != self.p_sum.shape[1]:
            raise ValueError(f"logits must have {self.p_sum.shape[1]} classes, got {lg.shape[1]}")
        logp = _log_softmax(lg)
        p = np.exp(logp)
        idx = self.seen + np.arange(lg.shape[0])
        split = np.searchsorted(self.bounds, idx, side="right") - 1
        np.add.at(self.p_sum, split, p)
        np.add.at(self.plogp_sum, split, (p * logp).sum(axis=1))
        self.seen += lg.shape[0]
        return self

    def get_state(self) -> dict:
        out = dict(num_samples=np.int64(self.num_samples), splits=np.int64(self.splits),
                   seen=np.int64(self.seen), plogp_sum=self.plogp_sum.copy())
        if self.p_sum is not None:
            out["p_sum"] = self.p_sum.copy()
        return out

    @classmethod
    def from_state(cls, state: dict) -> "InceptionScoreStats":
        out = cls(int(state["num_samples"]), int(state["splits"]))
        out.seen = int(state["seen"])
        out.plogp_sum[...] = state["plogp_sum"]
        out.p_sum = np.array(state["p_sum"], np.float64) if "p_sum" in state else None
        return out

    def result(self) -> tuple[float, float]:
        if self.seen != self.num_samples:
            raise ValueError(f"Inception Score needs all num_samples={self.num_samples} logits, "
                             f"got {self.seen}")
        scores = []
        for j in range(self.splits):
            n = self.bounds[j + 1] - self.bounds[j]
            pbar = self.p_sum[j] / n
            nz = pbar > 0
            scores.append(math.exp(self.plogp_sum[j] / n - np.sum(pbar[nz] * np.log(pbar[nz]))))
        return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits_NK, splits: int = 10) -> tuple[float, float]:
    """(mean, std) Inception Score of logits (N, K) in `splits` splits; see InceptionScoreStats."""
    lg = np.asarray(logits_NK)
    if lg.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {lg.shape}")
    return InceptionScoreStats(lg.shape[0], splits).update(lg).result()


# ----------------------------------------------------------------------------------------------
# Statistics files


def save_stats(path, mu, sigma) -> None:
    """Write mu (F,) and sigma (F, F) as an .npz with keys 'mu' and 'sigma' (local or gs://)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_stats(mu, sigma, str(path))
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    paths.write_bytes(path, buf.getvalue())


def load_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from an .npz with keys 'mu' and 'sigma' (this module's files, or the
    published TTUR / pytorch-fid statistics such as fid_stats_cifar10_train.npz)."""
    if not paths.exists(path):
        raise ValueError(f"FID statistics file {str(path)!r} does not exist; compute it with "
                         f"python -m jaxgen.metrics.fid_stats --data NAME --split SPLIT --out PATH")
    try:
        with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as f:
            keys = sorted(f.files)
            if "mu" not in keys or "sigma" not in keys:
                raise ValueError(f"FID statistics file {str(path)!r} must hold arrays 'mu' and "
                                 f"'sigma', found {keys}")
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (OSError, EOFError) as e:  # not a zip / npz
        raise ValueError(f"FID statistics file {str(path)!r} is not a readable .npz: {e}") from e
    _check_stats(mu, sigma, str(path))
    return mu, sigma


def _check_stats(mu, sigma, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: mu must be (F,) and sigma (F, F), got {mu.shape} and "
                         f"{sigma.shape}")


# ----------------------------------------------------------------------------------------------
# Features of image batches, sharded over local devices


def quantize_8bit(x, input_range=(-1.0, 1.0)):
    """Round images to the 256 levels of an 8-bit file: with (lo, hi) = input_range,
    p = clip(round((x - lo) 255 / (hi - lo)), 0, 255) and x' = lo + p (hi - lo) / 255."""
    lo, hi = (float(v) for v in input_range)
    p = jnp.clip(jnp.round((x - lo) * (255.0 / (hi - lo))), 0.0, 255.0)
    return p * ((hi - lo) / 255.0) + lo


def extraction_step(graphdef, mesh: Mesh, input_range, quantize: bool = True):
    """jit(forward(state, x) -> {'pool3', 'logits', 'logits_unbiased'}) of the Inception-v3 `graphdef`: its
    state replicated over `mesh`, the batch x split along the mesh's first axis (`InceptionExtractor`'s step;
    `jaxgen.aot` compiles it for a TPU slice)."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(mesh.axis_names[0]))

    def forward(state, x):
        if quantize:
            x = quantize_8bit(x, input_range)
        m = nnx.merge(graphdef, state)
        pool3, logits = m(x)
        return dict(pool3=pool3, logits=logits, logits_unbiased=m.logits_unbiased(pool3))

    return jax.jit(forward, in_shardings=(replicated, batch), out_shardings=batch)


class InceptionExtractor:
    """Jitted FID Inception-v3 over a 1-D mesh of local devices: images -> (pool3, IS logits).

    Images (B, H, W, C) in the model's input range, C = 3 or 1 (repeated to RGB, as the reference
    code converts grayscale files), are split into global batches of `batch_size_per_device` x
    the number of devices (the last one padded, so one compilation serves every call), sharded
    over the devices along the batch. With `quantize` (default) images are first rounded to 8
    bits, as if saved as PNG files, which is what the reference implementations read.

    `extractor(images)` -> NumPy float32 pool3 (B, 2048) and the Inception Score logits
    (B, 1008): pool3 @ W without the bias, as in the IS code of Salimans et al. (2016).
    `extractor.extract(images)` -> dict with those ('pool3', 'logits_unbiased') and the
    network's 'logits' (with the bias).
    """

    def __init__(self, model: InceptionV3, *, batch_size_per_device: int = 50, devices=None,
                 quantize: bool = True):
        if not isinstance(batch_size_per_device, (int, np.integer)) or batch_size_per_device < 1:
            raise ValueError(f"batch_size_per_device must be an integer >= 1, got "
                             f"{batch_size_per_device!r}")
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        self.batch_size = int(batch_size_per_device) * len(devices)
        self.input_range, self.quantize = model.input_range, bool(quantize)
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self._forward = extraction_step(graphdef, self.mesh, model.input_range, self.quantize)

    def extract(self, images_BHWC) -> dict[str, np.ndarray]:
        shape = tuple(images_BHWC.shape)
        if len(shape) != 4 or shape[-1] not in (1, 3):
            raise ValueError(f"images must have shape (B, H, W, 3) or (B, H, W, 1), got {shape}")
        n, b = shape[0], self.batch_size
        out: dict[str, list] = {}
        for i in range(0, n, b):
            chunk = jnp.asarray(images_BHWC[i:i + b], jnp.float32)
            if chunk.shape[-1] == 1:
                chunk = jnp.repeat(chunk, 3, axis=-1)
            m = chunk.shape[0]
            if m < b:
                chunk = jnp.concatenate([chunk, jnp.zeros((b - m, *chunk.shape[1:]), chunk.dtype)])
            for k, v in self._forward(self._state, chunk).items():
                out.setdefault(k, []).append(np.asarray(v)[:m])
        if not out:
            return dict(pool3=np.zeros((0, 2048), np.float32),
                        logits=np.zeros((0, 1008), np.float32),
                        logits_unbiased=np.zeros((0, 1008), np.float32))
        return {k: np.concatenate(v) for k, v in out.items()}

    def __call__(self, images_BHWC) -> tuple[np.ndarray, np.ndarray]:
        out = self.extract(images_BHWC)
        return out["pool3"], out["logits_unbiased"]


def sample_and_score(sample_fn: Callable, num_samples: int, extractor: Callable, *,
                     key, ref_stats=None, is_splits: int = 10, real_features=None, pr_k: int = 3,
                     state: dict | None = None, on_batch: Callable | None = None,
                     progress: bool = False) -> dict:
    """Draw `num_samples` images batch by batch and score them, holding one batch at a time.

    `sample_fn(key, i) -> images (B, H, W, 3)` in the extractor's input range, batch i drawn with
    `key_i = jax.random.fold_in(key, i)`; every batch but the last is used whole, the last is cut
    to reach `num_samples`. `extractor(images) -> (features (B, F), logits (B, K))`, normally an
    `InceptionExtractor`. `ref_stats` is (mu, sigma) or a path to an .npz (`load_stats`).
    `real_features` (M, F): the first min(M, num_samples) generated features are kept and
    precision / recall (k = `pr_k`, Kynkäänniemi et al. 2019) computed against as many real ones.

    Resuming: after each batch `on_batch(state)` receives a dict of NumPy arrays (the accumulators
    and the next batch index); passing such a dict back as `state` continues from there and gives
    the result of an uninterrupted run (batch i always uses fold_in(key, i)).

    Returns {'fid' (if ref_stats), 'precision', 'recall' (if real_features), 'is_mean', 'is_std',
    'num_samples', 'mu', 'sigma'}.
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    num_samples = int(num_samples)
    if isinstance(ref_stats, (str, os.PathLike)):
        ref_stats = load_stats(ref_stats)
    num_keep = 0 if real_features is None else min(len(real_features), num_samples)
    if real_features is not None and num_keep < pr_k + 1:
        raise ValueError(f"real_features must have more than pr_k={pr_k} rows, got "
                         f"{len(real_features)}")
    stats, iscore, i = None, InceptionScoreStats(num_samples, is_splits), 0
    kept = None  # (num_keep, F) float32, filled in order: generated features for precision/recall
    if state is not None:
        i = int(state["batch"])
        stats = FeatureStats.from_state(state["features"]) if "features" in state else None
        iscore = InceptionScoreStats.from_state(state["is"])
        if iscore.num_samples != num_samples or iscore.splits != is_splits:
            raise ValueError(f"state is for num_samples={iscore.num_samples}, is_splits="
                             f"{iscore.splits}, not {num_samples}, {is_splits}")
        if "kept" in state:
            kept = np.zeros((num_keep, np.shape(state["kept"])[1]), np.float32)
            kept[:len(state["kept"])] = state["kept"]
    done = 0 if stats is None else stats.n
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_samples, initial=done, desc="FID samples", unit="img")
    while done < num_samples:
        images = sample_fn(jax.random.fold_in(key, i), i)
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"sample_fn must return images (B, H, W, 3) with B >= 1, got "
                             f"{getattr(images, 'shape', None)}")
        images = images[:num_samples - done]
        pool3, logits = extractor(images)
        if stats is None:
            stats = FeatureStats(np.shape(pool3)[1])
        stats.update(pool3)
        iscore.update(logits)
        if num_keep and kept is None:
            kept = np.zeros((num_keep, np.shape(pool3)[1]), np.float32)
        if done < num_keep:
            m = min(num_keep - done, len(pool3))
            kept[done:done + m] = np.asarray(pool3[:m], np.float32)
        done, i = stats.n, i + 1
        if bar is not None:
            bar.update(pool3.shape[0])
        if on_batch is not None:
            st = {"batch": np.int64(i), "features": stats.get_state(), "is": iscore.get_state()}
            if kept is not None:
                st["kept"] = kept[:min(done, num_keep)]  # a view: copy it to keep it
            on_batch(st)
    if bar is not None:
        bar.close()
    is_mean, is_std = iscore.result()
    out = dict(is_mean=is_mean, is_std=is_std, num_samples=num_samples, mu=stats.mu,
               sigma=stats.sigma)
    if ref_stats is not None:
        out["fid"] = frechet_distance(stats.mu, stats.sigma, *ref_stats)
    if real_features is not None:
        from jaxgen.metrics.precision_recall import precision_recall

        out["precision"], out["recall"] = precision_recall(
            np.asarray(real_features[:num_keep], np.float32), kept, k=pr_k)
    return out
