"""Training stability on HF Trainer: skip non-finite updates, clamp the loss, abort runs that keep failing.

An update is skipped when any micro-batch of its gradient-accumulation window had a NaN/inf
loss or left a NaN/inf gradient. Skipping leaves the weights and the optimizer state exactly
as they were (every gradient is set to None, which torch optimizers, fused ones included,
treat as "no update"). The learning-rate schedule still advances: the step counts as taken.

This module holds the rules (loss clamp, skip ledger, gradient checks); trainer.py wires
them into Trainer.
"""

from collections import deque
from dataclasses import dataclass, field

import torch

NAN_ADVICE = ("lower the learning rate (e.g. --learning-rate 3e-5), lengthen the warmup (e.g. --warmup-steps 200), "
              "reduce --batch-size, or use a smaller --model-size")


def clamp_loss(loss: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Scale a loss above ``threshold`` down to it: same gradient direction, smaller step.

    (``torch.clamp`` would zero the gradient of such a batch instead.)
    """
    if threshold is None or not torch.isfinite(loss) or loss.detach() <= threshold:
        return loss
    return loss * (threshold / loss.detach())


@dataclass
class SkipLedger:
    """Counts skipped updates and decides when a run should stop."""

    max_fraction: float = 0.05
    max_consecutive: int = 5
    window: int = 100
    skipped_total: int = 0
    consecutive: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=100))
    abort_reason: str | None = None

    def record(self, skipped: bool, step: int) -> None:
        self.recent.append(skipped)
        if skipped:
            self.skipped_total += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        if self.consecutive >= self.max_consecutive:
            self.abort_reason = f"{self.consecutive} updates in a row had NaN/inf loss or gradients (step {step})"
        elif sum(self.recent) > self.max_fraction * self.window:
            self.abort_reason = (f"{sum(self.recent)} of the last {len(self.recent)} updates were skipped for NaN/inf, "
                                 f"more than {self.max_fraction:.0%} (step {step})")

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total, self.consecutive = state["skipped_total"], state["consecutive"]
        self.recent = deque(state["recent"], maxlen=self.window)

    @property
    def recent_fraction(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1)


def largest_across_processes(value: float, device) -> float:
    """The largest of ``value`` over all processes (itself when there is one), the same on every process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([float(value)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())
    return value


def all_processes_agree(flag: bool, device) -> bool:
    """True on every process if ``flag`` is True on any (so all ranks skip together)."""
    return largest_across_processes(1.0 if flag else 0.0, device) > 0


def gradients_finite(model) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([g.detach().float().norm() for g in grads])  # one sync, not one per tensor
    return bool(torch.isfinite(norms).all())
