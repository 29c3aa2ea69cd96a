"""What keeps a long run from being lost: atomic checkpoints, graceful Ctrl-C / SIGTERM, clear
errors for a full disk or exhausted memory.

- Trainer writes each ``checkpoint-N`` as it always does; once every file is in (Trainer's ``on_save``
  event), ``CheckpointSeal`` writes ``bashgpt-complete.json`` into it, atomically, holding the state of the
  run's own stateful pieces (time budget, early stopping, skip ledger). ``--resume`` takes the newest
  sealed checkpoint and removes any unsealed one (a save that ``kill -9`` cut short), so a kill at any
  moment costs at most the steps since the last seal. Trainer keeps the newest two checkpoints, so the
  previous sealed one still exists while the next is being written.
- The first Ctrl-C (or SIGTERM) asks the run to stop after the current step, save a resumable
  checkpoint and say how to resume; a second Ctrl-C stops at once.
"""

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Protocol

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import UserError
from .stability import all_processes_agree

SEAL = "bashgpt-complete.json"  # in a checkpoint folder: every file of it was written
OOM_ADVICE = ("out of memory: lower --batch-size (e.g. --batch-size 1), add --use-gradient-checkpointing, "
              "lower --seq-len, use --use-amp, or a smaller --model-size; `bashgpt estimate` shows what fits")


class Stateful(Protocol):
    """A callback whose state a resumed run must get back."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def write_atomically(path: Path, text: str) -> None:
    """``path`` holds either its old content or all of ``text``, never part of it."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


class CheckpointSeal(TrainerCallback):
    """After Trainer has written ``checkpoint-N`` on every process, the main one seals it: ``SEAL`` with the
    states of ``parts`` (name -> Stateful)."""

    def __init__(self, parts: dict[str, Stateful]):
        self.parts = parts

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every process's files (rng_state_N.pth) are in
        if args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            states = {name: part.state_dict() for name, part in self.parts.items()}
            write_atomically(folder / SEAL, json.dumps({"step": state.global_step, "states": states}))
        PartialState().wait_for_everyone()


def sealed(checkpoint: Path) -> bool:
    return (checkpoint / SEAL).is_file()


def newest_sealed_checkpoint(checkpoints: Path) -> Path | None:
    """The sealed ``checkpoint-N`` of the largest N, or None."""
    found = [p for p in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit() and sealed(p)]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def remove_unsealed(checkpoints: Path) -> None:
    """Remove what an interrupted save left behind (never a sealed checkpoint)."""
    for p in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if p.is_dir() and not sealed(p):
            shutil.rmtree(p, ignore_errors=True)


def restore_states(checkpoint: Path, parts: dict[str, Stateful]) -> None:
    """Give ``parts`` the states sealed into ``checkpoint``."""
    states = json.loads((checkpoint / SEAL).read_text())["states"]
    for name, part in parts.items():
        if name in states:
            part.load_state_dict(states[name])


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


class Interrupted(UserError):
    """The run was stopped by a signal after saving; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
