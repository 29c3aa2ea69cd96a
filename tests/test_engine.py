"""bashgpt's decode engine (bashgpt/inference/engine.py), reached through generate(custom_generate=...): the greedy
tokens of Transformers' own loop, top-k/top-p sampling that keeps what the warpers keep, a clear refusal of what it
does not do, and packed CPU weights that live only for the call."""

import gc
import weakref

import pytest
import torch
from conftest import VARIANTS, small_config
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from bashgpt import BashGPTForCausalLM
from bashgpt.inference import engine, packed_linear
from bashgpt.inference.engine import TokenPicker


@pytest.fixture
def packed_calls(monkeypatch):
    """How many linears ran on packed weights."""
    calls = []
    real = packed_linear.packed_linear
    monkeypatch.setattr(packed_linear, "packed_linear", lambda *a: calls.append(1) or real(*a))
    return calls


def _padded_batch():
    padded = torch.randint(2, 96, (3, 9))
    mask = torch.ones_like(padded)
    padded[1, :4] = padded[2, :2] = 0
    mask[1, :4] = mask[2, :2] = 0
    return padded, mask


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_engine_gives_the_greedy_tokens_of_stock_generate(norm, pos):
    torch.manual_seed(0)
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    ids = torch.randint(2, 96, (1, 7))
    padded, mask = _padded_batch()
    free = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    eos = free[5]  # a token greedy search reaches, so that rows stop and are padded
    cases = [dict(input_ids=ids, max_new_tokens=20),
             dict(input_ids=padded, attention_mask=mask, max_new_tokens=20),
             dict(input_ids=padded, attention_mask=mask, max_new_tokens=20, eos_token_id=eos),
             dict(input_ids=ids, max_new_tokens=20, min_new_tokens=15, eos_token_id=eos),
             dict(input_ids=ids, max_length=16, repetition_penalty=1.3)]
    for kwargs in cases:
        kwargs.update(do_sample=False, pad_token_id=0)
        ours = model.generate(**kwargs, custom_generate=engine.decode)
        assert torch.equal(ours, model.generate(**kwargs)), kwargs
    assert (model.generate(**cases[2], custom_generate=engine.decode) == 0).any()  # a stopped row was padded


def test_stock_generate_runs_no_engine_and_no_packed_weights(packed_calls, monkeypatch):
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (1, 5))
    monkeypatch.setattr(engine, "decode", lambda *a, **k: pytest.fail("the engine ran"))
    model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    model.generate(ids, max_new_tokens=6, do_sample=True, top_k=5, pad_token_id=0)
    assert not packed_calls


def test_engine_continues_from_a_cache_that_holds_the_prompts_start():
    """As the syntax guard calls it: the cache holds the first tokens, the rest of the prompt is fed once."""
    torch.manual_seed(0)
    model = BashGPTForCausalLM(small_config(position_embedding_type="rope")).eval()
    ids = torch.randint(2, 96, (1, 9))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :6], cache=cache, use_cache=True)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    resumed = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, custom_generate=engine.decode,
                             **kwargs)
    assert torch.equal(resumed, model.generate(ids, **kwargs))
    assert cache.get_seq_length() == resumed.shape[1] - 1


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_take_back_crops_the_cache_and_decodes_on_in_the_same_loop(pos):
    """A hook that cuts the row back (twice, once to its first new token) leaves greedy decoding where it would have been: the
    cache, positions and mask follow the cut. Stale entries left in the cache would change the tokens."""
    torch.manual_seed(0)
    model = BashGPTForCausalLM(small_config(position_embedding_type=pos)).eval()
    ids = torch.randint(2, 96, (1, 7))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cuts, seen = {12: 9, 15: 8}, []

    def take_back(row):
        seen.append(row.shape[0])
        return cuts.pop(row.shape[0], None)

    ours = model.generate(ids, custom_generate=engine.decode, take_back=take_back, **kwargs)
    assert torch.equal(ours, model.generate(ids, **kwargs)) and not cuts
    assert seen[:9] == [8, 9, 10, 11, 12, 10, 11, 12, 13] and seen[-1] == 19


