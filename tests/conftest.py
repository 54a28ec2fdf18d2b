"""Shared pytest fixtures: tiny local models and data, built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Stage mains called in-process must not write runs to the project's mlflow.db; the tracking
# tests turn it back on against a temporary store.
os.environ.setdefault("EXSEARCH_TRACKING", "off")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny 2-layer Llama chat model with a locally trained BPE tokenizer (tests/tiny_model.py).

    Session-scoped: built once (a second or two); tests must not modify the directory.
    """
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    """The tiny model's tokenizer, loaded once per test module."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model in float32 and eval mode, loaded once per test module.

    Per module, so what a module's tests leave behind (gradients; weights, where a test trains
    it) stays in that module; trainers switch to train mode themselves.
    """
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(autouse=True)
def _tracking_store_gets_a_new_chance():
    """tracking/store.py gives up on a failed store for the rest of the process: per test here."""
    yield
    if (tracking := sys.modules.get("tracking.store")) is not None:
        tracking.reset_store_state()
