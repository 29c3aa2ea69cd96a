"""Trainer callbacks: epochs of --steps-per-epoch steps, a readable JSONL log, the best model, plain advice."""

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from ..devices import peak_memory_bytes
from .stability import largest_across_processes


class EpochBoundary(TrainerCallback):
    """An epoch is ``steps_per_epoch`` optimizer steps: evaluate and checkpoint at the end of each."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps_per_epoch == 0:
            control.should_evaluate = True
            control.should_save = True
        return control


class TimeBudget(TrainerCallback):
    """``--time-budget``: training stops, validates and saves once ``seconds`` of it have passed, and
    ``lr_factor`` is a schedule over time (linear warm-up over ``warmup_steps``, then cosine decay to 10%
    at the deadline), so that the run anneals however fast the machine turns out to be. Every process
    uses the slowest one's clock, so all stop at the same step with the same learning rate. A resumed run
    goes on from the time its checkpoint had used (its state_dict), not from zero."""

    def __init__(self, seconds: float, warmup_steps: int):
        self.seconds = seconds
        self.warmup_steps = warmup_steps
        self.began = None
        self.used_before = 0.0  # seconds of the budget spent before this process began (a resumed run's)
        self.fraction = 0.0  # of the budget used, as of the current step

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter() - self.used_before

    def state_dict(self) -> dict:
        return {"used": time.perf_counter() - self.began if self.began is not None else self.used_before}

    def load_state_dict(self, state: dict) -> None:
        self.used_before = state["used"]
        self.fraction = min(self.used_before / self.seconds, 1.0)

    def on_step_begin(self, args, state, control, **kwargs):
        elapsed = largest_across_processes(time.perf_counter() - self.began, args.device)
        self.fraction = min(elapsed / self.seconds, 1.0)

    def on_step_end(self, args, state, control, **kwargs):
        if largest_across_processes(time.perf_counter() - self.began, args.device) >= self.seconds:
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control

    def seconds_left(self) -> float:
        return self.seconds * (1.0 - self.fraction)

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(self.warmup_steps, 1))
        return warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * self.fraction)))


class Throughput(TrainerCallback):
    """Tokens per second of the optimizer steps themselves (validation and saving left out), measured here once for
    the console (progress.py) and ``log.jsonl``, which ask for it when a training loss is logged."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.window = [0.0, 0]  # seconds in optimizer steps, and steps, since the last reading
        self.step_began = 0.0
        self.value, self.read_at = None, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.window[0] += time.perf_counter() - self.step_began
        self.window[1] += 1

    def tokens_per_s(self, step: int) -> float | None:
        """The rate over the steps since the last reading (the same figure to every reader at one step)."""
        if step != self.read_at and self.window[1]:
            seconds, steps = self.window
            self.value, self.read_at, self.window = steps * self.tokens_per_step / max(seconds, 1e-9), step, [0.0, 0]
        return self.value


