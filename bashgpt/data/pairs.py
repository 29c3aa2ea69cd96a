"""Description-and-code pairs in the prompt's own shape, mined from what ``bashgpt collect`` already has.

A pair is a training document ``#!/bin/bash`` + ``# <what it does>`` + the code that does it, which is how bashgpt
is prompted. Three kinds:

- ``comment``: a comment that introduces a top-level block or function of a collected script, and that block;
- ``header``: a script's header comment that says what the script does, and the script's first block of code;
- ``man``: the EXAMPLES section of a man page in the same Debian packages, a sentence and the command it describes.

Each pair keeps the source, package, version, path and licence of what it was cut from. Pairs are mined from the
training split only, so nothing of a validation script reaches training through them; they are deduplicated among
themselves and against the scripts (exactly, and near-duplicates by MinHash); and any pair that holds an evaluation
task's description or its real script, or an NL2SH-ALFA task or reference command, is dropped, as is any script that
holds one (``Contamination``).
"""

import gzip
import re
from pathlib import Path

MAX_BLOCK_LINES = 30
MAX_DESCRIPTION_WORDS = 25
NOT_A_DESCRIPTION = re.compile(
    r"copyright|licen[cs]e|spdx|author|maintainer|vim?:|-\*-|shellcheck|\btodo\b|fixme|xxx|https?://|@|"
    r"^(usage|example|note|see|warning|hack|bug|version)\b|gnu general|warranty|free software|"
    r"^(this|the) (file|script|program) is (part|free|distributed)|all rights reserved", re.IGNORECASE)
LOOKS_LIKE_CODE = re.compile(r"[$;|{}\[\]=`<>\\]|\(\)|^\s*(if|then|fi|for|do|done|while|case|esac|else|echo|"
                             r"export|local|return|exit|set|cd|rm|mkdir)\b|^\S+ -\w")
SHEBANG = "#!/bin/bash\n"


def description(text: str) -> str | None:
    """``text`` (comment lines without their '#') as a one-line task, or None when it does not read as one."""
    text = " ".join(text.split())
    words = text.split()
    if not 3 <= len(words) <= MAX_DESCRIPTION_WORDS or not re.match(r"[A-Za-z]", text):
        return None
    if NOT_A_DESCRIPTION.search(text) or LOOKS_LIKE_CODE.search(text) or sum(c.isalpha() for c in text) < 0.7 * len(
            text.replace(" ", "")):
        return None
    text = re.sub(r"^(this (script|function|command|example) (will )?|this will |it |will |to )", "", text,
                  flags=re.IGNORECASE)
    text = re.sub(r", (use|run|type|try|you can|simply|the following)\b.*$", "", text, flags=re.IGNORECASE)
    text = text.strip(" :;,-")
    if len(text.split()) < 3:
        return None
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def pair_text(desc: str, code: str) -> str:
    return f"{SHEBANG}# {desc}\n{code.rstrip()}\n"


def is_comment(line: str) -> bool:
    return line.startswith("#") and not line.startswith("#!")


def top_level_block(lines: list[str], start: int) -> list[str]:
    """The block of code that starts at ``lines[start]`` (column 0): up to a blank line or a comment at column 0; a
    function or compound command that opens there runs to its closing line at column 0 (none: not cut short)."""
    first = lines[start]
    closer = None
    if re.match(r"^(function\s+)?[\w:.-]+\s*\(\)|^function\s+[\w:.-]+", first):
        if first.rstrip().endswith("}"):
            return [first]  # a one-line function
        closer = re.compile(r"^\}")
    elif re.match(r"^(if|for|while|until|case)\b", first) and not re.search(r"\b(fi|done|esac)\s*;?\s*$", first):
        closer = re.compile(r"^(fi|done|esac)\b")
    block = []
    for line in lines[start:start + MAX_BLOCK_LINES]:
        block.append(line)
        if closer:
            if len(block) > 1 and closer.match(line):
                return block
            continue
        nxt = start + len(block)
        if nxt >= len(lines) or not lines[nxt].strip() or is_comment(lines[nxt]):
            return block
    return [] if closer else block


