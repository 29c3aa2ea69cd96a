"""NL2SH-ALFA, scored without running anything: do the model's scripts use the utilities of the reference command?

NL2SH-ALFA (``pip install icalfa``, MIT licence) has 300 English tasks, each with one or two reference bash commands
(``find testbed -type f -name "*.py" | wc -l``). Its own scorer runs commands in Docker and compares outputs; bashgpt
never runs generated code, so it asks less: each task becomes a prompt in bashgpt's shape (``#!/bin/bash`` and the
task as a comment), and a sample scores when a line of code it wrote uses the reference's utilities (``find`` and
``wc``): any of them, or all of them. That says the model reached for the right tools, not that its command is right
(flags, arguments, order and quoting are not looked at), so it is an upper bound on what execution would credit. The
chance level is the same samples held against the other tasks' utilities.

The data is read from the installed package's files, found without importing it (its import pulls Docker and
gymnasium); a release whose files are laid out otherwise is one clear error.
"""

import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .tasks import on_task

DATA_GLOB = "nl2bash_fs_*.json"
WRAPPERS = {"sudo", "xargs", "exec", "env", "nice", "nohup", "time", "command", "builtin", "timeout", "watch"}
SKIPPED_BEFORE_PROGRAM = re.compile(r"[A-Za-z_]\w*=.*|-.*|[\d.]+[smhd]?")
NOT_UTILITIES = {"do", "done", "then", "fi", "else", "elif", "if", "for", "while", "until", "in", "case", "esac", "{",
                 "}", "!", "[", "[[", "]]", "]", "test", "true", "false", "echo"}


class Nl2shError(UserError):
    """The installed NL2SH-ALFA data cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Nl2shTask:
    query: str
    references: tuple[str, ...]
    utilities: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return f"#!/bin/bash\n# {' '.join(self.query.split())}\n"


def data_dir() -> Path:
    spec = importlib.util.find_spec("icalfa")
    if spec is None or not spec.submodule_search_locations:
        raise Nl2shError("NL2SH-ALFA needs the icalfa package: pip install 'bashgpt[nl2sh]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "datasets"
    if not list(folder.glob(DATA_GLOB)):
        raise Nl2shError(f"the installed icalfa has no {DATA_GLOB} files in {folder}; this release is laid out "
                         f"differently from 0.3.x: pip install 'icalfa>=0.3.6,<0.4'")
    return folder


def utilities(command: str) -> list[str]:
    """The programs a command line runs, in order: the first word of each part of a pipeline or list, of each
    command substitution, and the command after a wrapper (``xargs``, ``sudo``) or ``find -exec``."""
    found = []
    for part in re.split(r"\|\||&&|[|;()`]|\$\(", command):
        try:
            words = shlex.split(part, comments=False, posix=True)
        except ValueError:
            words = part.split()
        expect = True  # the next word names a program
        for word in words:
            if expect:
                if SKIPPED_BEFORE_PROGRAM.fullmatch(word):
                    continue  # an assignment, or a wrapper's option or number (timeout 5, nice -n 10)
                name = word.rsplit("/", 1)[-1]
                if re.fullmatch(r"[\w.+-]+", name) and name not in NOT_UTILITIES and name not in found:
                    found.append(name)
                expect = name in WRAPPERS
            elif word in ("-exec", "-execdir", "-ok"):
                expect = True
    return [u for u in found if u not in WRAPPERS or u == "xargs"]


def load_nl2sh() -> list[Nl2shTask]:
    """The 300 tasks (file by file, in the package's order)."""
    tasks = []
    for path in sorted(data_dir().glob(DATA_GLOB)):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise Nl2shError(f"cannot read {path}: {err}; reinstall icalfa") from None
        for number, row in enumerate(rows if isinstance(rows, list) else [None]):
            if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("gold"), str):
                raise Nl2shError(f"{path.name} entry {number} has no 'query' and 'gold' text; this icalfa release "
                                 f"stores its tasks differently: pip install 'icalfa>=0.3.6,<0.4'")
            refs = tuple(r for r in (row["gold"], row.get("gold2")) if isinstance(r, str) and r.strip())
            tasks.append(Nl2shTask(row["query"], refs, tuple(utilities(refs[0]))))
    if not tasks:
        raise Nl2shError("the installed icalfa holds no tasks; reinstall it")
    return tasks


def uses(completion: str, utility: str) -> bool:
    return on_task(completion, (utility,))


def nl2sh_scores(completions: list[str], tasks: list[Nl2shTask]) -> dict:
    """Shares of samples (the i-th written for ``tasks[i]``) that use any / all of their reference's utilities,
    and the chance level of 'any': each sample against every other task's utilities."""
    scored = [(c, t) for c, t in zip(completions, tasks, strict=True) if t.utilities]
    n = max(len(scored), 1)
    any_hits = sum(any(uses(c, u) for u in t.utilities) for c, t in scored)
    all_hits = sum(all(uses(c, u) for u in t.utilities) for c, t in scored)
    distinct = sorted({u for _, t in scored for u in t.utilities})
    used = [{u for u in distinct if uses(c, u)} for c, _ in scored]
    chance_hits = chance_pairs = 0
    for i, (_, task) in enumerate(scored):
        for j in range(len(scored)):
            if i != j:
                chance_pairs += 1
                chance_hits += bool(used[j] & set(task.utilities))
    return {"tasks": len(scored), "any_utility": round(any_hits / n, 3), "all_utilities": round(all_hits / n, 3),
            "chance_any": round(chance_hits / max(chance_pairs, 1), 3)}
