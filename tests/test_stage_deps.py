"""Every DVC stage depends on every project module it runs, so changing one re-runs the stages
whose results it shapes (and only those). The imports are read from the source, transitively."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.import_graph import transitive_imports
from tests.stage_deps_sync import synced

ROOT = Path(__file__).resolve().parents[1]


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a `foreach` stage by its `do` template."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def entry_file(cmd: str) -> Path:
    """The file a stage's command runs: `python -m stages.x` or `python scripts/x.py`."""
    if m := re.match(r"python -m ([\w.]+)", cmd):
        return ROOT.joinpath(*m.group(1).split(".")).with_suffix(".py")
    if m := re.match(r"python (\S+\.py)", cmd):
        return ROOT / m.group(1)
    raise AssertionError(f"cannot tell which file `{cmd}` runs")


def code_needed(stage: dict) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in transitive_imports(ROOT, entry_file(stage["cmd"]))}


def declared(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


def covered(path: str, deps: set[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_every_module_it_imports(name):
    stage = stages()[name]
    deps = declared(stage)
    missing = sorted(p for p in code_needed(stage) if not covered(p, deps))
    assert not missing, (
        f"dvc.yaml stage '{name}' runs code it does not depend on; add {missing} "
        "(python -m tests.stage_deps_sync rewrites every stage's module deps)"
    )


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_lists_no_module_it_does_not_run(name):
    stage = stages()[name]
    code = {d for d in declared(stage) if d.endswith(".py")}
    assert not (extra := sorted(code - code_needed(stage))), (
        f"dvc.yaml stage '{name}' depends on {extra}, which it does not import"
    )


def test_the_module_deps_are_written_as_the_sync_writes_them():
    text = (ROOT / "dvc.yaml").read_text()
    assert synced(text) == text, "run python -m tests.stage_deps_sync"


def test_the_sync_adds_a_missing_module_and_drops_a_stale_one():
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace("      - exsearch/agent/rag_sft.py\n", "", 1)
    broken = broken.replace(
        "      - stages/warmup.py\n", "      - stages/warmup.py\n      - flows/cli.py\n", 1
    )
    assert broken != text
    assert synced(broken) == text


def test_the_walk_follows_imports_inside_functions_and_through_packages():
    needed = code_needed({"cmd": "python -m stages.weigh"})
    # weigh's answer tag, which locates the scored span, lives in prompts.py
    assert {"exsearch/prompts.py", "exsearch/config/params.py", "stages/weigh.py"} <= needed
    assert "exsearch/mstep/training.py" not in needed


def outs(stage: dict) -> set[str]:
    return {
        o if isinstance(o, str) else next(iter(o))
        for key in ("outs", "metrics", "plots")
        for o in stage.get(key, [])
    }


def test_the_report_depends_on_run_records_not_on_models_or_the_index():
    report_deps = declared(stages()["report"])
    read = {
        o
        for name, stage in stages().items()
        if name != "report"
        for o in outs(stage)
        if covered(o, report_deps)
    }
    assert read, "the report reads the stages' records"
    assert not [o for o in read if o.startswith(("models/", "data/index"))]
    assert {"runs/${item}/predictions.jsonl", "runs/${key}/weights.parquet"} <= read


def test_every_output_is_cached_so_queued_experiments_keep_it():
    uncached = [
        o
        for name, stage in stages().items()
        for key in ("outs", "metrics", "plots")
        for o in stage.get(key, [])
        if isinstance(o, dict) and next(iter(o.values())).get("cache") is False
    ]
    assert not uncached, f"outputs a queued experiment would lose: {uncached}"


def test_the_warmup_depends_on_exactly_the_train_keys_it_trains_with():
    from exsearch.agent.warmup_set import EM_ONLY_TRAIN_KEYS
    from exsearch.config.training import TrainConfig

    params = stages()["warmup"]["params"]
    listed = {p.removeprefix("train.") for p in params if p.startswith("train.")}
    assert "train" not in params  # the whole section would re-run it for EM-only keys
    assert listed == set(TrainConfig.model_fields) - EM_ONLY_TRAIN_KEYS
    # DVC refuses a stage whose params are missing from the params file it runs with.
    for path in ("params.yaml", "configs/params.paper.yaml", "tests/testdata/params.tiny.yaml"):
        shipped = yaml.safe_load((ROOT / path).read_text())["train"]
        assert listed <= set(shipped), f"{path} lacks train.{sorted(listed - set(shipped))}"


SHIPPED_PARAMS = ("params.yaml", "configs/params.paper.yaml", "tests/testdata/params.tiny.yaml")


@pytest.mark.parametrize("path", SHIPPED_PARAMS)
def test_every_single_key_a_stage_depends_on_is_in_each_shipped_params_file(path):
    # DVC refuses to run a stage whose param key is missing from the file (a whole section
    # may lack keys: its defaults are the code's).
    shipped = yaml.safe_load((ROOT / path).read_text())
    missing = set()
    for name, stage in stages().items():
        for key in stage.get("params", []):
            if not isinstance(key, str) or "." not in key:
                continue
            node = shipped
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.add(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing, f"{path} lacks {sorted(missing)}"
