"""Multi-host runs on one machine: 2 processes x 4 CPU devices over gloo, started with explicit coordinator
flags. A SIGTERM to process 1 only stops both processes at the same step with a checkpoint of it (exit 143);
re-running both resumes bitwise; the checkpoint resumes on 1 process too (the CLI's main in the test process);
only process 0 prints progress. SIGINT on a single process (the test process) checkpoints the current step and
ends the CLI's main with status 130."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from signals import signal_self_when

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
# Constant lr: the trajectory does not depend on num_steps; one log row per step, no periodic checkpoint.
ARGS = ["--config", "configs/ddpm_toy2d.py:smoke", f"--config.train.num_steps={STEPS}",
        "--config.train.log_every=1", "--config.train.checkpoint_every=1000", "--config.optimizer.schedule=constant",
        "--config.optimizer.warmup_steps=0", "--config.eval.untrained_baseline=False"]


# `python -m jaxgen.run` as on a user's install, without torch: torch is a test-only dependency (the FID reference,
# setup.py's test extra) and tensorboardX imports it when present (3.4 CPU-s per process 0).
CLI = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; "
       "runpy.run_module('jaxgen.run', run_name='__main__', alter_sys=True)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two runs one after the other in each process of a pair (the CLI's main twice, jax.distributed started once), e.g.
# the uninterrupted reference, then the run that gets the SIGTERM. SEP, on stdout (with the first run's exit
# status) and stderr, separates them. Arguments after THEN_ALSO are the second run's only.
SEP = "=== next run ==="
THEN_ALSO = "--then-also"
MAIN_TWICE = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from jaxgen import run\n"
              "first, second, args = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
              f"n = args.index({THEN_ALSO!r}) if {THEN_ALSO!r} in args else len(args)\n"
              "rc = run.main(['--workdir', first, *args[:n]])\n"
              f"print({SEP!r}, 'exit', rc, flush=True); print({SEP!r}, file=sys.stderr, flush=True)\n"
              "sys.exit(rc or run.main(['--workdir', second, *args[:n], *args[n + 1:]]))"]


def _start(workdir, devices, *extra, then=None, then_also=()):
    """The CLI on `workdir`; with `then`, the CLI's main on `workdir` and then on `then` (with `then_also` added to
    its arguments) in one process."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
    # One persistent compilation cache for every run of the module: restarts load their executables.
    cache = os.path.join(os.path.dirname(os.path.dirname(str(workdir).rstrip("/"))), "multihost_compile_cache")
    head = [*CLI, "--workdir", str(workdir)] if then is None else [*MAIN_TWICE, str(workdir), str(then)]
    cmd = [*head, *ARGS, f"--config.train.compile_cache_dir={cache}", *extra]
    if then_also:
        cmd += [THEN_ALSO, *then_also]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_pair(workdir, then=None, then_also=()):
    port = _free_port()
    return [_start(workdir, 4, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                   "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}", then=then,
                   then_also=then_also)
            for i in range(2)]


def _split_runs(procs):
    """[(first run's (stdout, stderr), second run's (stdout, stderr)) per process] of a MAIN_TWICE pair, asserting the
    first run exited 0."""
    out = []
    for p, (o, e) in zip(procs, _finish(procs)):
        assert o.count(SEP) == 1 and e.count(SEP) == 1, f"the first run failed (exit {p.returncode}): {e[-3000:]}"
        (o1, o2), (e1, e2) = o.split(SEP), e.split(SEP)
        assert o2.startswith(" exit 0\n"), e1[-3000:]  # the first run's exit status
        out.append(((o1, e1), (o2, e2)))
    return out


def _finish(procs, timeout=240):
    return [p.communicate(timeout=timeout) for p in procs]


def _rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"loss"' in line)


