"""Pick the device and the mixed precision that work on it (MPS > CUDA > CPU by default).

MPS facts this follows (see the README's Mac section): bf16 needs macOS 14+; fp16 with
GradScaler and the fused AdamW kernel does not skip inf steps on torch <= 2.13, so fp16 on
MPS uses the unfused optimizer; pin_memory is unsupported on MPS.
"""

import os
import resource
import sys
from dataclasses import dataclass

import torch

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


def peak_rss_bytes() -> int:
    """This process's own peak resident memory, in bytes.

    On Linux it reads VmHWM: ``ru_maxrss`` survives fork+exec, so a child started by a large
    process (a test runner, a launcher) would report its parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@dataclass
class Precision:
    bf16: bool = False
    fp16: bool = False
    note: str = "fp32"

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def mps_bf16_ok() -> bool:
    return mps_available() and torch.backends.mps.is_macos_or_newer(14, 0)


def resolve_device(requested: str = "auto") -> str:
    """'auto' -> mps, cuda or cpu (in that order); an unavailable explicit device is a clear error."""
    if requested not in DEVICES:
        raise UserError(f"--device {requested!r} is not one of {', '.join(DEVICES)}")
    if requested == "auto":
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
            return "cpu"
        return "mps" if mps_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible to torch; use --device auto or cpu")
    if requested == "mps" and not mps_available():
        raise UserError("--device mps was asked for but MPS is not available (needs Apple silicon, macOS 14+); "
                        "use --device auto or cpu")
    return requested


def choose_precision(device: str, use_amp: bool) -> Precision:
    """bf16 where the device supports it, fp16 with loss scaling on older CUDA, else a clear error."""
    if not use_amp:
        return Precision()
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(bf16=True, note="bf16 autocast")
        return Precision(fp16=True, note="fp16 autocast with loss scaling (this GPU has no bf16)")
    if device == "mps":
        if mps_bf16_ok():
            return Precision(bf16=True, note="bf16 autocast (MPS, macOS 14+)")
        raise UserError("--use-amp on MPS needs macOS 14 or newer for bf16; update macOS or drop --use-amp")
    return Precision(bf16=True, note="bf16 autocast on CPU")


def peak_memory_bytes(device: str) -> int:
    """Peak memory so far: allocator peak on CUDA, live MPS tensors, the process's peak RSS on CPU."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    if device == "mps" and mps_available():
        return torch.mps.current_allocated_memory()
    return peak_rss_bytes()


def device_memory_bytes(device: str) -> int | None:
    """Memory the device can give a run: GPU memory on CUDA, half of RAM on a Mac (MPS), RAM on CPU."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return ram // 2 if device == "mps" else ram


def bf16_is_fast(device: str) -> bool:
    """Whether bf16 autocast speeds training up here (CPU: native bf16 instructions; GPUs: support)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "mps":
        return mps_bf16_ok()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