def test_take_back_is_refused_for_several_rows_and_with_a_streamer():
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (2, 5))
    with pytest.raises(ValueError, match="take_back on 2 rows"):
        model.generate(ids, max_new_tokens=3, pad_token_id=0, custom_generate=engine.decode, take_back=lambda r: None)
    with pytest.raises(ValueError, match="take_back with a streamer"):
        engine.generate(model, ids[:1], max_new_tokens=3, pad_token_id=0, streamer=BaseStreamer(),
                        take_back=lambda r: None)


def test_engine_feeds_a_streamer_what_it_returns():
    class Collect(BaseStreamer):
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.reshape(-1))

        def end(self):
            self.ended = True

    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (1, 5))
    streamer = Collect()
    out = engine.generate(model, ids, max_new_tokens=9, do_sample=False, pad_token_id=0, streamer=streamer)
    assert streamer.ended
    assert torch.equal(torch.cat(streamer.parts), out[0])  # the prompt, then each new token


@pytest.mark.parametrize("extra, words", [
    (dict(num_beams=2), "beam search"),
    (dict(return_dict_in_generate=True, output_scores=True), "return_dict_in_generate"),
    (dict(prompt_lookup_num_tokens=3), "prompt-lookup"),
    (dict(use_cache=False), "use_cache=False"),
])
def test_engine_refuses_what_it_does_not_do(extra, words):
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (1, 5))
    with pytest.raises(ValueError, match=f"does not do {words}.*without custom_generate"):
        model.generate(ids, max_new_tokens=4, pad_token_id=0, custom_generate=engine.decode, **extra)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="packing needs oneDNN")
def test_packed_weights_live_only_for_the_call_and_follow_the_decode_batch(packed_calls, monkeypatch):
    """fp32 weights are packed for one row at batch 1 and for a batch above it (bf16 keeps the one-row layout),
    once per call and per layout; nothing packed outlives the call; either layout computes what F.linear does."""
    assert [packed_linear.layout_rows(torch.float32, r) for r in (1, 2, 32)] == [1, 32, 32]
    assert [packed_linear.layout_rows(torch.bfloat16, r) for r in (1, 2, 32)] == [1, 1, 1]
    model = BashGPTForCausalLM(small_config(hidden_size=64, num_attention_heads=4, vocab_size=512)).eval()
    if not packed_linear.packed_weights(model):
        pytest.skip("fp32 is not packed on this CPU")
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    real, packs, alive = packed_linear.pack, [], []

    def recording_pack(weight, layout):
        packs[-1].append(layout)
        packed = real(weight, layout)
        alive.append(weakref.ref(packed))
        return packed

    monkeypatch.setattr(packed_linear, "pack", recording_pack)
    for batch in (1, 3):
        packs.append([])
        engine.generate(model, torch.randint(2, 512, (batch, 5)), max_new_tokens=3, do_sample=False, pad_token_id=0)
    # a prompt's prefill packs for its steps: one layout per call
    assert packs == [[1] * linears, [packed_linear.MAX_ROWS] * linears]
    gc.collect()
    assert alive and not any(ref() is not None for ref in alive)  # the packed copies went with the call
    assert not any("forward" in vars(m) for m in model.modules())  # the plain forwards are back
    assert packed_calls

    packs.append([])  # one block around several calls packs once
    with torch.no_grad(), packed_linear.linears_packed(model):
        for _ in range(3):
            engine.generate(model, torch.randint(2, 512, (1, 5)), max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert packs[-1] == [1] * linears

    head = model.lm_head
    for rows in (1, 2, 7, packed_linear.MAX_ROWS):
        x = torch.randn(rows, 64)
        packed = packed_linear.packed_weights(model, rows)["lm_head"]
        torch.testing.assert_close(packed_linear.packed_linear(x, packed, head.bias), torch.nn.functional.linear(
            x, head.weight, head.bias), rtol=1e-5, atol=1e-5)


def _warpers(top_k, top_p):
    return [TemperatureLogitsWarper(0.7)] + ([TopKLogitsWarper(top_k)] if top_k else []) + (
        [TopPLogitsWarper(top_p)] if top_p else [])


@pytest.mark.parametrize("top_k, top_p", [(5, None), (5, 0.8), (40, 0.9), (3, 0.3)])
def test_top_k_candidates_are_what_the_warpers_keep(top_k, top_p):
    """On rows with many ties (bf16-rounded scores, as bf16 models give), the candidates are the tokens Transformers'
    warpers leave finite, with their probabilities; where top-p cuts between tied tokens, either may stay (the
    warper's sort leaves their order open), so there the kept scores are compared, not which of the tied tokens."""
    torch.manual_seed(0)
    scores = (torch.randn(64, 300) * 3).round()  # small integers: ties at the k-th value in most rows
    scores[:32] = (torch.randn(32, 300) * 4).bfloat16().float()
    ids = torch.zeros(64, 1, dtype=torch.long)
    warpers = LogitsProcessorList(_warpers(top_k, top_p))
    theirs = warpers(ids, scores)
    picker = TokenPicker(warpers, do_sample=True)
    assert picker.top_k is not None and (picker.top_p is not None) == bool(top_p)
    warmed = TemperatureLogitsWarper(0.7)(ids, scores)
    values, indices = picker.candidates(warmed)
    tied = 0
    for row in range(64):
        kept = torch.isfinite(theirs[row]).nonzero().flatten()
        mine = indices[row][torch.isfinite(values[row])]
        assert torch.equal(warmed[row, mine].sort().values, theirs[row, kept].sort().values), row
        lowest = theirs[row, kept].min()
        assert set(mine[warmed[row, mine] > lowest].tolist()) == set(kept[theirs[row, kept] > lowest].tolist()), row
        torch.testing.assert_close(torch.softmax(values[row][torch.isfinite(values[row])], -1).sort().values,
                                   torch.softmax(theirs[row], -1)[kept].sort().values)
        tied += int(torch.isfinite(TopKLogitsWarper(top_k)(ids[:1], scores[row:row + 1])).sum()) > top_k
    assert tied > 10  # the rows did exercise ties


def test_sampled_tokens_follow_the_warped_distribution():
    """Draws from the lean picker land only on tokens the warpers keep, at their frequencies."""
    torch.manual_seed(0)
    logits = torch.randn(1, 200) * 2
    ids = torch.zeros(1, 1, dtype=torch.long)
    warpers = LogitsProcessorList(_warpers(8, 0.9))
    probs = torch.softmax(warpers(ids, logits), -1)[0]
    picker = TokenPicker(warpers, do_sample=True)
    n = 20000
    counts = torch.bincount(picker(ids.expand(n, 1), logits.expand(n, 200)), minlength=200).float() / n
    assert (counts[probs == 0] == 0).all()
    assert (counts - probs).abs().max() < 0.015


def test_seeded_sampling_repeats_and_top_p_alone_samples_the_whole_vocabulary():
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (2, 5))
    for extra in (dict(top_k=10, top_p=0.9), dict(top_k=0, top_p=0.9)):
        kwargs = dict(max_new_tokens=12, do_sample=True, pad_token_id=0, **extra)
        torch.manual_seed(5)
        first = engine.generate(model, ids, **kwargs)
        torch.manual_seed(5)
        assert torch.equal(engine.generate(model, ids, **kwargs), first)
    picker = TokenPicker(LogitsProcessorList(_warpers(None, 0.9)), do_sample=True)
    assert picker.top_k is None and isinstance(picker.processors[-1], TopPLogitsWarper)
