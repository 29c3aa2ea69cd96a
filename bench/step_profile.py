"""Where a training step's time goes: each part of bashgpt's step timed on its own, at the step's shapes.

A profiler's per-operator times were no guide here: under torch.profiler a 98 MB dtype copy
took 130 ms that takes 6 ms outside it. So each part runs alone, forward and backward, with the
model's own modules and the step's tensors (same batch, sequence, dtype and autocast), the
parts repeated in turns, after the whole step's own repetitions; the parts' sum is set against
the whole step, and "the rest" is what no part covers (residual adds, casts of activations,
autograd's own work).
"""

import statistics
import time

import torch

from bashgpt.fused_loss import chunked_causal_lm_loss
from bashgpt.modeling_bashgpt import ALL_ATTENTION_FUNCTIONS


def _fwd_bwd(fn, *inputs):
    """Run ``fn`` on fresh leaf copies of ``inputs`` under the caller's autocast, then backward with ones."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    if out.dim():
        out.backward(torch.ones_like(out))
    else:  # a loss
        out.backward()


def step_parts(model, batch: int, seq: int, amp: bool):
    """``{part: (callable running that part for the whole model once, FLOPs it does)}``."""
    cfg, tr = model.config, model.transformer
    d, heads, layers, inner = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size
    n = batch * seq
    dtype = torch.bfloat16 if amp else torch.float32
    x = torch.randn(batch, seq, d)
    x_inner = torch.randn(batch, seq, inner, dtype=dtype)
    q, k, v = (torch.randn(batch, heads, seq, cfg.head_dim, dtype=dtype) for _ in range(3))
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    attend = ALL_ATTENTION_FUNCTIONS[cfg._attn_implementation]

    def linears():
        for blk in tr.h:
            for lin, inp in ((blk.attn.c_attn, x), (blk.attn.c_proj, x), (blk.mlp.c_fc, x), (blk.mlp.c_proj, x_inner)):
                _fwd_bwd(lin, inp)

    def attention():
        for blk in tr.h:
            _fwd_bwd(lambda a, b, c, m=blk.attn: attend(m, a, b, c, None, scaling=m.scaling, dropout=0.0), q, k, v)

    def gelu():
        for blk in tr.h:
            _fwd_bwd(blk.mlp.act, x_inner)

    def norms():
        for blk in tr.h:
            _fwd_bwd(blk.ln_1, x)
            _fwd_bwd(blk.ln_2, x)
        _fwd_bwd(tr.ln_f, x)

    def lm_loss():
        _fwd_bwd(lambda h: chunked_causal_lm_loss(h, model.lm_head.weight, ids), x)

    def embeddings():
        out = tr.wte(ids) + (tr.wpe(torch.arange(seq))[None] if hasattr(tr, "wpe") else 0)
        out.sum().backward()

    # the optimizer's part updates copies of the weights, with gradients of their own, so the model's stay untouched
    params = [torch.zeros_like(p, requires_grad=True) for p in model.parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    linear_flops = 6 * n * layers * (4 * d * d + 2 * d * inner)
    parts = {
        "linear layers (4 per block)": (linears, linear_flops),
        # counted in full, as the MFU formula does (flops.py), though causal attention needs half
        f"attention ({cfg._attn_implementation})": (attention, 12 * layers * n * seq * d),
        "GELU": (gelu, 0), "layer norms": (norms, 0),
        "LM head + loss (fused)": (lm_loss, 6 * n * d * cfg.vocab_size),
        "embeddings": (embeddings, 0), "optimizer (fused AdamW)": (opt.step, 0),
    }
    return parts


def profile_step(model, step, batch: int, seq: int, amp: bool, reps: int, peak_gflops: float) -> dict:
    """Median seconds of each part and of the whole ``step`` (interleaved), their shares and GFLOP/s."""
    parts = step_parts(model, batch, seq, amp)

    def alone(fn):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                fn()
            model.zero_grad(set_to_none=True)  # as the step leaves them: the next step's backward allocates its own
        return run

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # The whole step's repetitions run back to back: set among the parts, its buffers no longer fit the holes the
    # parts leave in the heap, and it page-faults (1.87 s against 1.76 s alone, 250,000 faults against 1,000).
    step()
    times = {"whole step": [timed(step) for _ in range(reps)]}
    runners = {name: alone(fn) for name, (fn, _) in parts.items()}
    for fn in runners.values():  # warm-up
        fn()
    times.update({name: [] for name in runners})
    for _ in range(reps):
        for name, fn in runners.items():
            times[name].append(timed(fn))
    whole = statistics.median(times.pop("whole step"))
    rows = []
    for name, ts in times.items():
        s, flops = statistics.median(ts), parts[name][1]
        rows.append({"part": name, "seconds": s, "share": s / whole,
                     "gflops": flops / s / 1e9 if flops else None,
                     "of_peak": flops / s / 1e9 / peak_gflops if flops else None})
    covered = sum(r["seconds"] for r in rows)
    rows.append({"part": "the rest (residual adds, activation casts, autograd)", "seconds": whole - covered,
                 "share": (whole - covered) / whole, "gflops": None, "of_peak": None})
    return {"whole_step_seconds": whole, "parts": rows}
