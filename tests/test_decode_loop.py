"""generate()'s lean decode loop (decode_loop.py): the tokens of Transformers' own loop, top-k/top-p sampling
that keeps what the warpers keep, and Transformers' loop wherever the lean one does not apply."""

import pytest
import torch
from conftest import VARIANTS, small_config
from transformers import StaticCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from bashgpt import BashGPTForCausalLM, decode_loop
from bashgpt.decode_loop import TokenPicker
from bashgpt.modeling_bashgpt import CACHE_FIELD


def transformers_loop(model, **kwargs) -> torch.Tensor:
    """The sequences of Transformers' own _sample loop (returned scores make the lean loop step aside)."""
    return model.generate(**kwargs, return_dict_in_generate=True).sequences


@pytest.fixture
def loop_runs(monkeypatch):
    runs = []
    real = decode_loop.decode
    monkeypatch.setattr(decode_loop, "decode", lambda *a, **k: runs.append(1) or real(*a, **k))
    monkeypatch.setattr("bashgpt.modeling_bashgpt.decode", decode_loop.decode)
    return runs


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_lean_loop_gives_the_greedy_tokens_of_transformers_loop(loop_runs, norm, pos):
    torch.manual_seed(0)
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    ids = torch.randint(2, 96, (1, 7))
    padded = torch.randint(2, 96, (3, 9))
    mask = torch.ones_like(padded)
    padded[1, :4] = padded[2, :2] = 0
    mask[1, :4] = mask[2, :2] = 0
    free = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    eos = free[5]  # a token greedy search reaches, so that rows stop and are padded
    cases = [dict(input_ids=ids, max_new_tokens=20),
             dict(input_ids=padded, attention_mask=mask, max_new_tokens=20),
             dict(input_ids=padded, attention_mask=mask, max_new_tokens=20, eos_token_id=eos),
             dict(input_ids=ids, max_new_tokens=20, min_new_tokens=15, eos_token_id=eos),
             dict(input_ids=ids, max_length=16, repetition_penalty=1.3)]
    for kwargs in cases:
        kwargs.update(do_sample=False, pad_token_id=0)
        runs = len(loop_runs)
        lean = model.generate(**kwargs)
        assert len(loop_runs) == runs + 1, kwargs
        theirs = transformers_loop(model, **kwargs)
        assert len(loop_runs) == runs + 1, kwargs  # returned scores: Transformers' loop
        assert torch.equal(lean, theirs), kwargs
    assert (model.generate(**cases[2]) == 0).any()  # a stopped row was padded


def test_lean_loop_feeds_a_streamer_what_it_returns(loop_runs):
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
    out = model.generate(ids, max_new_tokens=9, do_sample=False, pad_token_id=0, streamer=streamer)
    assert loop_runs and streamer.ended
    assert torch.equal(torch.cat(streamer.parts), out[0])  # the prompt (from generate), then each new token


def test_transformers_loop_runs_where_the_lean_one_does_not_apply(loop_runs):
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (1, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    out = model.generate(ids, **kwargs, return_dict_in_generate=True, output_scores=True)
    assert len(out.scores) == 6
    static = StaticCache(config=model.config, max_cache_len=32)
    assert torch.equal(model.generate(ids, **kwargs, **{CACHE_FIELD: static}), out.sequences)
    assert not loop_runs


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


def test_seeded_sampling_repeats_and_top_p_alone_samples_the_whole_vocabulary(loop_runs):
    model = BashGPTForCausalLM(small_config()).eval()
    ids = torch.randint(2, 96, (2, 5))
    for extra in (dict(top_k=10, top_p=0.9), dict(top_k=0, top_p=0.9)):
        kwargs = dict(max_new_tokens=12, do_sample=True, pad_token_id=0, **extra)
        torch.manual_seed(5)
        first = model.generate(ids, **kwargs)
        torch.manual_seed(5)
        assert torch.equal(model.generate(ids, **kwargs), first)
    assert len(loop_runs) == 4
    picker = TokenPicker(LogitsProcessorList(_warpers(None, 0.9)), do_sample=True)
    assert picker.top_k is None and isinstance(picker.processors[-1], TopPLogitsWarper)
