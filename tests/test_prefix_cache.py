import numpy as np
import pytest

from exsearch.checkpoints.loading import load_model
from exsearch.generation.hf import HFGenerator
from exsearch.generation.prefix_cache import PrefixCache, common_prefix

QUESTIONS = ["Who founded the band?", "What year", "x", "The capital city of the state"]
STOPS = ["</search>", "</answer>"]
DOCS = "<|im_end|>\n<|im_start|>user\n<documents>the river was founded in 1820</documents>"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, "float32", "cpu")


def first_prompts(gen: HFGenerator) -> list[str]:
    return [gen.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


def next_turn(prompts: list[str], completions) -> list[str]:
    """What the agent does: prompt + generated text + a new user turn + the assistant header."""
    return [
        p + c.text + DOCS + "<|im_end|>\n<|im_start|>assistant\n<record>"
        for p, c in zip(prompts, completions, strict=True)
    ]


def two_turns(gen: HFGenerator, **decoding) -> list:
    first = first_prompts(gen)
    out = gen.generate(first, max_new_tokens=6, stop=STOPS, **decoding)
    return gen.generate(next_turn(first, out), max_new_tokens=6, stop=STOPS, **decoding)


def assert_same(a, b):
    assert [(c.text, c.n_tokens, c.finish, c.stop) for c in a] == [
        (c.text, c.n_tokens, c.finish, c.stop) for c in b
    ]
    assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b], abs=1e-3)


def test_common_prefix_counts_equal_leading_tokens():
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix(np.array([7]), np.array([1])) == 0
    assert common_prefix(np.array([], dtype=np.int64), np.array([1])) == 0


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_second_turn_reuses_the_first_and_generates_exactly_as_without_cache(
    loaded, batch_size, temperature
):
    cached = HFGenerator(*loaded, batch_size=batch_size)
    plain = HFGenerator(*loaded, batch_size=batch_size, prefix_cache_tokens=0)
    decoding = {"temperature": temperature, "seed": 5}
    assert_same(two_turns(cached, **decoding), two_turns(plain, **decoding))
    # Every second-turn prompt starts with a whole first-turn sequence.
    stats = cached.prefix_cache
    assert stats.reused_tokens > sum(cached.count_tokens(first_prompts(cached)))
    assert plain.prefix_cache.reused_tokens == 0


def test_the_same_prompt_again_reuses_all_but_its_last_token(loaded):
    gen = HFGenerator(*loaded, batch_size=4)
    prompts = first_prompts(gen)
    once = gen.generate(prompts, max_new_tokens=5)
    before = gen.prefix_cache.reused_tokens
    again = gen.generate(prompts, max_new_tokens=5)
    assert_same(once, again)
    assert gen.prefix_cache.reused_tokens - before == sum(n - 1 for n in gen.count_tokens(prompts))


def test_reuse_stops_where_the_tokens_differ(loaded):
    gen = HFGenerator(*loaded, batch_size=4)
    gen.generate(["<think>the city was founded in 1820"], max_new_tokens=3)
    same = gen.tokenizer("<think>the city was founded", add_special_tokens=False).input_ids
    other = gen.tokenizer("<think>the river", add_special_tokens=False).input_ids
    longer = gen.tokenizer("<think>the city was founded in 1820 and", add_special_tokens=False)
    _, n_same = gen.prefix_cache.match(same)
    _, n_other = gen.prefix_cache.match(other)
    _, n_longer = gen.prefix_cache.match(longer.input_ids)
    assert n_same == len(same) - 1  # the last prompt token always goes through the model
    assert n_other == common_prefix(np.array(other), np.array(same))
    assert n_longer >= len(same)


def test_kept_tokens_never_exceed_the_budget_and_prefixes_of_newer_rows_are_dropped(loaded):
    gen = HFGenerator(*loaded, batch_size=4, prefix_cache_tokens=10_000)
    first = first_prompts(gen)
    out = gen.generate(first, max_new_tokens=6, stop=STOPS)
    assert len(gen.prefix_cache) == len(QUESTIONS)
    gen.generate(next_turn(first, out), max_new_tokens=6, stop=STOPS)
    kept = gen.prefix_cache.sequences()
    # A first turn whose tokens survive re-tokenisation is a prefix of its second: dropped.
    assert len(QUESTIONS) <= len(kept) < 2 * len(QUESTIONS)
    for i, a in enumerate(kept):
        assert not any(
            j != i and len(a) <= len(b) and common_prefix(a, b) == len(a)
            for j, b in enumerate(kept)
        )

    small = HFGenerator(*loaded, batch_size=4, prefix_cache_tokens=60)
    small.generate(first, max_new_tokens=6)
    assert 0 < small.prefix_cache.kept_tokens <= 60


def test_a_zero_budget_keeps_nothing(loaded):
    gen = HFGenerator(*loaded, batch_size=4, prefix_cache_tokens=0)
    two_turns(gen, temperature=0.0)
    assert len(gen.prefix_cache) == 0 and gen.prefix_cache.reused_tokens == 0


def test_negative_budget_is_an_error():
    with pytest.raises(ValueError, match="max_tokens"):
        PrefixCache(-1)


