"""The query-chunked training attention (chunked_attention.py) against sdpa and eager."""

import pytest
import torch
from conftest import small_config

from bashgpt import BashGPTForCausalLM, chunked_attention
from bashgpt.chunked_attention import ChunkedAttention


def grads_of(model, ids, mask=None):
    model.zero_grad()
    labels = ids if mask is None else ids.masked_fill(mask == 0, -100)  # padded rows differ between kernels
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_chunked_attention_trains_like_sdpa_and_eager(monkeypatch, pos):
    monkeypatch.setattr(chunked_attention, "SCORE_BYTES_PER_CHUNK", 1)  # the smallest chunks: 16 rows
    torch.manual_seed(0)
    model = BashGPTForCausalLM(small_config(position_embedding_type=pos)).train()
    ids = torch.randint(0, 96, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding: a boolean mask reaches the function
    results = {}
    for impl in ("eager", "sdpa", "bashgpt_chunked"):
        model.set_attn_implementation(impl)
        results[impl] = (grads_of(model, ids), grads_of(model, ids, mask))
    # eager and sdpa themselves disagree by ~1e-4 on the padded batch: it is compared with sdpa, whose mask it takes
    for impl, cases in (("eager", 1), ("sdpa", 2)):
        for (loss_a, grads_a), (loss_b, grads_b) in zip(results[impl][:cases], results["bashgpt_chunked"][:cases], strict=True):
            torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
            for name in grads_a:
                torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_chunked_attention_with_keys_before_the_queries_and_bf16_inputs():
    torch.manual_seed(1)
    q = torch.randn(2, 3, 20, 8, requires_grad=True)
    k = torch.randn(2, 3, 50, 8, requires_grad=True)  # 30 cached positions before the 20 queries
    v = torch.randn(2, 3, 50, 8, requires_grad=True)
    causal = torch.ones(20, 50, dtype=torch.bool).tril(diagonal=30)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    got = ChunkedAttention.apply(q, k, v, None, 8**-0.5, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (q, k, v), go)
    got_grads = torch.autograd.grad(got, (q, k, v), go)
    for a, b in zip(want_grads, got_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = ChunkedAttention.apply(qb, kb, vb, None, 8**-0.5, 16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.05)
    out.sum().backward()
    assert qb.grad.dtype == kb.grad.dtype == torch.bfloat16


def test_chunked_attention_keeps_no_full_score_matrix(monkeypatch):
    """What autograd keeps for backward: sdpa's math path (as on MPS) holds B x H x T x T probabilities per
    layer; the chunked function only q, k, v, the output and one float per row."""
    monkeypatch.setattr(chunked_attention, "SCORE_BYTES_PER_CHUNK", 2**16)
    b, h, t, d = 1, 2, 512, 16
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))

    def saved_bytes(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel() * x.element_size()) or x,
                                                      lambda x: x):
            fn().sum().backward()
        return sum(sizes)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        math_bytes = saved_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    chunked = saved_bytes(lambda: chunked_attention.chunked_attention_forward(None, q, k, v, None)[0])
    assert math_bytes >= b * h * t * t * 4
    assert chunked < 5 * b * h * t * d * 4 < math_bytes / 4
