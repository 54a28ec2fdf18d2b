import json

import pytest

from exsearch.config.params import IndexConfig
from exsearch.retrieval import BM25Retriever, Hit, build_index, format_passage, shown_titles
from exsearch.schema import Passage

PASSAGES = [
    Passage("p0", "Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    Passage("p1", "Lima", "Lima is the capital and the largest city of Peru."),
    Passage("p2", "Paris", "Paris is the capital and most populous city of France."),
    Passage("p3", "Marathon", "Runners ran the marathon; running long races needs training."),
    Passage("p4", "Mount Everest", "Everest is Earth's highest mountain above sea level."),
    Passage("p5", "Röntgen", "Wilhelm Röntgen discovered X-rays in 1895."),
]
QUERIES = [
    "who wrote hamlet",
    "capital of peru",
    "largest city capital",
    "run a race",
    "highest mountain",
    "Röntgen x-rays",
]


def _ranked(results: list[list[Hit]]) -> list[list[tuple[str, float, int]]]:
    return [[(h.passage.id, h.score, h.rank) for h in hits] for hits in results]


@pytest.fixture(scope="module")
def retriever() -> BM25Retriever:
    return BM25Retriever.build(PASSAGES, IndexConfig())


def test_query_equal_to_title_retrieves_that_passage_first(retriever):
    for p in PASSAGES:
        assert retriever.search([p.title], k=3)[0][0].passage == p


def test_hits_are_ranked_best_first_with_one_based_ranks(retriever):
    hits = retriever.search(["largest city capital"], k=5)[0]
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.passage.id for h in hits} == {"p1", "p2"}


def test_stemming_matches_other_word_forms(retriever):
    assert retriever.search(["run a race"], k=1)[0][0].passage.id == "p3"


def test_scores_equal_bm25s_own_retrieve(retriever):
    # search() does its own top-k selection over bm25s scores; it must agree with bm25s.
    ids = [
        retriever._tokenizer.tokenize([q], update_vocab=False, show_progress=False)[0]
        for q in QUERIES
    ]
    docs, scores = retriever._bm25.retrieve(ids, k=len(PASSAGES), show_progress=False)
    for hits, d_row, s_row in zip(
        retriever.search(QUERIES, k=len(PASSAGES)), docs, scores, strict=True
    ):
        expected = {(int(d), float(s)) for d, s in zip(d_row, s_row, strict=True) if s > 0}
        assert {(int(h.passage.id[1:]), h.score) for h in hits} == expected


def test_batched_search_equals_one_by_one(retriever):
    batched = retriever.search(QUERIES, k=4)
    single = [retriever.search([q], k=4)[0] for q in QUERIES]
    threaded = retriever.search(QUERIES, k=4, n_threads=2)
    assert _ranked(batched) == _ranked(single) == _ranked(threaded)


def test_search_is_deterministic(retriever):
    assert _ranked(retriever.search(QUERIES, k=6)) == _ranked(retriever.search(QUERIES, k=6))


def test_empty_query_returns_no_passages(retriever):
    results = retriever.search(["", "   ", "capital of peru"], k=3)
    assert results[0] == [] and results[1] == []
    assert results[2][0].passage.id == "p1"


def test_stop_word_only_query_returns_no_passages(retriever):
    assert retriever.search(["the of and is", "what is it"], k=3) == [[], []]


def test_query_of_unknown_words_returns_no_passages(retriever):
    assert retriever.search(["zyxwv qqqq"], k=3) == [[]]


def test_k_larger_than_corpus_is_clamped():
    passages = [Passage(str(i), f"Topic {i}", f"common word and token{i}") for i in range(4)]
    r = BM25Retriever.build(passages, IndexConfig())
    hits = r.search(["common word"], k=50)[0]
    assert sorted(h.passage.id for h in hits) == ["0", "1", "2", "3"]


def test_passages_sharing_no_term_are_not_returned(retriever):
    hits = retriever.search(["shakespeare"], k=6)[0]
    assert [h.passage.id for h in hits] == ["p0"]