def test_a_prefix_shared_by_a_batch_is_encoded_once_and_changes_nothing(loaded):
    gen = HFGenerator(*loaded, batch_size=4)
    plain = HFGenerator(*loaded, batch_size=4, prefix_cache_tokens=0)
    same = [gen.chat_prompt([{"role": "user", "content": " ".join(QUESTIONS)}])] * 4
    decoding = {"max_new_tokens": 6, "temperature": 1.0, "seed": 2}
    assert_same(gen.generate(same, **decoding), plain.generate(same, **decoding))
    n = gen.count_tokens(same[:1])[0]
    assert gen.prefix_cache.reused_tokens == 4 * (n - 1)


def test_rows_are_encoded_in_groups_of_similar_length():
    from exsearch.generation.prefill import length_groups

    # Padding 30 up to 200 costs more than a second forward pass: two groups, shortest first.
    assert length_groups([200, 30, 190, 25], overhead=32) == [[3, 1], [2, 0]]
    # Lengths this close are not worth another pass.
    assert length_groups([200, 190, 180, 170], overhead=64) == [[3, 2, 1, 0]]
    # Three clusters, three groups; a huge overhead keeps one.
    lengths = [5, 400, 100, 6, 410, 90]
    assert length_groups(lengths, overhead=32) == [[0, 3], [5, 2], [1, 4]]
    assert length_groups(lengths, overhead=10_000) == [[0, 3, 5, 2, 1, 4]]
    assert length_groups([7]) == [[0]]


def test_grouped_encoding_generates_what_each_prompt_alone_does(loaded, monkeypatch):
    """Rows whose cached and new parts differ in length: each group trims its own padding.

    Cache buffers come filled with NaN, so a padding column left unwritten would show.
    """
    from exsearch.generation import prefill, prefix_cache, running_batch

    def nan_filled(like, rows, columns, room=prefix_cache.ROOM):
        return like.new_full((rows, like.shape[-3], columns + room, like.shape[-1]), float("nan"))

    for module in (prefill, prefix_cache, running_batch):
        monkeypatch.setattr(module, "empty_with_room", nan_filled)
    model, tok = loaded
    gen = HFGenerator(model, tok, batch_size=6)
    questions = [q * (1 + i) for i, q in enumerate(QUESTIONS + QUESTIONS[:2])]
    first = [gen.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    out = gen.generate(first, max_new_tokens=4, stop=STOPS)
    new_parts = ["<|im_end|>\n", DOCS, DOCS + " and the city" * 30]
    turns = [p + c.text + new_parts[i % 3] for i, (p, c) in enumerate(zip(first, out, strict=True))]
    got = gen.generate(turns, max_new_tokens=6)
    assert gen.prefix_cache.reused_tokens > 0
    for prompt, c in zip(turns, got, strict=True):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert c.text == tok.decode(ref[0, ids.shape[1] :])


def test_a_growing_cache_holds_what_concatenation_would():
    import torch

    from exsearch.generation.prefix_cache import cache_layers, new_cache

    torch.manual_seed(0)
    chunks = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 300, 1)]
    cache = new_cache()
    for c in chunks:
        keys, values = cache.update(c, -c, 0)
    assert torch.equal(keys, torch.cat(chunks, 2)) and torch.equal(values, -keys)
    assert cache.get_seq_length() == 308
    cache.batch_select_indices(torch.tensor([2, 0]))
    keys, _ = cache.update(chunks[1][:2], chunks[1][:2], 0)
    assert torch.equal(keys, torch.cat([torch.cat(chunks, 2)[[2, 0]], chunks[1][:2]], 2))
    held = new_cache([(k[:1], v[:1]) for k, v in cache_layers(cache)])
    assert torch.equal(cache_layers(held)[0][0], keys[:1])


def test_leaving_rows_are_replaced_by_rows_from_the_end_of_the_batch():
    import torch

    from exsearch.generation.prefix_cache import ROOM, cache_layers, new_cache
    from exsearch.generation.running_batch import RunningBatch

    keys = torch.randn(5, 2, 3, 4)
    buf = torch.cat([keys, torch.zeros(5, 2, ROOM, 4)], 2)
    batch = RunningBatch(
        rows=[10, 11, 12, 13, 14],
        fed=torch.arange(15).reshape(5, 3),
        mask=torch.ones(5, 3, dtype=torch.long),
        positions=torch.full((5, 1), 2),
        cache=new_cache([(buf, -buf)], length=3),
        logits=torch.arange(5.0).unsqueeze(1),
    )
    order = batch.keep_only([0, 2, 4])  # rows 1 and 3 leave; row 4 takes the place of row 1
    assert order == [0, 4, 2] and batch.rows == [10, 14, 12]
    assert torch.equal(batch.fed[:, 0], torch.tensor([0, 12, 6]))
    assert torch.equal(batch.logits[:, 0], torch.tensor([0.0, 4.0, 2.0]))
    held, negated = cache_layers(batch.cache)[0]
    assert torch.equal(held, keys[[0, 4, 2]]) and torch.equal(negated, -held)
    # The next token is written into the room of the same buffer: nothing is copied.
    new = torch.randn(3, 2, 1, 4)
    appended, _ = batch.cache.update(new, new, 0)
    assert appended.data_ptr() == buf.data_ptr()
    assert torch.equal(appended, torch.cat([keys[[0, 4, 2]], new], 2))
