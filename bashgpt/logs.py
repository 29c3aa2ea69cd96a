"""bashgpt's messages go through Python's ``logging``, on the ``bashgpt`` logger.

On the console (stderr) they read ``[bashgpt] ...`` and are written above any live progress bar; ``quiet`` keeps only
warnings and errors there. A run's own file (``OUTPUT/train.log``) takes everything, details the console leaves
out included. Like Transformers' loggers, ``bashgpt`` does not pass its records on to the root logger.
"""

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger("bashgpt")


class TqdmConsoleHandler(logging.Handler):
    """Writes to the stderr of the moment through ``tqdm.write``, so a live bar is redrawn below the message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def console() -> logging.Handler:
    """The console handler, installed on the ``bashgpt`` logger at first use."""
    for handler in LOGGER.handlers:
        if isinstance(handler, TqdmConsoleHandler):
            return handler
    handler = TqdmConsoleHandler(level=logging.INFO)
    handler.setFormatter(logging.Formatter("[bashgpt] %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    return handler


def set_quiet(quiet: bool) -> None:
    """Warnings and errors only on the console (``--quiet``), or everything of level INFO and above."""
    console().setLevel(logging.WARNING if quiet else logging.INFO)


@contextmanager
def log_file(path: Path):
    """Within the block, every bashgpt message (DEBUG and up) is appended to ``path`` too (opened at the first)."""
    console()
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


console()
