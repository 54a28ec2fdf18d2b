"""The campaign's stages in run order, read from DVC itself (dvc.yaml + params), never hard-coded.

Stage addresses are DVC's: `prepare`, `sample@iter_1`, ... Order: topological, ties broken by
iteration number and then by position in dvc.yaml, so a campaign reads prepare → index →
init_model → evaluate@iter_0 → sample@iter_1 → … → evaluate@iter_1 → sample@iter_2 → … → report.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from exsearch.config import checkpoint_step


@dataclass(frozen=True)
class StageInfo:
    """One DVC pipeline stage: its address, iteration (None outside foreach groups), upstreams."""

    address: str
    iteration: str | None
    upstream: tuple[str, ...]


def iteration_of(address: str) -> str | None:
    """`train@iter_2` → `iter_2`; None for a stage outside a foreach group."""
    return address.rpartition("@")[2] if "@" in address else None


def iteration_number(iteration: str | None) -> int:
    """Ordering key: `iter_3` → 3 (`checkpoint_step`); -1 for `base`, None or any other name."""
    try:
        return checkpoint_step(iteration or "base")
    except ValueError:
        return -1


def read_stages(root: str | os.PathLike = ".") -> list[StageInfo]:
    """All pipeline stages of the DVC project at `root`, in run order."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    # Addresses are relative to the cwd: read them from the root, like `dvc repro` there.
    with contextlib.chdir(root), Repo(".") as repo:
        # DVC's graph points from a stage to the stages it depends on.
        graph = repo.index.graph
        stages = [s for s in graph if isinstance(s, PipelineStage)]
        position = {s: i for i, s in enumerate(repo.index.stages)}
        upstream = {
            s: tuple(sorted(u.addressing for u in graph.successors(s) if u in stages))
            for s in stages
        }
        dag = graph.subgraph(stages).reverse()
        order = nx.lexicographical_topological_sort(
            dag,
            key=lambda s: (iteration_number(iteration_of(s.addressing)), position[s]),
        )
        return [StageInfo(s.addressing, iteration_of(s.addressing), upstream[s]) for s in order]


def select(stages: list[StageInfo], iterations: list[str] | None) -> list[StageInfo]:
    """The stages of `iterations` and everything upstream of them (all stages if None)."""
    if not iterations:
        return stages
    known = {s.iteration for s in stages if s.iteration}
    if unknown := sorted(set(iterations) - known):
        raise ValueError(
            f"iterations {unknown} are not in dvc.yaml's foreach groups (known: {sorted(known)}); "
            "add them to params.yaml em.iters"
        )
    by_address = {s.address: s for s in stages}
    wanted = {s.address for s in stages if s.iteration in iterations}
    todo = list(wanted)
    while todo:
        for up in by_address[todo.pop()].upstream:
            if up not in wanted:
                wanted.add(up)
                todo.append(up)
    return [s for s in stages if s.address in wanted]


def stale(root: str | os.PathLike, stages: list[StageInfo]) -> list[str]:
    """Addresses of `stages` that `dvc repro` would run now: changed ones and all downstream.

    `dvc status` reports only stages whose own deps/outs/params changed; a stage downstream of
    a changed one will change too once its upstream runs, so it is stale as well.
    """
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        changed = set(repo.status(targets=[s.address for s in stages]))
    out: list[str] = []
    for s in stages:  # run order: upstreams come first
        if s.address in changed or any(u in out for u in s.upstream):
            out.append(s.address)
    return out


def project_root(start: str | os.PathLike = ".") -> Path:
    """The nearest directory at or above `start` holding dvc.yaml."""
    here = Path(start).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file():
            return d
    raise FileNotFoundError(f"no dvc.yaml in {here} or above: run from the project directory")
