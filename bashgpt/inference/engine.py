"""bashgpt's decode engine: greedy search and sampling for one-token steps, leaner than Transformers' loop.

Transformers' ``generate`` stays as it is on the model; this engine is asked for per call, through
``generate``'s documented hook for a decoding loop of one's own:

    model.generate(**inputs, custom_generate=engine.decode)    # or engine.generate(model, ...)

``generate`` prepares everything as usual (generation config, logits processors, stopping criteria,
attention mask, positions, the KV cache) and hands over to ``decode``, which differs from Transformers'
loop in three ways:
- one forward per token with its inputs computed directly (the next positions, the grown mask),
  without the per-step input preparation and output bookkeeping;
- sampling with top-k (and top-p after it), the default warpers, takes the candidates ``torch.topk``
  finds (with any tied with the k-th, as the top-k warper keeps them) and applies top-p and the draw
  to those, where Transformers sorts the whole vocabulary for top-p and draws from all of it: the
  same distribution (up to float rounding at the top-p boundary) for a fraction of the work. Other
  processors run unchanged, before it;
- on CPU the linear layers run on oneDNN-packed copies of their weights for the call (packed_linear.py),
  unless the caller holds a ``linears_packed`` block around several calls;
- a ``take_back`` hook (passed to ``generate`` under that name) sees each row after each new token and may
  cut it back to an earlier length: the KV cache is cropped to match and decoding goes on from there, in the
  same loop (syntax_guard.py takes broken lines back this way). It needs one row per call; the stopping
  criteria see the row as cut.
What it does not do (beam search, assisted decoding, returned scores or hidden states, chunked prefill),
it refuses with a ValueError: leave ``custom_generate`` out for those.
"""

import torch
from transformers import GenerationConfig
from transformers.cache_utils import Cache
from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .packed_linear import linears_packed

# model_kwargs that generate() prepares for a plain call of a decoder-only model
HANDLED_KWARGS = {"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"}


def refusal(generation_config: GenerationConfig, model_kwargs: dict) -> str | None:
    """Why ``decode`` cannot run this call, or None where it can."""
    if generation_config.num_beams != 1:
        return f"beam search (num_beams={generation_config.num_beams})"
    if generation_config.return_dict_in_generate:
        return "return_dict_in_generate=True (scores, logits, hidden states)"
    if generation_config.prompt_lookup_num_tokens is not None:
        return "prompt-lookup decoding"
    if getattr(generation_config, "prefill_chunk_size", None) is not None:
        return "chunked prefill (prefill_chunk_size)"
    if set(model_kwargs) - HANDLED_KWARGS:
        return f"model inputs {sorted(set(model_kwargs) - HANDLED_KWARGS)}"
    if not model_kwargs.get("use_cache", True) or not isinstance(model_kwargs.get("cache"), Cache):
        return "use_cache=False"
    mask = model_kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        return "a 4-D attention mask"
    return None


class TokenPicker:
    """The next tokens from the last logits: the processors, then argmax (greedy) or a draw (sampling).
    A trailing ``TopKLogitsWarper`` (and ``TopPLogitsWarper`` after it) becomes a draw among the top-k."""

    def __init__(self, logits_processor: LogitsProcessorList, do_sample: bool):
        self.processors, self.do_sample = list(logits_processor), do_sample
        self.top_k = self.top_p = None
        kinds = [type(p) for p in self.processors[-2:]]
        n = 2 if kinds == [TopKLogitsWarper, TopPLogitsWarper] else int(kinds[-1:] == [TopKLogitsWarper])
        fused = self.processors[len(self.processors) - n:] if do_sample and n else []
        if fused and all(w.filter_value == float("-inf") for w in fused):  # a warper's own filter value: as it is
            del self.processors[-n:]
            self.top_k, self.top_p = fused[0], (fused[1] if n == 2 else None)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scores = logits
        for processor in self.processors:
            scores = processor(input_ids, scores)
        if not self.do_sample:
            return torch.argmax(scores, dim=-1)
        if self.top_k is not None:
            values, indices = self.candidates(scores)
            return indices.gather(1, draw(torch.softmax(values, dim=-1))).squeeze(1)
        return draw(torch.softmax(scores, dim=-1)).squeeze(1)

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices), (B, n): the tokens ``TopKLogitsWarper`` keeps (the top k and any tied with the k-th),
        then ``TopPLogitsWarper`` applied to them; a token either removes is -inf."""
        k = min(self.top_k.top_k, scores.shape[-1])
        values, indices = torch.topk(scores, min(2 * k, scores.shape[-1]))  # descending, room for ties (common in bf16)
        threshold = values[:, k - 1:k]
        if bool((values[:, -1:] == threshold).any()) and values.shape[-1] < scores.shape[-1]:  # ties beyond 2k
            values, indices = torch.topk(scores, int((scores >= threshold).sum(-1).max()))
        values = values.masked_fill(values < threshold, float("-inf"))
        if self.top_p is not None:
            values, indices = values.flip(-1), indices.flip(-1)  # ascending, as the top-p warper sorts
            removed = values.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p.top_p)
            removed[..., -self.top_p.min_tokens_to_keep:] = False
            values = values.masked_fill(removed, float("-inf"))
        return values, indices


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row, drawn from ``probs`` (B, n) -> (B, 1); on the CPU for MPS tensors (torch.multinomial on
    MPS can return impossible ids, torch <= 2.13)."""
    if probs.device.type == "mps":
        return torch.multinomial(probs.cpu(), 1).to(probs.device)
    return torch.multinomial(probs, 1)


