"""A workdir users can trust: the lock (a live holder, a stale one), resume under a changed config
(refused, then accepted on purpose), train.num_steps at or below the latest checkpoint, and the
fallback from a damaged latest checkpoint. One training run is shared by every test (copied where a
test changes the workdir)."""

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from jaxgen import run
from jaxgen.config import ConfigError, base_config
from jaxgen.train import workdir as workdir_lib
from jaxgen.train.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps, checkpoints at 2 and 4; evaluation shrunk to what the assertions need.
BASE = ["--config", os.path.join(ROOT, "configs/ddpm_toy2d.py:smoke"), "--config.eval.untrained_baseline=False",
        "--config.eval.num_samples=16"]


def _main(workdir, *extra):
    return run.main([*BASE, "--workdir", str(workdir), *extra])


def _refused(workdir, *extra):
    """_main with the compilation cache where a user's run keeps it ($JAX_COMPILATION_CACHE_DIR unset: in the
    workdir) and this process's compiled programs forgotten, so that a refused run writing it would show; the test
    session's cache is restored afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    session_cache = jax.config.jax_compilation_cache_dir
    jax.clear_caches()
    try:
        return _main(workdir, *extra, f"--config.train.compile_cache_dir={workdir}/compile_cache")
    finally:
        if jax.config.jax_compilation_cache_dir != session_cache:
            jax.config.update("jax_compilation_cache_dir", session_cache)
            compilation_cache.reset_cache()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the PID names no process now
    return p.pid


def _snapshot(workdir) -> dict:
    """Every file of the workdir with its size and mtime: any change shows."""
    out = {}
    for dirpath, _, files in os.walk(workdir):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run, started over a stale lock left by a dead process on this host."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    workdir.mkdir()
    pid = _dead_pid()
    (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(
        dict(host=socket.gethostname(), pid=pid, start="2026-01-01T00:00:00+00:00", token="x")))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = _main(workdir)
    return dict(workdir=workdir, rc=rc, err=err.getvalue(), stale_pid=pid)


def _copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained["workdir"], dst)
    return dst


def test_stale_lock_taken_over_with_warning_and_released(trained):
    assert trained["rc"] == 0, trained["err"][-2000:]
    warnings = [line for line in trained["err"].splitlines() if "stale lock" in line]
    assert len(warnings) == 1 and f"PID {trained['stale_pid']}" in warnings[0], trained["err"][-2000:]
    workdir = trained["workdir"]
    assert not (workdir / workdir_lib.LOCK_NAME).exists()  # released at the end of the run
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_second_run_exits_2_naming_the_live_holder(tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxgen.train.workdir import WorkdirLock; "
         f"lock = WorkdirLock({str(workdir)!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(workdir)
        assert _main(workdir) == 2
        errors = _errors(capsys.readouterr().err)
        assert len(errors) == 1, errors
        assert f"in use by PID {holder.pid} on host {socket.gethostname()}" in errors[0]
        assert workdir_lib.LOCK_NAME in errors[0]
        assert _snapshot(workdir) == before  # the holder's lock untouched, nothing else written
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    lock = tmp_path / workdir_lib.LOCK_NAME
    lock.write_text(json.dumps(dict(host="other-host", pid=_dead_pid(), start="t", token="y")))
    with pytest.raises(ConfigError, match="in use by PID .* on host other-host"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    assert json.loads(lock.read_text())["host"] == "other-host"
    with workdir_lib.WorkdirLock(str(tmp_path), primary=False):  # processes other than 0 take no lock
        assert json.loads(lock.read_text())["host"] == "other-host"


def test_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
    a, b = workdir_lib.WorkdirLock(str(tmp_path)), workdir_lib.WorkdirLock(str(tmp_path))
    a.acquire()
    with pytest.raises(ConfigError, match=f"in use by PID {os.getpid()}"):
        b.acquire()
    b.release()  # never acquired: must not delete a's lock
    assert json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())["token"] == a.info["token"]
    a.release()
    assert not (tmp_path / workdir_lib.LOCK_NAME).exists()
    with b:
        assert (tmp_path / workdir_lib.LOCK_NAME).exists()


def test_resume_under_changed_config_refused_listing_each_key(trained, capsys):
    workdir = trained["workdir"]
    before = _snapshot(workdir)
    assert _refused(workdir, "--config.diffusion.num_steps=40", "--config.train.batch_size=16",
                    "--config.eval.num_samples=8", "--config.train.num_steps=6") == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "config.diffusion.num_steps: 20 -> 40" in errors[0]
    assert "config.train.batch_size: 32 -> 16" in errors[0]
    assert "eval.num_samples" not in errors[0] and "config.train.num_steps" not in errors[0]  # allowed
    assert "--config.train.resume_changed=True" in errors[0]
    assert _snapshot(workdir) == before  # config.json, metrics, checkpoints: nothing changed


def test_forced_resume_that_cannot_restore_exits_2_before_changing_the_workdir(trained, capsys):
    workdir = trained["workdir"]
    before = _snapshot(workdir)
    assert _refused(workdir, "--config.model.hidden=16", "--config.train.resume_changed=True") == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "does not fit the state this config builds" in errors[0]
    assert "checkpoint (32,), config (16,)" in errors[0]  # read from the checkpoint's metadata, not restored
    assert _snapshot(workdir) == before


def test_resume_allow_list():
    old = json.loads(base_config().to_json_best_effort())
    new = json.loads(base_config().to_json_best_effort())
    new["train"].update(num_steps=5, log_every=1, checkpoint_every=1, eval_every=1, resume_changed=True)
    new["mesh"]["data"], new["distributed"]["initialize"] = 2, "false"
    new["eval"]["anything"] = 1
    assert workdir_lib.config_differences(old, new) == []
    del old["optimizer"]["momentum"]  # a key added by a later jaxgen, at its default: no change
    assert workdir_lib.config_differences(old, new) == []
    new["seed"], new["optimizer"]["b1"], new["optimizer"]["momentum"] = 3, 0.5, 0.5
    del new["ema_decay"]
    assert workdir_lib.config_differences(old, new) == [
        ("ema_decay", 0.0, "<absent>"), ("optimizer.b1", None, 0.5), ("optimizer.momentum", "<absent>", 0.5),
        ("seed", 0, 3)]


@pytest.fixture(scope="module")
def resumed_changed_below(trained, tmp_path_factory):
    """The trained workdir resumed on purpose under another seed, with num_steps (2) below its checkpoint (4)."""
    workdir = tmp_path_factory.mktemp("below") / "run"
    shutil.copytree(trained["workdir"], workdir)
    final_before = json.loads((workdir / "final_metrics.json").read_text())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = _main(workdir, "--config.seed=1", "--config.train.resume_changed=True", "--config.train.num_steps=2")
    return dict(workdir=workdir, rc=rc, err=err.getvalue(), final_before=final_before)


def test_resume_changed_accepts_and_logs_the_change(resumed_changed_below):
    r = resumed_changed_below
    assert r["rc"] == 0, r["err"][-2000:]
    logged = [line for line in r["err"].splitlines() if "changed config" in line]
    assert len(logged) == 1 and "config.seed: 0 -> 1" in logged[0] and "resume_changed=True" in logged[0]
    workdir = r["workdir"]
    assert json.loads((workdir / "config.json").read_text())["seed"] == 1
    assert json.loads((workdir / "config.prev1.json").read_text())["seed"] == 0  # the old one is kept


def test_num_steps_below_checkpoint_evaluates_it_under_its_own_step(resumed_changed_below):
    r = resumed_changed_below
    assert any("num_steps=2 is below the latest checkpoint (step 4)" in line for line in r["err"].splitlines())
    workdir = r["workdir"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # nothing trained or saved
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "eval/sw2" in row] == [4, 4]  # the first run's and this one's
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert set(final) == set(r["final_before"]) and final["eval/sw2"] > 0


def test_damaged_latest_checkpoint_falls_back_to_intact_one(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    os.remove(workdir / "checkpoints/4/data/process_0-of-1.json")  # the data iterator's position
    config_before = (workdir / "config.json").read_text()
    assert _main(workdir) == 0
    err = capsys.readouterr().err
    named = [line for line in err.splitlines() if "is damaged" in line]
    assert len(named) == 1, err[-2000:]
    assert f"{workdir}/checkpoints/4" in named[0] and "data/process_*.json" in named[0]
    assert "falling back to step 2" in named[0]
    assert (workdir / "checkpoints_damaged/4/state/_METADATA").exists()  # kept, out of the way
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert (workdir / "checkpoints/4/data/process_0-of-1.json").exists()  # step 4 written again
    assert (workdir / "config.json").read_text() == config_before
    # Resumed from step 2's state and data position: step 3-4 losses equal the uninterrupted run's.
    original = {row["step"]: row["loss"] for row in read_metrics(str(trained["workdir"])) if "loss" in row}
    again = {row["step"]: row["loss"] for row in read_metrics(str(workdir)) if "loss" in row}
    assert again[4] == original[4]


def test_no_intact_checkpoint_exits_2_before_changing_the_workdir(trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    os.remove(workdir / "checkpoints/4/state/_METADATA")
    os.remove(workdir / "checkpoints/2/data/process_0-of-1.json")
    before = _snapshot(workdir)
    assert _refused(workdir) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "no intact checkpoint" in errors[0]
    assert "step 4 lacks state/_METADATA" in errors[0] and "step 2 lacks data/process_*.json" in errors[0]
    assert _snapshot(workdir) == before


class _FakeBlob:
    """GCS object semantics the lock relies on: `if_generation_match=0` succeeds only if the object does not
    exist, a generation precondition fails once the object changed (PreconditionFailed, as the client raises)."""

    store: dict = {}

    def __init__(self, name):
        self.name, self.generation = name, None

    def _check(self, want):
        from google.api_core import exceptions

        have = self.store.get(self.name, (None, 0))[1]
        if want is not None and want != have:
            raise exceptions.PreconditionFailed(f"{self.name}: generation {have}, wanted {want}")

    def upload_from_string(self, text, if_generation_match=None):
        self._check(if_generation_match)
        self.store[self.name] = (text, self.store.get(self.name, (None, 0))[1] + 1)

    def reload(self):
        from google.api_core import exceptions

        if self.name not in self.store:
            raise exceptions.NotFound(self.name)
        self.generation = self.store[self.name][1]

    def download_as_text(self, if_generation_match=None):
        self._check(if_generation_match)
        return self.store[self.name][0]

    def delete(self, if_generation_match=None):
        from google.api_core import exceptions

        if self.name not in self.store:
            raise exceptions.NotFound(self.name)
        self._check(if_generation_match)
        del self.store[self.name]


def test_gs_lock_uses_generation_preconditions(monkeypatch):
    """The gs:// code path against a fake with GCS's precondition semantics (the GCS emulator of the test
    suite ignores preconditions, so exclusivity cannot be checked there)."""
    _FakeBlob.store = {}
    monkeypatch.setattr(workdir_lib, "_gcs_blob", _FakeBlob)
    monkeypatch.setattr(workdir_lib.paths, "check_writable", lambda *a, **k: None)
    url = "gs://bucket/run"
    a, b = workdir_lib.WorkdirLock(url), workdir_lib.WorkdirLock(url)
    a.acquire()
    with pytest.raises(ConfigError, match=f"in use by PID {os.getpid()} on host"):
        b.acquire()
    b.release()
    assert "gs://bucket/run/jaxgen.lock" in _FakeBlob.store
    a.release()
    assert _FakeBlob.store == {}
    stale = json.dumps(dict(host=socket.gethostname(), pid=_dead_pid(), start="t", token="old"))
    _FakeBlob("gs://bucket/run/jaxgen.lock").upload_from_string(stale)
    with b:
        assert json.loads(_FakeBlob.store["gs://bucket/run/jaxgen.lock"][0])["token"] == b.info["token"]
    assert _FakeBlob.store == {}
