"""Atomic writes: an output is whole or absent, and what a killed writer left is cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exsearch import files


def test_a_failed_block_leaves_neither_output_nor_temp(tmp_path):
    out = tmp_path / "weights.json"
    with pytest.raises(RuntimeError), files.atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    out = tmp_path / "model"
    writer = textwrap.dedent(
        f"""
        import os, signal, sys
        from exsearch import files
        with files.atomic_path({str(out)!r}, is_dir=True) as tmp:
            (tmp / "weights.bin").write_bytes(b"x" * 1000)
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL and "written" in run.stdout
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert len(left) == 1 and not out.exists()  # what kill -9 leaves behind
    with files.atomic_path(out, is_dir=True) as tmp:
        (tmp / "weights.bin").write_bytes(b"y")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_temp_of_a_writer_still_running_is_left_alone(tmp_path):
    out = tmp_path / "trajectories.jsonl"
    live = tmp_path / f".trajectories.jsonl.{os.getppid()}.abc123"
    dead = tmp_path / ".trajectories.jsonl.999999999.def456"  # beyond any pid_max
    other = tmp_path / ".trajectories.jsonl.gz.1.xyz"  # another output's temp
    for d in (live, dead, other):
        d.mkdir()
    files.write_jsonl(out, [{"a": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, out.name])
    assert Path(out).read_text() == '{"a": 1}\n'
