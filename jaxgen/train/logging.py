"""Metric sinks: `metrics.jsonl` (the source of truth), TensorBoard events, and a terminal line.

Only process 0 writes files.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            row[k] = _scalar(v)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """Rows of `metrics.jsonl`; after a resume, later rows for a step replace earlier ones."""
    by_step: dict[tuple, dict] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            kind = "eval" if any(k.startswith("eval/") for k in row) else "train"
            by_step[(row["step"], kind)] = row
    return [by_step[k] for k in sorted(by_step)]


def format_metrics(metrics: dict, keys=None) -> str:
    parts = []
    for k, v in metrics.items():
        if keys is not None and k not in keys:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
