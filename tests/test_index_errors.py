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
    open_index,
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
    with pytest.raises(CorruptIndex, match=rf"{index}[:/].*truncated.*{FIX}"):
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
    with pytest.raises(CorruptIndex, match=rf"{index}[:/].*{FIX}"):
        load_retriever(index, mmap=mmap)


def test_a_garbled_meta_file_is_a_clear_error(index):
    (index / "exsearch_index.json").write_text('{"format": 1, "kind": "bm25"')
    with pytest.raises(CorruptIndex, match=rf"{index}: the index is unreadable.*{FIX}"):
        load_retriever(index)


def test_a_missing_score_array_is_a_clear_error(index):
    next(index.glob("data.csc.index.npy")).unlink()
    with pytest.raises(CorruptIndex, match=rf"{index}[:/].*{FIX}"):
        load_retriever(index)


def test_an_intact_index_still_loads(index):
    assert len(load_retriever(index, mmap=True)) == len(PASSAGES)
    meta = json.loads((index / "exsearch_index.json").read_text())
    assert meta["passages"] == len(PASSAGES)


SCORES = "data.csc.index.npy"


def damage_array(path, change):
    """Apply `change` to a saved .npy array in place: same file size, other content."""
    arr = np.load(path, mmap_mode="r+")
    change(arr)
    arr.flush()


def test_score_arrays_overwritten_with_same_size_bytes_fail_the_hash_check(index):
    size = (index / SCORES).stat().st_size
    header = (index / SCORES).read_bytes()[:128]
    rng = np.random.default_rng(0)
    (index / SCORES).write_bytes(header + rng.bytes(size - len(header)))
    with pytest.raises(CorruptIndex, match=rf"{SCORES}: its content differs from the SHA-256"):
        load_retriever(index, verify=True)
    with pytest.raises(ValueError, match=rf"{index / SCORES}: .*{FIX}"):
        open_index(index)  # what the stages call


OFFSETS = "indptr.csc.index.npy"


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        (OFFSETS, lambda a: a.__setitem__(slice(1, None), a[:-1].copy()), "span"),
        (OFFSETS, lambda a: a.__setitem__(2, a[-1]), "decrease"),
    ],
    ids=["shifted-offsets", "decreasing-offsets"],
)
@pytest.mark.parametrize("mmap", [False, True])
def test_damaged_column_offsets_fail_at_every_open_even_without_hashes(
    index, name, change, problem, mmap
):
    damage_array(index / name, change)
    with pytest.raises(CorruptIndex, match=rf"score arrays are damaged \(.*{problem}.*{FIX}"):
        load_retriever(index, mmap=mmap)


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        (SCORES, lambda a: a.__setitem__(3, np.nan), "a score is not finite"),
        ("indices.csc.index.npy", lambda a: a.__setitem__(0, 10**6), "out of range"),
    ],
    ids=["nan", "doc-out-of-range"],
)
def test_damaged_entries_fail_an_index_read_into_memory_and_the_hash_check_when_mapped(
    index, name, change, problem
):
    damage_array(index / name, change)
    with pytest.raises(CorruptIndex, match=rf"score arrays are damaged \(.*{problem}.*{FIX}"):
        load_retriever(index)
    # Mapped, the pass over every entry is skipped (it would read the whole matrix at every
    # open); the stages' hash check still refuses it.
    assert len(load_retriever(index, mmap=True)) == len(PASSAGES)
    with pytest.raises(CorruptIndex, match=rf"{name}: its content differs from the SHA-256"):
        load_retriever(index, mmap=True, verify=True)


def test_a_file_of_another_size_or_missing_is_named(index):
    with open(index / "vocab.index.json", "a") as f:
        f.write(" ")
    with pytest.raises(CorruptIndex, match=r"vocab\.index\.json: \d+ bytes where .* says \d+"):
        load_retriever(index)
    (index / OFFSETS_FILE).unlink()
    with pytest.raises(CorruptIndex, match=rf"{OFFSETS_FILE}: missing from the index"):
        load_retriever(index)


def test_an_index_built_before_the_manifest_asks_for_a_rebuild(index):
    meta_path = index / "exsearch_index.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]
    meta_path.write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match=rf"index format 1, this code reads 2; .*{FIX}"):
        load_retriever(index)


@pytest.mark.parametrize(
    ("files", "message"),
    [(None, "lists no files"), ({PASSAGES_FILE: {"sha256": "0" * 64}}, "unreadable")],
    ids=["no-manifest", "entry-without-size"],
)
def test_a_manifest_that_is_missing_or_malformed_asks_for_a_rebuild(index, files, message):
    meta_path = index / "exsearch_index.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "files": files}))
    with pytest.raises(CorruptIndex, match=rf"{message}.*{FIX}"):
        load_retriever(index)


def test_the_meta_file_lists_every_other_file_with_its_size_and_hash(index):
    meta = json.loads((index / "exsearch_index.json").read_text())
    bm25s_files = {
        SCORES,
        OFFSETS,
        "indices.csc.index.npy",
        "params.index.json",
        "vocab.index.json",
    }
    assert set(meta["files"]) == bm25s_files | {PASSAGES_FILE, OFFSETS_FILE}
    assert all(f["bytes"] == (index / n).stat().st_size for n, f in meta["files"].items())
    assert all(len(f["sha256"]) == 64 for f in meta["files"].values())


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
    with pytest.raises(SystemExit, match=rf"error: {index}[:/].*{FIX}"):
        module.main([*args, "--index", str(index), "--questions", "questions.jsonl"])
