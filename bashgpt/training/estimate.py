"""Estimate a training run's peak memory and time per step before starting it, for any combination of levers.

Memory (bytes), P parameters, of which P_lin sit in linear layers; N = batch x seq tokens per micro-batch;
s = 2 bytes per stored activation value when computing in bf16, else 4. The peak is the larger of two moments:

  backward     weights + bf16 copies + half the gradients + optimizer state + activations
               (backward frees activations while it fills gradients; 0.53 of the gradients are alive at the
               peak in our measurements). bf16 copies: 2 P_lin under autocast with float32 weights; with
               checkpointing they are dropped after the forward pass, and recomputed block by block.
  optimizer    weights + all gradients + optimizer state + the optimizer's temporaries (bitsandbytes'
  step         8-bit AdamW on CPU works through ~20 bytes per value of the tensor it updates, Adafactor ~8,
               torch-optimi one tensor at a time ~2; fused AdamW none)

  weights, gradients, state: bytes per parameter by optimizer (levers.py): adamw 4+4+8, adamw-8bit 4+4+2,
               adamw-bf16 2+2+6, adafactor 4+4+factored rows and columns
  activations  N x L x a x d x s + 4 V d: a = 23.4 stored values of width d per token and layer on CPU when
               buffers are kept, 13.5 where freed ones go back (under --memory-budget; on GPUs) (flash
               attention keeps no T x T scores), plus the LM head's weight gradient (the fused loss computes it
               in forward); with checkpointing N x (L x d x r + 23.4 d s) + 4 V d: the block inputs (r: 4 under autocast,
               whose residual stream is float32, else s) and one block recomputed at a time.
               Attention that materialises T x T (eager; sdpa on MPS in training, its math path) adds
               B x H x T x T x (4 + s) per layer kept (one layer with checkpointing); the chunked one none.
  framework    0.52 GB on CPU: PyTorch itself (0.37 GB) and working buffers (loss chunks, allocator slack)
The coefficients were fitted to peak RSS measured on a 2-core CPU (bench/memory.py and bench/estimate_check.py
check them). Under --memory-budget, training on CPU returns freed buffers to the system (cpu_memory.py), so the
peak is what is alive at once; without a budget it keeps them for speed, and the peak can be higher.

Time: FLOPs per optimizer step (6 x (N_non-embedding + V d) + 12 L d T per token, + a forward's worth of
block FLOPs again with checkpointing) divided by the device's matmul rate in the compute dtype, measured now,
times the model-FLOPs utilisation bashgpt reaches there (measured on CPU by bench/run.py; an assumption on
GPUs and MPS, said so in the output), plus the optimizer's own time (per parameter, measured on CPU by
bench/memory.py; assumed negligible on GPUs and MPS).
"""

import functools
import math
import time
from dataclasses import dataclass

import torch

from ..configuration_bashgpt import BashGPTConfig
from ..devices import device_memory_bytes, resolve_device
from .flops import non_embedding_params, training_flops_per_token
from .levers import Levers

ACT_VALUES_PER_LAYER = 23.4  # stored activation values per token and layer, in units of d (CPU, buffers kept)
ACT_VALUES_FREED = 13.5  # the same where freed buffers go back (CPU under a budget; GPUs' caching allocators)
FRAMEWORK_BYTES = {"cpu": 0.52 * 2**30, "cuda": 0.6 * 2**30, "mps": 0.6 * 2**30}
GRADS_ALIVE_AT_PEAK = 0.53
# Bytes of temporaries per value of the largest tensor, while the optimizer updates it (CPU, bench/memory.py).
OPTIMIZER_TEMP_BYTES = {"adamw": 0, "adamw-8bit": 20, "adamw-bf16": 2, "adafactor": 8}
IMPORT_BYTES = {"adamw": 0, "adamw-8bit": 0.12 * 2**30, "adamw-bf16": 0, "adafactor": 0}  # the package's own code
# Optimizer seconds per parameter and step on CPU (2 cores; bench/memory.py --only levers).
CPU_OPTIMIZER_SECONDS = {"adamw": 1.5e-9, "adamw-8bit": 4.3e-8, "adamw-bf16": 5.4e-9, "adafactor": 8.7e-9}
# Model-FLOPs utilisation measured on CPU (bench/run.py, 2-core AVX-512 machine) at hidden size 128 and 768.
CPU_MFU = {"fp32": (0.63, 0.88), "bf16": (0.37, 0.60)}
ASSUMED_MFU = {"cuda": 0.40, "mps": 0.30}


