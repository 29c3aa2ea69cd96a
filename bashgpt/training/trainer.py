"""``SafeTrainer``: HF ``Trainer`` with the stability rules (stability.py), through its documented override points
(``compute_loss``, ``create_scheduler``, ``get_decay_parameter_names``) and a callback.

Two hooks skip a bad update, because a callback alone cannot stop ``optimizer.step()``:
``SafeTrainer.compute_loss`` (a bad micro-batch contributes zero gradient and marks the
window) and a pre-optimizer-step callback (checks gradients, agrees across processes, drops
the gradients).
"""

import inspect

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .stability import SkipLedger, all_processes_agree, clamp_loss, gradients_finite

NORMS = (nn.LayerNorm, nn.RMSNorm)


class SafeTrainer(Trainer):
    """``Trainer`` that clamps the loss, skips updates with non-finite loss or gradients, and decays no norm."""

    def __init__(self, *args, loss_clamp: float | None = None, skip_ledger: SkipLedger | None = None,
                 lr_factor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_factor = lr_factor  # step -> multiplier of the learning rate, replacing the step-based schedule
        self.loss_clamp = loss_clamp
        self.skip_ledger = skip_ledger or SkipLedger()
        self.window_bad = False
        self.fused_lm_loss = "fused_lm_loss" in inspect.signature(self.model.forward).parameters
        self.add_callback(_SkipNonFiniteUpdate(self))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_factor is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self.lr_factor)
        return self.lr_scheduler

    def get_decay_parameter_names(self, model) -> list[str]:
        """Trainer's rule (no biases, no ``nn.LayerNorm``), and no gain of any norm module: Trainer matches
        RMSNorm only by name, and ours are ``ln_1``/``ln_2``/``ln_f``."""
        norms = {f"{name}.{p}" for name, module in model.named_modules() if isinstance(module, NORMS)
                 for p, _ in module.named_parameters(recurse=False)}
        return [name for name in super().get_decay_parameter_names(model) if name not in norms]

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

