"""Load causal LMs the same way in every stage, and materialise the base model of iteration 0.

`materialize_base` turns whatever params.yaml names (the bundled GGUF default, a hub id or a
local directory) into a plain `save_pretrained` directory, so every later stage loads one
format with `load_model`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from exsearch.config import ModelConfig
from exsearch.files import atomic_path, write_json

log = logging.getLogger(__name__)

SOURCE_FILE = "exsearch_model.json"
"""Written next to the weights: where the base model came from (source, hash or id, dtype)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "auto") -> torch.dtype:
    """'auto' | 'float32' | 'bfloat16' | 'float16' (or a torch.dtype) → torch.dtype.

    'auto' is bfloat16 where `device` multiplies it natively (`bf16_is_native`), else float32:
    the same params run at full speed on a CPU with AVX512-BF16/AMX, a GPU, and a CPU without.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_native(device) else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cuda' without a GPU is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but no GPU is visible; use 'auto' or 'cpu'")
    return device


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this x86 CPU multiplies bf16 natively (AVX512-BF16 or AMX); None where unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    if not re.search(r"^flags\s*:", text, re.MULTILINE):  # not x86 (aarch64 lists "Features")
        return None
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", text))


def bf16_is_native(device: str | torch.device = "auto") -> bool:
    """Whether `device` multiplies bf16 at hardware speed (a GPU; AVX512-BF16 or AMX).

    An unknown CPU counts as not: float32 is never the slow choice.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16() is True


def autocast_bf16(setting: bool | str, device: str | torch.device = "auto") -> bool:
    """`train.bf16` → whether to autocast to bf16: 'auto' where it is native (`bf16_is_native`)."""
    if setting == "auto":
        return bf16_is_native(device)
    return bool(setting)


