"""Runs a bashgpt recipe in this process with every rename into the run folder watched: the moments a record of
the run becomes visible (the checkpoint's seal, best/ and its records, the run's own files). Started by
tests/test_reliability.py:

    python tests/crash_worker.py CENSUS_FILE KIND:K RECIPE [ARGS...]

Each ``os.replace`` whose destination is under the run's output folder is appended to CENSUS_FILE as one JSON line:
its kind (``best``: a new best/ renamed into place; ``swap``: the old best/ moved aside first; ``seal``: a
checkpoint's seal; ``other``), the destination relative to the folder, and the function that asked for it. At the
K-th rename of KIND in this process the process sends itself SIGKILL just before it, as a power cut or the OOM
killer would (``none:0``: never)."""

import json
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path


def kind_of(dest: str) -> str:
    if dest == "best":
        return "best"
    if dest == "best.old":
        return "swap"
    return "seal" if dest.startswith("checkpoints/") and dest.endswith("bashgpt-complete.json") else "other"


def main(census: Path, kill_at: str, recipe: str, args: list[str]) -> None:
    out = Path(args[args.index("--output-dir") + 1]).resolve()
    kill_kind, kill_count = kill_at.split(":")
    real_replace, counts = os.replace, {}

    def watched_replace(src, dst, *rest, **kwargs):
        dst_path = Path(os.path.abspath(dst))
        if dst_path.is_relative_to(out):
            dest = str(dst_path.relative_to(out))
            kind = kind_of(dest)
            counts[kind] = counts.get(kind, 0) + 1
            killed = kind == kill_kind and counts[kind] == int(kill_count)
            with open(census, "a") as f:
                f.write(json.dumps({"kind": kind, "dest": dest, "caller": traceback.extract_stack(limit=2)[0].name,
                                    "killed": killed}) + "\n")
            if killed:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *rest, **kwargs)

    os.replace = watched_replace
    sys.argv = [recipe, *args]
    runpy.run_path(recipe, run_name="__main__")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
