import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from exsearch import prompts as P
from exsearch.config.params import load_params
from exsearch.config.training import TrainConfig
from stages import _launch
from tracking import SWITCH_ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LAUNCH_VARS = ("LOCAL_RANK", "WORLD_SIZE", "RANK", "ACCELERATE_PROCESS_INDEX", _launch.LAUNCHED_ENV)


@pytest.fixture
def not_launched(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


# ---- the launcher switch ------------------------------------------------------------------------


def test_default_launcher_trains_in_this_process(not_launched):
    assert TrainConfig().launcher == "none"
    assert _launch.relaunch(TrainConfig(), "stages.train", ["--iteration", "iter_1"]) is None


def test_launch_command_reruns_the_stage_module_under_accelerate():
    cfg = TrainConfig(launcher=str(CONFIGS / "accelerate/ddp.yaml"), num_processes=4)
    cmd = _launch.launch_command(cfg, "stages.train", ["--iteration", "iter_1", "--prev", "iter_0"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:] == [
        "--config_file",
        str(CONFIGS / "accelerate/ddp.yaml"),
        "--num_processes",
        "4",
        "-m",
        "stages.train",
        "--iteration",
        "iter_1",
        "--prev",
        "iter_0",
    ]


def test_missing_launcher_config_names_the_key(not_launched, tmp_path):
    cfg = TrainConfig(launcher=str(tmp_path / "nope.yaml"), num_processes=2)
    with pytest.raises(SystemExit, match=r"train\.launcher: .*nope\.yaml"):
        _launch.relaunch(cfg, "stages.train", [])


def test_launched_worker_runs_in_place_and_only_rank_0_tracks(monkeypatch):
    cfg = TrainConfig(launcher="configs/accelerate/ddp.yaml", num_processes=2)
    monkeypatch.delenv(SWITCH_ENV, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert _launch.relaunch(cfg, "stages.train", []) is None
    assert _launch.is_main_process() and SWITCH_ENV not in os.environ
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert _launch.relaunch(cfg, "stages.train", []) is None
    assert not _launch.is_main_process()
    assert os.environ[SWITCH_ENV] == "off"


def test_params_yaml_has_the_launcher_keys():
    train = load_params(ROOT / "params.yaml").train
    assert train.launcher == "none" and train.num_processes >= 1


# ---- the shipped accelerate configs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ddp", DistributedType.MULTI_GPU),
        ("fsdp", DistributedType.FSDP),
        ("deepspeed_zero3", DistributedType.DEEPSPEED),
    ],
)
def test_accelerate_configs_load(name, kind):
    cfg = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type == kind


def test_deepspeed_config_is_zero3_with_bf16_from_the_trainer():
    ds = yaml.safe_load((CONFIGS / "accelerate/deepspeed_zero3.yaml").read_text())
    path = ROOT / ds["deepspeed_config"]["deepspeed_config_file"]
    zero3 = json.loads(path.read_text())
    assert zero3["zero_optimization"]["stage"] == 3
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["bf16"]["enabled"] == "auto"
    # Batch sizes come from params.yaml through the Trainer, never from this file.
    assert zero3["train_micro_batch_size_per_gpu"] == "auto"
    assert zero3["gradient_accumulation_steps"] == "auto"


# ---- two CPU processes train like one -----------------------------------------------------------


def _chat(i: int) -> list[dict]:
    question = f"Who founded city number {i}?"
    docs = P.documents_turn([f"[1] Title: City {i} Content: City {i} was founded by John {i}."])
    return [
        {"role": "system", "content": "Answer with search."},
        {"role": "user", "content": P.question_turn(question)},
        {"role": "assistant", "content": P.action_turn(think=f"find city {i}", query=f"city {i}")},
        {"role": "user", "content": docs},
        {"role": "assistant", "content": P.action_turn(record=f"John {i}", think="done")},
        {"role": "user", "content": P.answer_request(question)},
        {"role": "assistant", "content": P.answer_turn("someone")},
    ]


def _project(root: Path, model_dir: Path, train: dict) -> Path:
    """A stage-ready folder: iter_0's model, iter_1's trajectories and weights, params.yaml."""
    shutil.copytree(model_dir, root / "models/iter_0")
    work = root / "runs/iter_1"
    work.mkdir(parents=True)
    n = 8
    rows = [
        {"qid": f"q{i}", "sample": 0, "answers": [f"John {i}"], "messages": _chat(i)}
        for i in range(n)
    ]
    (work / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    weights = [0.25 + 0.75 * i / (n - 1) for i in range(n)]  # unequal, so order would matter
    pd.DataFrame({"qid": [r["qid"] for r in rows], "sample": 0, "weight": weights}).to_parquet(
        work / "weights.parquet"
    )
    params = {
        "prepare": {"train": [], "dev": []},
        "train": {
            "lora": False,
            "learning_rate": 1e-3,
            "epochs": 1.0,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "max_length": 512,
            **train,
        },
        "tracking": {"required": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _train_stage(root: Path) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS},
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        SWITCH_ENV: "off",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "stages.train", "--iteration", "iter_1", "--prev", "iter_0"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((root / "runs/iter_1/train_stats.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir):
    # Global batch 4 either way: 4 on one process, or 2 on each of 2 (gloo on CPU). The
    # seeded sampler gives both the same order, so both see the same 4 examples per step.
    single = _train_stage(_project(tmp_path / "one", tiny_model_dir, {"batch_size": 4}))
    ddp_cfg = {
        "batch_size": 2,
        "launcher": str(CONFIGS / "accelerate/ddp.yaml"),
        "num_processes": 2,
    }
    ddp = _train_stage(_project(tmp_path / "two", tiny_model_dir, ddp_cfg))

    assert single["steps"] == ddp["steps"] == 2
    for a, b in zip(single["loss_history"], ddp["loss_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    # Only rank 0 wrote: one model folder, no stray temporary folders next to it.
    assert {p.name for p in (tmp_path / "two/models").iterdir()} == {"iter_0", "iter_1"}
    assert {p.name for p in (tmp_path / "two/runs/iter_1").iterdir()} == {
        "trajectories.jsonl",
        "train_stats.json",
        "weights.parquet",
    }
    w1 = load_file(tmp_path / "one/models/iter_1/model.safetensors")
    w2 = load_file(tmp_path / "two/models/iter_1/model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        moved = (w1[name] - base[name]).abs().max()
        assert moved > 1e-3, name  # lr 1e-3: Adam's first steps move every weight by ~lr
        assert torch.allclose(w1[name], w2[name], atol=2e-5), name


@pytest.mark.slow
def test_warmup_stage_trains_under_the_launcher_and_rank_0_writes_once(tmp_path, tiny_model_dir):
    root = tmp_path / "proj"
    shutil.copytree(tiny_model_dir, root / "models/base")
    teacher = [{"qid": f"q{i}", "messages": _chat(i)} for i in range(4)]
    (root / "teacher.jsonl").write_text("".join(json.dumps(t) + "\n" for t in teacher))
    params = {
        "prepare": {"train": [], "dev": []},
        "warmup": {"teacher_file": "teacher.jsonl", "epochs": 1.0},
        "train": {
            "lora": True,
            "batch_size": 1,
            "max_length": 512,
            "launcher": str(CONFIGS / "accelerate/ddp.yaml"),
            "num_processes": 2,
        },
        "tracking": {"required": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS},
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        SWITCH_ENV: "off",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stages.warmup"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    stats = json.loads((root / "runs/warmup/train_stats.json").read_text())
    assert stats["enabled"] and stats["examples"] == 4 and stats["steps"] == 2  # 4 / (1 × 2)
    lines = (root / "runs/warmup/trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["qid"] for line in lines] == ["q0", "q1", "q2", "q3"]
    assert (root / "models/iter_0/model.safetensors").is_file()
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["warmup"]  # models/ holds models
