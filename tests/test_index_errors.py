"""A missing, truncated or garbled index fails with one error naming the folder and the fix.

Every stage that searches opens the index before it loads a model (exsearch.retrieval.open_index).
"""

import json
import shutil

import numpy as np
import pytest

from exsearch.config.params import IndexConfig
from exsearch.retrieval import (
    OFFSETS_FILE,
    PASSAGES_FILE,
    BM25Retriever,
    CorruptIndex,
    load_retriever,
)
from exsearch.schema import Passage

PASSAGES = [Passage(f"p{i}", f"Title {i}", f"river city album number {i}") for i in range(40)]
FIX = r"dvc repro index"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("index") / "index"
    BM25Retriever.build(PASSAGES, IndexConfig()).save(directory)
    return directory


@pytest.fixture
def index(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "index")


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("mmap", [False, True])
def test_a_missing_index_folder_says_to_run_dvc_repro_index(tmp_path, mmap):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'}: no such index.*{FIX}"):
        load_retriever(tmp_path / "nope", mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_truncated_passage_file_is_a_clear_error(index, mmap):
    truncate(index / PASSAGES_FILE)
    with pytest.raises(CorruptIndex, match=rf"{index}: .*truncated or damaged.*{FIX}"):
        load_retriever(index, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_garbled_passage_file_of_the_same_size_is_a_clear_error(index, mmap):
    path = index / PASSAGES_FILE
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # zeros over the first half
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=rf"{index}: passage 0 .*unreadable.*{FIX}"):
        load_retriever(index, mmap=mmap)


def test_a_passage_garbled_between_the_spot_checks_fails_when_read_not_silently(index):
    offsets = np.load(index / OFFSETS_FILE)
    path = index / PASSAGES_FILE
    data = bytearray(path.read_bytes())
    start, end = int(offsets[1]), int(offsets[2])  # passage 1: not among the spot checks
    data[start : end - 1] = b"x" * (end - 1 - start)
    path.write_bytes(bytes(data))
    retriever = load_retriever(index, mmap=True)
    with pytest.raises(CorruptIndex, match=rf"passage 1 in {PASSAGES_FILE}.*{FIX}"):
        retriever.search(["river city album number 1"], k=3)


@pytest.mark.parametrize("name", [OFFSETS_FILE, "params.index.json", "vocab.index.json"])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_truncated_array_or_json_file_is_a_clear_error(index, name, mmap):
    truncate(index / name)
    with pytest.raises(CorruptIndex, match=rf"{index}: .*{FIX}"):
        load_retriever(index, mmap=mmap)


def test_a_garbled_meta_file_is_a_clear_error(index):
    (index / "exsearch_index.json").write_text('{"format": 1, "kind": "bm25"')
    with pytest.raises(CorruptIndex, match=rf"{index}: the index is unreadable.*{FIX}"):
        load_retriever(index)


def test_a_missing_score_array_is_a_clear_error(index):
    next(index.glob("data.csc.index.npy")).unlink()
    with pytest.raises(CorruptIndex, match=rf"{index}: .*{FIX}"):
        load_retriever(index)


def test_an_intact_index_still_loads(index):
    assert len(load_retriever(index, mmap=True)) == len(PASSAGES)
    meta = json.loads((index / "exsearch_index.json").read_text())
    assert meta["passages"] == len(PASSAGES)


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the index was opened")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A cwd with params, one training/dev question and a model folder; the index is broken."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prepare: {train: [], dev: []}\n")
    question = {"id": "q1", "question": "Which river?", "answers": ["Nile"], "dataset": "toy"}
    (tmp_path / "questions.jsonl").write_text(json.dumps(question) + "\n")
    for it in ("base", "iter_0"):
        (tmp_path / "models" / it).mkdir(parents=True)
        (tmp_path / "models" / it / "config.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("broken", ["missing", "truncated"])
@pytest.mark.parametrize("stage", ["sample", "evaluate", "warmup"])
def test_stages_that_search_open_the_index_before_loading_a_model(
    project, saved, monkeypatch, stage, broken
):
    import importlib

    module = importlib.import_module(f"stages.{stage}")
    for name in ("make_generator", "train_weighted"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _no_model)
    index = project / "index"
    if broken == "truncated":
        shutil.copytree(saved, index)
        truncate(index / PASSAGES_FILE)
    args = {
        "sample": ["--iteration", "iter_1", "--prev", "iter_0"],
        "evaluate": ["--iteration", "iter_0"],
        "warmup": [],
    }[stage]
    with pytest.raises(SystemExit, match=rf"error: {index}: .*{FIX}"):
        module.main([*args, "--index", str(index), "--questions", "questions.jsonl"])
