"""The study's tables read what `dvc exp show --json` reports of each finished experiment."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exsearch.config.params import parse_params
from exsearch.data import write_trajectories
from exsearch.schema import Trajectory
from flows.study import (
    SETTINGS,
    STUDY_OVERRIDES,
    diff_table,
    evidence_table,
    hops_table,
    parse_experiments,
    queue_commands,
    study_table,
)

ROOT = Path(__file__).resolve().parents[1]


def interval(diff, lo, hi):
    return {"diff": diff, "lo": lo, "hi": hi}


def shown():
    """`dvc exp show --json` of one commit with a finished and a failed study experiment."""
    report = {
        "iter_0": {"n": 520, "f1": 24.0, "em": 18.0, "agent_vs_rag": {"f1": interval(2, -1, 5)}},
        "iter_2": {
            "n": 520,
            "f1": 28.5,
            "em": 21.0,
            "vs_iter_0": {"f1": interval(4.5, 1.2, 7.8), "support_recall": interval(0.5, -1, 2)},
            "agent_vs_rag": {"f1": interval(3.0, 0.4, 5.6)},
            "agent_vs_rag_sft": {"f1": interval(-1.0, -3.5, 1.5)},
        },
    }
    weights = {
        "sampled_em": 0.125,
        "questions_with_a_correct_sample": 0.25,
        "ess_mean": 3.5,
        "support_recall_mean": 0.55,
        "evidence_share_differing": 0.25,
        "evidence_spearman_within": 0.5,
        "evidence_spearman_pooled": float("nan"),
        "evidence_auc_correct": 0.731,
        "entropy_mean": 1.3,
    }
    finished = {
        "name": "study-filter",
        "data": {
            "metrics": {
                "reports/metrics.json": {"data": report},
                "runs/iter_1/weight_stats.json": {"data": weights},
                "runs/iter_2/weight_stats.json": {"data": {**weights, "sampled_em": 0.2}},
                "runs/iter_2/metrics.json": {
                    "data": {
                        "overall": {"finish_reasons": {"final": 400, "length": 120}},
                        "behaviour": {
                            "by_hops": {
                                "2": {
                                    "n": 400,
                                    "searches_per_question": 1.25,
                                    "support_recall": 61.5,
                                    "new_support_share": 0.125,
                                },
                                "3": {
                                    "n": 120,
                                    "searches_per_question": 1.0,
                                    "support_recall": 40.0,
                                },
                            }
                        },
                    }
                },
            }
        },
    }
    failed = {"name": "study-exp", "data": {"metrics": {}}}
    return [
        {"rev": "workspace", "experiments": None},
        {"rev": "abc", "experiments": [{"revs": [finished]}, {"revs": [failed]}]},
    ]


def test_only_finished_study_experiments_are_read():
    rows = parse_experiments(shown())
    assert [r["name"] for r in rows] == ["filter"]
    assert "runs/iter_2/weight_stats.json" in rows[0]["files"]


def test_the_table_gives_f1_per_checkpoint_and_the_last_gains_with_intervals():
    table = study_table(parse_experiments(shown()))
    assert (
        "| last − iter-RAG ΔF1 | last − RAG-SFT ΔF1 | last − iter_0 Δsupport recall | n |" in table
    )
    # iter_rag was not scored in this experiment: its cell says so instead of a number
    gains = "+4.5 [+1.2, +7.8] | +3.0 [+0.4, +5.6] | – | -1.0 [-3.5, +1.5] | +0.5 [-1.0, +2.0]"
    assert f"| filter | 24.0 | 28.5 | {gains} | 520 |" in table


def test_the_evidence_shows_each_iterations_e_step_and_finish_reasons():
    table = evidence_table(parse_experiments(shown()))
    # no searches logged, no pooled correlation (NaN): both show as –
    evidence = "55.0 | – | – | 25.0 | 0.50 | – | 0.73"
    assert f"| filter | iter_1 | 12.5 | 25.0 | 1.30 | 3.50 | {evidence} | – |" in table
    assert (
        f"| filter | iter_2 | 20.0 | 25.0 | 1.30 | 3.50 | {evidence} | final 400, length 120 |"
        in table
    )


def test_every_setting_is_queued_with_the_study_overrides_and_its_own():
    (cmd,) = queue_commands(["filter"])
    assert cmd[:5] == ["dvc", "exp", "run", "--queue", "--name"] and cmd[5] == "study-filter"
    assert "weigh.scheme=filter" in cmd and "evaluate.datasets=[hotpotqa,2wiki,musique]" in cmd


def test_the_hops_table_shows_how_each_checkpoint_searched_per_hop_count():
    table = hops_table(parse_experiments(shown()))
    assert "| filter | iter_2 | 2 | 400 | 1.25 | 61.5 | 12.5 |" in table
    assert "| filter | iter_2 | 3 | 120 | 1.00 | 40.0 | – |" in table  # no later search


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_overrides_real_keys_with_valid_values(name, tmp_path):
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(str(params), [*STUDY_OVERRIDES, *SETTINGS[name]])  # as `dvc exp run -S`
    raw = yaml.safe_load(params.read_text())
    for override in (*STUDY_OVERRIDES, *SETTINGS[name]):
        key = override.split("=", 1)[0].lstrip("+")
        section = raw
        for part in key.split("."):
            assert part in section, f"{name}: {key} is not in the overridden params"
            section = section[part]
    parse_params(raw)  # raises on a wrong type or an out-of-range value


# --- diff: one setting's checkpoint against another's, from DVC's cache -------------------------


def answered(qid: str, prediction: str, method: str = "agent") -> Trajectory:
    return Trajectory(
        qid=qid, prediction=prediction, answers=["red car"], method=method, messages=[]
    )


def commit_campaign(repo: Path, predictions: list[Trajectory], ref: str | None = None) -> None:
    """Commit a dvc.lock naming runs/iter_2/predictions.jsonl, its content in DVC's cache.

    With `ref`, the commit is also stored as that experiment ref (as `dvc exp run` does).
    """
    tmp = repo / "predictions.jsonl"
    write_trajectories(tmp, predictions)
    md5 = hashlib.md5(tmp.read_bytes()).hexdigest()
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(cached)
    out = {"path": "runs/iter_2/predictions.jsonl", "hash": "md5", "md5": md5}
    lock = {"schema": "2.0", "stages": {"evaluate@iter_2": {"cmd": "x", "outs": [out]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "dvc.lock"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "campaign"], cwd=repo, check=True)
    if ref:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["git", "update-ref", ref, sha], cwd=repo, check=True)
        subprocess.run(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=repo, check=True)


def test_a_setting_is_diffed_against_the_committed_campaign_question_by_question(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    default = [answered("q1", "nothing"), answered("q2", "red"), answered("q1", "red car", "rag")]
    commit_campaign(tmp_path, default)
    lever = [answered("q2", "red car"), answered("q1", "red car"), answered("q1", "red car", "rag")]
    commit_campaign(tmp_path, lever, ref="refs/exps/ab/cdef/study-t1.0")
    table = diff_table(tmp_path, "t1.0", "HEAD", "iter_2")
    assert table.startswith("t1.0 − HEAD at iter_2:")
    # agent: q1 0 → 100 EM, q2 0 → 100 EM; rag is the same answer on both sides.
    assert "| agent | " in table and "| +100.0 [+100.0, +100.0] | " in table
    assert "| rag | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | – | 1 |" in table


def test_a_diff_names_what_it_cannot_find(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    commit_campaign(tmp_path, [answered("q1", "red")])
    with pytest.raises(ValueError, match="neither a study experiment .*study-k8.* nor a git rev"):
        diff_table(tmp_path, "k8", "HEAD", "iter_2")
    with pytest.raises(ValueError, match="records no output runs/iter_1/predictions.jsonl"):
        diff_table(tmp_path, "HEAD", "HEAD", "iter_1")
