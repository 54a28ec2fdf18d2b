"""The study: a grid of DVC experiments over what plausibly decides whether EM helps.

    exsearch study queue       # one `dvc exp run --queue` per setting (named study-*)
    dvc queue start -j 1       # run them; the warm-up comes from DVC's cache after the first
    exsearch study table       # the F1 per iteration of each finished setting, with intervals

Every setting runs the same campaign as params.yaml with a few overrides (`SETTINGS`), all of
them scored on every dev set of `prepare.dev` (HotpotQA, 2Wiki and MuSiQue; `STUDY_OVERRIDES`)
with the agent and the RAG and iter-RAG baselines (and rag_sft, which dvc.yaml always runs).
Settings that do not touch the warm-up's inputs share iter_0 and its evaluation through DVC's
run cache, so each costs only its EM iterations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exsearch.config import checkpoint_step
from exsearch.evaluation import format_interval
from exsearch.report import WEIGHT_COLUMNS, stat_cell

PREFIX = "study-"

# Applied to every setting: the two EM iterations of params.yaml, iter_0 and the last one scored
# on every dev set (520 questions) with the agent and its RAG baseline. `base` is left out (the
# same model in every setting) and so is iter_1, which would add a third of each setting's cost;
# `-S em.evaluate=[iter_0,iter_1,iter_2]` on a finished experiment adds it (the rest is cached).
STUDY_OVERRIDES = (
    "em.evaluate=[iter_0,iter_2]",
    "evaluate.datasets=[hotpotqa,2wiki,musique]",
    "evaluate.methods=[agent,rag,iter_rag]",
)

# Setting name → its overrides of params.yaml (`dvc exp run -S` syntax), in the order they are
# queued (most telling first).
GRPO = ("train.method=grpo", "weigh.advantage=grpo")
# 8 iterations of 8 questions: the chain grown to iter_8 and its end scored instead of iter_2.
EIGHT_BY_EIGHT = (
    "sample.questions=8",
    *(f"+em.iters.iter_{i}={{prev:iter_{i - 1}}}" for i in range(3, 9)),
    "em.evaluate=[iter_0,iter_8]",
)
# Budget forcing at the E-step, and an M-step that leaves out the samples that broke the format.
SEARCH2_WF = ("sample.min_searches=2", "train.weighted.well_formed_only=true")
GRPO_SETTINGS: dict[str, tuple[str, ...]] = {
    "grpo": GRPO,
    "grpo-seed1": (*GRPO, "sample.seed=1"),
    "grpo-8x8": (*GRPO, *EIGHT_BY_EIGHT),
    "grpo-8x8-seed1": (*GRPO, *EIGHT_BY_EIGHT, "sample.seed=1"),
    "dr-grpo": ("train.method=grpo", "weigh.advantage=dr_grpo"),
}

SETTINGS: dict[str, tuple[str, ...]] = {
    "exp": ("weigh.scheme=exp",),  # params.yaml's default since the first study
    # A second seed for all that follows the warm-up: the questions each iteration draws and
    # the samples (so the M-steps' data). iter_0 and its scores are shared with `exp`, which
    # `train.seed` would undo: the warm-up trains with the `train` settings.
    "exp-seed1": ("weigh.scheme=exp", "sample.seed=1"),
    "exp-seed2": ("weigh.scheme=exp", "sample.seed=2"),
    # Levers that could make searching pay (does it learn to search? docs/study.md): samples
    # that differ in what they find, a score that depends on it, the format kept, a setting
    # where one search cannot suffice, and the selection action.
    "records-score": ("sample.score=records",),
    "search2": ("sample.min_searches=2",),
    # budget forcing, and the M-step leaves out the samples that broke the format; a second
    # seed because it is the one lever that moved support recall (docs/study.md)
    "search2-wf": SEARCH2_WF,
    "search2-wf-seed1": (*SEARCH2_WF, "sample.seed=1"),
    # ... and a longer context budget: run, and every output is search2-wf's (the longest prompt
    # is 1,364 tokens; its `length` endings are turns cut at agent.max_new_tokens, docs/study.md).
    # The warm-up does not read it, so iter_0 is shared.
    "search2-wf-ctx3k": (*SEARCH2_WF, "agent.max_context_tokens=3072"),
    "well-formed": ("train.weighted.well_formed_only=true",),
    "first-hop": ("warmup.first_search=hop",),
    "select10": ("agent.select_from=10",),
    "top2": ("agent.top_k=2",),
    "softmax": ("weigh.scheme=softmax",),
    "filter": ("weigh.scheme=filter",),
    "uniform": ("weigh.scheme=uniform",),
    "q64": ("sample.questions=64",),
    "replay16": ("train.replay=16",),
    "from-warmup": ("train.start_from=warmup",),
    "f1": ("weigh.scheme=f1",),
    "t1.0": ("sample.temperature=1.0",),
    "k8": ("sample.k=8",),
    "turn64": ("agent.max_new_tokens=64",),
    # EM against RL (docs/study.md, "EM or RL?"): GRPO from the same iter_0 with the same
    # samples, as 2 iterations of 32 questions and as 8 of 8 (the same 256 samples); two seeds.
    **GRPO_SETTINGS,
}


def queue_commands(names: Sequence[str] | None = None) -> list[list[str]]:
    """The `dvc exp run --queue` command of each setting in `names` (all if None)."""
    unknown = sorted(set(names or ()) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown study settings {unknown}; known: {sorted(SETTINGS)}")
    cmds = []
    for name in names or SETTINGS:
        sets = [a for o in (*STUDY_OVERRIDES, *SETTINGS[name]) for a in ("-S", o)]
        cmds.append(["dvc", "exp", "run", "--queue", "--name", PREFIX + name, *sets])
    return cmds


def queue(names: Sequence[str] | None = None, root: str | Path = ".") -> None:
    """Queue the settings as DVC experiments (run them with `dvc queue start -j 1`)."""
    for cmd in queue_commands(names):
        print("$", " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", *cmd], cwd=root, check=True)


def experiments(root: str | Path = ".") -> list[dict[str, Any]]:
    """Every finished study experiment of the repository at `root` (`parse_experiments`)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_experiments(json.loads(out))


