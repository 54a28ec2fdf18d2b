"""Trajectory files: one `Trajectory` per JSONL line, as the agent and the warm-up write them.

runs/warmup/trajectories.jsonl, runs/<iteration>/trajectories.jsonl (and its shards) and
runs/<iteration>/predictions.jsonl are all read and written here, so every reader gets the
typed record and every file keeps one key order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from exsearch.files import read_jsonl, write_jsonl
from exsearch.schema import Trajectory


def read_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """Read a trajectory file, in file order.

    Raises:
        ValueError: a line is not JSON or not UTF-8, or a record lacks `qid` or `messages`,
            naming the file and the line or record.
    """
    out = []
    for i, d in enumerate(read_jsonl(path), 1):
        try:
            out.append(Trajectory.from_dict(d))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}: record {i} is not a trajectory ({type(e).__name__}: {e}); "
                "a trajectory needs at least 'qid' and 'messages'"
            ) from e
    return out


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> int:
    """Write trajectories atomically, one per line, for `read_trajectories`; return how many."""
    return write_jsonl(path, (t.to_dict() for t in trajectories))
