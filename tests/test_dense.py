import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "sentence_transformers",
    reason="dense retrieval needs the `dense` extra (sentence-transformers)",
)

from exsearch.config.params import IndexConfig  # noqa: E402
from exsearch.retrieval import (  # noqa: E402
    BM25Retriever,
    Hit,
    dense,  # noqa: E402
    load_retriever,
)
from exsearch.retrieval.dense import DenseRetriever, build_dense_index  # noqa: E402
from exsearch.retrieval.embedding import load_encoder, passage_text  # noqa: E402
from exsearch.schema import Passage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"

PASSAGES = [
    Passage("p0", "Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    Passage("p1", "Lima", "Lima is the capital and the largest city of Peru."),
    Passage("p2", "Paris", "Paris is the capital and most populous city of France."),
    Passage("p3", "Marathon", "Runners ran the marathon; running long races needs training."),
    Passage("p4", "Mount Everest", "Everest is Earth's highest mountain above sea level."),
    Passage("p5", "Röntgen", "Wilhelm Röntgen discovered X-rays in 1895."),
    Passage("p6", "Amazon", "The Amazon river flows through Peru, Colombia and Brazil."),
    Passage("p7", "", "A passage without a title about the Andes mountains."),
]
QUERIES = ["who wrote hamlet", "capital of peru", "highest mountain", "x-rays", "river in brazil"]


def _ranked(results: list[list[Hit]]) -> list[list[str]]:
    return [[h.passage.id for h in hits] for hits in results]


def _scores(results: list[list[Hit]]) -> list[list[float]]:
    return [[h.score for h in hits] for hits in results]


class TableEncoder:
    """A stand-in encoder: a fixed vector per text, so expected scores are known exactly."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.calls = 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        return np.stack([self.table[t] for t in texts])


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A random 1-layer BERT with the project's locally trained tokenizer; mean pooling."""
    import torch
    from tiny_model import build_tokenizer
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer(vocab_size=512)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_encoder")
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cfg(encoder_dir) -> IndexConfig:
    return IndexConfig(kind="dense", dense_model=str(encoder_dir), dense_batch_size=3)


@pytest.fixture(scope="module")
def retriever(cfg) -> DenseRetriever:
    return DenseRetriever.build(PASSAGES, cfg)


def test_query_equal_to_a_passage_retrieves_that_passage_first(retriever):
    results = retriever.search([passage_text(p) for p in PASSAGES], k=2)
    assert [hits[0].passage for hits in results] == PASSAGES
    assert all(hits[0].score == pytest.approx(1.0, abs=1e-5) for hits in results)


def test_hits_are_ranked_best_first_with_one_based_ranks(retriever):
    for hits in retriever.search(QUERIES, k=5):
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_batched_search_equals_one_by_one(retriever):
    batched = retriever.search(QUERIES, k=4)
    single = [retriever.search([q], k=4)[0] for q in QUERIES]
    assert _ranked(batched) == _ranked(single)
    np.testing.assert_allclose(_scores(batched), _scores(single), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_search_matches_brute_force_numpy(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    passages = [Passage(f"p{i}", f"t{i}", f"text {i}") for i in range(500)]
    queries = [f"q{i}" for i in range(7)]
    vectors = rng.normal(size=(len(passages) + len(queries), 16)).astype(np.float32)
    texts = [passage_text(p) for p in passages] + queries
    encoder = TableEncoder(dict(zip(texts, vectors, strict=True)))
    retriever = DenseRetriever.build(passages, IndexConfig(dense_dtype=dtype), encoder=encoder)
    # Small chunks, so the running top-k is merged across many of them.
    monkeypatch.setattr(dense, "SEARCH_CHUNK_ROWS", 37)

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    stored = unit[: len(passages)].astype(dtype).astype(np.float32)
    scores = unit[len(passages) :] @ stored.T
    k = 10
    results = retriever.search(queries, k=k)
    for hits, row in zip(results, scores, strict=True):
        best = np.lexsort((np.arange(len(row)), -row))[:k]
        assert [h.passage.id for h in hits] == [f"p{i}" for i in best]
        np.testing.assert_allclose([h.score for h in hits], row[best], rtol=1e-5)


def test_k_larger_than_the_corpus_returns_every_passage_once(retriever):
    hits = retriever.search(["capital of peru"], k=100)[0]
    assert sorted(h.passage.id for h in hits) == sorted(p.id for p in PASSAGES)
    assert [h.rank for h in hits] == list(range(1, len(PASSAGES) + 1))


def test_empty_query_list_and_blank_queries_return_no_passages(cfg):
    encoder = TableEncoder({})
    retriever = DenseRetriever(np.eye(2, dtype=np.float32), cfg, PASSAGES[:2], encoder)
    assert retriever.search([], k=3) == []
    assert retriever.search(["", "   "], k=3) == [[], []]
    assert encoder.calls == 0


def test_invalid_k_and_single_string_are_rejected(retriever):
    with pytest.raises(ValueError, match="k must be"):
        retriever.search(["hamlet"], k=0)
    with pytest.raises(TypeError, match="list of queries"):
        retriever.search("hamlet", k=1)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip_gives_same_results(retriever, tmp_path, mmap):
    retriever.save(tmp_path / "index")
    loaded = DenseRetriever.load(tmp_path / "index", mmap=mmap)  # loads the model itself
    assert len(loaded) == len(PASSAGES) and loaded.dim == retriever.dim
    assert loaded.config == retriever.config
    assert list(loaded.iter_passages()) == PASSAGES
    before, after = retriever.search(QUERIES, k=4), loaded.search(QUERIES, k=4)
    assert _ranked(after) == _ranked(before)
    np.testing.assert_allclose(_scores(after), _scores(before), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_build_equals_in_memory_build(cfg, tmp_path, dtype):
    cfg = cfg.model_copy(update={"dense_dtype": dtype})
    stats = build_dense_index(iter(PASSAGES), cfg, tmp_path / "index", show_progress=False)
    assert (stats.passages, stats.dim) == (len(PASSAGES), 32)
    assert np.load(tmp_path / "index" / "embeddings.npy").dtype == np.dtype(dtype)
    loaded = DenseRetriever.load(tmp_path / "index", mmap=True)
    in_memory = DenseRetriever.build(PASSAGES, cfg)
    assert _ranked(loaded.search(QUERIES, k=4)) == _ranked(in_memory.search(QUERIES, k=4))


def test_load_retriever_picks_the_retriever_of_each_kind(retriever, tmp_path):
    retriever.save(tmp_path / "dense")
    BM25Retriever.build(PASSAGES, IndexConfig()).save(tmp_path / "bm25")
    assert isinstance(load_retriever(tmp_path / "dense", mmap=True), DenseRetriever)
    assert isinstance(load_retriever(tmp_path / "bm25", mmap=True), BM25Retriever)


def test_an_index_whose_meta_names_no_kind_asks_for_a_rebuild(tmp_path):
    BM25Retriever.build(PASSAGES, IndexConfig()).save(tmp_path)
    meta = json.loads((tmp_path / "exsearch_index.json").read_text())
    del meta["kind"]
    (tmp_path / "exsearch_index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"exsearch_index\.json: unknown index kind None.*rebuild"):
        load_retriever(tmp_path)


def test_loading_the_wrong_kind_is_a_clear_error(retriever, tmp_path):
    retriever.save(tmp_path / "dense")
    BM25Retriever.build(PASSAGES, IndexConfig()).save(tmp_path / "bm25")
    with pytest.raises(ValueError, match="a bm25 index, not a dense one.*load_retriever"):
        DenseRetriever.load(tmp_path / "bm25")
    with pytest.raises(ValueError, match="a dense index, not a bm25 one"):
        BM25Retriever.load(tmp_path / "dense")


def test_a_missing_index_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_index: no such index folder"):
        load_retriever(tmp_path / "no_index")
    with pytest.raises(FileNotFoundError, match="exsearch_index.json"):
        DenseRetriever.load(tmp_path)


def test_a_truncated_index_asks_for_a_rebuild(retriever, tmp_path):
    retriever.save(tmp_path)
    meta = json.loads((tmp_path / "exsearch_index.json").read_text())
    meta["passages"] += 1
    (tmp_path / "exsearch_index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="rebuild it with `dvc repro index`"):
        DenseRetriever.load(tmp_path)


def test_empty_corpus_is_a_clear_error(cfg, tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        DenseRetriever.build([], cfg)
    with pytest.raises(ValueError, match="corpus is empty"):
        build_dense_index(iter([]), cfg, tmp_path)


def test_a_missing_model_says_how_to_fetch_it(tmp_path):
    with pytest.raises(OSError, match=r"(?s)index.dense_model.*fetch_dense_model.py"):
        load_encoder(str(tmp_path / "no_model"))


def test_the_model_loads_only_when_a_query_needs_it(retriever, tmp_path):
    retriever.save(tmp_path)
    meta = json.loads((tmp_path / "exsearch_index.json").read_text())
    meta["config"]["dense_model"] = str(tmp_path / "gone")
    (tmp_path / "exsearch_index.json").write_text(json.dumps(meta))
    loaded = DenseRetriever.load(tmp_path)
    assert list(loaded.iter_passages()) == PASSAGES
    assert loaded.search([], k=1) == []
    with pytest.raises(OSError, match="gone"):
        loaded.search(["hamlet"], k=1)


def test_stages_open_a_dense_index_with_its_encoder_so_a_missing_one_fails_first(
    retriever, tmp_path
):
    from exsearch.retrieval import open_index

    retriever.save(tmp_path)
    assert open_index(tmp_path)._encoder is not None  # loaded before any LLM would be
    meta = json.loads((tmp_path / "exsearch_index.json").read_text())
    meta["config"]["dense_model"] = str(tmp_path / "gone")
    (tmp_path / "exsearch_index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"(?s)index\.dense_model: cannot load .*gone"):
        open_index(tmp_path)


def test_a_non_finite_embedding_is_refused_read_into_memory_and_by_the_hash_when_mapped(
    retriever, tmp_path
):
    retriever.save(tmp_path)
    emb = np.load(tmp_path / "embeddings.npy", mmap_mode="r+")
    emb[1, 0] = np.nan
    emb.flush()
    with pytest.raises(ValueError, match=r"embeddings\.npy: an embedding is not finite"):
        load_retriever(tmp_path)
    with pytest.raises(ValueError, match=r"embeddings\.npy: its content differs from the SHA"):
        load_retriever(tmp_path, mmap=True, verify=True)


def test_a_query_model_of_another_size_is_rejected(cfg):
    encoder = TableEncoder({"q": np.ones(3, dtype=np.float32)})
    retriever = DenseRetriever(np.eye(2, dtype=np.float32), cfg, PASSAGES[:2], encoder)
    with pytest.raises(ValueError, match="3-dim queries.*2-dim passages"):
        retriever.search(["q"], k=1)


def test_index_stage_builds_the_kind_params_ask_for(encoder_dir, tmp_path):
    from stages import index as stage

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PASSAGES))
    params = tmp_path / "params.yaml"
    params.write_text(
        f"prepare: {{train: [], dev: []}}\nindex: {{kind: dense, dense_model: '{encoder_dir}'}}\n"
    )
    out = tmp_path / "runs" / "index"
    stats = stage.main(["--params", str(params), "--corpus", str(corpus), "--out", str(out)])
    assert stats.passages == len(PASSAGES)
    loaded = load_retriever(out)
    assert isinstance(loaded, DenseRetriever)
    assert loaded.search([passage_text(PASSAGES[1])], k=1)[0][0].passage == PASSAGES[1]


def test_index_stage_with_a_missing_model_exits_with_the_fix(tmp_path):
    from stages import index as stage

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(PASSAGES[0].to_dict()) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text(
        f"prepare: {{train: [], dev: []}}\n"
        f"index: {{kind: dense, dense_model: '{tmp_path / 'no_model'}'}}\n"
    )
    out = tmp_path / "index"
    with pytest.raises(SystemExit, match="fetch_dense_model.py"):
        stage.main(["--params", str(params), "--corpus", str(corpus), "--out", str(out)])
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL_MODEL.is_dir(), reason="run `python scripts/fetch_dense_model.py` for the real model"
)
def test_real_model_finds_paraphrased_passages():
    retriever = DenseRetriever.build(
        PASSAGES, IndexConfig(kind="dense", dense_model=str(REAL_MODEL))
    )
    # No word of these queries (but stop-words) occurs in the passage they should find.
    queries = {
        "Which playwright authored the Danish prince drama?": "p0",
        "tallest peak on the planet": "p4",
        "Who found radiation that can see through the body?": "p5",
        "long-distance footrace": "p3",
    }
    results = retriever.search(list(queries), k=1)
    assert [hits[0].passage.id for hits in results] == list(queries.values())
