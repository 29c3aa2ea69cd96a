"""Memory levers: the optimizer, activation checkpointing, bf16 autocast and the training attention.

Each lever is a flag of its own (``--optim``, ``--use-gradient-checkpointing``, ``--use-amp``,
``--attention``); ``--memory-budget`` (memory_plan.py) picks a combination of them. The fused LM
loss (fused_loss.py) is always on in training: it costs nothing.

Optimizers, bytes per parameter (weights + gradients + optimizer state):

  adamw        16   torch's fused AdamW, float32 everything (the default; every device)
  adamw-8bit   10   bitsandbytes' AdamW8bit: float32 weights and gradients, block-wise 8-bit moments
                    (CPU and CUDA; not MPS in bitsandbytes 0.50)
  adamw-bf16   10   torch-optimi's AdamW on bf16 weights, gradients and moments, with Kahan summation
                    compensating the rounding of each update (2 more bytes); every device
  adafactor    ~8   Transformers' Adafactor without momentum (factored second moment); every device.
                    Not AdamW: never chosen by --memory-budget, only when asked for
"""

import importlib.util
from dataclasses import dataclass

import torch

from ..chunked_attention import NAME as CHUNKED_ATTENTION
from ..errors import UserError

ATTENTIONS = ("auto", "sdpa", "chunked", "eager")


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    summary: str
    weight_bytes: int  # per parameter
    grad_bytes: int
    state_bytes: float
    devices: tuple[str, ...]
    module: str | None = None  # the import that must be there
    extra: str | None = None  # bashgpt's pip extra that installs it
    automatic: bool = True  # may --memory-budget choose it

    @property
    def bf16_weights(self) -> bool:
        return self.weight_bytes == 2


ALL_DEVICES = ("cpu", "cuda", "mps")
OPTIMIZERS = {
    "adamw": OptimizerKind("adamw", "fused AdamW, float32 states", 4, 4, 8, ALL_DEVICES),
    "adamw-8bit": OptimizerKind("adamw-8bit", "8-bit AdamW (bitsandbytes)", 4, 4, 2, ("cpu", "cuda"),
                                "bitsandbytes", "bnb"),
    "adamw-bf16": OptimizerKind("adamw-bf16", "AdamW on bf16 weights with Kahan summation (torch-optimi)",
                                2, 2, 6, ALL_DEVICES, "optimi", "lean"),
    "adafactor": OptimizerKind("adafactor", "Adafactor, no momentum (Transformers)", 4, 4, 0, ALL_DEVICES,
                               automatic=False),
}


@dataclass(frozen=True)
class Levers:
    """One combination of the memory levers."""

    optim: str = "adamw"
    use_amp: bool = False
    checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | chunked | eager (resolved: never auto)

    @property
    def kind(self) -> OptimizerKind:
        return OPTIMIZERS[self.optim]

    @property
    def bf16_compute(self) -> bool:
        return self.use_amp or self.kind.bf16_weights


def resolve_attention(requested: str, device: str) -> str:
    """auto: the chunked attention on MPS (its sdpa keeps T x T float32 probabilities in training), else sdpa."""
    if requested not in ATTENTIONS:
        raise UserError(f"--attention {requested!r} is not one of {', '.join(ATTENTIONS)}")
    if requested == "auto":
        return "chunked" if device == "mps" else "sdpa"
    return requested


def optimizer_problem(name: str, device: str) -> str | None:
    """Why ``name`` cannot run on ``device`` here (one line naming the fix), or None."""
    if name not in OPTIMIZERS:
        return f"--optim {name!r} is not one of {', '.join(OPTIMIZERS)}"
    kind = OPTIMIZERS[name]
    if device not in kind.devices:
        other = "adamw-bf16" if device == "mps" else "adamw"
        return f"--optim {name} ({kind.summary}) does not run on {device}; use --optim {other} instead"
    if kind.module and importlib.util.find_spec(kind.module) is None:
        return (f"--optim {name} needs the {kind.module} package, which is not installed: "
                f"pip install 'bashgpt[{kind.extra}]'")
    return None


def require_optimizer(name: str, device: str) -> OptimizerKind:
    problem = optimizer_problem(name, device)
    if problem:
        raise UserError(problem)
    return OPTIMIZERS[name]


def optimizer_cls_and_kwargs(name: str, learning_rate: float, device: str, betas=(0.9, 0.95), eps: float = 1e-8):
    """(optimizer class, keyword arguments) for ``Trainer(optimizer_cls_and_kwargs=...)``; weight decay comes per
    parameter group from Trainer. Imports the optional package here, so a missing one fails before any work."""
    require_optimizer(name, device)
    if name == "adamw":
        return torch.optim.AdamW, {"lr": learning_rate, "betas": betas, "eps": eps, "fused": True}
    if name == "adamw-8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit, {"lr": learning_rate, "betas": betas, "eps": eps}
    if name == "adamw-bf16":
        import optimi

        # decouple_lr=False: weight decay scaled by the learning rate, as in torch's AdamW. foreach=False: one
        # tensor at a time, so the update's temporaries are one tensor's (foreach: ~2 bytes per parameter at once)
        return optimi.AdamW, {"lr": learning_rate, "betas": betas, "eps": eps, "kahan_sum": True, "foreach": False}
    from transformers.optimization import Adafactor

    return Adafactor, {"lr": learning_rate, "beta1": None, "relative_step": False, "scale_parameter": False,
                       "warmup_init": False}


def build_optimizer(model: torch.nn.Module, name: str, learning_rate: float, weight_decay: float, device: str):
    """The optimizer as Trainer builds it: weight decay on matrices, none on biases, norms and embeddings' rows."""
    cls, kwargs = optimizer_cls_and_kwargs(name, learning_rate, device)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return cls([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], **kwargs)


def apply_to_model(model, levers: Levers):
    """Put the model in the storage dtype and attention the levers ask for (checkpointing is Trainer's switch)."""
    model.to(torch.bfloat16 if levers.kind.bf16_weights else torch.float32)
    model.set_attn_implementation(CHUNKED_ATTENTION if levers.attention == "chunked" else levers.attention)
    return model
