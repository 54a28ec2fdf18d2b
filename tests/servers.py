"""Local servers the tests start: a free port, waiting for one to answer, stopping it.

Each server runs in its own session (`start_new_session=True`), so `stop` ends it with its
children (uvicorn workers, Prefect's services).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Return once `url` answers; fail if `proc` exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.5)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End `proc`'s session with `sig`, then SIGKILL if it has not ended within 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
