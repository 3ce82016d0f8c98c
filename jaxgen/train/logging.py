"""Metric sinks: `metrics.jsonl` (the source of truth), TensorBoard events, and a terminal line.

Only process 0 writes files; every file goes through `jaxgen.paths`, so the workdir may be a gs:// URL.

metrics.jsonl is one JSON object per line. Every row is written whole:
- local workdir: the file is opened with O_APPEND and each row is one `write` of the complete line,
  so a crash can leave at most one partial last line, never two rows glued mid-line;
- gs:// workdir: objects cannot be appended, so the writer keeps the file's text in memory and
  uploads the whole object (atomic on GCS) at most every `sync_every_s` seconds while rows arrive, at
  every `sync()` (the training loop calls it at each checkpoint, so the rows up to a checkpoint are
  in the bucket before the checkpoint is) and at `close()`. GCS allows about one update per second
  to one object, hence no upload per row. Rows after the last upload are lost on a hard kill, but
  the resumed run logs them again from its checkpoint. TensorBoard events are written to a local
  temporary folder and copied into ``workdir/tensorboard/`` at the same moments (tensorboardX's own
  gs:// writer re-uploads from its finalizer at exit and retries for minutes when the bucket is
  unreachable).
On resume a partial last line (a crash mid-write) is cut off with a warning; `read_metrics` skips
and reports any line that is not a JSON object with an integer `step`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings

import jax
import numpy as np

from jaxgen import paths

METRICS_FILE = "metrics.jsonl"


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


def _cut_partial_last_line(data: bytes, where: str) -> bytes:
    """`data` up to and including its last newline; warns if something after it was dropped."""
    if not data or data.endswith(b"\n"):
        return data
    keep = data.rfind(b"\n") + 1
    warnings.warn(f"{where}: cut off a partial last line ({len(data) - keep} bytes: "
                  f"{data[keep:keep + 60]!r}) left by an interrupted write", RuntimeWarning, stacklevel=3)
    return data[:keep]


class MetricWriter:
    """Appends rows `{"step": s, name: value, ...}` to `workdir/metrics.jsonl` and TensorBoard scalars
    to `workdir/tensorboard` (see the module docstring for how each row reaches the file)."""

    def __init__(self, workdir: str, sync_every_s: float = 10.0):
        self.enabled = jax.process_index() == 0
        self.path = paths.join(workdir, METRICS_FILE)
        self.remote = paths.is_remote(workdir)
        self.sync_every_s = sync_every_s
        self._tb = None
        self._tb_dir = paths.join(workdir, "tensorboard")
        self._tb_local = None  # gs://: where the events are written before each upload
        self._fd = None
        self._text = b""  # gs://: the object's whole content
        self._dirty = False
        self._last_sync = time.monotonic()
        if not self.enabled:
            return
        old = paths.read_bytes(self.path) if paths.exists(self.path) else b""
        kept = _cut_partial_last_line(old, self.path)
        if self.remote:
            self._text, self._dirty = kept, kept != old
        else:
            paths.makedirs(workdir)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if kept != old:
                os.ftruncate(self._fd, len(kept))
        SummaryWriter = _summary_writer_class()
        if self.remote:
            self._tb_local = tempfile.mkdtemp(prefix="jaxgen_tensorboard_")
        self._tb = SummaryWriter(self._tb_local or self._tb_dir)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            row[k] = _scalar(v)
        line = (json.dumps(row) + "\n").encode("utf-8")
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        if self.remote:
            self._text += line
            self._dirty = True
            if time.monotonic() - self._last_sync >= self.sync_every_s:
                self.sync()
            return
        view = memoryview(line)
        while view:  # one write per row; loop only on a short write (e.g. a full disk)
            view = view[os.write(self._fd, view):]
        self._tb.flush()

    def sync(self) -> None:
        """Make every row written so far durable (uploads the objects on gs://)."""
        if not self.enabled or self._tb is None:
            return
        self._tb.flush()
        if self.remote and self._dirty:
            self._upload()
        self._last_sync = time.monotonic()

    def _upload(self) -> None:
        paths.write_bytes(self.path, self._text)
        for name in os.listdir(self._tb_local):
            paths.copy(os.path.join(self._tb_local, name), paths.join(self._tb_dir, name))
        self._dirty = False

    def close(self) -> None:
        if not self.enabled or self._tb is None:
            return
        try:
            self._tb.close()
            if self.remote:
                self._upload()
        finally:
            self._tb = None
            if self._tb_local is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_metrics(workdir: str) -> list[dict]:
    """Rows of `metrics.jsonl`; after a resume, later rows for a step replace earlier ones.

    A line that is not a JSON object with an integer "step" (a partial or garbage line) is skipped,
    and all skipped lines are reported in one warning naming the file and the line numbers.
    """
    by_step: dict[tuple, dict] = {}
    path = paths.join(workdir, METRICS_FILE)
    bad = []
    for n, line in enumerate(paths.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
            bad.append(n)
            continue
        kind = "eval" if any(k.startswith("eval/") for k in row) else "train"
        by_step[(row["step"], kind)] = row
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        warnings.warn(f"{path}: skipped {len(bad)} bad line(s) (line {shown}): not a JSON object with an "
                      f"integer 'step'", RuntimeWarning, stacklevel=2)
    return [by_step[k] for k in sorted(by_step)]


def format_metrics(metrics: dict, keys=None) -> str:
    parts = []
    for k, v in metrics.items():
        if keys is not None and k not in keys:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed only to
    accept torch tensors (about 3 s of start-up); jaxgen writes Python floats."""
    import sys

    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter
