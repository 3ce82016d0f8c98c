"""A workdir users can trust: one writer at a time, no silent resume under another config.

Lock. Process 0 of a run creates `<workdir>/jaxgen.lock` (JSON: host, pid, start time, a random token)
before anything else is written, and deletes it when the run ends (normally, by an error, or by
SIGTERM/SIGINT after its checkpoint). Creation is create-if-absent, so of two runs started together
exactly one gets it: locally `os.link` of a complete temporary file (fails if the name exists, and a
reader never sees a half-written lock); on gs:// an upload with the precondition `if_generation_match=0`
(GCS accepts it only if no object of that name exists). A second run exits 2 naming the holder. A lock
left by a dead process (SIGKILL, OOM) on this host is taken over with a warning; one from another host
cannot be judged from here, so the message says which file to delete if that run is gone.

Resume. When the workdir holds a checkpoint, the new config is compared with the workdir's
`config.json`: keys outside `RESUME_ALLOWED` (run length, logging/checkpoint/eval cadence, `eval.*`,
`distributed.*`, `mesh.*`) that differ stop the run with exit 2, listing each key with both values;
`--config.train.resume_changed=True` accepts them on purpose and logs them.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import uuid

from jaxgen import paths
from jaxgen.config import ConfigError

LOCK_NAME = "jaxgen.lock"

# Keys (exact, or prefixes ending in '.') that may differ between a workdir's config.json and the config
# that resumes it: how long to run, how often to log / checkpoint / evaluate, how to evaluate, and where the
# run executes. Everything else changes what is being trained.
RESUME_ALLOWED = ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.eval_every",
                  "train.keep_checkpoints", "train.resume_changed", "train.compile_cache_dir",
                  "train.profile_steps", "eval.", "distributed.", "mesh.")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    """True if process `pid` exists on this host and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # local: this host's process table
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir's lock (process 0 only: `primary=False` is a no-op).

    Raises `ConfigError` (one line) when the workdir cannot be written or another live run holds it.
    """

    def __init__(self, workdir: str, primary: bool = True):
        self.workdir = os.fspath(workdir)
        self.primary = primary
        self.path = paths.join(self.workdir, LOCK_NAME) if self.workdir else ""
        self.held = False
        self.info = dict(host=socket.gethostname(), pid=os.getpid(),
                         start=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         token=uuid.uuid4().hex)

    def __enter__(self) -> "WorkdirLock":
        error = None
        try:
            self.acquire()
        except ConfigError as e:
            error = e
        jax = sys.modules.get("jax")
        if jax is not None and jax.process_count() > 1:  # every process learns process 0's outcome
            import numpy as np
            from jax.experimental import multihost_utils

            ok = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is None)))
            if not ok and error is None:
                error = ConfigError(f"process 0 could not take the lock of workdir '{self.workdir}' (its error "
                                    f"says why)")
        if error is not None:
            self.release()
            raise error
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.primary or self.held:
            return
        try:
            paths.check_writable(self.workdir, "workdir")
            paths.makedirs(self.workdir)  # the lock lives inside it; nothing else is written before the checks
        except ValueError as e:
            raise ConfigError(str(e)) from None
        except OSError as e:
            raise ConfigError(f"workdir '{self.workdir}' cannot be written: {e.strerror or e}") from None
        text = json.dumps(self.info)
        for _ in range(3):  # a takeover can race with another run's; each round re-reads the holder
            try:
                created = _create_exclusive(self.path, text)
            except OSError as e:
                raise ConfigError(f"workdir '{self.workdir}' cannot be written: {e.strerror or e}") from None
            if created:
                self.held = True
                return
            holder, generation = _read_holder(self.path)
            if holder is None:  # released between our attempt and the read
                continue
            pid = holder.get("pid")
            if holder.get("host") == self.info["host"] and isinstance(pid, int) and pid > 0 and not _pid_alive(pid):
                if _remove_if_unchanged(self.path, generation):
                    warn(f"took over the stale lock of workdir '{self.workdir}': PID {holder.get('pid')} on this host "
                         f"(started {holder.get('start')}) is no longer running")
                continue
            raise ConfigError(
                f"workdir '{self.workdir}' is in use by PID {holder.get('pid')} on host {holder.get('host')} "
                f"(started {holder.get('start')}); wait for it, use another --workdir, or delete {self.path} if "
                f"that run is gone")
        raise ConfigError(f"could not take the lock {self.path}: other runs keep taking it; retry")

    def release(self) -> None:
        """Delete the lock if it is still ours (a takeover by another run after we died is left alone)."""
        if not self.held:
            return
        self.held = False
        holder, generation = _read_holder(self.path)
        if holder is not None and holder.get("token") == self.info["token"]:
            _remove_if_unchanged(self.path, generation)


def _gcs_blob(url: str):
    from google.cloud import storage  # installed with the tpu/cuda extras (gcsfs' dependency)

    bucket, _, name = url.split("://", 1)[1].partition("/")
    return storage.Client().bucket(bucket).blob(name)


def _create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` unless it exists; True if this call created it. Atomic on both backends."""
    if paths.is_remote(path):
        if not path.startswith("gs://"):
            raise ConfigError(f"workdir locks support local paths and gs:// URLs, got {path}")
        from google.api_core import exceptions

        try:
            _gcs_blob(path).upload_from_string(text, if_generation_match=0)
        except exceptions.PreconditionFailed:
            return False
        return True
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:  # local: the remote branch returned above
        f.write(text)
    try:
        os.link(tmp, path)  # fails if `path` exists; readers see the whole file or none
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _read_holder(path: str) -> tuple[dict | None, object]:
    """(lock contents or None if absent, a version to delete it conditionally: GCS generation / local inode)."""
    try:
        if paths.is_remote(path):
            blob = _gcs_blob(path)
            blob.reload()
            return json.loads(blob.download_as_text(if_generation_match=blob.generation)), blob.generation
        st = os.stat(path)
        with open(path) as f:  # local: the remote branch returned above
            return json.loads(f.read()), (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return None, None
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "NotFound":
            return None, None
        if isinstance(e, ValueError):  # not JSON: someone else's file; never overwrite it silently
            raise ConfigError(f"{path} exists but is not a jaxgen lock ({e}); delete it if no run uses this "
                              f"workdir") from None
        raise


def _remove_if_unchanged(path: str, generation) -> bool:
    """Delete the lock only if it is still the version read (another run may have taken it over meanwhile)."""
    if paths.is_remote(path):
        from google.api_core import exceptions

        try:
            _gcs_blob(path).delete(if_generation_match=generation)
            return True
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
    aside = f"{path}.{uuid.uuid4().hex}.old"
    try:
        os.rename(path, aside)  # atomic: of several removers exactly one gets the file
    except FileNotFoundError:
        return False
    st = os.stat(aside)
    if (st.st_ino, st.st_mtime_ns) != generation:  # it was replaced since we read it: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in RESUME_ALLOWED)


_ABSENT = "<absent>"


# Defaults of keys a task added after workdirs were written ({dotted key: default}), and old values that mean the
# same as a new one ({dotted key: {old: new}}, e.g. a renamed task): registered by the task modules.
ADDED_DEFAULTS: dict = {}
RENAMED_VALUES: dict = {}


def register_defaults(section: str, defaults: dict) -> None:
    """Declare `config.<section>.<key>` defaults: a workdir written before such a key existed ran with them."""
    ADDED_DEFAULTS.update({f"{section}.{k}": v for k, v in _flatten(json.loads(json.dumps(defaults))).items()})


def _defaults() -> dict:
    """Flattened defaults of keys jaxgen adds to every config (base_config, model defaults, ADDED_DEFAULTS)."""
    from jaxgen import config as config_lib

    out = _flatten(json.loads(config_lib.base_config().to_json_best_effort()))
    out.update({f"model.{k}": v for k, v in getattr(config_lib, "MODEL_DEFAULTS", {}).items()})
    out.update(ADDED_DEFAULTS)
    return out


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs and is not in RESUME_ALLOWED.

    A key missing from the old config and set to its jaxgen default in the new one is no difference: a
    workdir written before jaxgen had that key ran with the behaviour the default keeps.
    """
    a, b = _flatten(old), _flatten(new)
    defaults = _defaults()
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        va = RENAMED_VALUES.get(key, {}).get(va, va) if isinstance(va, str) else va
        if va == vb or _allowed(key) or (va is _ABSENT and key in defaults and defaults[key] == vb):
            continue
        diffs.append((key, va, vb))
    return diffs


def check_resume_config(config, workdir: str) -> list[tuple[str, object, object]]:
    """Compare `config` with the workdir's config.json before resuming its checkpoint.

    Raises ConfigError listing every differing key outside RESUME_ALLOWED with both values, unless
    `config.train.resume_changed` is True, in which case the differences are logged and returned.
    """
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        return []
    try:
        old = json.loads(paths.read_text(path))
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); cannot check that the resumed run has the same "
                          f"config") from None
    new = json.loads(config.to_json_best_effort(sort_keys=True))
    diffs = config_differences(old, new)
    if not diffs:
        return []
    listed = "; ".join(f"config.{k}: {va!r} -> {vb!r}" for k, va, vb in diffs)
    if not config.train.get("resume_changed", False):
        raise ConfigError(f"workdir '{workdir}' holds a run with another config ({listed}); use the same config, "
                          f"another --workdir, or --config.train.resume_changed=True to resume under the change")
    warn(f"resuming workdir '{workdir}' under a changed config (config.train.resume_changed=True): {listed}")
    return diffs


DAMAGED_DIR = "checkpoints_damaged"


def prepare_resume(config, workdir: str, primary: bool = True, abstract=None) -> int | None:
    """Validate a resume before the workdir changes; returns the checkpoint step to resume from (None: start).

    1. The newest intact checkpoint is found; each newer damaged one is named in a warning with the files it
       lacks; if checkpoints exist and none is intact, ConfigError.
    2. The config is compared with config.json (`check_resume_config`), and the checkpoint's array shapes
       with `abstract` (the state this config builds), so a forced resume that cannot restore stops here.
    3. Only then (process 0, after every process has looked) the damaged checkpoints are moved to
       `<workdir>/checkpoints_damaged/` (kept, and out of orbax's way so their steps can be written again).
    """
    from jaxgen.train import checkpoint as ckpt_lib

    directory = paths.join(workdir, "checkpoints")
    step, damaged = ckpt_lib.find_intact(directory)
    for s, missing in damaged:
        where = paths.join(directory, str(s))
        fallback = f"falling back to step {step}" if step is not None else "no intact checkpoint is left"
        warn(f"checkpoint {where} is damaged (missing {', '.join(missing)}); {fallback}")
    if damaged and step is None:
        raise ConfigError(f"no intact checkpoint in {directory}: "
                          + "; ".join(f"step {s} lacks {', '.join(m)}" for s, m in damaged)
                          + "; move them away (or use another --workdir) to start from scratch")
    if step is not None:
        check_resume_config(config, workdir)
        mismatches = ckpt_lib.shape_mismatches(directory, step, abstract) if abstract is not None else []
        if mismatches:
            raise ConfigError(f"checkpoint step {step} in {directory} does not fit the state this config builds "
                              f"({len(mismatches)} arrays differ, e.g. {mismatches[0]}); use the checkpoint's "
                              f"config or another --workdir")
    if damaged:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxgen_resume_checked")
        if primary:
            for s, _ in damaged:
                moved = ckpt_lib.set_aside(directory, s, paths.join(workdir, DAMAGED_DIR))
                warn(f"moved the damaged checkpoint of step {s} to {moved}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxgen_damaged_moved")
    return step