def warn_if_bf16_is_slow(dtype: str | torch.dtype, device: str | torch.device) -> bool:
    """Warn (and return True) when bf16 would run on a CPU that emulates it.

    There PyTorch multiplies bf16 matrices about 100 times slower than float32 (1.0 against
    107 GFLOP/s measured on an AVX2-only AMD EPYC), so a bf16 campaign would take days.
    """
    slow = (
        resolve_dtype(dtype) == torch.bfloat16
        and torch.device(device).type == "cpu"
        and cpu_has_bf16() is False
    )
    if slow:
        log.warning(
            "bfloat16 on this CPU (no AVX512-BF16 or AMX) runs about 100x slower than float32: "
            "set model.dtype and train.bf16 to 'auto' (float32 here) or float32/false (README, "
            "'A CPU without bf16 instructions')"
        )
    return slow


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token (its eos token) if it has none; batching needs one."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set one before use")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (batched generation appends on the right) and a pad token."""
    tokenizer.padding_side = "left"
    return ensure_pad_token(tokenizer)


def load_model(
    path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "auto"
) -> tuple[PreTrainedModel, Any]:
    """Load a saved causal LM and its tokenizer for inference.

    Returns `(model, tokenizer)`: the model in eval mode on `device` ('auto' → cuda if available)
    in `dtype` (bfloat16 works on CPU too); the tokenizer pads on the left and has a pad token.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a saved model directory (no config.json)")
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    warn_if_bf16_is_slow(dtype, device)
    model.to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_gguf(gguf_file: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """Load a GGUF checkpoint as a plain (dequantised, serialisable) transformers model.

    transformers dequantises GGUF weights on load but marks the model as GGUF-quantised, and
    `save_pretrained` refuses such models; so the weights are moved into a fresh model built
    from the same config minus its quantisation entry.
    """
    if not gguf_file.is_file():
        raise FileNotFoundError(
            f"{gguf_file}: GGUF file not found (model.gguf_file in params.yaml); "
            "run `python scripts/fetch_default_model.py` to fetch the default model"
        )
    kw = {"gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kw)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf_file.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model.to(dtype).eval(), tokenizer


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def base_source(cfg: ModelConfig) -> Literal["gguf", "local", "hub"]:
    """What `model.base` names, checked before anything is loaded: a bad value fails here.

    'default' is the bundled GGUF file and an existing directory a local model. Anything else
    must be a hub id (`name` or `owner/name`), and even then it is downloaded only with
    `model.allow_download: true` (otherwise only the local Hugging Face cache is read).
    A value that looks like a path (absolute, ./ or ../, ~, a trailing or double slash, a
    backslash, or under a folder that exists here, such as `models/`) but is not a directory
    is an error, never a hub lookup.

    Raises:
        ValueError: a path that is not a directory, or a value that is not a hub id.
    """
    base = cfg.base
    if base == "default":
        return "gguf"
    path = Path(base).expanduser()
    if path.is_dir():
        return "local"
    head = base.split("/", 1)[0]
    looks_like_path = (
        base.startswith(("/", "./", "../", "~"))
        or base.endswith("/")
        or "\\" in base
        or base.count("/") > 1
        or ("/" in base and Path(head).is_dir())
    )
    if looks_like_path:
        raise ValueError(
            f"model.base: {base!r} is not a directory (looked in {path.resolve()}); give an "
            "existing model directory, 'default', or a hub id such as owner/name"
        )
    if not _HUB_ID.fullmatch(base):
        raise ValueError(
            f"model.base: {base!r} is neither an existing directory nor a hub id (owner/name)"
        )
    return "hub"


def _check_chat_tokenizer(tokenizer: Any, where: str) -> None:
    """The agent builds every prompt from the chat template: fail early if it cannot."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: the tokenizer has no chat template; use an instruct/chat model")
    probe = [{"role": "user", "content": "ping"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if "ping" not in text:
        raise ValueError(f"{where}: the chat template dropped the message text: {text!r}")


def materialize_base(cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Write the base model named by `cfg` to `out_dir` as a plain save_pretrained directory.

    `cfg.base` is 'default' (the GGUF file `cfg.gguf_file`, dequantised), a local directory or a
    hub id (see `base_source`; downloaded only with `cfg.allow_download`). Weights are saved in
    `cfg.dtype` ('auto' resolved on `cfg.device`) as safetensors, with the tokenizer (pad token
    set, chat template kept) and `exsearch_model.json` recording the source and the dtype. The
    directory appears whole or not at all.
    """
    out_dir = Path(out_dir)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    start = time.perf_counter()
    kind = base_source(cfg)
    if kind == "gguf":
        gguf_file = Path(cfg.gguf_file)
        model, tokenizer = _load_gguf(gguf_file, dtype)
        source: dict[str, Any] = {"gguf_file": gguf_file.name, "sha256": _sha256(gguf_file)}
    else:
        offline = kind == "local" or not cfg.allow_download
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(
                cfg.base, dtype=dtype, local_files_only=offline
            )
        except OSError as e:
            if kind == "local" or cfg.allow_download:
                raise
            raise ValueError(
                f"model.base: {cfg.base!r} is not a directory here and not in the local Hugging "
                "Face cache, and model.allow_download is false: set model.allow_download: true "
                "(and unset HF_HUB_OFFLINE) to download it, or give a local model directory "
                f"({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        source = {"local_dir": cfg.base} if kind == "local" else {"hub_id": cfg.base}
        commit = getattr(model.config, "_commit_hash", None)
        if commit:
            source["revision"] = commit
    ensure_pad_token(tokenizer)
    # GGUF tokenizers come with an "unlimited" model_max_length; the context window is the truth.
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    _check_chat_tokenizer(tokenizer, f"model.base={cfg.base!r}")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / SOURCE_FILE,
            {
                "base": cfg.base,
                **source,
                "dtype": str(dtype).removeprefix("torch."),
                "parameters": sum(p.numel() for p in model.parameters()),
                "transformers_version": transformers.__version__,
            },
        )
    log.info("materialised %s → %s in %.1fs", cfg.base, out_dir, time.perf_counter() - start)
    return out_dir
