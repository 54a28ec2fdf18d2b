"""Where a stage execution comes from: git commit, launching DVC process, dvc.lock hashes.

Pure reads of the workspace and the process table, kept apart from the MLflow calls in
`tracking.campaign` and `tracking.stage` that tag runs with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml

# DVC rewrites its own lock as a campaign runs: that is the campaign's output, not a change
# of the code that produced it, so it must not make the commit dirty (nor change the
# campaign key between two stages of one `dvc repro`).
NOT_SOURCE = ("dvc.lock",)


def git_commit(cwd: str | os.PathLike = ".") -> str:
    """HEAD's sha, with `-dirty` when tracked files other than dvc.lock differ from it.

    '' outside a git repo.
    """

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    excluded = [f":(exclude,top){name}" for name in NOT_SOURCE]
    if sha and git("status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded):
        sha += "-dirty"
    return sha


def dvc_launcher() -> str | None:
    """`pid:start_ticks` of the nearest `dvc` ancestor process (Linux /proc), else None."""
    pid = os.getppid()
    for _ in range(8):
        if pid <= 1:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if any(os.path.basename(a.decode(errors="replace")) == "dvc" for a in argv[:3]):
            return f"{pid}:{fields[19]}"  # proc(5) field 22, start time: a reused pid differs
        pid = int(fields[1])
    return None


def campaign_key(params_file: str | os.PathLike = "params.yaml") -> str:
    """Key shared by the stages of one campaign started without a parent run id.

    Hash of: git commit, `DVC_EXP_NAME`, the bytes of params.yaml and the `dvc` process that
    launched the stage (pid + start time). So one `dvc repro` or `dvc exp run` is one campaign;
    stages run by hand (no dvc ancestor, or no /proc) share the campaign of the same commit,
    experiment name and params.
    """
    p = Path(params_file)
    blob = [
        git_commit(),
        os.environ.get("DVC_EXP_NAME", ""),
        hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        dvc_launcher() or "",
    ]
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:16]


def lock_outs(lock_file: str | os.PathLike = "dvc.lock") -> dict[str, dict[str, str]]:
    """`{stage address: {out path: md5}}` as recorded in dvc.lock ({} if there is none).

    DVC writes a stage's entry only after the stage succeeded, so these are final hashes.
    """
    path = Path(lock_file)
    if not path.is_file():
        return {}
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return {
        address: {o["path"]: o.get("md5", "") for o in entry.get("outs") or []}
        for address, entry in stages.items()
    }
