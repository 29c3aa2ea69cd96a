"""Task relevance: does a script use the commands its task needs? Judged from the text alone, never run.

A task set (``tasks.txt``, see its head for the format) pairs each prompt with the commands any script doing that
task would use (a backup: ``tar``; disk space: ``df``) and a real script written for it. A sample is *on task* when
a line of code it wrote (not a comment, not the prompt) uses one of them as a word. A sample with *no command* at all
(empty, or only comments, ``exit``, ``:``, ``true``, ``return``) is counted apart: it parses and ShellCheck finds
nothing in it, yet it does nothing.

The chance level is the same measure on real scripts paired with every task but their own, so a model that writes
plausible bash on any subject scores it; the ceiling is the set's own real scripts on their own tasks.
"""

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TASKS_FILE = Path(__file__).resolve().parent / "tasks.txt"
HEADER = re.compile(r"^=== ([\w.-]+):(.*)$")
NO_CODE_LINE = re.compile(r"^(exit(\s+\S+)?|return(\s+\S+)?|:|true)\s*;?\s*$")


class TaskFileError(UserError):
    """A task file that cannot be read; the message names the line and the fix."""


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str
    commands: tuple[str, ...]
    reference: str | None = None


def task_header(path: Path, number: int, text: str) -> tuple[str, tuple[str, ...]]:
    """(name, commands) of a '=== NAME: CMD [CMD ...]' line, or one error naming the line."""
    header = HEADER.match(text)
    if not header:
        raise TaskFileError(f"{path}:{number}: malformed task header {text!r}; write '=== NAME: CMD [CMD ...]'")
    commands = tuple(header.group(2).split())
    if not commands:
        raise TaskFileError(f"{path}:{number}: task {header.group(1)!r} names no commands; list the commands a "
                            f"script doing it would use after the colon")
    return header.group(1), commands


def load_tasks(path: Path = TASKS_FILE) -> list[Task]:
    """The tasks of ``path``; any malformed line is one error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFileError(f"cannot read the task file {path}: {err}") from None
    tasks, current = [], None

    def finish():
        if current is None:
            return
        name, commands, prompt, reference, line = current
        while prompt and not prompt[-1].strip():
            prompt.pop()
        if not prompt or not prompt[0].startswith("#!"):
            raise TaskFileError(f"{path}:{line}: task {name!r} has no prompt starting with a '#!' line; put the prompt "
                                f"(shebang, then the task as a comment) under its header")
        ref = "\n".join(reference).strip("\n") + "\n" if reference is not None and any(reference) else None
        tasks.append(Task(name, "\n".join(prompt) + "\n", commands, ref))

    for number, text in enumerate(lines, 1):
        if text.startswith(";;") or (current is None and not text.strip()):
            continue
        if text.startswith("==="):
            finish()
            current = (*task_header(path, number, text), [], None, number)
        elif current is None:
            raise TaskFileError(f"{path}:{number}: text before the first task header; start each task with "
                                f"'=== NAME: CMD [CMD ...]' (notes go on lines starting ';;')")
        elif text == "--- reference":
            if current[3] is not None:
                raise TaskFileError(f"{path}:{number}: task {current[0]!r} has two '--- reference' lines")
            current = (*current[:3], [], current[4])
        else:
            (current[2] if current[3] is None else current[3]).append(text)
    finish()
    if not tasks:
        raise TaskFileError(f"no tasks in {path}; start each with '=== NAME: CMD [CMD ...]'")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TaskFileError(f"{path}: task names must be unique; {', '.join(twice)} appear more than once")
    return tasks


def code_lines(script: str) -> list[str]:
    """The lines of ``script`` with their comments cut off (a '#' that starts a word), blank ones dropped."""
    out = []
    for line in script.splitlines():
        code = re.sub(r"(^|\s)#.*$", "", line).strip()
        if code:
            out.append(code)
    return out


def has_command(completion: str) -> bool:
    """Whether ``completion`` does anything: a line of code other than ``exit``, ``return``, ``:`` or ``true``."""
    return any(not NO_CODE_LINE.match(line) for line in code_lines(completion))


@functools.lru_cache(maxsize=1024)  # the chance level asks for every task's commands once per real script
def command_pattern(command: str) -> re.Pattern:
    # a word: not part of a longer name (tarball, git-lfs), a variable ($tar), a file name (x.tar) or an assignment
    return re.compile(rf"(?<![\w.$-]){re.escape(command)}(?![\w.=-])")


def on_task(completion: str, commands: tuple[str, ...]) -> bool:
    """Whether a line of code of ``completion`` uses one of ``commands``."""
    code = "\n".join(code_lines(completion))
    return any(command_pattern(c).search(code) for c in commands)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``hits / n`` (honest at 0 and at small n)."""
    if n == 0:
        return (0.0, 1.0)
    p, z2 = hits / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3))


