import copy

import pytest
import torch
from completions import clean_span, same_outputs

from exsearch.checkpoints.loading import load_model
from exsearch.config.params import GenerationConfig, ModelConfig
from exsearch.generation import Generator, make_generator
from exsearch.generation.decoding import cut_at_stop
from exsearch.generation.hf import HFGenerator
from exsearch.generation.next_token import TokenPicker
from exsearch.generation.running_batch import RunningBatch

QUESTIONS = [
    "Who founded the band?",
    "What year",
    "The capital city of the national state was founded in which year?",
    "x",
    "Which river is older?",
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, "float32", "cpu")


@pytest.fixture(scope="module")
def gen(loaded):
    return HFGenerator(*loaded, batch_size=4)


@pytest.fixture(scope="module")
def prompts(gen):
    return [gen.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_hf_generator_implements_the_generator_protocol(gen):
    assert isinstance(gen, Generator)


def test_make_generator_loads_the_hf_backend(tiny_model_dir):
    g = make_generator(tiny_model_dir, ModelConfig(device="cpu"), GenerationConfig(batch_size=3))
    assert isinstance(g, HFGenerator) and g.batch_size == 3


def test_chat_prompt_renders_the_template_with_generation_prompt(gen):
    msgs = [{"role": "user", "content": "hi"}]
    assert gen.chat_prompt(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert gen.chat_prompt(msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_count_tokens_counts_without_special_tokens(gen, prompts):
    counts = gen.count_tokens(["", "a", *prompts])
    assert counts[:2] == [0, 1]
    assert counts[2:] == [
        len(gen.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts
    ]


def test_greedy_is_deterministic_and_independent_of_batch_size(loaded, gen, prompts):
    out = gen.generate(prompts, max_new_tokens=12)
    same_outputs(out, gen.generate(prompts, max_new_tokens=12))
    for batch_size in (1, 3):
        same_outputs(
            out, HFGenerator(*loaded, batch_size=batch_size).generate(prompts, max_new_tokens=12)
        )


def test_waiting_prompts_join_as_rows_finish_without_changing_outputs(
    loaded, gen, prompts, monkeypatch
):
    # Stop strings taken from different points of the greedy texts make rows finish at
    # different steps, so with a batch of 2 a waiting prompt joins a running row.
    full = gen.generate(prompts, max_new_tokens=24)
    stops = [clean_span(c.text, 3 + 4 * i, 2) for i, c in enumerate(full[:3])]
    alone = HFGenerator(*loaded, batch_size=1).generate(prompts, max_new_tokens=24, stop=stops)
    assert len({c.n_tokens for c in alone}) > 1
    joins = []
    real_join = RunningBatch.join
    monkeypatch.setattr(RunningBatch, "join", lambda a, b: joins.append(len(b)) or real_join(a, b))
    for kw in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 3}):
        reference = HFGenerator(*loaded, batch_size=1).generate(
            prompts, max_new_tokens=24, stop=stops, **kw
        )
        refilled = HFGenerator(*loaded, batch_size=2).generate(
            prompts, max_new_tokens=24, stop=stops, **kw
        )
        same_outputs(reference, refilled)
    assert joins, "no prompt joined a running batch"


def test_room_left_unwritten_in_cache_buffers_is_never_read(loaded, gen, prompts, monkeypatch):
    """Cache buffers are allocated uninitialised; filling them with NaN changes no output."""
    from exsearch.generation import prefill, prefix_cache, running_batch

    def nan_filled(like, rows, columns, room=prefix_cache.ROOM):
        return like.new_full((rows, like.shape[-3], columns + room, like.shape[-1]), float("nan"))

    full = gen.generate(prompts, max_new_tokens=24)
    stops = [clean_span(c.text, 3 + 4 * i, 2) for i, c in enumerate(full[:3])]
    first = HFGenerator(*loaded, batch_size=1).generate(prompts, max_new_tokens=24, stop=stops)
    turns = [
        p + c.text + "<|im_end|>\n<|im_start|>user\nthe river" * (i % 3)
        for i, (p, c) in enumerate(zip(prompts, first, strict=True))
    ]
    reference = HFGenerator(*loaded, batch_size=1).generate(turns, max_new_tokens=24, stop=stops)
    for module in (prefill, prefix_cache, running_batch):
        monkeypatch.setattr(module, "empty_with_room", nan_filled)
    nan_gen = HFGenerator(*loaded, batch_size=2)  # rows leave and join; turn 2 reuses turn 1
    nan_gen.generate(prompts, max_new_tokens=24, stop=stops)
    same_outputs(reference, nan_gen.generate(turns, max_new_tokens=24, stop=stops))
    assert nan_gen.prefix_cache.reused_tokens > 0


def test_greedy_matches_unbatched_transformers_generate(loaded, gen, prompts):
    model, tok = loaded
    out = gen.generate(prompts, max_new_tokens=8)
    for prompt, c in zip(prompts, out, strict=True):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        ref = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
        assert c.text == tok.decode(ref[0, ids.shape[1] :])


def test_sampling_with_the_same_seed_reproduces_whatever_the_batch_size(loaded, gen, prompts):
    kw = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 11}
    out = gen.generate(prompts, **kw)
    same_outputs(out, gen.generate(prompts, **kw))
    same_outputs(out, HFGenerator(*loaded, batch_size=2).generate(prompts, **kw))
    other = gen.generate(prompts, **{**kw, "seed": 12})
    assert [c.text for c in other] != [c.text for c in out]


def test_identical_prompts_draw_different_samples(gen, prompts):
    out = gen.generate([prompts[0]] * 4, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0)
    assert len({c.text for c in out}) > 1


def test_per_prompt_seeds_make_a_sample_independent_of_the_other_prompts(gen, prompts):
    kw = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 1.0}
    both = gen.generate(prompts[:2], seed=[5, 6], **kw)
    alone = gen.generate(prompts[1:2], seed=[6], **kw)
    same_outputs(both[1:], alone)


def test_wrong_number_of_seeds_is_an_error(gen, prompts):
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        gen.generate(prompts[:3], max_new_tokens=2, temperature=1.0, top_p=1.0, seed=[1, 2])


def test_tiny_top_p_samples_the_greedy_token(gen, prompts):
    greedy = gen.generate(prompts, max_new_tokens=10)
    nucleus = gen.generate(prompts, max_new_tokens=10, temperature=1.5, top_p=1e-6, seed=3)
    same_outputs(greedy, nucleus)


def inverse_cdf(u, p, index):
    cum = p.cumsum(-1)
    return index.gather(-1, torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(-1))).squeeze(-1)


def test_fast_nucleus_sampling_equals_full_sort_sampling():
    torch.manual_seed(0)
    # Peaked rows (nucleus inside the top 64) and flat rows (full-sort fallback) in one batch.
    probs = torch.cat([torch.randn(6, 500) * 8, torch.randn(6, 500) * 0.1]).softmax(-1)
    u = torch.rand(12)
    sorted_p, order = probs.sort(-1, descending=True)
    for top_p in (0.5, 0.95, 0.999):
        kept = sorted_p * ((sorted_p.cumsum(-1) - sorted_p) < top_p)
        expected = inverse_cdf(u, kept, order)
        assert torch.equal(TokenPicker(1.0, top_p, [])._sample(u, probs), expected)
    vocab_order = torch.arange(500).expand(12, -1)
    assert torch.equal(
        TokenPicker(1.0, 1.0, [])._sample(u, probs), inverse_cdf(u, probs, vocab_order)
    )


def test_max_new_tokens_gives_finish_length(gen, prompts):
    out = gen.generate(prompts, max_new_tokens=5, stop=["never-generated-zz"])
    assert all((c.finish, c.stop, c.n_tokens) == ("length", None, 5) for c in out)
    assert all(c.logprob is not None and c.logprob < 0 for c in out)


def test_stop_string_cuts_the_text_right_after_it(gen, prompts):
    full = gen.generate(prompts[:1], max_new_tokens=24)[0]
    stop = clean_span(full.text, 8, 3)
    [done] = gen.generate(prompts[:1], max_new_tokens=24, stop=["unused-stop", stop])
    end = full.text.index(stop) + len(stop)
    assert (done.text, done.finish, done.stop) == (full.text[:end], "stop", stop)
    assert done.n_tokens < full.n_tokens
    # n_tokens and logprob cover exactly the tokens generated up to the stop.
    [prefix] = gen.generate(prompts[:1], max_new_tokens=done.n_tokens)
    assert prefix.text.startswith(done.text) and not prefix.text[:-1].endswith(stop)
    assert done.logprob == pytest.approx(prefix.logprob, abs=1e-4)


def greedy_ids(loaded, prompt, n):
    model, tok = loaded
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, ids.shape[1] :].tolist()


def test_stop_string_ending_inside_a_token_is_cut_mid_token(loaded, gen, prompts):
    tok = loaded[1]
    ids = greedy_ids(loaded, prompts[2], 24)
    text = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    # A multi-character token after a few tokens: the stop ends one character into it.
    j = next(
        j
        for j in range(3, len(ids))
        if text[j + 1].startswith(text[j])
        and len(text[j + 1]) - len(text[j]) > 1
        and "\ufffd" not in text[j + 1][-6:]
    )
    stop = text[j + 1][len(text[j]) - 2 : len(text[j]) + 1]
    [done] = gen.generate(prompts[2:3], max_new_tokens=24, stop=[stop])
    first = text[-1].index(stop) + len(stop)
    assert done.text == text[-1][:first] and done.stop == stop
    # n_tokens is the first token count whose text holds the stop.
    assert stop in text[done.n_tokens] and stop not in text[done.n_tokens - 1]
    assert len(text[done.n_tokens]) > len(done.text)


def test_eos_ends_a_sequence_without_a_stop_string(loaded, gen, prompts):
    model, tok = loaded
    full = gen.generate(prompts[:1], max_new_tokens=10)[0]
    generated = greedy_ids(loaded, prompts[0], 10)
    eos = generated[3]
    first = generated.index(eos)
    patched = copy.deepcopy(model)
    patched.generation_config.eos_token_id = eos
    [done] = HFGenerator(patched, tok).generate(prompts[:1], max_new_tokens=10, stop=["zzz"])
    assert (done.finish, done.stop, done.n_tokens) == ("stop", None, first + 1)
    assert done.text == tok.decode(generated[:first])
    assert full.text.startswith(done.text)


def test_empty_prompt_is_an_error(gen):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate(["a", ""], max_new_tokens=2)


def test_cut_at_stop_keeps_the_stop_that_ends_first():
    stops = ["</search>", "<finish>", "</s"]
    assert cut_at_stop("a</search>b<finish>", ["<finish>", "</search>"]) == (
        "a</search>",
        "</search>",
    )
    assert cut_at_stop("q</search> more", stops) == ("q</s", "</s")
    assert cut_at_stop("no stop here", stops) == ("no stop here", None)
