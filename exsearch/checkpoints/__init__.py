"""Model checkpoints: loaded the same way in every stage, materialised, saved (full or LoRA).

`loading.py` loads causal LMs and tokenizers and builds the base model of iteration 0;
`adapters.py` holds LoRA adapters and folders that are either a full model or an adapter.
"""

from exsearch.checkpoints.adapters import (
    LORA_TARGETS,
    base_of,
    load_for_training,
    save_model,
    with_lora,
)
from exsearch.checkpoints.loading import (
    autocast_bf16,
    ensure_pad_token,
    load_model,
    materialize_base,
    prepare_tokenizer,
    resolve_dtype,
    warn_if_bf16_is_slow,
)

__all__ = [
    "LORA_TARGETS",
    "autocast_bf16",
    "base_of",
    "ensure_pad_token",
    "load_for_training",
    "load_model",
    "materialize_base",
    "prepare_tokenizer",
    "resolve_dtype",
    "save_model",
    "warn_if_bf16_is_slow",
    "with_lora",
]
