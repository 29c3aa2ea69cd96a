"""What the benchmarks share: the machine's description, the GPT-2 twin every comparison runs beside, one training
step as bashgpt's training takes it, and medians. Imports bashgpt from wherever Python finds it (an installed wheel
on a lent GPU, the checkout here): nothing is put on sys.path."""

import platform
import statistics
import time
from pathlib import Path

import torch


def median_minmax(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def timed(fn, sync=lambda: None):
    """(``fn()``'s result, the seconds it took), with ``sync`` (a device's synchronisation) before and after."""
    sync()
    began = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - began


def interleaved(runners: dict, reps: int, sync=lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each runner over ``reps`` rounds, the runners taking turns within a round (a shared
    machine's slow spells then fall on all of them alike)."""
    times = {name: [] for name in runners}
    for _ in range(reps):
        for name, fn in runners.items():
            times[name].append(timed(fn, sync)[1])
    return times


def cpu_description() -> str:
    """The CPU model, and whether it has AMX / AVX512-BF16 (bf16 matmuls in hardware)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # macOS and others
        pass
    has = [name for name, flag in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")) if flag in flags]
    return f"{model} ({', '.join(has) if has else 'no AMX, no AVX512-BF16'})"


def gpt2_twin(cfg):
    """transformers' GPT2LMHeadModel with bashgpt's dimensions (untied head, same vocab and positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size,
        n_layer=cfg.num_hidden_layers, n_head=cfg.num_attention_heads, activation_function="gelu_pytorch_tanh",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id))  # not GPT-2's 50256
    model.loss_type = "ForCausalLM"  # the class name does not say it, and Transformers warns when it must guess
    return model


def train_step_fn(model, dtype, batch, seq, device="cpu", optimizer=None, forward=None):
    """One optimizer step (forward, backward, update) on a fixed batch; fused AdamW unless ``optimizer`` is given,
    ``forward`` (e.g. the compiled model) in place of the model's own call; bf16 autocast for ``dtype`` 'bf16'."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if optimizer is None else optimizer
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    forward = model if forward is None else forward
    amp = dtype == "bf16"

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