class JsonlLog(TrainerCallback):
    """One JSON line per log event: loss, eval loss, lr, grad norm, tokens/s, skipped steps, peak memory."""

    def __init__(self, path: Path, throughput: Throughput, steps_per_epoch: int, device: str, ledger, is_main: bool):
        self.path = path
        self.steps_per_epoch = steps_per_epoch
        self.throughput = throughput
        self.device = device
        self.ledger = ledger
        self.is_main = is_main

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.is_main or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.global_step / self.steps_per_epoch, 3)}
        record.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()})
        if "loss" in logs and (rate := self.throughput.tokens_per_s(state.global_step)) is not None:
            record["tokens_per_s"] = round(rate, 1)
        record["skipped_steps"] = self.ledger.skipped_total
        record["peak_memory_gb"] = round(peak_memory_bytes(self.device) / 2**30, 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class BestModelSaver(TrainerCallback):
    """Keep ``OUTPUT/best/`` as a complete model folder of the lowest validation loss so far.

    Whether a validation brought a new best is decided once (``verdict``), against the best before it, by whichever
    callback asks first (the progress line, early stopping, this one), so the callbacks may run in any order."""

    def __init__(self, save, best_loss: float = math.inf):
        self.save = save  # callable(model, state, loss), called on every process (the main one writes)
        self.best_loss = best_loss
        self.saved_once = False
        self.decided = (None, False)  # (step, whether its validation was a new best)

    def state_dict(self) -> dict:
        return {"best_loss": None if math.isinf(self.best_loss) else self.best_loss, "saved_once": self.saved_once}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = math.inf if state["best_loss"] is None else state["best_loss"]
        self.saved_once = state["saved_once"]

    def improves(self, loss: float | None) -> bool:
        return loss is not None and math.isfinite(loss) and loss < self.best_loss

    def verdict(self, step: int, loss: float | None) -> bool:
        """Whether the validation at ``step`` is a new best (the best loss moves to it at once)."""
        if self.decided[0] != step:
            better = self.improves(loss)
            self.decided = (step, better)
            if better:
                self.best_loss = loss
        return self.decided[1]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and self.verdict(state.global_step, loss):
            self.save(model, state, loss)
            self.saved_once = True


class EarlyStop(TrainerCallback):
    """``--early-stopping N``: training stops once N validations in a row bring no new best loss (a model learning
    its data by heart: validation rises while training loss falls); ``best/`` already holds the best."""

    def __init__(self, patience: int, saver: BestModelSaver, say):
        self.patience, self.saver, self.say = patience, saver, say
        self.without_best = 0

    def state_dict(self) -> dict:
        return {"without_best": self.without_best}

    def load_state_dict(self, state: dict) -> None:
        self.without_best = state["without_best"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.without_best = 0 if self.saver.verdict(state.global_step, loss) else self.without_best + 1
        if self.without_best >= self.patience:
            control.should_training_stop = True
            self.say(f"stopping early at step {state.global_step}: {self.without_best} validations without a new "
                     f"best (best {self.saver.best_loss:.3f}, kept in best/)")


class Advice(TrainerCallback):
    """The guide's warning signs, said plainly at each evaluation (the validation line itself is progress.py's)."""

    def __init__(self, ledger, say, early_stopping: bool = False):
        self.ledger = ledger
        self.say = say
        self.early_stopping = early_stopping  # the run stops itself when overfitting goes on: no need to suggest it
        self.eval_losses: list[float] = []
        self.train_losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and math.isfinite(logs["loss"]):
            self.train_losses.append(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.eval_losses.append(loss)
        for line in self.advise(loss, state.global_step / max(args.max_steps, 1)):
            self.say(line)

    def advise(self, loss: float, progress: float) -> list[str]:
        notes = []
        recent = sum(self.train_losses[-5:]) / len(self.train_losses[-5:]) if self.train_losses else math.nan
        overfitting = math.isfinite(loss) and loss > 1.3 * recent + 0.2
        if not math.isfinite(loss):
            notes.append("warning: validation loss is not finite; lower --learning-rate or raise --warmup-steps")
        elif overfitting:  # a rise then is the overfitting said below, not a learning rate too high
            pass
        elif len(self.eval_losses) >= 2 and loss > self.eval_losses[-2] * 1.01:
            notes.append("warning: validation loss rose since the last evaluation"
                         + ("; early in a run this means the learning rate is too high: try a lower --learning-rate "
                            "or a longer --warmup-steps" if progress < 0.5 else "; the model may be overfitting"))
        elif len(self.eval_losses) >= 3 and progress < 0.5 and self.eval_losses[-3] - loss < 0.01 * loss:
            notes.append("warning: validation loss has plateaued early; try a higher --learning-rate, a larger "
                         "--batch-size or --gradient-accumulation-steps")
        if overfitting:
            notes.append(f"warning: validation loss is far above training loss ({recent:.3f}): overfitting; "
                         "use more data or fewer steps" + ("" if self.early_stopping else
                                                           " (--early-stopping N stops such a run)"))
        if self.ledger.recent_fraction > 0.05:
            notes.append(f"warning: {self.ledger.recent_fraction:.0%} of recent updates were skipped for NaN/inf; "
                         f"lower --learning-rate or raise --warmup-steps")
        return notes
