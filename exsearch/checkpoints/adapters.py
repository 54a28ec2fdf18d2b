"""LoRA adapters, and model directories that hold either a full model or an adapter.

An M-step saves the merged model, the full model, or only the adapter plus `base_model.json`
naming the model it adapts (`train.merge_lora: false`); the next M-step reads either kind
through `load_for_training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from exsearch.config import TrainConfig
from exsearch.files import atomic_path, read_json, write_json

BASE_MODEL_FILE = "base_model.json"  # next to a saved LoRA adapter: which model it adapts
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_adapter_dir(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds a LoRA adapter (saved with merge_lora=false), not a full model."""
    return (Path(model_dir) / "adapter_config.json").is_file()


def load_for_training(
    model_dir: str | Path, dtype: torch.dtype = torch.float32, *, trainable: bool = False
) -> Any:
    """Load a full model directory, or the base model plus the LoRA adapter saved in `model_dir`.

    An adapter directory names its base in `base_model.json`, as the path given when it was
    trained (relative paths are relative to the project root, where stages run).
    """
    model_dir = Path(model_dir)
    if not is_adapter_dir(model_dir):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    from peft import PeftModel

    base_file = model_dir / BASE_MODEL_FILE
    if not base_file.is_file():
        raise FileNotFoundError(
            f"{base_file}: missing; an adapter directory must name its base model"
        )
    base = AutoModelForCausalLM.from_pretrained(read_json(base_file)["base_model"], dtype=dtype)
    return PeftModel.from_pretrained(base, model_dir, is_trainable=trainable)


def base_of(model_dir: str | Path) -> str:
    """The full model a new adapter trained from `model_dir` sits on."""
    if is_adapter_dir(model_dir):
        return read_json(Path(model_dir) / BASE_MODEL_FILE)["base_model"]
    return str(model_dir)


def with_lora(model: Any, cfg: TrainConfig) -> Any:
    """`model` with LoRA adapters (`cfg.lora_*`) on the attention and MLP projections it has."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):  # continue training the previous iteration's adapter
        return model
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names] or "all-linear"
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_model(
    model: Any, tokenizer: Any, out_dir: str | Path, cfg: TrainConfig, base: str
) -> None:
    """Write the merged model, the full model or the adapter (+ its base) and the tokenizer."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        if cfg.lora and cfg.merge_lora:
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        if cfg.lora and not cfg.merge_lora:
            write_json(tmp / BASE_MODEL_FILE, {"base_model": base})
        tokenizer.save_pretrained(tmp)
