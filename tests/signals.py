"""Signal this test process from a thread while the code under test runs in the main thread (where Python
delivers signals and where `jaxgen.train.loop` installs its handlers)."""

import contextlib
import os
import signal
import threading
import time
from types import SimpleNamespace


@contextlib.contextmanager
def signal_self_when(sig: int, ready=lambda: True, timeout: float = 300):
    """Within the block, send this process `sig` once the code under test has installed its own handler for it
    and `ready()` holds (polled). Yields a record: `.sent` (a threading.Event), `.strays` (signals that arrived
    while only this helper's handler was installed: the run had already ended, so they missed it; they are
    recorded instead of ending the test session)."""
    assert threading.current_thread() is threading.main_thread(), "the run's signal handlers need the main thread"
    record = SimpleNamespace(sent=threading.Event(), strays=[])
    previous = signal.signal(sig, lambda signum, frame: record.strays.append(signum))
    ours = signal.getsignal(sig)

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if signal.getsignal(sig) is not ours and ready():
                os.kill(os.getpid(), sig)
                record.sent.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield record
        watcher.join(timeout=10)
    finally:
        signal.signal(sig, previous)