def comment_pairs(script: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) of the script's header pair and its comment-and-block pairs."""
    lines = script.splitlines()
    out, header_done, i = [], False, 1 if lines and lines[0].startswith("#!") else 0
    while i < len(lines):
        if not is_comment(lines[i]):
            if lines[i].strip():
                header_done = True  # the header is the comments before the first code
            i += 1
            continue
        j = i
        while j < len(lines) and is_comment(lines[j]):
            j += 1
        comments = [c.lstrip("#").strip() for c in lines[i:j]]
        if j < len(lines) and lines[j].strip() and not lines[j][0].isspace():
            desc = description(" ".join(c for c in comments[-3:] if c))
            block = top_level_block(lines, j)
            if desc and block:
                out.append(("header" if not header_done else "comment", pair_text(desc, "\n".join(block)), i + 1))
        elif not header_done:  # a header followed by a blank line: its first sentence, with the first code block
            first = next((k for k in range(j, len(lines)) if lines[k].strip() and not is_comment(lines[k])), None)
            sentence = next((description(c) for c in comments if description(c)), None)
            if first is not None and not lines[first][0].isspace() and sentence:
                block = top_level_block(lines, first)
                if block:
                    out.append(("header", pair_text(sentence, "\n".join(block)), i + 1))
        header_done = header_done or j < len(lines) and bool(lines[j].strip())
        i = j
    return out


# ----------------------------------------------------------------------------- man pages

ROFF_ESCAPES = [(r"\\f(\[[^\]]*\]|\(..|.)", ""), (r"\\\(aq", "'"), (r"\\\(dq", '"'), (r"\\\((lq|rq)", '"'),
                (r"\\\((em|en)", "-"), (r"\\\(..", ""), (r"\\\*\(..|\\\*\[[^\]]*\]|\\\*.", ""), (r"\\-", "-"),
                (r"\\e", "\\\\"), (r"\\&|\\\||\\\^|\\%", ""), (r"\\ ", " "), (r"\\c$", ""),
                (r"\\\[[^\]]*\]", "")]
CODE_ON, CODE_OFF = {".nf", ".EX"}, {".fi", ".EE"}
BREAKS = {".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br", ".HP", ".TQ"}
EMPHASIS = {".B", ".BI", ".BR", ".I", ".IR", ".RB"}


def plain(text: str) -> str:
    for pattern, repl in ROFF_ESCAPES:
        text = re.sub(pattern, repl, text)
    return text


def without_prompt(line: str) -> str:
    """An example's command without the shell prompt ('$ ', '% ', '# ') it is shown with."""
    return re.sub(r"^\s*[$%#] ", "", line)


def add_emphasis(request: str, raw: str, para: list[str], code: list[str]) -> None:
    """A bold or italic request's words: a command when a bold line stands on its own (.TP style), else words of
    the paragraph."""
    words = plain(raw.split(" ", 1)[1] if " " in raw else "").replace('"', "")
    if request == ".B" and not para:
        code.append(without_prompt(words))
    else:
        para.append(words)


def roff_items(source: str) -> list[tuple[str, str]]:
    """The EXAMPLES section of a man page as ("text", paragraph) and ("code", lines) items."""
    items, section, code, para, in_code = [], False, [], [], False

    def flush():
        nonlocal para, code
        if para:
            items.append(("text", " ".join(para)))
        if code:
            items.append(("code", "\n".join(code)))
        para, code = [], []

    for raw in source.splitlines():
        if raw.startswith((".SH", ".Sh")):
            flush()
            if section:
                break
            section = bool(re.search(r"EXAMPLES?\b", raw, re.IGNORECASE))
            continue
        if not section or raw.startswith(('.\\"', "'\\\"")):
            continue
        request = raw.split(" ", 1)[0]
        if request in CODE_ON:
            flush()
            in_code = True
        elif request in CODE_OFF:
            flush()
            in_code = False
        elif request in BREAKS or request in (".RS", ".RE", ".in"):
            flush()
        elif in_code:
            code.append(without_prompt(plain(raw[3:] if request in (".B", ".I") else raw)).rstrip())
        elif request in EMPHASIS:
            add_emphasis(request, raw, para, code)
        elif raw.startswith("."):
            continue
        elif re.match(r"^\\fB.*\\f[RP]\s*$", raw) and not para:  # a line all bold: a command
            flush()
            items.append(("code", without_prompt(plain(raw))))
        else:
            para.append(plain(raw))
    flush()
    return items


def command_lines(text: str, page: str) -> list[str]:
    """The lines of an example that run the page's program (and lines they continue with a backslash); what the
    example shows it printing is left out."""
    out, continued = [], False
    for line in text.splitlines():
        if continued or re.match(rf"^\s*(sudo\s+)?{re.escape(page)}(\s|$)", line):
            out.append(line.strip() if not continued else line.rstrip())
            continued = line.rstrip().endswith("\\")
    return out


