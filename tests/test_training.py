import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from chats import chat
from step_logs import StepLogs
from transformers import AutoModelForCausalLM, AutoTokenizer

from exsearch.checkpoints.adapters import BASE_MODEL_FILE, load_for_training
from exsearch.config.params import ConfigError, parse_params
from exsearch.config.training import TrainConfig
from exsearch.mstep.training import TrainResult, run_stats, train_weighted, training_args


def examples(n=4, zero_weight=1):
    chats = [chat(), chat(question="Who built the bridge?", n_passages=1), chat(answer="1820")]
    weights = [1.0, 0.5, 2.0, 0.25, 1.5]
    out = [{"messages": chats[i % 3], "weight": weights[i % 5]} for i in range(n)]
    return out + [{"messages": chat(), "weight": 0.0}] * zero_weight


def cfg(**kw):
    base = dict(batch_size=2, max_length=1024, learning_rate=1e-3, warmup_ratio=0.0)
    return TrainConfig(**{**base, **kw})


def changed(before, after_dir):
    after = AutoModelForCausalLM.from_pretrained(after_dir, dtype=torch.float32).state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_train_weighted_with_lora_writes_a_merged_loadable_model(tiny_model_dir, model, tmp_path):
    out, live = tmp_path / "model", StepLogs()
    result = train_weighted(
        tiny_model_dir,
        examples(),
        out,
        cfg(lora=True),
        max_steps=2,
        progress=False,
        callbacks=[live],
    )
    assert [h["step"] for h in result.loss_history] == [1, 2]
    # the caller's callbacks see each step's loss as it is logged, not only at the end
    assert [(step, logs["loss"]) for step, logs in live.seen] == [
        (h["step"], h["loss"]) for h in result.loss_history
    ]
    assert all(h["loss"] > 0 for h in result.loss_history)
    assert (result.n_examples, result.n_zero_weight_dropped, result.steps) == (4, 1, 2)
    assert result.n_tokens_trained > 0
    assert not (out / "adapter_config.json").exists()
    assert changed(model.state_dict(), out)
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_train_weighted_full_finetune_writes_a_loadable_model(tiny_model_dir, model, tmp_path):
    out = tmp_path / "model"
    result = train_weighted(
        tiny_model_dir, examples(), out, cfg(lora=False), max_steps=2, progress=False
    )
    assert len(result.loss_history) == 2
    assert changed(model.state_dict(), out)


def test_unmerged_lora_saves_the_adapter_and_names_its_base(tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    c = cfg(lora=True, merge_lora=False)
    train_weighted(tiny_model_dir, examples(), out, c, max_steps=1, progress=False)
    assert json.loads((out / BASE_MODEL_FILE).read_text()) == {"base_model": str(tiny_model_dir)}
    assert (out / "adapter_config.json").is_file()
    # The next iteration continues the adapter on the same base.
    out2 = tmp_path / "adapter2"
    train_weighted(out, examples(), out2, c, max_steps=1, progress=False)
    assert json.loads((out2 / BASE_MODEL_FILE).read_text()) == {"base_model": str(tiny_model_dir)}
    assert load_for_training(out2) is not None


def test_gradient_accumulation_matches_one_larger_batch(tiny_model_dir, tmp_path):
    """Batch 4 and batch 2 × 2 accumulation steps give the same loss and gradient norm."""
    data = examples(n=4, zero_weight=0)
    one = train_weighted(
        tiny_model_dir,
        data,
        tmp_path / "a",
        cfg(lora=False, batch_size=4),
        max_steps=1,
        progress=False,
    )
    acc = train_weighted(
        tiny_model_dir,
        data,
        tmp_path / "b",
        cfg(lora=False, batch_size=2, grad_accum=2),
        max_steps=1,
        progress=False,
    )
    for key in ("loss", "grad_norm"):
        assert acc.loss_history[0][key] == pytest.approx(one.loss_history[0][key], rel=1e-4)


def test_train_weighted_without_any_positive_weight_fails_clearly(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no example to train on"):
        train_weighted(
            tiny_model_dir, examples(n=0), tmp_path / "m", cfg(), max_steps=1, progress=False
        )


def test_negative_weight_is_an_error_naming_the_example(tiny_model_dir, tmp_path):
    bad = [{"messages": chat(), "weight": -1.0}]
    with pytest.raises(ValueError, match="example 0: weight"):
        train_weighted(tiny_model_dir, bad, tmp_path / "m", cfg(), max_steps=1, progress=False)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_is_autocast_only_and_saves_float32_weights(tiny_model_dir, tmp_path, lora):
    out = tmp_path / "model"
    result = train_weighted(
        tiny_model_dir, examples(), out, cfg(lora=lora, bf16=True), max_steps=1, progress=False
    )
    assert all(h["loss"] > 0 for h in result.loss_history)
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert next(saved.parameters()).dtype == torch.float32


@pytest.mark.parametrize(("ratio", "steps", "warmup"), [(0.0, 10, 0), (0.1, 100, 10), (0.25, 7, 2)])
def test_warmup_ratio_is_a_fraction_of_the_optimiser_steps(tmp_path, ratio, steps, warmup):
    args = training_args(cfg(warmup_ratio=ratio), str(tmp_path), progress=False)
    assert args.get_warmup_steps(steps) == warmup  # ceil(ratio × steps)


def test_run_stats_summarise_the_run_with_its_final_loss():
    history = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.75}]
    result = TrainResult(loss_history=history, n_examples=3, n_tokens_trained=40, steps=2)
    result.seconds = 12.345
    stats = run_stats(result)
    assert (stats["examples"], stats["tokens_trained"], stats["steps"]) == (3, 40, 2)
    assert (stats["seconds"], stats["final_loss"], stats["loss_history"]) == (12.3, 1.75, history)
    assert run_stats(TrainResult())["final_loss"] is None