def _signal_after_rows(procs, target, workdir, sig, rows=2):
    """Send `sig` to `target` once process 0 has logged `rows` steps (the run is then mid-way)."""
    deadline = time.time() + 180
    while time.time() < deadline and all(p.poll() is None for p in procs) and _rows(workdir) < rows:
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "a process ended before the signal: " + procs[0].communicate()[1][-2000:]
    target.send_signal(sig)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _checkpoints(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted 2-process run, and one whose process 1 got a SIGTERM (kept unresumed as 'cut0'): one pair
    of processes runs both, one after the other (a pair's start costs more CPU than its 24 steps)."""
    base = tmp_path_factory.mktemp("multihost")
    procs = _start_pair(base / "ref", then=base / "cut")
    _signal_after_rows(procs, procs[1], base / "cut", signal.SIGTERM)
    ref_out, cut_out = zip(*_split_runs(procs))
    shutil.copytree(base / "cut", base / "cut0")
    return dict(base=base, ref_out=ref_out, cut=procs, cut_out=cut_out)


# Weight-update sharding (a mesh key, allowed to change on resume): optimizer state and EMA split over all 8 devices.
SPLIT = ("--config.mesh.shard_update=True", "--config.mesh.fsdp_min_size=1")


@pytest.fixture(scope="module")
def resumed(runs):
    """One pair resumes the SIGTERM'd run on both hosts twice, one after the other: as it was ('cut'), then a copy
    of it with SPLIT ('split')."""
    base = runs["base"]
    shutil.copytree(base / "cut0", base / "split")
    procs = _start_pair(base / "cut", then=base / "split", then_also=SPLIT)
    outs = _split_runs(procs)
    for p, (_, (_, err)) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return dict(base=base)


def test_only_process_zero_prints_progress_and_each_says_which_it_is(runs):
    (out0, _), (out1, _) = runs["ref_out"]
    assert "process 0 of 2 (4 local / 8 global devices, cpu)" in out0
    assert "process 1 of 2 (4 local / 8 global devices, cpu)" in out1
    assert f"step {STEPS}/{STEPS}" in out0 and "eval at step" in out0
    assert "step " not in out1.replace("eval", "") and "eval at step" not in out1


def test_two_processes_of_four_devices_match_one_process_of_eight(runs, tmp_path):
    """The uninterrupted 2 x 4 run against the same config in this test process (8 devices, 1 process)."""
    from jaxgen import config as config_lib
    from jaxgen.tasks import build_and_train

    config = config_lib.load_config(os.path.join(ROOT, ARGS[1]))
    config_lib.apply_overrides(config, [a[len("--config."):].split("=", 1) for a in ARGS[2:]])
    build_and_train(config, str(tmp_path / "single"))
    single, multi = _losses(tmp_path / "single"), _losses(runs["base"] / "ref")
    assert sorted(multi) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([multi[s] for s in multi], [single[s] for s in multi], rtol=1e-5)
    with open(runs["base"] / "ref" / "final_metrics.json") as f:
        assert np.isfinite(json.load(f)["eval/sw2"])


def test_sigterm_to_one_host_stops_every_host_at_the_same_step(runs):
    steps = []
    for p, (_, err) in zip(runs["cut"], runs["cut_out"]):
        assert p.returncode == 143, err[-3000:]
        line = [ln for ln in err.splitlines() if ln.startswith("preempted: checkpoint of step")]
        assert len(line) == 1, err[-3000:]  # each host's own stderr says so
        steps.append(int(line[0].split()[4]))
    assert steps[0] == steps[1] and 2 <= steps[0] < STEPS
    assert _checkpoints(runs["base"] / "cut0")[-1] == steps[0]
    assert max(_losses(runs["base"] / "cut0")) == steps[0]


def test_resume_on_both_hosts_is_bitwise(resumed):
    ref, losses = _losses(resumed["base"] / "ref"), _losses(resumed["base"] / "cut")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in losses] == [ref[s] for s in losses]


def test_weight_update_sharding_across_hosts_saves_and_restores(resumed, capsys):
    """The SIGTERM'd run resumed on both hosts with SPLIT: the replicated checkpoint restores into optimizer state and
    EMA split over both processes' devices, the losses are the reference's, the run ends with a checkpoint each
    process writes its half of, and one process of 8 devices (replicated update) restores that checkpoint."""
    work = resumed["base"] / "split"
    cut_at = _checkpoints(resumed["base"] / "cut0")[-1]
    ref, losses = _losses(resumed["base"] / "ref"), _losses(work)
    np.testing.assert_allclose([losses[s] for s in range(cut_at + 1, STEPS + 1)],
                               [ref[s] for s in range(cut_at + 1, STEPS + 1)], rtol=1e-5)
    assert _checkpoints(work)[-1] == STEPS
    rc, out, err = _main_in_process(work, capsys=capsys)  # evaluates step STEPS, trains none
    assert rc == 0, err[-3000:]
    assert f"eval at step {STEPS}" in out


def _main_in_process(workdir, *extra, capsys):
    """`jaxgen.run.main` in this test process (1 process of the tests' 8 devices): (exit status, stdout, stderr).
    No `train.compile_cache_dir` (an allowed resume change): the session's cache stays this process's."""
    from jaxgen import run

    capsys.readouterr()
    rc = run.main(["--workdir", str(workdir), ARGS[0], os.path.join(ROOT, ARGS[1]), *ARGS[2:], *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_resume_on_one_process(runs, tmp_path, capsys):
    work = tmp_path / "one"
    shutil.copytree(runs["base"] / "cut0", work)
    cut_at = _checkpoints(work)[-1]
    rc, out, err = _main_in_process(work, capsys=capsys)
    assert rc == 0, err[-3000:]
    assert "process 0 of 1 (8 local / 8 global devices, cpu)" in out
    ref, resumed = _losses(runs["base"] / "ref"), _losses(work)
    # One process of 8 devices reduces in another order than 2 x 4: equal up to float32 rounding.
    np.testing.assert_allclose([resumed[s] for s in range(cut_at + 1, STEPS + 1)],
                               [ref[s] for s in range(cut_at + 1, STEPS + 1)], rtol=1e-5)


def test_sigint_checkpoints_the_current_step_and_exits_130(tmp_path, capsys):
    """The CLI's main in this process; a thread sends this process SIGINT once the run's own handler is installed
    and 2 steps are logged (the exit status as a process: tests/test_cli.py's process-boundary test)."""
    steps, work = 100, tmp_path / "run"  # steps: the margin for the signal to land before the end
    with signal_self_when(signal.SIGINT, lambda: _rows(work) >= 2, timeout=240) as sig:
        rc, _, err = _main_in_process(work, f"--config.train.num_steps={steps}", capsys=capsys)
    assert sig.sent.is_set() and not sig.strays, f"the SIGINT missed the run (rc {rc}): {err[-2000:]}"
    assert rc == 130, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted: checkpoint of step")]
    assert len(line) == 1 and "Traceback" not in err, err[-3000:]
    step = int(line[0].split()[4])
    assert 2 <= step < steps and _checkpoints(work)[-1] == step