def man_pairs(source: str, page: str) -> list[str]:
    """Pairs of a sentence and the command it describes: the last sentence before a command, or, in .TP style, the
    sentence after it ('will ...'). Only commands that run the page's program, in one to six lines."""
    items, out = roff_items(source), []
    for k, (kind, text) in enumerate(items):
        if kind != "code":
            continue
        lines = command_lines(text, page)
        if not 1 <= len(lines) <= 6:
            continue
        before = items[k - 1][1] if k and items[k - 1][0] == "text" else ""
        after = items[k + 1][1] if k + 1 < len(items) and items[k + 1][0] == "text" else ""
        if re.match(r"^(this )?(will|would)\b", after.strip(), re.IGNORECASE):  # .TP style: the command, then what
            sentence = re.split(r"(?<=[.!?])\s+", after.strip())[0]
        elif before:
            sentence = re.split(r"(?<=[.!?])\s+", before.strip())[-1]
        else:
            continue
        desc = description(re.sub(r"^(the following|this) (command|example)s? ", "", sentence, flags=re.IGNORECASE))
        if desc:
            out.append(pair_text(desc, "\n".join(lines)))
    return out


def name_line(source: str) -> str | None:
    """What the NAME section says the program does ('df \\- report file system disk space usage': 'report file
    system disk space usage'), or None."""
    match = re.search(r"^\.S[Hh]\s+\"?NAME\"?\s*\n(.*?)(?=^\.S[Hh])", source, re.MULTILINE | re.DOTALL)
    if not match:
        return None
    text = " ".join(plain(line) for line in match.group(1).splitlines() if not line.startswith("."))
    parts = re.split(r"\s+-+\s+", text, maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else None


def man_pages(root: Path):
    """(path under ``root``, program, roff source) of the section 1 and 8 pages under ``root``."""
    for path in sorted(root.glob("usr/share/man/man[18]/*.gz")):
        if path.is_symlink():
            continue
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        yield path.relative_to(root).as_posix(), path.name.split(".")[0], source


def man_page_pairs(root: Path) -> tuple[list[tuple[str, str]], dict[str, tuple[str, str]]]:
    """The pairs in the EXAMPLES sections of the section 1 and 8 pages under ``root``, as (text, page path), and
    what each page's NAME line says its program does, as {program: (description, page path)}."""
    found, names = [], {}
    for relpath, program, source in man_pages(root):
        found += [(text, relpath) for text in man_pairs(source, program)]
        said = name_line(source)
        if said and description(said):
            names[program] = (description(said), relpath)
    return found, names


def whatis_pairs(names: dict[str, tuple[str, str]], commands: list[str]) -> list[tuple[str, str]]:
    """Another wording of a command: what its man page's NAME line says the program does, over the shortest
    one-line command of that program among ``commands`` (other pairs' code), as (text, page path)."""
    shortest: dict[str, str] = {}
    for command in commands:
        if "\n" in command or not command.strip():
            continue
        program = command.split()[0]
        if program in names and len(command) < len(shortest.get(program, command + " ")):
            shortest[program] = command
    return [(pair_text(names[p][0], c), names[p][1]) for p, c in sorted(shortest.items())]


# ----------------------------------------------------------------------------- keeping evaluation out

def squashed(text: str) -> str:
    return " ".join(re.sub(r"[^\w$-]+", " ", text.lower()).split())


class Contamination:
    """What evaluation asks and answers: the task set's descriptions and real scripts, and NL2SH-ALFA's tasks and
    reference commands (of four words or more) when it is installed. A text that holds one may not be trained on."""

    def __init__(self, descriptions: list[str], commands: list[str], scripts: list[str]):
        self.descriptions = {squashed(d) for d in descriptions if len(squashed(d).split()) >= 3}
        self.commands = {squashed(c) for c in commands if len(squashed(c).split()) >= 4}  # not 'ls -l'
        self.scripts = [squashed(s) for s in scripts]

    @classmethod
    def of_evaluation(cls) -> "Contamination":
        from .nl2sh import Nl2shError, load_nl2sh
        from .tasks import load_tasks

        tasks = load_tasks()
        descriptions = [line.lstrip("# ") for t in tasks for line in t.prompt.splitlines()[1:] if line.startswith("# ")]
        scripts = [t.reference for t in tasks if t.reference]
        commands = []
        try:
            nl2sh = load_nl2sh()
            descriptions += [t.query for t in nl2sh]
            commands += [r for t in nl2sh for r in t.references]
        except Nl2shError:  # not installed: only the task set is kept out
            pass
        return cls(descriptions, commands, scripts)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` has a task's description as a comment, a reference command as a line, or a task's whole
        real script (compared case-, space- and punctuation-blind)."""
        comments = [squashed(line.lstrip().lstrip("#")) for line in text.splitlines() if line.lstrip().startswith("#")]
        if any(c in self.descriptions for c in comments):
            return True
        if any(squashed(line) in self.commands for line in text.splitlines()):
            return True
        whole = squashed(text)
        return any(script in whole for script in self.scripts)
