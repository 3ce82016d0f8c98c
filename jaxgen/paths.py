"""The one path layer: every read and write of a workdir, a data dir or an experiment output.

Paths are plain strings, local (``runs/toy``, ``/tmp/x``) or URLs (``gs://bucket/runs/toy``);
``etils.epath`` picks the backend (the OS for local paths, ``gcsfs`` through fsspec for gs://).
Use these functions instead of ``open`` / ``os.makedirs`` / ``os.path.abspath`` on a user path:
on a URL those create a local directory named ``gs:``.

API (all take ``str | os.PathLike``):

- ``path(p) -> epath.Path``; ``is_remote(p)``; ``join(p, *parts) -> str``; ``absolute(p) -> str``
  (local paths made absolute, URLs unchanged).
- ``exists``, ``isdir``, ``listdir`` (names), ``makedirs`` (a no-op on object stores: they have no
  directories, and it never creates a bucket).
- ``read_text`` / ``read_bytes``; ``write_text`` / ``write_bytes`` (whole-file and atomic: a local
  file is written to a temporary file and renamed over the target; a GCS object upload is atomic);
  ``open(p, mode)`` for streaming; ``remove``, ``rmtree``, ``copy``, ``replace``.
- ``check_writable(p, what)``: raises ``ValueError`` with one line naming the URL when the
  directory (or its bucket) does not exist or cannot be written; creates nothing.
- ``save_figure(fig, p)`` (matplotlib), ``stage(p, local_dir)`` (copy a remote tree to local disk
  once, for readers that only take local files).

Object stores cannot append: ``open(p, "a")`` on gs:// is refused here (gcsfs would silently
overwrite), so append-only logs are rewritten whole (see ``jaxgen.train.logging``).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from typing import IO, Union

from etils import epath

PathLike = Union[str, os.PathLike]

_SCHEME_SEP = "://"


def is_remote(p: PathLike) -> bool:
    """True for a URL with a scheme (gs://, s3://, ...), False for a local path."""
    return _SCHEME_SEP in os.fspath(p)


def path(p: PathLike) -> epath.Path:
    """`p` as an `etils.epath.Path` (gs:// through gcsfs, local through the OS)."""
    return epath.Path(p)


def join(p: PathLike, *parts: str) -> str:
    """Join path components; URLs keep their scheme (``join('gs://b/x', 'c')`` = ``'gs://b/x/c'``)."""
    return os.fspath(epath.Path(p).joinpath(*parts))


def absolute(p: PathLike) -> str:
    """A local path made absolute; a URL unchanged (``os.path.abspath`` would make it a local path)."""
    s = os.fspath(p)
    return s if is_remote(s) else os.path.abspath(s)


def bucket(p: PathLike) -> str | None:
    """The bucket of a gs:// URL (None for a local path)."""
    s = os.fspath(p)
    if not is_remote(s):
        return None
    return s.split(_SCHEME_SEP, 1)[1].split("/", 1)[0]


def exists(p: PathLike) -> bool:
    return path(p).exists()


def isdir(p: PathLike) -> bool:
    return path(p).is_dir()


def listdir(p: PathLike) -> list[str]:
    """Names (not paths) of the entries of directory `p`, sorted; [] if it does not exist."""
    pp = path(p)
    if not pp.exists():
        return []
    return sorted(c.name for c in pp.iterdir())


def makedirs(p: PathLike) -> None:
    """mkdir -p for a local path; nothing for a URL (object stores have no directories, and creating
    a missing bucket is never what a typo in a workdir means)."""
    if not is_remote(p):
        os.makedirs(os.fspath(p), exist_ok=True)  # local


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    return path(p).read_text()


def write_bytes(p: PathLike, data: bytes) -> None:
    """Write the whole file at once: readers see the old content or the new, never a part."""
    s = os.fspath(p)
    if is_remote(s):
        path(s).write_bytes(data)  # one object upload: atomic on GCS
        return
    parent = os.path.dirname(os.path.abspath(s))
    os.makedirs(parent, exist_ok=True)  # local
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=os.path.basename(s) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, s)  # local
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(p: PathLike, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(p, text.encode("utf-8"))


def open(p: PathLike, mode: str = "r") -> IO:  # noqa: A001 - mirrors the builtin on purpose
    """A file object; local parents are created for writes. Append is refused on object stores."""
    s = os.fspath(p)
    if is_remote(s):
        if "a" in mode or "+" in mode:
            raise ValueError(f"mode={mode!r} is not supported for {s}: objects cannot be appended or "
                             f"updated in place; write the whole object (write_text/write_bytes)")
        return path(s).open(mode)
    if any(c in mode for c in "wax"):
        os.makedirs(os.path.dirname(os.path.abspath(s)), exist_ok=True)  # local
    return io.open(s, mode)  # local


def remove(p: PathLike) -> None:
    """Delete one file (missing: nothing)."""
    pp = path(p)
    if pp.exists():
        pp.unlink()


def rmtree(p: PathLike) -> None:
    """Delete a directory tree (missing: nothing)."""
    pp = path(p)
    if pp.exists():
        pp.rmtree()


def copy(src: PathLike, dst: PathLike) -> None:
    """Copy one file (any mix of local and remote)."""
    write_bytes(dst, read_bytes(src))


def replace(src: PathLike, dst: PathLike) -> None:
    """Move `src` over `dst`. Locally an atomic rename; on an object store a copy then a delete
    (gcsfs' server-side move is not available everywhere, e.g. on the GCS emulator)."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(os.fspath(src), os.fspath(dst))  # local
        return
    copy(src, dst)
    remove(src)


def check_writable(p: PathLike, what: str = "directory") -> None:
    """Raise ValueError (one line naming `p`) unless `p` is, or can become, a writable directory.

    Leaves nothing behind: an existing directory (local, or a gs:// prefix whose bucket must exist)
    gets a probe file written and deleted; a missing local directory is checked through its nearest
    existing ancestor, which must be a writable directory (the directory itself is not created here).
    """
    s = os.fspath(p)
    if not s:
        raise ValueError(f"{what} must be a non-empty path, got {s!r}")
    probe = join(s, f".jaxgen_write_probe_{uuid.uuid4().hex}")
    if not is_remote(s):
        if os.path.exists(s) and not os.path.isdir(s):
            raise ValueError(f"{what} '{s}' exists and is not a directory")
        if not os.path.exists(s):
            ancestor = os.path.dirname(os.path.abspath(s))
            while not os.path.exists(ancestor):
                ancestor = os.path.dirname(ancestor)
            if not os.path.isdir(ancestor):
                raise ValueError(f"{what} '{s}' cannot be created: '{ancestor}' is not a directory")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise ValueError(f"{what} '{s}' cannot be created: '{ancestor}' is not writable")
            return
        try:
            with io.open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as e:
            raise ValueError(f"{what} '{s}' cannot be written: {e.strerror or e}") from None
        return
    b = bucket(s)
    try:
        path(probe).write_bytes(b"")
        path(probe).unlink()
    except FileNotFoundError:
        raise ValueError(f"{what} '{s}' cannot be written: bucket '{b}' does not exist") from None
    except PermissionError as e:
        raise ValueError(f"{what} '{s}' cannot be written: permission denied ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - auth, network, HTTP errors of the backend: one line for the user
        raise ValueError(f"{what} '{s}' cannot be written: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_figure(fig, p: PathLike, **savefig_kwargs) -> None:
    """`fig.savefig` to a local path or a URL (rendered to memory, then written whole)."""
    fmt = savefig_kwargs.pop("format", None) or os.path.splitext(os.fspath(p))[1].lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig_kwargs)  # local: renders into memory; written below through write_bytes
    write_bytes(p, buf.getvalue())


def stage(p: PathLike, local_dir: PathLike) -> str:
    """Copy the tree `p` (a URL) into `local_dir` once and return the local path; a local `p` is returned
    as is. Files already present with the same size are not copied again; each file is written to a
    temporary name and renamed, so an interrupted copy is never mistaken for a complete one."""
    s = os.fspath(p)
    if not is_remote(s):
        return s
    dest_root = os.fspath(local_dir)
    _stage_dir(path(s), dest_root)
    return dest_root


def _stage_dir(src_dir: epath.Path, dest_dir: str) -> None:
    os.makedirs(dest_dir, exist_ok=True)  # local: the staging copy is on this host by design
    for src in src_dir.iterdir():
        dst = os.path.join(dest_dir, src.name)
        if src.is_dir():
            _stage_dir(src, dst)
            continue
        if os.path.exists(dst) and os.path.getsize(dst) == src.stat().length:
            continue
        tmp = f"{dst}.{uuid.uuid4().hex}.tmp"
        with src.open("rb") as fin, io.open(tmp, "wb") as fout:  # local: the staging copy
            shutil.copyfileobj(fin, fout, 8 << 20)
        os.replace(tmp, dst)  # local
