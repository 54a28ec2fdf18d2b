import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from tiny_model import build_model, build_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

import exsearch.checkpoints.loading as loading
from exsearch.checkpoints.loading import (
    SOURCE_FILE,
    base_source,
    cpu_has_bf16,
    load_model,
    materialize_base,
)
from exsearch.config.params import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GGUF = ROOT / ModelConfig().gguf_file
MESSAGES = [{"role": "user", "content": "Who founded the band?"}]


def logits(model, tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(ids.to(model.device)).logits.float()


def test_tiny_model_init_is_seeded():
    a, b = build_model(100, seed=3), build_model(100, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.lm_head.weight, build_model(100, seed=4).lm_head.weight)


def test_tiny_model_round_trips_save_and_load(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path, "float32", "cpu")
    text = "<search>capital of France</search>"
    assert tok(text).input_ids == tokenizer(text).input_ids
    torch.testing.assert_close(logits(loaded, tok, text), logits(model, tokenizer, text))


def test_chat_template_renders_chatml(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWho founded the band?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_load_model_pads_left_in_eval_mode(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, "float32", "auto")
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"
    assert not model.training and model.dtype == torch.float32
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_model_uses_eos_when_tokenizer_has_no_pad_token(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_file = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["pad_token"] = None
    cfg_file.write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(copy).pad_token is None
    _, tok = load_model(copy, "float32", "cpu")
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


def test_load_model_in_bfloat16_on_cpu(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, "bfloat16", "cpu")
    assert model.dtype == torch.bfloat16
    assert torch.isfinite(logits(model, tok, "The capital city")).all()


def test_load_model_names_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path, "float32", "cpu")


def test_load_model_rejects_an_unknown_dtype(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_model(tiny_model_dir, "fp8", "cpu")


def test_materialize_base_copies_a_local_model(tiny_model_dir, tmp_path):
    out = materialize_base(ModelConfig(base=str(tiny_model_dir)), tmp_path / "iter_0" / "model")
    assert (out / "model.safetensors").is_file()
    source = json.loads((out / SOURCE_FILE).read_text())
    assert source["base"] == source["local_dir"] == str(tiny_model_dir)
    assert source["dtype"] == "float32"
    model, tok = load_model(out, "float32", "cpu")
    ref, ref_tok = load_model(tiny_model_dir, "float32", "cpu")
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == ref_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    torch.testing.assert_close(logits(model, tok, text), logits(ref, ref_tok, text))


def test_materialize_base_saves_in_the_configured_dtype(tiny_model_dir, tmp_path):
    out = materialize_base(ModelConfig(base=str(tiny_model_dir), dtype="bfloat16"), tmp_path / "m")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_materialize_base_without_chat_template_fails_and_writes_nothing(tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (base / "chat_template.jinja").unlink()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no chat template"):
        materialize_base(ModelConfig(base=str(base)), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp leftovers


def test_materialize_base_missing_gguf_says_how_to_fetch_it(tmp_path):
    cfg = ModelConfig(gguf_file=str(tmp_path / "absent.gguf"))
    with pytest.raises(FileNotFoundError, match="fetch_default_model.py"):
        materialize_base(cfg, tmp_path / "out")


def test_init_model_stage_writes_the_model_dir(tiny_model_dir, tmp_path):
    from stages import init_model

    params = tmp_path / "params.yaml"
    params.write_text(f"prepare: {{train: [], dev: []}}\nmodel: {{base: '{tiny_model_dir}'}}\n")
    out = init_model.main(["--params", str(params), "--out", str(tmp_path / "model")])
    assert (out / SOURCE_FILE).is_file() and (out / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not DEFAULT_GGUF.is_file(),
    reason=f"{DEFAULT_GGUF.name} absent: run `python scripts/fetch_default_model.py`",
)
def test_default_gguf_model_materializes_to_an_equivalent_plain_model(tmp_path):
    from exsearch.generation.hf import HFGenerator

    gguf = {"gguf_file": DEFAULT_GGUF.name}
    ref = AutoModelForCausalLM.from_pretrained(DEFAULT_GGUF.parent, **gguf).eval()
    ref_tok = AutoTokenizer.from_pretrained(DEFAULT_GGUF.parent, **gguf)
    out = materialize_base(ModelConfig(gguf_file=str(DEFAULT_GGUF)), tmp_path / "model")
    assert json.loads((out / SOURCE_FILE).read_text())["sha256"]
    model, tok = load_model(out, "float32", "cpu")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt == ref_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    torch.testing.assert_close(logits(model, tok, prompt), logits(ref, ref_tok, prompt))
    [done] = HFGenerator(model, tok).generate([prompt], max_new_tokens=16)
    assert done.text.strip() and done.n_tokens > 0


@pytest.mark.parametrize(
    "base", ["/nonexistent/SmolLM2", "./SmolLM2", "../SmolLM2", "a/b/c", "models/SmolLM2-135M/"]
)
def test_a_model_base_that_looks_like_a_path_and_is_no_directory_is_an_error(base, tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        materialize_base(ModelConfig(base=base, allow_download=True), tmp_path / "out")


def test_a_missing_folder_under_an_existing_one_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match="'models/SmolLM2-135M-Instruct' is not a directory"):
        base_source(ModelConfig(base="models/SmolLM2-135M-Instruct", allow_download=True))


def test_a_value_that_is_neither_a_directory_nor_a_hub_id_is_an_error():
    with pytest.raises(ValueError, match="neither an existing directory nor a hub id"):
        base_source(ModelConfig(base="my model"))


def test_a_hub_id_is_not_downloaded_without_allow_download(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import huggingface_hub.utils._detect_agent as agent_registry

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if online
    # huggingface_hub looks up a registry of agent names online whatever it loads; not a
    # download, and not ours to switch off: only model-file requests count here.
    monkeypatch.setattr(agent_registry, "_fetch_registry", lambda: None)
    connections = []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("network used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    cfg = ModelConfig(base="exsearch-tests/no-such-model")
    assert base_source(cfg) == "hub"
    with pytest.raises(ValueError, match="model.allow_download is false"):
        materialize_base(cfg, tmp_path / "out")
    assert connections == []
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_and_the_default_need_no_download(tiny_model_dir):
    assert base_source(ModelConfig(base=str(tiny_model_dir))) == "local"
    assert base_source(ModelConfig()) == "gguf"


def test_the_cpu_flags_say_whether_bf16_is_native(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_has_bf16(info) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16(info) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_has_bf16(info) is True
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # aarch64: not told here
    assert cpu_has_bf16(info) is None
    assert cpu_has_bf16(tmp_path / "missing") is None


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: False)
    assert loading.warn_if_bf16_is_slow("bfloat16", "cpu")
    assert "model.dtype and train.bf16 to 'auto'" in caplog.text
    assert not loading.warn_if_bf16_is_slow("float32", "cpu")
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: True)
    assert not loading.warn_if_bf16_is_slow("bfloat16", "cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: native)
    assert loading.resolve_dtype("auto", "cpu") == expected
    assert loading.autocast_bf16("auto", "cpu") is native
    # An explicit choice is kept whatever the CPU.
    assert loading.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert loading.autocast_bf16(True, "cpu") is True
    assert loading.autocast_bf16(False, "cpu") is False


def test_an_unknown_cpu_runs_auto_in_float32(monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: None)
    assert loading.resolve_dtype("auto", "cpu") == torch.float32


def test_the_params_accept_auto_for_both_switches():
    from exsearch.config import TrainConfig

    assert ModelConfig(dtype="auto").dtype == "auto"
    assert TrainConfig(bf16="auto").bf16 == "auto"
    with pytest.raises(ValueError):
        TrainConfig(bf16="sometimes")
