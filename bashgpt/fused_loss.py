"""LM head + cross-entropy in chunks of rows, for training.

The usual path materialises the logits (tokens x vocabulary) in float32 several times (logits,
log-softmax, its gradient): at the tiny preset's B4 x T512 that is 262 MB each, and on a CPU
these memory-bound passes cost as much as the LM head's matmuls. Here each chunk of 256 rows
computes its float32 logits (small enough to stay in cache), its loss and, right away, the
gradient of its logits (softmax - one-hot, in the compute dtype: bf16 under autocast), from which
the chunk's input gradient and its share of the weight gradient (summed in float32) follow; so
the logits' gradient never exists for all rows at once (at batch 4 x 1024 that is 0.5 GB), and
backward only scales the two gradients. Same
loss and gradients as ``nn.functional.cross_entropy`` on the full logits, up to rounding.

Part of the modeling code (copied beside the weights by ``save_pretrained``): torch only.
"""

import torch


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, denominator, chunk_size, ignore_index):
        # hidden (N, d), weight (V, d), labels (N,) already shifted; returns sum(loss) / denominator
        dtype = compute_dtype(hidden)
        h = hidden.to(dtype)
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        # d loss / d weight, summed chunk by chunk (float32), so the logits' gradient never exists for all rows at once
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = (h[rows] @ w.t()).float()  # (n, V), small enough to stay in cache
            target = labels[rows]
            valid = target != ignore_index
            safe = torch.where(valid, target, 0)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # in place: logits are not needed any more
            norm = probs.sum(dim=-1, keepdim=True)
            lse = (peak + norm.log()).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if grad_h is None and grad_w is None:
                continue
            # d loss / d logits = softmax - one-hot (zero on ignored rows)
            probs.div_(norm)
            probs[torch.arange(probs.shape[0], device=probs.device), safe] -= 1.0
            grad_logits = probs.mul_(valid[:, None]).to(dtype)
            if grad_h is not None:
                grad_h[rows] = grad_logits @ w
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(grad_logits.t(), h[rows])
                else:
                    grad_w += (grad_logits.t() @ h[rows]).float()
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
        return gh, gw, None, None, None, None


def chunked_causal_lm_loss(hidden, weight, labels, num_items_in_batch=None, chunk_size: int = 256,
                           ignore_index: int = -100, **kwargs):
    """Causal-LM loss of ``hidden @ weight.T`` against ``labels`` (shifted here), like Transformers'
    ``ForCausalLMLoss``: mean over counted tokens, or sum / ``num_items_in_batch`` when given."""
    labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        denominator = (labels != ignore_index).sum().clamp(min=1).float()
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=hidden.device, dtype=torch.float32)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, labels, denominator, chunk_size, ignore_index)