@dataclass
class Estimate:
    preset: str
    parameters: int
    parts: dict  # name -> bytes, at the peak moment
    peak_at: str  # "backward" or "optimizer step"
    total: float
    available: int | None
    flops_per_step: float
    seconds_per_step: float | None
    mfu: float
    mfu_measured: bool
    device: str
    peak_flops: float
    levers: Levers

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= self.available


def parameter_count(config: BashGPTConfig) -> int:
    d, v = config.hidden_size, config.vocab_size
    positions = config.max_position_embeddings * d if config.position_embedding_type == "learned" else 0
    return non_embedding_params(config) + 2 * v * d + positions


def largest_tensor(config: BashGPTConfig) -> int:
    d = config.hidden_size
    return max(config.vocab_size * d, config.max_position_embeddings * d, d * config.intermediate_size, 3 * d * d)


def optimizer_state_bytes(config: BashGPTConfig, levers: Levers) -> float:
    p = parameter_count(config)
    if levers.optim != "adafactor":
        return levers.kind.state_bytes * p
    d, L = config.hidden_size, config.num_hidden_layers
    shapes = [(3 * d, d), (d, d), (config.intermediate_size, d), (d, config.intermediate_size)] * L
    shapes += [(config.vocab_size, d)] * 2 + [(config.max_position_embeddings, d)]
    return 4 * (sum(r + c for r, c in shapes) + (p - sum(r * c for r, c in shapes)))


def attention_bytes_per_layer(config: BashGPTConfig, batch_size: int, seq_len: int, levers: Levers, device: str,
                              s: int) -> float:
    """Bytes of T x T attention matrices one layer keeps for backward (0 for flash/efficient kernels)."""
    keeps_square = levers.attention == "eager" or (levers.attention == "sdpa" and device == "mps")
    return batch_size * config.num_attention_heads * seq_len**2 * (4 + s) if keeps_square else 0


def memory_parts(config: BashGPTConfig, batch_size: int, seq_len: int, levers: Levers | None = None,
                 device: str = "cpu", budgeted: bool = False) -> tuple[dict, str]:
    """The parts of the peak (bytes) and the moment it happens: 'backward' or 'optimizer step'. ``budgeted``: the
    run has a memory budget, so on CPU freed buffers go back to the system (cpu_memory.return_freed_memory)."""
    levers = levers or Levers()
    p = parameter_count(config)
    d, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kind = levers.kind
    s = 2 if levers.bf16_compute else 4
    residual = 4 if levers.use_amp else s
    tokens = batch_size * seq_len
    attention = attention_bytes_per_layer(config, batch_size, seq_len, levers, device, s)
    loss = 4 * v * d  # the fused loss keeps the LM head's weight gradient (float32) from forward to backward
    per_layer = ACT_VALUES_FREED if budgeted or device != "cpu" else ACT_VALUES_PER_LAYER
    if levers.checkpointing:
        activations = tokens * (layers * d * residual + per_layer * d * s) + attention + loss
    else:
        activations = tokens * layers * per_layer * d * s + layers * attention + loss
    linear_params = non_embedding_params(config) + v * d
    copies = 2 * linear_params if levers.use_amp and not kind.bf16_weights else 0
    weights, grads = kind.weight_bytes * p, kind.grad_bytes * p
    state = optimizer_state_bytes(config, levers)
    framework = FRAMEWORK_BYTES.get(device, FRAMEWORK_BYTES["cpu"])
    backward = {"weights": weights, "bf16 copies": 0 if levers.checkpointing else copies,
                "gradients": GRADS_ALIVE_AT_PEAK * grads, "optimizer": state, "activations": activations,
                "framework": framework}
    forward_end = weights + copies + state + activations + framework
    backward["bf16 copies"] += max(0, forward_end - sum(backward.values()))  # the forward's end, when higher
    step = {"weights": weights, "bf16 copies": 0, "gradients": grads,
            "optimizer": state + OPTIMIZER_TEMP_BYTES[levers.optim] * largest_tensor(config) + IMPORT_BYTES[levers.optim],
            "activations": 0, "framework": framework}
    if sum(step.values()) > sum(backward.values()):
        return step, "optimizer step"
    return backward, "backward"


def matmul_rate(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5, enough_s: float = 0.05) -> float:
    """FLOP/s of square matrix products on ``device``, measured now.

    Sizes grow from 256 to ``n`` while one product takes less than ``enough_s``: a CPU that emulates
    bf16 (no AVX512-BF16/AMX) answers in about a second instead of spending minutes on 2048 x 2048.
    """

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    size = min(256, n)
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up
        sync()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        if size >= n or median >= enough_s:
            return 2 * size**3 / median
        size = min(2 * size, n)