def test_examples_weighted_below_min_weight_are_not_trained_on(tiny_model_dir):
    from exsearch.mstep.training import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    given = [{"messages": chat(), "weight": w} for w in (0.0, 0.01, 0.049, 0.05, 2.0)]
    data, counts = encode_examples(tokenizer, given, 1024, min_weight=0.05, progress=False)
    assert [d["weight"] for d in data] == [0.05, 2.0]
    assert (counts.n_zero_weight_dropped, counts.n_light_dropped) == (1, 2)
    data, counts = encode_examples(tokenizer, given, 1024, progress=False)
    assert len(data) == 4 and counts.n_light_dropped == 0


KILLED_RUN = """
import os, signal, sys
import transformers
from chats import chat
from exsearch.config.training import TrainConfig
from exsearch.mstep.training import train_weighted

model_dir, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
step = transformers.Trainer.training_step
calls = []


def training_step(self, *args, **kwargs):
    loss = step(self, *args, **kwargs)
    calls.append(self.state.global_step)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-run, after the step's backward pass
    return loss


transformers.Trainer.training_step = training_step
examples = [{"messages": chat(answer=str(n)), "weight": 1.0} for n in range(8)]
cfg = TrainConfig(batch_size=2, learning_rate=1e-3, warmup_ratio=0.0, save_steps=1)
result = train_weighted(model_dir, examples, out, cfg, max_steps=4, progress=False)
print("steps", result.steps, "first step run", calls[0] + 1)
"""


def test_a_killed_m_step_resumes_at_its_last_checkpoint_and_ends_where_a_whole_run_ends(
    tiny_model_dir, tmp_path
):
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}

    def run(out, kill_at):
        cmd = [sys.executable, str(script), str(tiny_model_dir), str(out), str(kill_at)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    killed = run(tmp_path / "resumed", kill_at=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resume = tmp_path / ".resumed.resume"
    assert (resume / "checkpoint-2").is_dir()  # steps 1 and 2 saved, step 3 lost
    again = run(tmp_path / "resumed", kill_at=0)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "steps 4 first step run 3" in again.stdout  # it went on at step 3
    assert not resume.exists()  # gone once the model is saved
    whole = run(tmp_path / "whole", kill_at=0)
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed", dtype=torch.float32)
    uninterrupted = AutoModelForCausalLM.from_pretrained(tmp_path / "whole", dtype=torch.float32)
    for name, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=1e-5)


def test_save_steps_under_a_launcher_is_refused_before_any_work():
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["train"]["save_steps"] = 10
    assert parse_params(raw).train.save_steps == 10
    raw["train"]["launcher"] = "configs/accelerate/ddp.yaml"
    with pytest.raises(ConfigError, match="train.save_steps"):
        parse_params(raw)