def names_its_command(task: Task) -> bool:
    """Whether the task's description itself names a command it needs ('a dated tar archive'): copying a word of
    the prompt is enough to be on task there."""
    return any(command_pattern(c).search(task_statement(task.prompt)) for c in task.commands)


def task_statement(prompt: str) -> str:
    """The task a prompt states: its last run of comment lines (retrieved examples may stand above it)."""
    runs, current = [], []
    for line in prompt.splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            current.append(line.lstrip("# "))
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return " ".join(runs[-1]) if runs else ""


def share(hits: int, n: int) -> dict:
    return {"share": round(hits / max(n, 1), 3), "interval_95": wilson_interval(hits, n), "samples": n}


def relevance_rates(completions: list[str], tasks: list[Task]) -> dict:
    """On-task and no-command shares of completions, the i-th written for ``tasks[i]``: the on-task share with its
    95% interval, apart for the tasks whose description names a command they need, and the same samples held
    against every other task (``own_chance``: what writing the same thing whatever the task would score)."""
    n = max(len(completions), 1)
    hits = [on_task(c, t.commands) for c, t in zip(completions, tasks, strict=True)]
    named = [names_its_command(t) for t in tasks]
    return {"samples": len(completions), "on_task": round(sum(hits) / n, 3),
            "on_task_interval_95": wilson_interval(sum(hits), len(completions)),
            "named_in_task": share(sum(h for h, m in zip(hits, named, strict=True) if m), sum(named)),
            "not_named_in_task": share(sum(h for h, m in zip(hits, named, strict=True) if not m),
                                       len(named) - sum(named)),
            "own_chance": own_samples_chance(completions, tasks),
            "no_command": round(sum(not has_command(c) for c in completions) / n, 3)}


def own_samples_chance(completions: list[str], tasks: list[Task]) -> float:
    """The on-task share of every sample held against each task it was not written for (tasks with the same
    commands as its own left out): as high as the real share when what the model writes does not depend on the
    task."""
    hits = pairs = 0
    for completion, own in zip(completions, tasks, strict=True):
        code = "\n".join(code_lines(completion))
        used = {c for c in {c for t in tasks for c in t.commands} if command_pattern(c).search(code)}
        for task in {t.name: t for t in tasks}.values():
            if task.commands != own.commands:
                pairs += 1
                hits += bool(used & set(task.commands))
    return round(hits / max(pairs, 1), 3)


def chance_level(scripts: list[str], tasks: list[Task], own: list[int | None] | None = None) -> float:
    """The on-task share of real ``scripts`` paired with every task (but a script's own task, ``own[i]``)."""
    hits = pairs = 0
    for i, script in enumerate(scripts):
        code = "\n".join(code_lines(script))
        for j, task in enumerate(tasks):
            if own is not None and own[i] == j:
                continue
            pairs += 1
            hits += any(command_pattern(c).search(code) for c in task.commands)
    return round(hits / max(pairs, 1), 3)


def reference_scores(tasks: list[Task]) -> dict:
    """The set's own real scripts: on their own tasks (the ceiling), and paired with the others (a chance level)."""
    with_ref = [t for t in tasks if t.reference]
    refs = [t.reference for t in with_ref]
    return {"scripts": len(refs),
            "on_task": relevance_rates(refs, with_ref)["on_task"] if refs else None,
            "chance": chance_level(refs, with_ref, own=list(range(len(refs)))) if refs else None}