def expected_mfu(config: BashGPTConfig, device: str, bf16: bool) -> tuple[float, bool]:
    if device != "cpu":
        return ASSUMED_MFU.get(device, 0.4), False
    small, large = CPU_MFU["bf16" if bf16 else "fp32"]
    frac = (math.log(config.hidden_size) - math.log(128)) / (math.log(768) - math.log(128))
    return small + (large - small) * min(max(frac, 0.0), 1.0), True


@functools.cache
def device_matmul_rate(device: str, dtype: torch.dtype) -> float:
    """matmul_rate, measured once per process (a plan compares many combinations)."""
    return matmul_rate(device, dtype)


def estimate(preset: str, batch_size: int, seq_len: int, levers: Levers | None = None, gradient_accumulation_steps: int = 1,
             device: str = "auto", config: BashGPTConfig | None = None, measure: bool = True,
             budgeted: bool = False) -> Estimate:
    device = resolve_device(device) if measure or device == "auto" else device  # figures for another machine's device
    levers = levers or Levers()
    config = config or BashGPTConfig.from_preset(preset)
    parts, peak_at = memory_parts(config, batch_size, seq_len, levers, device, budgeted)
    tokens = batch_size * seq_len * gradient_accumulation_steps
    flops = training_flops_per_token(config, seq_len) * tokens
    if levers.checkpointing:  # the blocks' forward runs twice
        flops += 2 * non_embedding_params(config) * tokens + 4 * config.num_hidden_layers * config.hidden_size * seq_len * tokens
    mfu, measured = expected_mfu(config, device, levers.bf16_compute)
    peak = device_matmul_rate(device, torch.bfloat16 if levers.bf16_compute else torch.float32) if measure else float("nan")
    seconds = None
    if measure:
        optimizer = CPU_OPTIMIZER_SECONDS[levers.optim] * parameter_count(config) if device == "cpu" else 0.0
        seconds = flops / (peak * mfu) + optimizer
    return Estimate(preset=preset, parameters=parameter_count(config), parts=parts, peak_at=peak_at,
                    total=sum(parts.values()), available=device_memory_bytes(device), flops_per_step=flops,
                    seconds_per_step=seconds, mfu=mfu, mfu_measured=measured, device=device, peak_flops=peak,
                    levers=levers)


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GB"


def format_estimate(e: Estimate, batch_size: int, seq_len: int, accumulation: int) -> str:
    lines = [f"bashgpt {e.preset}: {e.parameters / 1e6:.1f}M parameters, batch {batch_size} x {seq_len} tokens"
             + (f" x {accumulation} accumulation steps" if accumulation > 1 else "") + f", on {e.device}"]
    lv = e.levers
    lines.append(f"settings: --optim {lv.optim}, checkpointing {'on' if lv.checkpointing else 'off'}, "
                 f"{'bf16 autocast' if lv.use_amp else 'bf16 weights' if lv.kind.bf16_weights else 'float32'}, "
                 f"{lv.attention} attention; the peak comes at the {e.peak_at}:")
    for name, value in e.parts.items():
        if value:
            lines.append(f"  {name:<12} {gib(value):>10}")
    lines.append(f"  {'peak':<12} {gib(e.total):>10}")
    if e.available is not None:
        what = "GPU memory" if e.device == "cuda" else "half of the RAM (MPS)" if e.device == "mps" else "RAM"
        verdict = "fits" if e.fits else "does NOT fit"
        lines.append(f"  {verdict} in this device's {gib(e.available)} ({what})")
    lines.append(f"FLOPs per optimizer step: {e.flops_per_step / 1e12:.2f} TFLOP")
    if e.seconds_per_step is not None:
        basis = "measured on CPU by bench/run.py" if e.mfu_measured else "an assumption: no measurement on this kind"
        lines.append(f"time per step: about {e.seconds_per_step:.2f} s (matmul rate {e.peak_flops / 1e9:.0f} GFLOP/s "
                     f"measured now x {e.mfu:.0%} utilisation, {basis})")
    return "\n".join(lines)


def fit_advice(e: Estimate) -> str | None:
    if e.fits is False:
        return (f"the estimate ({gib(e.total)}) exceeds this device's {gib(e.available)}: pass --memory-budget to let "
                f"bashgpt pick the memory levers, lower --batch-size or --seq-len, or use a smaller --model-size")
    return None
