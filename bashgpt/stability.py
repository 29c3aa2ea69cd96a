"""Training stability on HF Trainer: skip non-finite updates, clamp the loss, abort runs that keep failing.

An update is skipped when any micro-batch of its gradient-accumulation window had a NaN/inf
loss or left a NaN/inf gradient. Skipping leaves the weights and the optimizer state exactly
as they were (every gradient is set to None, which torch optimizers, fused ones included,
treat as "no update"). The learning-rate schedule still advances: the step counts as taken.

Two override points do this, because a callback alone cannot stop ``optimizer.step()``:
``SafeTrainer.compute_loss`` (a bad micro-batch contributes zero gradient and marks the
window) and ``SafeTrainer``'s pre-optimizer-step hook (checks gradients, agrees across
processes, drops the gradients).
"""

import inspect
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback

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

    @property
    def recent_fraction(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1)


def all_processes_agree(flag: bool, device) -> bool:
    """True on every process if ``flag`` is True on any (so all ranks skip together)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def gradients_finite(model) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([g.detach().float().norm() for g in grads])  # one sync, not one per tensor
    return bool(torch.isfinite(norms).all())


class SafeTrainer(Trainer):
    """``Trainer`` that clamps the loss, skips updates with non-finite loss or gradients, and writes
    checkpoints atomically (run_safety.py)."""

    def __init__(self, *args, loss_clamp: float | None = None, skip_ledger: SkipLedger | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_clamp = loss_clamp
        self.skip_ledger = skip_ledger or SkipLedger()
        self.window_bad = False
        self.fused_lm_loss = "fused_lm_loss" in inspect.signature(self.model.forward).parameters
        self.add_callback(_SkipNonFiniteUpdate(self))

    def _save_checkpoint(self, model, trial):
        from .run_safety import atomic_checkpoint_save

        atomic_checkpoint_save(self, super()._save_checkpoint, model, trial)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.fused_lm_loss:  # chunked LM head + loss, no full-size logits (fused_loss.py);
            inputs = {**inputs, "fused_lm_loss": True}  # asked per call, so never saved in the model's config
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            if not torch.isfinite(loss.detach()).all():
                self.window_bad = True
                # Zero gradient for every parameter (finite, and every DDP hook still fires); the value stays
                # NaN/inf so the Trainer's logging filter leaves it out of the logged loss.
                loss = loss.detach() + sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            else:
                loss = clamp_loss(loss, self.loss_clamp)
        return (loss, outputs) if return_outputs else loss


class _SkipNonFiniteUpdate(TrainerCallback):
    """Runs between gradient clipping and ``optimizer.step()``: drops the gradients of a bad window."""

    def __init__(self, trainer: SafeTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        t = self.trainer
        bad = t.window_bad or not gradients_finite(model)
        bad = all_processes_agree(bad, args.device)
        t.window_bad = False
        if bad:
            for p in model.parameters():
                p.grad = None
        t.skip_ledger.record(bad, state.global_step + 1)
        if t.skip_ledger.abort_reason:
            control.should_training_stop = True
            control.should_save = False
        return control

