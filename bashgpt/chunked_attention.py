"""Query-chunked causal attention for training: never holds a full T x T score matrix.

Why: on Apple's MPS backend PyTorch's scaled_dot_product_attention uses its fast kernel only
without gradients; in training it takes the math path, which keeps a B x H x T x T float32
probability tensor per layer for backward (about 0.4 GB per layer for the large preset at
batch 4 x 1024 tokens, some 13 GB over 32 layers). Here the queries are taken a chunk of rows at
a time: each chunk's scores, softmax and output are computed and dropped, and only the output
and the log-sum-exp of each row are kept. Backward recomputes each chunk's probabilities from
them (as FlashAttention does), so the extra memory is one chunk's scores, B x H x C x T.

Registered with Transformers' attention interface under the name ``bashgpt_chunked``, with the
sdpa mask (None for plain causal batches, else a boolean mask, True = attend). Without
gradients (generation, evaluation) it hands over to sdpa, which is fast everywhere.

Part of the modeling code (copied beside the weights by ``save_pretrained``): torch and
transformers only.
"""

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "bashgpt_chunked"
SCORE_BYTES_PER_CHUNK = 64 * 2**20  # float32 scores of one chunk of query rows


def chunk_rows(batch: int, heads: int, q_len: int, k_len: int) -> int:
    """Query rows per chunk: as many as keep one chunk's float32 scores under SCORE_BYTES_PER_CHUNK."""
    rows = SCORE_BYTES_PER_CHUNK // (4 * batch * heads * k_len)
    return max(16, min(q_len, rows))


def _chunk_scores(q_chunk, k, scaling, mask_chunk, first_row, k_len):
    """float32 scores (B, H, C, Tk) of a chunk of query rows, with the causal or given mask applied."""
    scores = (q_chunk.float() @ k.float().transpose(-1, -2)) * scaling
    if mask_chunk is None:  # causal; the queries are the last q_len positions of the keys
        rows = torch.arange(first_row, first_row + q_chunk.shape[-2], device=q_chunk.device)[:, None]
        allowed = torch.arange(k_len, device=q_chunk.device)[None, :] <= rows
        return scores.masked_fill_(~allowed, float("-inf"))
    if mask_chunk.dtype == torch.bool:
        return scores.masked_fill_(~mask_chunk, float("-inf"))
    return scores.add_(mask_chunk)


class ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scaling, chunk):
        # q (B, H, Tq, D), k and v (B, H, Tk, D); mask (B or 1, 1, Tq, Tk) or None for causal
        q_len, k_len = q.shape[-2], k.shape[-2]
        offset = k_len - q_len
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # (B, H, Tq)
        for start in range(0, q_len, chunk):
            rows = slice(start, start + chunk)
            m = None if mask is None else mask[..., rows, :]
            scores = _chunk_scores(q[..., rows, :], k, scaling, m, offset + start, k_len)
            lse_chunk = torch.logsumexp(scores, dim=-1, keepdim=True)
            lse_chunk.masked_fill_(lse_chunk == float("-inf"), 0.0)  # a row that sees no key (padding) gives 0
            probs = scores.sub_(lse_chunk).exp_()
            out[..., rows, :] = (probs @ v.float()).to(q.dtype)
            lse[..., rows] = lse_chunk.squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.scaling, ctx.chunk = scaling, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        scaling, chunk = ctx.scaling, ctx.chunk
        q_len, k_len = q.shape[-2], k.shape[-2]
        offset = k_len - q_len
        kf, vf = k.float(), v.float()
        dq = torch.empty_like(q)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        delta = (grad_out.float() * out.float()).sum(-1)  # (B, H, Tq): rowsum(dO * O)
        for start in range(0, q_len, chunk):
            rows = slice(start, start + chunk)
            m = None if mask is None else mask[..., rows, :]
            qc, go = q[..., rows, :].float(), grad_out[..., rows, :].float()
            probs = _chunk_scores(qc, kf, scaling, m, offset + start, k_len).sub_(lse[..., rows, None]).exp_()
            dv += probs.transpose(-1, -2) @ go
            dscores = (go @ vf.transpose(-1, -2)).sub_(delta[..., rows, None]).mul_(probs)
            dq[..., rows, :] = ((dscores @ kf) * scaling).to(q.dtype)
            dk += (dscores.transpose(-1, -2) @ qc) * scaling
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None


def chunked_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention interface's signature; returns ((B, T, H, D), None)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if not needs_grad or dropout > 0.0:  # no T x T matrix is kept without gradients; dropout is sdpa's job
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    b, h, q_len, _ = query.shape
    chunk = chunk_rows(b, h, q_len, key.shape[-2])
    with torch.autocast(query.device.type, enabled=False):
        out = ChunkedAttention.apply(query, key, value, attention_mask, scaling, chunk)
    return out.transpose(1, 2).contiguous(), None
