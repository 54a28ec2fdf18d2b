"""dvc.lock is committed in step with the code and params that produced the README's numbers.

On a clean clone `dvc status` may report outputs that are not in the cache (they are not
committed), never a changed code dep, a changed param or a changed command: those would mean
the lock, and so the README's results, describe another pipeline than the one checked in.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]


def stage_outputs() -> set[str]:
    """Every path some stage of dvc.lock writes: a dep among them may be missing, not stale."""
    stages = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    return {out["path"] for entry in stages.values() for out in entry.get("outs") or []}


def stale_entries(status: dict, outputs: set[str]) -> dict[str, list[str]]:
    """`{stage: [what changed]}` for changes that are not just outputs missing from the cache."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                if entry != "always changed":
                    stale.setdefault(stage, []).append(entry)
                continue
            for path, change in (entry.get("changed deps") or {}).items():
                if isinstance(change, dict):  # a params file: {key: new|modified|deleted}
                    stale.setdefault(stage, []).extend(f"{path}:{k} {v}" for k, v in change.items())
                elif not (change == "deleted" or path in outputs):
                    stale.setdefault(stage, []).append(f"{path} {change}")
    return stale


def test_a_stage_changed_by_code_or_params_is_stale_a_missing_output_is_not():
    status = {
        "train@iter_1": [{"changed deps": {"runs/iter_1/weights.parquet": "deleted"}}],
        "evaluate@iter_1": [{"changed outs": {"runs/iter_1/metrics.json": "deleted"}}],
        "warmup": [{"changed deps": {"exsearch/agent/loop.py": "modified"}}],
        "weigh@iter_1": [{"changed deps": {"params.yaml": {"weigh.scheme": "modified"}}}],
        "report": ["changed command"],
    }
    assert stale_entries(status, {"runs/iter_1/weights.parquet"}) == {
        "warmup": ["exsearch/agent/loop.py modified"],
        "weigh@iter_1": ["params.yaml:weigh.scheme modified"],
        "report": ["changed command"],
    }


def test_the_committed_dvc_lock_matches_the_code_and_params_checked_in():
    stale = stale_entries(Repo(str(ROOT)).status(), stage_outputs())
    assert not stale, (
        "dvc.lock describes other code or params than the checkout: rerun the campaign "
        f"(`make run`) and commit its dvc.lock with the README's numbers. Stale: {stale}"
    )


def mismatched_links(lock: dict) -> list[str]:
    """Deps whose md5 differs from the one the stage that writes them records for that output.

    Such a lock describes two runs at once: the producer was re-run after the consumer, so the
    consumer's outputs were made from an input the lock no longer names (`dvc status` on the
    campaign's workspace shows the consumer stale; on a clean clone, where outputs are missing,
    it cannot).
    """
    stages = lock["stages"]
    written = {o["path"]: o.get("md5") for s in stages.values() for o in s.get("outs") or []}
    return [
        f"{name}: {d['path']}"
        for name, s in stages.items()
        for d in s.get("deps") or []
        if d["path"] in written and d.get("md5") != written[d["path"]]
    ]


def test_a_dep_recorded_with_another_md5_than_its_producer_wrote_is_found():
    lock = {
        "stages": {
            "train": {"outs": [{"path": "stats.json", "md5": "new"}]},
            "rag_sft": {"deps": [{"path": "stats.json", "md5": "old"}]},
            "report": {"deps": [{"path": "stats.json", "md5": "new"}]},
        }
    }
    assert mismatched_links(lock) == ["rag_sft: stats.json"]


def test_every_stage_of_the_lock_read_what_its_producers_last_wrote():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))
    assert not mismatched_links(lock), (
        "dvc.lock links stages of different runs: `dvc repro` the stale consumers "
        f"{mismatched_links(lock)} in the campaign's workspace and commit its dvc.lock"
    )