def test_invalid_k_and_single_string_are_rejected(retriever):
    with pytest.raises(ValueError, match="k must be"):
        retriever.search(["hamlet"], k=0)
    with pytest.raises(TypeError, match="list of queries"):
        retriever.search("hamlet", k=1)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip_gives_same_results(retriever, tmp_path, mmap):
    retriever.save(tmp_path / "index")
    loaded = BM25Retriever.load(tmp_path / "index", mmap=mmap)
    assert len(loaded) == len(PASSAGES)
    assert loaded.config == retriever.config
    assert _ranked(loaded.search(QUERIES, k=4)) == _ranked(retriever.search(QUERIES, k=4))
    assert loaded.search(["Röntgen"], k=1)[0][0].passage == PASSAGES[5]
    assert list(loaded.iter_passages()) == PASSAGES


def test_streamed_build_equals_in_memory_build(retriever, tmp_path):
    stats = build_index(iter(PASSAGES), IndexConfig(), tmp_path / "index", show_progress=False)
    assert stats.passages == len(PASSAGES)
    loaded = BM25Retriever.load(tmp_path / "index", mmap=True)
    assert _ranked(loaded.search(QUERIES, k=4)) == _ranked(retriever.search(QUERIES, k=4))


def test_query_settings_come_from_the_saved_index(tmp_path):
    cfg = IndexConfig(method="bm25+", stemmer=None, stopwords=None, k1=1.2, b=0.5)
    BM25Retriever.build(PASSAGES, cfg).save(tmp_path / "index")
    loaded = BM25Retriever.load(tmp_path / "index")
    assert loaded.config == cfg
    # Without stemming "run" does not match "Runners"/"running"; without stop-words "the" is a term.
    assert loaded.search(["run"], k=3) == [[]]
    assert loaded.search(["the"], k=6)[0]


def test_unknown_stemmer_is_a_clear_error():
    with pytest.raises(ValueError, match="index.stemmer: unknown PyStemmer language 'klingon'"):
        BM25Retriever.build(PASSAGES, IndexConfig(stemmer="klingon"))


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="corpus is empty"):
        BM25Retriever.build([], IndexConfig())


def test_loading_a_folder_without_index_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="exsearch_index.json"):
        BM25Retriever.load(tmp_path)


def test_loading_a_truncated_passage_file_fails(retriever, tmp_path):
    retriever.save(tmp_path)
    meta = json.loads((tmp_path / "exsearch_index.json").read_text())
    meta["passages"] += 1
    (tmp_path / "exsearch_index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="rebuild it with `dvc repro index`"):
        BM25Retriever.load(tmp_path)


def test_format_passage():
    p = Passage("x", "Lima", "Lima is the capital\nof Peru.")
    assert format_passage(p) == "Title: Lima Content: Lima is the capital\nof Peru."
    assert format_passage(p, 1) == "[1] Title: Lima Content: Lima is the capital\nof Peru."
    assert format_passage(p, 3, max_words=3) == "[3] Title: Lima Content: Lima is the"
    assert format_passage(p, max_words=100) == "Title: Lima Content: Lima is the capital of Peru."


def test_format_passage_numbers_are_one_based():
    with pytest.raises(ValueError, match="1-based"):
        format_passage(PASSAGES[0], 0)


def test_index_stage_writes_a_loadable_index(tmp_path):
    from stages import index as stage

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PASSAGES))
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {train: [], dev: []}\nindex: {stemmer: null}\n")
    out = tmp_path / "runs" / "index"
    stats = stage.main(["--params", str(params), "--corpus", str(corpus), "--out", str(out)])
    assert stats.passages == len(PASSAGES)
    loaded = BM25Retriever.load(out)
    assert loaded.config.stemmer is None
    assert loaded.search(["capital of peru"], k=1)[0][0].passage == PASSAGES[1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["index"]  # no temporary left


def test_index_stage_names_the_bad_record(tmp_path):
    from stages import index as stage

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "title": "no text"}\n')
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {train: [], dev: []}\n")
    with pytest.raises(SystemExit, match="corpus.jsonl: record 2"):
        stage.main(["--params", str(params), "--corpus", str(corpus), "--out", str(tmp_path / "i")])
    assert not (tmp_path / "i").exists()


def test_shown_titles_reads_back_what_format_passage_rendered():
    a = Passage(id="1", title="Paris: a city", text="Content: of the Seine. It is big.")
    b = Passage(id="2", title="Seine", text="A river.")
    turn = "<documents>\n" + "\n".join([format_passage(a, 1), format_passage(b, 2, max_words=1)])
    assert shown_titles(turn + "\n</documents>") == ["Paris: a city", "Seine"]
    assert shown_titles("Question: what is [1] Title: x?") == []
