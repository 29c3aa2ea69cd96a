"""bf16 matrix products through float32 kernels, so that bf16 training can be measured on a CPU without native bf16.

On a CPU without AVX512-BF16 or AMX, PyTorch's bf16 matrix products run at about 1 GFLOP/s (fp32:
about 100), so one bf16 training step of the guide's presets takes hours. Inside
``EmulatedBF16()``, each matrix product and the CPU flash attention (forward and backward) whose
inputs are bf16 runs as the float32 kernel on the same values (every bf16 number is exact in
float32), and its outputs are rounded back to the dtypes the bf16 kernel returns. That is what a
native bf16 kernel with float32 accumulation computes, up to the order of summation.

Everything else is untouched: autocast's casts, what autograd saves, the optimizer and the
allocator. So a peak measured inside it is the real one, plus the emulation's own float32
copies, which live only during one call. ``largest_transient`` records the most bytes those
copies held at once: a measured peak overstates the native one by at most that.

Bench only: training never uses it.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default
ATTENTION_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward.default
EMULATED = MATMULS | {ATTENTION, ATTENTION_BACKWARD}


def _is_bf16(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16


class EmulatedBF16(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.largest_transient = 0  # bytes of float32 copies alive at once in one call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in EMULATED or not any(_is_bf16(a) for a in tree_leaves((args, kwargs))):
            return func(*args, **kwargs)
        copies = []

        def widen(value):
            if _is_bf16(value):
                copies.append(value.float())
                return copies[-1]
            return value

        out = func(*tree_map(widen, args), **tree_map(widen, kwargs))
        wide = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.calls += 1
        self.largest_transient = max(self.largest_transient, sum(t.nbytes for t in copies + wide))
        if func is ATTENTION:  # (output, logsumexp): the bf16 kernel keeps logsumexp in float32
            return (out[0].to(torch.bfloat16), *out[1:])
        return tree_map(lambda t: t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                        out)
