"""(sample, noise) pairs of a teacher's ODE, stored as shards for reflow and distillation (Liu et al. 2023).

A pairs directory holds `shard_00000.npy`, `shard_00001.npy`, ... each float32 (B, 2, *shape): [:, 0] the teacher's
sample x0 and [:, 1] the noise x1 it was integrated from. Every shard but the last has the same B. A shard is written
to a temporary name and renamed, so a directory never holds a partial shard and generation resumes at the first
missing one. As a data set (`data.pairs = DIR`) the pairs replace the training split: batches carry 'x' (x0) and
'noise' (x1). Shards are memory-mapped, so 1M CIFAR-10 pairs (25 GB) are never held in memory.
"""
from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np

from jaxgen import paths

_SHARD = re.compile(r"shard_(\d{5})\.npy$")


def shard_path(directory: str, index: int) -> str:
    return paths.join(directory, f"shard_{index:05d}.npy")


def num_shards(directory: str) -> int:
    """Number of consecutive complete shards from shard 0."""
    if not paths.exists(directory):
        return 0
    present = {int(m.group(1)) for m in map(_SHARD.match, paths.listdir(directory)) if m}
    n = 0
    while n in present:
        n += 1
    return n


def write_shard(directory: str, index: int, x0: np.ndarray, x1: np.ndarray) -> None:
    """Shard `index` of the pairs (x0[b], x1[b]), atomically."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {x0.shape} and {x1.shape}")
    buf = io.BytesIO()
    np.save(buf, np.stack([x0, x1], axis=1).astype(np.float32))
    paths.makedirs(directory)
    target = shard_path(directory, index)
    tmp = target + ".tmp"
    paths.write_bytes(tmp, buf.getvalue())
    paths.replace(tmp, target)


class PairSplit:
    """The pairs in `directory` as a split: len() pairs, load(indices) -> {'x': x0, 'noise': x1} (float32)."""

    def __init__(self, directory: str, stage_dir: str | None = None):
        digest = hashlib.sha1(os.fspath(directory).encode()).hexdigest()[:16]
        local = paths.stage(directory, stage_dir or os.path.join(os.path.expanduser("~"), ".cache", "jaxgen",
                                                                 "pairs", digest))
        count = num_shards(local)
        if count == 0:
            raise ValueError(f"data.pairs: no pair shards (shard_00000.npy, ...) in {directory!r}")
        self.shards = [np.load(shard_path(local, i), mmap_mode="r") for i in range(count)]
        sizes = [len(s) for s in self.shards]
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            raise ValueError(f"data.pairs: shards in {directory!r} must all hold {sizes[0]} pairs but the last, "
                             f"got {sizes}")
        self.shard_size, self.size = sizes[0], sum(sizes)
        self.shape = tuple(self.shards[0].shape[2:])
        self.num_classes = None

    def __len__(self) -> int:
        return self.size

    def load(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        shard, offset = np.divmod(np.asarray(indices, np.int64), self.shard_size)
        out = np.empty((len(shard), 2) + self.shape, np.float32)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.shards[int(s)][offset[mask]]
        return {"x": out[:, 0], "noise": out[:, 1]}
