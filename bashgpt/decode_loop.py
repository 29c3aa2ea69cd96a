"""The loop ``generate()`` runs for greedy search and sampling, leaner than Transformers' ``_sample``.

``generate`` prepares everything as usual (generation config, logits processors, stopping criteria,
attention mask, positions, the KV cache) and hands over to ``BashGPTForCausalLM._sample``, which
runs this loop where it applies (``applies``) and Transformers' own ``_sample`` elsewhere. Two
things differ from ``_sample``:
- one forward per token with the inputs computed directly (the next positions, the grown mask),
  without ``prepare_inputs_for_generation`` / ``_update_model_kwargs_for_generation`` and the
  outputs bookkeeping; the forward and its inputs are the same, so greedy tokens are the same;
- sampling with top-k (and top-p after it), the default warpers, takes the candidates ``torch.topk``
  finds (with any tied with the k-th, as the top-k warper keeps them) and applies top-p and the draw
  to those, where ``_sample`` sorts the whole vocabulary for top-p and draws from all of it: the
  same distribution (up to float rounding at the top-p boundary, and which of two tokens tied
  there stays) for a fraction of the work. Other processors run unchanged, before it.

Copied beside the weights with the modeling file; imports only torch and transformers.
"""

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

# model_kwargs that generate() prepares for a plain call; anything else goes to Transformers' loop
HANDLED_KWARGS = {"attention_mask", "position_ids", "cache", "past_key_values", "use_cache", "logits_to_keep"}


def applies(generation_config, synced_gpus: bool, model_kwargs: dict, cache) -> bool:
    """Whether this loop can run the call: greedy or sampling with a fresh dynamic cache, returning only the
    sequences; returned scores, hidden states, chunked prefill, a restarted or static cache and synced GPUs
    go to Transformers' loop."""
    return (not synced_gpus and not generation_config.return_dict_in_generate
            and getattr(generation_config, "prefill_chunk_size", None) is None
            and set(model_kwargs) <= HANDLED_KWARGS and model_kwargs.get("use_cache", True)
            and isinstance(cache, DynamicCache) and cache.get_seq_length() == 0
            and (model_kwargs.get("attention_mask") is None or model_kwargs["attention_mask"].dim() == 2))


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


def decode(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs,
           cache_field: str) -> torch.Tensor:
    """Greedy search or sampling from ``input_ids`` until the stopping criteria end every row; the sequences."""
    cache, mask = model_kwargs[cache_field], model_kwargs.get("attention_mask")
    positions = model_kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    pad = generation_config._pad_token_tensor
    has_eos = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    pick = TokenPicker(logits_processor, generation_config.do_sample)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    step_ids = input_ids
    while True:
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        del out
        tokens = pick(input_ids, logits)
        if has_eos:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, None)
        if unfinished.max() == 0:
            break
        step_ids, positions = tokens[:, None], positions[:, -1:] + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    if streamer is not None:
        streamer.end()
    return input_ids