def parse_experiments(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Study experiments in `dvc exp show --json`: name, reports/metrics.json, metrics files.

    The files (by path) hold the evidence of each iteration: runs/iter_k/weight_stats.json (sampled
    accuracy, weight entropy, effective sample size) and runs/<checkpoint>/metrics.json (finish
    reasons). Experiments without a report (failed or queued) are left out.
    """
    found = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or ""
                data = rev.get("data") or {}
                files = {
                    path: entry.get("data") or {}
                    for path, entry in (data.get("metrics") or {}).items()
                }
                metrics = files.get("reports/metrics.json")
                if name.startswith(PREFIX) and metrics:
                    found.append(
                        {"name": name.removeprefix(PREFIX), "metrics": metrics, "files": files}
                    )
    return found


def _cell(c: Mapping[str, Any] | None) -> str:
    return format_interval(c) if c else "–"


def study_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per setting: agent F1 per checkpoint, and n.

    Also the last iteration's F1 gain over iter_0 and over each baseline, and its support-recall
    gain over iter_0 (does it search better?), with 95% intervals.
    """
    checkpoints = sorted({c for r in rows for c in r["metrics"]}, key=checkpoint_step)
    head = [
        "setting",
        *[f"F1 {c}" for c in checkpoints],
        "last − iter_0 ΔF1",
        *[f"last − {label} ΔF1" for label in BASELINE_LABELS.values()],
        "last − iter_0 Δsupport recall",
        "n",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        last = max((c for c in m if c != "base"), key=checkpoint_step)
        f1s = [f"{m[c]['f1']:.1f}" if c in m else "–" for c in checkpoints]
        gains = [_cell(m[last].get(k, {}).get("f1")) for k in ("vs_iter_0", *BASELINE_LABELS)]
        gains.append(_cell(m[last].get("vs_iter_0", {}).get("support_recall")))
        lines.append(f"| {r['name']} | " + " | ".join([*f1s, *gains, str(m[last]["n"])]) + " |")
    return "\n".join(lines) + "\n"


# The report's comparisons of the agent with each baseline (exsearch.report.BASELINES).
BASELINE_LABELS = {
    "agent_vs_rag": "RAG",
    "agent_vs_iter_rag": "iter-RAG",
    "agent_vs_rag_sft": "RAG-SFT",
}


def evidence_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per setting and EM iteration: what the E-step saw and how the agent then ended.

    Sampled EM and the share of questions with at least one correct sample (%), the mean
    per-question weight entropy and effective sample size (out of K); what the samples found
    and whether the score follows it (exsearch.estep.evidence: mean support recall, the share of
    questions whose samples differ in it, the score's rank correlation with it within questions
    and pooled, the score's AUC for right answers); and the finish reasons of that iteration's
    checkpoint on the dev sets (when it was evaluated).
    """
    head = ["setting", "iteration", *[c[0] for c in WEIGHT_COLUMNS], "dev finish reasons"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        files = r.get("files") or {}
        iterations = sorted(
            (p.split("/")[1] for p in files if p.endswith("/weight_stats.json")),
            key=checkpoint_step,
        )
        for it in iterations:
            stats = files[f"runs/{it}/weight_stats.json"]
            cells = [
                stat_cell(stats.get(key), scale, decimals)
                for _, key, scale, decimals in WEIGHT_COLUMNS
            ]
            reasons = (files.get(f"runs/{it}/metrics.json") or {}).get("overall", {})
            finish = reasons.get("finish_reasons") or {}
            shown = ", ".join(f"{k} {v}" for k, v in sorted(finish.items(), key=lambda kv: -kv[1]))
            lines.append(f"| {r['name']} | {it} | " + " | ".join(cells) + f" | {shown or '–'} |")
    return "\n".join(lines) + "\n"


def hops_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per setting, checkpoint and hop count: how that checkpoint's agent searched.

    Searches per question, supporting-passage recall (%) and the share of later searches that
    brought a supporting passage not seen before (exsearch.evaluation.behaviour), read from each
    evaluated checkpoint's metrics.json.
    """
    head = ["setting", "checkpoint", "hops", "n", "searches", "support recall", "new support"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        files = r.get("files") or {}
        evaluated = sorted(
            (p.split("/")[1] for p in files if p.endswith("/metrics.json") and p.count("/") == 2),
            key=checkpoint_step,
        )
        for ckpt in evaluated:
            by_hops = (files[f"runs/{ckpt}/metrics.json"].get("behaviour") or {}).get("by_hops", {})
            for hops, g in by_hops.items():
                cells = [
                    str(g["n"]),
                    stat_cell(g.get("searches_per_question"), 1.0, 2),
                    stat_cell(g.get("support_recall"), 1.0, 1),
                    stat_cell(g.get("new_support_share"), 100.0, 1),
                ]
                lines.append(f"| {r['name']} | {ckpt} | {hops} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The methods a checkpoint's predictions.jsonl can hold, in the order the diff lists them.
DIFF_METHODS = ("agent", "rag", "iter_rag", "oracle", "direct")


def _git(root: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def experiment_rev(root: str | Path, name: str) -> str:
    """The commit of study setting `name` (its `refs/exps/…/study-<name>`), else of revision `name`.

    Raises:
        ValueError: neither a study experiment nor a git revision is called so.
    """
    for line in _git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").split(
        "\n"
    ):
        if line and line.rsplit("/", 1)[-1] == PREFIX + name:
            return line.split()[0]
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        raise ValueError(
            f"{name!r} is neither a study experiment ({PREFIX}{name}) nor a git revision"
        ) from None


def locked_md5(root: str | Path, rev: str, path: str) -> str:
    """The md5 that the dvc.lock of commit `rev` records for output `path`."""
    import yaml

    lock = yaml.safe_load(_git(root, "show", f"{rev}:dvc.lock"))
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path:
                return out["md5"]
    raise ValueError(f"the dvc.lock of {rev[:8]} records no output {path}")


def cached_predictions(root: str | Path, rev: str, checkpoint: str) -> list:
    """A checkpoint's prediction records as commit `rev` ran them, read from DVC's cache.

    An experiment's workspace is gone once DVC commits it; its outputs stay in the cache
    (every output of dvc.yaml is cached), named by the md5 its dvc.lock records.
    """
    from exsearch.data import read_trajectories

    path = f"runs/{checkpoint}/predictions.jsonl"
    md5 = locked_md5(root, rev, path)
    cached = Path(root) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not cached.is_file():
        raise ValueError(f"{path} of {rev[:8]} (md5 {md5}) is not in DVC's cache here")
    return read_trajectories(cached)


def diff_table(root: str | Path, name: str, against: str, checkpoint: str) -> str:
    """Setting `name` minus `against` at `checkpoint`: per method, F1/EM/support recall.

    Paired over the questions both scored (`exsearch.evaluation.compare_records`: BCa 95%
    intervals of the question resample), so two settings are compared on the same questions.
    """
    from exsearch.evaluation import compare_records, format_interval

    ours = cached_predictions(root, experiment_rev(root, name), checkpoint)
    theirs = cached_predictions(root, experiment_rev(root, against), checkpoint)
    head = ["method", "ΔF1", "ΔEM", "Δsupport recall", "n"]
    lines = [
        f"{name} − {against} at {checkpoint}:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for method in DIFF_METHODS:
        a = [t for t in ours if t.method == method]
        b = [t for t in theirs if t.method == method]
        if not a or not b:
            continue
        diffs = compare_records(a, b)
        cells = [
            format_interval(diffs[m].to_dict()) if m in diffs else "–"
            for m in ("f1", "em", "support_recall")
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {diffs['f1'].n} |")
    return "\n".join(lines) + "\n\n"
