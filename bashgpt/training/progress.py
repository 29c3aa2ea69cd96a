"""The console of a training run: one live progress line, and one readable line per validation.

``ProgressLine`` is Trainer's own ``ProgressCallback`` (its step bar and validation bar) with what a user of the
guide reads beside the bar: its "epoch" (``--steps-per-epoch`` optimizer steps, not a pass over the data), loss,
learning rate, tokens/s and an ETA, where ``ProgressCallback`` prints every log as a Python dict. The trainer runs
with ``disable_tqdm`` so that Trainer adds no bar of its own, and its ``PrinterCallback`` (the dict printer it adds
instead) is taken out. Everything Trainer logs still goes to ``log.jsonl`` (callbacks.JsonlLog).

    train  42%|████▏       | 420/1000 steps, epoch 3/5 · loss 2.914 · lr 5.8e-05 · 4,520 tok/s · ETA 04:22
    [bashgpt] step 400/1000, end of epoch 2/5: validation loss 3.021 (perplexity 20.5), best so far
"""

import math
import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} steps{postfix} · ETA {remaining}"


def guide_epoch(step: int, steps_per_epoch: int, num_epochs: int) -> int:
    """The epoch (1-based) that optimizer step ``step + 1`` belongs to, capped at the last one."""
    return min(step // steps_per_epoch + 1, num_epochs)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine(ProgressCallback):
    """Live line: step/total, guide epoch, loss, lr, tokens/s, ETA. Without a bar (``--no-progress``),
    the same facts as one plain line per log event, for log files."""

    def __init__(self, steps_per_epoch: int, num_epochs: int, throughput, say, live: bool,
                 is_main: bool, best=None, budget=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.num_epochs = num_epochs
        self.throughput = throughput  # callbacks.Throughput: tokens/s, the figure log.jsonl records too
        self.say = say
        self.live = live
        self.is_main = is_main
        self.best = best  # the BestModelSaver, asked whether a validation is a new best
        self.budget = budget  # a TimeBudget: the run ends at its deadline or at max_steps, whichever comes first
        self.start = (0.0, 0)  # (time, step) when this process began training: the ETA excludes resumed steps
        self.hf_bars_were_on = True

    @staticmethod
    def replace_trainers_printing(trainer) -> None:
        """Take out the dict printer Trainer adds when its own bar is off (``disable_tqdm``)."""
        trainer.remove_callback(PrinterCallback)

    def rate(self, step: int) -> float:
        """Optimizer steps per second since this process started training, validation and saving included."""
        t0, s0 = self.start
        return (step - s0) / max(time.perf_counter() - t0, 1e-9)

    def facts(self, state, logs: dict) -> list[str]:
        step = state.global_step
        out = [f"epoch {guide_epoch(step, self.steps_per_epoch, self.num_epochs)}/{self.num_epochs}"]
        if "loss" in logs and math.isfinite(logs["loss"]):
            out.append(f"loss {logs['loss']:.3f}")
        if "learning_rate" in logs:
            out.append(f"lr {logs['learning_rate']:.1e}")
        if "loss" in logs and (rate := self.throughput.tokens_per_s(step)) is not None:
            out.append(f"{rate:,.0f} tok/s")
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = (time.perf_counter(), state.global_step)
        # Transformers' own "Writing model shards" bars would cut through ours at every save.
        self.hf_bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self.current_step = state.global_step  # what ProgressCallback.on_step_end counts the bar's steps from
        if self.is_main and self.live:
            from tqdm.auto import tqdm

            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train",
                                     bar_format=BAR_FORMAT, dynamic_ncols=True, file=sys.stderr)

    def expected_steps(self, state) -> int:
        """max_steps, or under a time budget the step the deadline will come at (at the rate so far)."""
        if self.budget is None:
            return state.max_steps
        expected = state.global_step + self.budget.seconds_left() * self.rate(state.global_step)
        return max(state.global_step, min(state.max_steps, round(expected)))

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            if self.budget is not None:
                self.training_bar.total = self.expected_steps(state)
            super().on_step_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.is_main or not logs or "loss" not in logs:
            return
        facts = self.facts(state, logs)
        if self.training_bar is not None:
            self.training_bar.set_postfix_str(" · ".join(facts), refresh=True)
            return
        rate = self.rate(state.global_step)
        total = self.expected_steps(state)
        left = (total - state.global_step) / rate if rate > 0 else float("nan")
        eta = f"ETA {format_duration(left)}" if math.isfinite(left) else "ETA ?"
        self.say(" · ".join([f"step {state.global_step}/{total}", *facts, eta]))

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.training_bar is not None:  # the validation bar only beside a live training bar
            super().on_prediction_step(args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        super().on_evaluate(args, state, control, **kwargs)  # closes the validation bar
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not self.is_main:
            return
        self.say(self.validation_line(state.global_step, state.max_steps, loss))

    def validation_line(self, step: int, max_steps: int, loss: float) -> str:
        epoch = guide_epoch(max(step - 1, 0), self.steps_per_epoch, self.num_epochs)
        where = f"end of epoch {epoch}/{self.num_epochs}" if step % self.steps_per_epoch == 0 else \
            f"epoch {epoch}/{self.num_epochs}"
        line = f"step {step}/{max_steps}, {where}: validation loss {loss:.3f}"
        if math.isfinite(loss):
            line += f" (perplexity {math.exp(min(loss, 50)):.1f})"
        if self.best is not None and self.best.verdict(step, loss):
            line += ", best so far"
        return line

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)
        if self.hf_bars_were_on:
            hf_logging.enable_progress_bar()
