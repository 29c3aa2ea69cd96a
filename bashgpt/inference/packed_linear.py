"""oneDNN-packed linear weights for decoding on CPU.

Decoding one token is a matrix-vector product per linear layer, bound by how fast the weights
stream from memory. Where oneDNN reads a weight reordered into its blocked layout faster than
``addmm`` reads the plain one, the one-token steps use the reordered copy:
- bf16 on CPUs with AVX512-BF16/AMX: all of the tiny preset's linears stream in 10.0 ms instead
  of 14.5 ms (Intel Xeon with AMX), with bit-identical results for up to ``MAX_ROWS`` rows;
- fp32 except on Intel CPUs with AVX-512, equal up to float rounding (greedy tokens identical in our
  tests): the tiny preset's LM head 6.7 -> 3.4 ms on an AMD EPYC with AVX2, all of tiny's linears
  17.0 -> 9.8 ms on an AMD EPYC with AVX-512 (Zen 5). On Intel's AVX-512 CPUs MKL's own fp32 path is
  the faster one (16.0 against 20.5 ms for tiny's linears), so fp32 is not packed there.
oneDNN lays a weight out for a given number of rows. fp32 gets the layout for one row at batch 1
and the layout for ``MAX_ROWS`` rows at larger batches: on an AMD EPYC with AVX2, tiny's greedy
decoding runs 15% faster at batch 1 on the one-row layout and 25-40% faster at batch 2-4 on the
batch layout. bf16 keeps the one-row layout: on an AMD EPYC Zen 5 every layout from 1 to 64 rows gave
F.linear's bits and took the same time within noise (the batch layout about 6% less at 4 rows).
Inputs of more rows (a prompt's prefill) are compute-bound and run on the plain weights.
Used by bashgpt's decode engine (engine.py) and entered once around all of a command's sampling: the
packed copies cost as much memory as the linear weights themselves and live only for that block.
"""

import platform
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

MAX_ROWS = 32  # packed only for inputs of at most this many rows: decode steps of a batch, not a prompt's prefill


@cache
def intel_cpu() -> bool:
    """Whether this is an Intel CPU (/proc/cpuinfo's vendor on Linux, the processor name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in info)
    except OSError:
        return "intel" in platform.processor().lower()


def worth_packing(dtype: torch.dtype) -> bool:
    """Whether oneDNN's reordered weights stream faster than the plain ones for this dtype on this CPU."""
    return dtype != torch.float32 or not (intel_cpu() and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX"))


def layout_rows(dtype: torch.dtype, batch: int) -> int:
    """The number of rows oneDNN lays a packed weight out for, for the one-token steps of a batch (see the header)."""
    return MAX_ROWS if dtype == torch.float32 and batch > 1 else 1


@cache
def packs_here(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack weights of this dtype on this CPU (bf16 needs AVX512-BF16 or AMX)."""
    return pack(torch.zeros(16, 16, dtype=dtype), 1) is not None


def pack(weight: torch.Tensor, layout: int) -> torch.Tensor | None:
    """``weight`` reordered into oneDNN's blocked layout for ``layout`` rows; None where oneDNN cannot."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), layout)
    except (RuntimeError, AttributeError):  # no oneDNN, or no kernel for this dtype on this CPU (bf16 without AVX512)
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed from the packed weight (for at most ``MAX_ROWS`` rows; any leading
    dimensions, as ``F.linear``)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def can_pack(linears: dict[str, nn.Linear]) -> bool:
    """Whether these linears (CPU, one dtype) may run on packed weights: oneDNN is there and packing pays."""
    weight = next(iter(linears.values())).weight if linears else None
    return (weight is not None and weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and worth_packing(weight.dtype)
            and packs_here(weight.dtype))


def packed_weights(model: nn.Module, batch: int = 1) -> dict[str, torch.Tensor]:
    """``{name: packed weight}`` of the model's linear layers, laid out for the one-token steps of a batch;
    empty where packing does not apply."""
    linears = _linears(model)
    if not can_pack(linears):
        return {}
    layout = layout_rows(next(iter(linears.values())).weight.dtype, batch)
    packed = {name: pack(m.weight, layout) for name, m in linears.items()}
    return {} if any(p is None for p in packed.values()) else packed


@contextmanager
def linears_packed(model: nn.Module):
    """Within the block, every ``nn.Linear`` of ``model`` runs on a packed weight for inputs of at most
    ``MAX_ROWS`` rows without autograd or autocast (CPU), packed at the first such input for its batch size,
    so a short prompt's prefill and the steps after it share one layout; anywhere else, or where packing
    does not pay on this CPU (``worth_packing``), nothing changes. The packed copies are dropped on exit;
    a block inside another for the same model uses the outer one's. The weights must not change within it."""
    linears = _linears(model)
    if not can_pack(linears):
        yield
        return
    layouts = {}  # layout -> packed weights, built once per block: the weights stay as they are within it
    dtype = next(iter(linears.values())).weight.dtype  # one dtype for all (can_pack read it from the same weight)

    def forward(module, name, x):
        if x.numel() <= MAX_ROWS * x.shape[-1] and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
            batch = x.shape[0] if x.dim() > 1 else 1  # (B, T, C): a prompt's prefill packs for its decode steps
            layout = layout_rows(dtype, batch)
            if layout not in layouts:
                layouts[layout] = packed_weights(model, batch)
            packed = layouts[layout].get(name)
            if packed is not None:
                return packed_linear(x, packed, module.bias)
        return type(module).forward(module, x)

    swapped = []
    for name, module in linears.items():
        if "forward" not in vars(module):  # not already swapped by an enclosing block
            module.forward = lambda x, m=module, n=name: forward(m, n, x)
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward
