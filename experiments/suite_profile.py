"""Where the test suite's time goes, per test: a pytest plugin reading jax's own compile events.

    python -m pytest -q -n 2 -p experiments.suite_profile            # the README's test command, profiled
    python -m experiments.suite_profile [DIR]                        # the table again from the saved files

Each test process (each pytest-xdist worker) writes DIR/suite_profile.<pid>.json (DIR: $JAXGEN_SUITE_PROFILE or
/tmp/jaxgen-suite-profile): per test its wall time, the process's CPU time, and the seconds jax reports for tracing
(`/jax/core/compile/jaxpr_trace_duration`), lowering to MLIR (`.../jaxpr_to_mlir_module_duration`) and XLA's
backend compile (`.../backend_compile_duration`, wall time: XLA:CPU compiles on a thread pool while the caller
waits), with the persistent compilation cache's hits and misses. At the end of the session the table of the
slowest tests and the totals is printed. Execution (XLA's own threads), orbax's checkpoint threads and the
subprocesses a test starts are in the wall and CPU columns only.

jax is imported in `pytest_configure`, after tests/conftest.py has set the environment it reads at import (the
compilation cache directory, XLA's flags): a plugin importing jax at load time would run the suite without them.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time

DEFAULT_DIR = "/tmp/jaxgen-suite-profile"
EVENTS = {"jaxpr_trace_duration": "trace", "jaxpr_to_mlir_module_duration": "lower",
          "backend_compile_duration": "compile"}
_current = ["(collection)"]
_per_test: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _directory() -> str:
    return os.environ.get("JAXGEN_SUITE_PROFILE", DEFAULT_DIR)


def _on_event(name, **_):
    if name.endswith("/cache_hits"):
        _per_test[_current[0]]["cache_hits"] += 1
    elif name.endswith("/cache_misses"):
        _per_test[_current[0]]["cache_misses"] += 1


def _on_duration(name, secs, **_):
    key = EVENTS.get(name.rsplit("/", 1)[-1])
    if key:
        _per_test[_current[0]][key] += secs
        _per_test[_current[0]][key + "_count"] += 1


def pytest_configure(config):
    from jax._src import monitoring  # after the conftest's environment (see the module docstring)

    monitoring.register_event_listener(_on_event)
    monitoring.register_event_duration_secs_listener(_on_duration)
    if not hasattr(config, "workerinput"):  # the controller: a fresh directory for this session's files
        os.makedirs(_directory(), exist_ok=True)  # local
        for old in glob.glob(os.path.join(_directory(), "suite_profile.*.json")):  # local
            os.remove(old)  # local


def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    _per_test[item.nodeid]["wall"] -= time.perf_counter()
    _per_test[item.nodeid]["cpu"] -= time.process_time()


def pytest_runtest_logfinish(nodeid, location):
    if _current[0] != nodeid:  # the xdist controller: it sees every worker's reports but runs no test
        return
    _per_test[nodeid]["wall"] += time.perf_counter()
    _per_test[nodeid]["cpu"] += time.process_time()
    _current[0] = "(between tests)"


def pytest_sessionfinish(session):
    if _per_test and any("wall" in t for t in _per_test.values()):  # a process that ran tests
        with open(os.path.join(_directory(), f"suite_profile.{os.getpid()}.json"), "w") as f:  # local
            json.dump({k: dict(v) for k, v in _per_test.items()}, f)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(table(_directory()))


def table(directory: str, top: int = 25) -> str:
    """The slowest `top` tests and the totals over every process's file in `directory`."""
    tests: dict[str, dict] = {}
    for path in glob.glob(os.path.join(directory, "suite_profile.*.json")):  # local
        with open(path) as f:  # local
            tests.update(json.load(f))
    if not tests:
        return f"suite_profile: no files in {directory}"
    cols = ("wall", "cpu", "trace", "lower", "compile", "compile_count", "cache_hits")
    total = {c: sum(t.get(c, 0) for t in tests.values()) for c in cols}
    lines = [f"{'wall s':>7} {'cpu s':>7} {'trace':>6} {'lower':>6} {'compile':>7} {'n':>5} {'hits':>5}  test"]
    fmt = lambda r, name: (f"{r.get('wall', 0):7.1f} {r.get('cpu', 0):7.1f} {r.get('trace', 0):6.1f} "  # noqa: E731
                           f"{r.get('lower', 0):6.1f} {r.get('compile', 0):7.1f} {int(r.get('compile_count', 0)):5d} "
                           f"{int(r.get('cache_hits', 0)):5d}  {name}")
    for name, r in sorted(tests.items(), key=lambda kv: -kv[1].get("wall", 0))[:top]:
        lines.append(fmt(r, name))
    lines.append(fmt(total, f"total over {len(tests)} entries (tests, collection, between tests)"))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else _directory()))
