"""What keeps a long run from being lost: atomic checkpoints, graceful Ctrl-C / SIGTERM, clear
errors for a full disk or exhausted memory.

- Checkpoints are written into ``checkpoints/.staging/`` and renamed into place when complete,
  so ``kill -9`` at any moment leaves every ``checkpoint-N`` whole (``--resume`` takes the newest).
- The first Ctrl-C (or SIGTERM) asks the run to stop after the current step, save a resumable
  checkpoint and say how to resume; a second Ctrl-C stops at once.
"""

import errno
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..errors import UserError
from .stability import all_processes_agree

STAGING = ".staging"
OOM_ADVICE = ("out of memory: lower --batch-size (e.g. --batch-size 1), add --use-gradient-checkpointing, "
              "lower --seq-len, use --use-amp, or a smaller --model-size; `bashgpt estimate` shows what fits")


def atomic_checkpoint_save(trainer, save, model, trial) -> None:
    """Run Trainer's own checkpoint writer into a staging folder, then rename the result into place."""
    args = trainer.args
    root = args.output_dir
    staging = os.path.join(root, STAGING)
    if args.should_save:  # process 0 (of a multi-process run) owns the staging folder
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging, exist_ok=True)
    trainer.accelerator.wait_for_everyone()  # an empty staging folder before anyone writes
    args.output_dir = staging
    try:
        save(model, trial)
    finally:
        args.output_dir = root
    trainer.accelerator.wait_for_everyone()  # every process's files (rng_state_N.pth) are in before the rename
    if not args.should_save:
        return
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    final = os.path.join(root, name)
    if os.path.exists(final):  # the same step saved twice (e.g. end of epoch and interruption)
        shutil.rmtree(final)
    os.replace(os.path.join(staging, name), final)
    shutil.rmtree(staging, ignore_errors=True)
    rotate_checkpoints(output_dir=root, save_total_limit=args.save_total_limit, use_mtime=False)


def describe_os_error(err: OSError, where: str) -> str:
    if err.errno == errno.ENOSPC:
        return f"no space left on the disk while writing {where}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where} ({os.strerror(err.errno)})"
    return f"writing {where} failed: {err.strerror or err}"


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    import torch

    if isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class GracefulStop(TrainerCallback):
    """Turns the first SIGINT/SIGTERM into 'save a checkpoint after this step and stop'."""

    def __init__(self, say):
        self.say = say
        self.signal_name = None
        self.previous = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def uninstall(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name
        self.say(f"{self.signal_name} received: saving a checkpoint after this step, then stopping "
                 f"(Ctrl-C again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        # Every process stops after the same step, even when only some got the signal (DDP would hang otherwise).
        if all_processes_agree(self.signal_name is not None, args.device):
            self.signal_name = self.signal_name or "SIGTERM"  # another process was told to stop
            control.should_save = True
            control.should_training_stop = True
        return control

    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130


def recover_staging(checkpoints: Path) -> None:
    """Remove what an interrupted save left behind (never a complete checkpoint)."""
    shutil.rmtree(checkpoints / STAGING, ignore_errors=True)


class Interrupted(UserError):
    """The run was stopped by a signal after saving; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
