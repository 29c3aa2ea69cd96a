"""LM head + cross-entropy in chunks of rows, for training.

The usual path materialises the logits (tokens x vocabulary) in float32 several times (logits,
log-softmax, its gradient): at the tiny preset's B4 x T512 that is 262 MB each, and on a CPU
these memory-bound passes cost as much as the LM head's matmuls. Here the rows go in groups of
``GROUP_ROWS``: one matrix product gives a group's logits (in the compute dtype: bf16 under
autocast); then, ``CHUNK_ROWS`` rows at a time (4 MB of float32, which stays in cache), their
loss and the gradient of their logits (softmax - one-hot) are computed and written over the
logits; two more products give the group's input gradient and its share of the weight gradient
(summed in float32). So the logits' gradient never exists for all rows at once (at batch 4 x 1024
that would be 0.5 GB, against 65 MB for a group), and backward only scales the two gradients.
Same loss and gradients as ``nn.functional.cross_entropy`` on the full logits, up to rounding.
With 256-row chunks, each its own three products, the tiny preset's loss took 422 ms per bf16
step (B4 x T512, Intel Xeon with AMX); grouped, 300 ms.

Part of the modeling code (copied beside the weights by ``save_pretrained``): torch only.
"""

import torch

CHUNK_ROWS = 32  # rows whose float32 scores are worked on at once (32 x 32,000 x 4 bytes: 4 MB)
GROUP_ROWS = 1024  # rows per matrix product; their logits, then their logits' gradient, exist at once


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, denominator, chunk_size, ignore_index, group_size):
        # hidden (N, d), weight (V, d), labels (N,) already shifted; returns sum(loss) / denominator
        dtype = compute_dtype(hidden)
        h = hidden.to(dtype)
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        # d loss / d weight, summed group by group (float32), so the logits' gradient never exists for all rows at once
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for group_start in range(0, h.shape[0], group_size):
            group = slice(group_start, group_start + group_size)
            # (G, V) in the compute dtype: one large product; becomes the logits' gradient in place, chunk by chunk
            logits = h[group] @ w.t()
            for start in range(0, logits.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                scores = logits[rows].float()  # float32 (a view for float32 logits: overwritten below anyway)
                target = labels[group][rows]
                valid = target != ignore_index
                safe = torch.where(valid, target, 0)
                picked = scores.gather(1, safe[:, None]).squeeze(1)
                peak = scores.amax(dim=-1, keepdim=True)
                probs = scores.sub_(peak).exp_()
                norm = probs.sum(dim=-1, keepdim=True)
                total += torch.where(valid, (peak + norm.log()).squeeze(1) - picked, 0.0).sum()
                if grad_h is not None or grad_w is not None:
                    # d loss / d logits = softmax - one-hot (zero on ignored rows)
                    probs.div_(norm)
                    probs[torch.arange(probs.shape[0], device=probs.device), safe] -= 1.0
                    logits[rows] = probs.mul_(valid[:, None])
            if grad_h is not None:
                grad_h[group] = logits @ w
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(logits.t(), h[group])
                else:
                    grad_w.add_(logits.t() @ h[group])  # one rounding per group, summed in float32
        ctx.denominator = denominator
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_output / ctx.denominator
        gh = (grad_h * scale).to(ctx.hidden_dtype) if grad_h is not None else None
        gw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def chunked_causal_lm_loss(hidden, weight, labels, num_items_in_batch=None, chunk_size: int = CHUNK_ROWS,
                           ignore_index: int = -100, group_size: int = GROUP_ROWS, **kwargs):
    """Causal-LM loss of ``hidden @ weight.T`` against ``labels`` (shifted here), like Transformers'
    ``ForCausalLMLoss``: mean over counted tokens, or sum / ``num_items_in_batch`` when given."""
    labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        denominator = (labels != ignore_index).sum().clamp(min=1).float()
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=hidden.device, dtype=torch.float32)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, labels, denominator, chunk_size, ignore_index, group_size)
