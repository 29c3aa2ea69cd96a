"""Estimate a training run's memory and time before starting it.

Memory, by part (bytes):
  weights        4 P (fp32 master weights; + 2 P of bf16 copies of the linear weights under --use-amp)
  gradients      4 P in total; about half of them are alive at the peak (backward frees activations
                 while it fills gradients), which is what the peak counts
  optimizer      8 P (AdamW's two moments)
  activations    N x (L x 23.4 x d x s + V x s), N = batch x seq tokens per micro-batch, s = 4 (fp32) or
                 2 (bf16): about 23 stored values of width d per token and layer (flash attention keeps no
                 T x T scores), plus the gradient of the logits (bashgpt's fused LM-head loss)
                 with --use-gradient-checkpointing: N x (L x 4 d + 23.4 d s + V s), layer inputs only
  framework      0.52 GB on CPU: PyTorch itself (0.37 GB) and working buffers (loss chunks, allocator slack)
The coefficients were fitted to peak RSS measured on this 2-core CPU for nano and tiny
(bench/estimate_check.py checks them, within 20%).

Time: FLOPs per optimizer step (6 x (N_non-embedding + V d) + 12 L d T per token, + a forward's
worth of block FLOPs again with checkpointing) divided by the device's matmul rate, measured now,
times the model-FLOPs utilisation bashgpt reaches there (measured on CPU by bench/run.py;
an assumption on GPUs and MPS, said so in the output).
"""

import math
import time
from dataclasses import dataclass

import torch

from ..configuration_bashgpt import BashGPTConfig
from ..devices import device_memory_bytes, resolve_device
from .flops import non_embedding_params, training_flops_per_token

ACT_VALUES_PER_LAYER = 23.4  # stored activation values per token and layer, in units of d
FRAMEWORK_BYTES = {"cpu": 0.52 * 2**30, "cuda": 0.6 * 2**30, "mps": 0.6 * 2**30}
GRADS_ALIVE_AT_PEAK = 0.53
# Model-FLOPs utilisation measured on CPU (bench/run.py, 2-core AVX-512 machine) at hidden size 128 and 768.
CPU_MFU = {"fp32": (0.63, 0.88), "bf16": (0.37, 0.60)}
ASSUMED_MFU = {"cuda": 0.40, "mps": 0.30}


@dataclass
class Estimate:
    preset: str
    parameters: int
    parts: dict  # name -> bytes
    total: float
    available: int | None
    flops_per_step: float
    seconds_per_step: float | None
    mfu: float
    mfu_measured: bool
    device: str
    peak_flops: float

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= self.available


def parameter_count(config: BashGPTConfig) -> int:
    d, v = config.hidden_size, config.vocab_size
    positions = config.max_position_embeddings * d if config.position_embedding_type == "learned" else 0
    return non_embedding_params(config) + 2 * v * d + positions


def memory_parts(config: BashGPTConfig, batch_size: int, seq_len: int, use_amp: bool,
                 use_gradient_checkpointing: bool, device: str = "cpu") -> dict:
    p = parameter_count(config)
    d, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    s = 2 if use_amp else 4
    tokens = batch_size * seq_len
    if use_gradient_checkpointing:
        per_token = layers * 4 * d + ACT_VALUES_PER_LAYER * d * s + v * s
    else:
        per_token = layers * ACT_VALUES_PER_LAYER * d * s + v * s
    linear_params = non_embedding_params(config) + v * d
    return {
        "weights": 4 * p + (2 * linear_params if use_amp else 0),
        "gradients": GRADS_ALIVE_AT_PEAK * 4 * p,
        "optimizer": 8 * p,
        "activations": tokens * per_token,
        "framework": FRAMEWORK_BYTES.get(device, FRAMEWORK_BYTES["cpu"]),
    }


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


def expected_mfu(config: BashGPTConfig, device: str, use_amp: bool) -> tuple[float, bool]:
    if device != "cpu":
        return ASSUMED_MFU.get(device, 0.4), False
    small, large = CPU_MFU["bf16" if use_amp else "fp32"]
    frac = (math.log(config.hidden_size) - math.log(128)) / (math.log(768) - math.log(128))
    return small + (large - small) * min(max(frac, 0.0), 1.0), True


def estimate(preset: str, batch_size: int, seq_len: int, use_amp: bool = False,
             use_gradient_checkpointing: bool = False, gradient_accumulation_steps: int = 1,
             device: str = "auto", config: BashGPTConfig | None = None, measure: bool = True) -> Estimate:
    device = resolve_device(device)
    config = config or BashGPTConfig.from_preset(preset)
    parts = memory_parts(config, batch_size, seq_len, use_amp, use_gradient_checkpointing, device)
    tokens = batch_size * seq_len * gradient_accumulation_steps
    flops = training_flops_per_token(config, seq_len) * tokens
    if use_gradient_checkpointing:  # the blocks' forward runs twice
        flops += 2 * non_embedding_params(config) * tokens + 4 * config.num_hidden_layers * config.hidden_size * seq_len * tokens
    mfu, measured = expected_mfu(config, device, use_amp)
    peak = matmul_rate(device, torch.bfloat16 if use_amp else torch.float32) if measure else float("nan")
    return Estimate(preset=preset, parameters=parameter_count(config), parts=parts, total=sum(parts.values()),
                    available=device_memory_bytes(device), flops_per_step=flops,
                    seconds_per_step=flops / (peak * mfu) if measure else None, mfu=mfu, mfu_measured=measured,
                    device=device, peak_flops=peak)


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GB"


def format_estimate(e: Estimate, batch_size: int, seq_len: int, accumulation: int) -> str:
    lines = [f"bashgpt {e.preset}: {e.parameters / 1e6:.1f}M parameters, batch {batch_size} x {seq_len} tokens"
             + (f" x {accumulation} accumulation steps" if accumulation > 1 else "") + f", on {e.device}"]
    for name, value in e.parts.items():
        lines.append(f"  {name:<12} {gib(value):>10}")
    lines.append(f"  {'total':<12} {gib(e.total):>10}")
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
        return (f"the estimate ({gib(e.total)}) exceeds this device's {gib(e.available)}: lower --batch-size or --seq-len, "
                f"add --use-gradient-checkpointing or --use-amp, or use a smaller --model-size")
    return None
