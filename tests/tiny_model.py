"""A tiny Llama chat model built locally from a config for tests: no download, a second to build.

The tokenizer is a byte-level BPE trained here on a small generated text, with ChatML special
tokens and chat template, so `apply_chat_template`, stop strings and left padding behave like a
real instruct model's. The action tags are ordinary text (as in real models), so stop strings
span several tokens. Weights are random but seeded, hence deterministic.

    python -m tests.tiny_model OUT_DIR
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the of and in a to was is for on as by with he at from his an were are which this also be "
    "has or had first one their its new after who they two her she been other when there all "
    "during into school time may years more most only over city some world would where later up "
    "such used many can state about national out known university united then made film river "
    "born american album team season war year country capital president director founded located "
    "question answer search record think finish documents title content passage evidence which "
    "what who when where how many both same older younger band song written novel author"
).split()
_TAGS = ["<think>", "</think>", "<search>", "</search>", "<record>", "</record>", "<finish>"]
_TAGS += ["<answer>", "</answer>", "<documents>", "</documents>"]


def training_text(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences mixing common words, capitalised names, digits and tags."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
        words[0] = words[0].capitalize()
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 2024)))
        tag = rng.randrange(0, len(_TAGS) - 1, 2)
        lines.append(f"{_TAGS[tag]}{' '.join(words)}.{_TAGS[tag + 1]}")
    return lines


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (any text encodes) and wrap it as a ChatML chat tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )


def build_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama; a wide init so greedy output varies instead of repeating one token."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny model + tokenizer into `out_dir`; return it."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert ids == [0, 1, 2], f"special tokens must come first in the vocabulary, got ids {ids}"
    model = build_model(len(tokenizer), seed)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def param_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1]))
