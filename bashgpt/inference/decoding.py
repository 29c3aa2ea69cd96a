"""A lean decode loop for batch-1 generation on CPU (and anywhere): a preallocated KV cache and
one pass through the blocks per token, with none of ``generate()``'s per-token bookkeeping.

It computes exactly what the model's ``forward`` computes (same modules, same order), so
greedy tokens match ``model.generate(do_sample=False)``; the tests check it. ``bashgpt
generate`` uses it for single prompts; ``model.generate()`` and ``pipeline`` (which share its
packed weights, packed_linear.py) are the general path.
"""

import torch
import torch.nn.functional as F

from ..modeling_bashgpt import apply_rotary_pos_emb, output_cache
from ..packed_linear import packed_linear, packed_weights


class Linears:
    """The model's linear layers for one-token steps: oneDNN-packed weights on CPU where they apply
    (packed_linear.py), plain ``nn.Linear`` elsewhere."""

    def __init__(self, model):
        self.modules = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        self.packed = packed_weights(model)

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            module, packed = self.packed[name]
            return packed_linear(x, packed, module.bias)
        return self.modules[name](x)


class StaticKV:
    """Per-layer key/value buffers of the full length, filled position by position."""

    def __init__(self, model, batch: int, length: int, dtype, device):
        cfg = model.config
        shape = (batch, cfg.num_attention_heads, length, cfg.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]


def prefill(model, input_ids: torch.Tensor, cache: StaticKV) -> torch.Tensor:
    """Run the prompt through the model's own forward; copy its keys/values into ``cache``."""
    out = model(input_ids=input_ids, use_cache=True)
    n = input_ids.shape[1]
    for i in range(model.config.num_hidden_layers):
        layer = output_cache(out).layers[i]
        cache.k[i][:, :, :n] = layer.keys
        cache.v[i][:, :, :n] = layer.values
    return out.logits[:, -1]


def decode_step(model, token: torch.Tensor, pos: int, cache: StaticKV, linear: Linears) -> torch.Tensor:
    """Logits of the next token after ``token`` (B, 1) at position ``pos``."""
    tr, cfg = model.transformer, model.config
    batch, heads, dim = token.shape[0], cfg.num_attention_heads, cfg.head_dim
    x = tr.wte(token)
    positions = torch.full((batch, 1), pos, dtype=torch.long, device=token.device)
    rope = None
    if cfg.position_embedding_type == "learned":
        x = x + tr.wpe(positions)
    else:
        rope = tr.rotary_emb(x, positions)
    for i, block in enumerate(tr.h):
        attn, h = block.attn, f"transformer.h.{i}."
        q, k, v = linear(h + "attn.c_attn", block.ln_1(x)).split(cfg.hidden_size, dim=-1)
        q, k, v = (t.view(batch, 1, heads, dim).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rotary_pos_emb(q, k, *rope)
        cache.k[i][:, :, pos:pos + 1] = k
        cache.v[i][:, :, pos:pos + 1] = v
        a = F.scaled_dot_product_attention(q, cache.k[i][:, :, :pos + 1], cache.v[i][:, :, :pos + 1],
                                           scale=attn.scaling)  # one query sees every cached position
        x = x + linear(h + "attn.c_proj", a.transpose(1, 2).reshape(batch, 1, cfg.hidden_size))
        x = x + linear(h + "mlp.c_proj", block.mlp.act(linear(h + "mlp.c_fc", block.ln_2(x))))
    return linear("lm_head", tr.ln_f(x))[:, -1]


@torch.inference_mode()
def fast_decode(model, input_ids: torch.Tensor, max_new_tokens: int, pick, eos_token_id: int | None = None,
                on_token=None) -> torch.Tensor:
    """Decode with ``pick(ids_so_far, logits) -> (B,) token ids``; stops at ``eos_token_id`` (batch 1) or the limit."""
    model.eval()
    length = input_ids.shape[1] + max_new_tokens
    dtype = next(model.parameters()).dtype
    cache = StaticKV(model, input_ids.shape[0], length, dtype, input_ids.device)
    linear = Linears(model)
    logits = prefill(model, input_ids, cache)
    ids = torch.empty((input_ids.shape[0], length), dtype=input_ids.dtype, device=input_ids.device)
    ids[:, :input_ids.shape[1]] = input_ids
    for pos in range(input_ids.shape[1], length):
        token = pick(ids[:, :pos], logits).view(-1, 1)
        ids[:, pos:pos + 1] = token
        if on_token is not None:
            on_token(token)
        if eos_token_id is not None and input_ids.shape[0] == 1 and int(token) == eos_token_id:
            return ids[:, :pos + 1]
        if pos < length - 1:
            logits = decode_step(model, token, pos, cache, linear)
    return ids


def fast_greedy_decode(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None):
    return fast_decode(model, input_ids, max_new_tokens, lambda ids, logits: logits.argmax(-1), eos_token_id)


def sampler(generation_config):
    """``pick`` for ``fast_decode`` from a GenerationConfig: repetition penalty, temperature, top-k, top-p."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if generation_config.repetition_penalty not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(generation_config.repetition_penalty))
    if not generation_config.do_sample:
        return lambda ids, logits: processors(ids, logits.float()).argmax(-1)
    if generation_config.temperature not in (None, 1.0):
        processors.append(TemperatureLogitsWarper(generation_config.temperature))
    if generation_config.top_k:
        processors.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p not in (None, 1.0):
        processors.append(TopPLogitsWarper(generation_config.top_p))

    def pick(ids, logits):
        scores = processors(ids, logits.float())
        # sample on the CPU: torch.multinomial on MPS can return impossible ids (torch <= 2.13)
        return torch.multinomial(torch.softmax(scores, dim=-1).cpu(), 1).squeeze(1).to(logits.device)

    return pick
