"""Headless Chromium for the tests that check what a browser shows (`apt-get install chromium`).

`CHROMIUM` is None where none is installed; tests that need it skip with `NEEDS_CHROMIUM`.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
)


def chromium(url: str, *args: str, offline: bool = False) -> str:
    """Headless Chromium on `url`, its stdout (`--dump-dom`, `--screenshot=…` among `args`).

    The page gets 30 s of its own time for its requests and scripts; `offline` makes every
    host name fail to resolve, so a page that needs the network shows it.
    """
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1800,900"]
    if offline:
        cmd.append("--host-resolver-rules=MAP * ~NOTFOUND")
    done = subprocess.run(
        [*cmd, "--virtual-time-budget=30000", *args, url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.stdout