def decode(model, input_ids: torch.LongTensor, logits_processor: LogitsProcessorList,
           stopping_criteria: StoppingCriteriaList, generation_config: GenerationConfig, token_streamer=None,
           take_back=None, **model_kwargs) -> torch.LongTensor:
    """Greedy search or sampling from ``input_ids`` until the stopping criteria end every row: the sequences,
    prompt included. ``generate(custom_generate=decode)`` calls it; ``token_streamer`` (a Transformers
    streamer, passed to ``generate`` under that name) gets the prompt, each new token and the end, as
    ``generate``'s own ``streamer`` would. ``take_back(row_ids) -> int | None``, called with the row after
    each new token, gives a length to cut it back to (at least 1, at most its length), or None to go on."""
    why = refusal(generation_config, model_kwargs)
    if why is None and take_back is not None:
        why = take_back_refusal(input_ids, token_streamer)
    if why is not None:
        raise ValueError(f"bashgpt's decode engine does not do {why}; call generate without custom_generate")
    cache, mask = model_kwargs["cache"], model_kwargs.get("attention_mask")
    positions = model_kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    done = cache.get_seq_length()  # a cache the caller passed may hold the prompt's first tokens already
    step_ids, positions = input_ids[:, done:], positions[:, done:]
    eos, pad = generation_config.eos_token_id, generation_config.pad_token_id
    if pad is None and eos is not None:
        pad = eos if isinstance(eos, int) else eos[0]
    pick = TokenPicker(logits_processor, generation_config.do_sample)
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in model_kwargs else {}  # generate's word on the model
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    if token_streamer is not None:
        token_streamer.put(input_ids.cpu())
    with linears_packed(model):
        while True:
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                        **last_only)
            logits = out.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
            del out
            tokens = pick(input_ids, logits)
            if eos is not None:
                tokens = torch.where(unfinished, tokens, pad)
            input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
            if token_streamer is not None:
                token_streamer.put(tokens.cpu())
            positions = positions[:, -1:] + 1  # the new token's
            back = take_back(input_ids[0]) if take_back is not None else None
            if back is not None:  # the last kept token is fed again, for the logits after it
                positions = positions - (input_ids.shape[1] - back)
                input_ids, cache = input_ids[:, :back], cropped(cache, back - 1)
                if mask is not None:
                    mask = mask[:, :back - 1]
            unfinished = unfinished & ~stopping_criteria(input_ids, logits)
            if not unfinished.any():
                break
            step_ids = input_ids[:, -1:]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    if token_streamer is not None:
        token_streamer.end()
    return input_ids


def take_back_refusal(input_ids: torch.LongTensor, token_streamer) -> str | None:
    """Why ``take_back`` cannot be used in this call, or None where it can."""
    if input_ids.shape[0] != 1:
        return f"take_back on {input_ids.shape[0]} rows (one row per call: the rows share one cache)"
    if token_streamer is not None:
        return "take_back with a streamer (streamed tokens cannot be taken back)"
    return None


def cropped(cache: Cache, length: int) -> Cache:
    """``cache`` holding its first ``length`` tokens only (in place)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # a negative count removes that many: the one meaning all 5.x releases share
    return cache


@torch.no_grad()
def generate(model, input_ids: torch.LongTensor, streamer=None, **kwargs) -> torch.LongTensor:
    """``model.generate(input_ids, **kwargs)`` decoded by this engine, ``streamer`` fed its new tokens."""
    return model.generate(input_ids, custom_generate=decode, token_streamer=streamer, **kwargs)
