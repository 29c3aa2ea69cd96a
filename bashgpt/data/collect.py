"""Build the stage-2 bash corpus: find shell scripts, clean them, split them, write JSONL.

Sources (``bashgpt collect SOURCE... --out DIR``):
  PATH                 a local folder, e.g. git clones of open-source projects
  debian:PKG,PKG,...   Debian packages (``debian:`` alone = the default 42-package list),
                       fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
  system               this machine's own scripts (/usr/bin, /usr/lib, /etc, ...)
  hub:NAME[:COLUMN]    a Hugging Face dataset with a content column

Nothing found is ever executed: scripts are only read and parsed with ``bash -n``.
"""

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..shellcheck import bash_parse
from .cache_dirs import cache_root
from .pair_sources import EXTERNAL_KINDS, SourceOffline, source_pairs
from .pairs import Contamination, comment_pairs, man_page_pairs, whatis_pairs
from .tokenization import encode_batch


def read_package_list(path: Path) -> tuple[str, ...]:
    """Package names, one per line, ``#`` comments and blank lines skipped."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(name for name in names if name)


# Debian packages rich in shell (bashgpt/data/debian_packages.txt says how they were chosen).
DEFAULT_DEBIAN_PACKAGES = read_package_list(Path(__file__).with_name("debian_packages.txt"))

SYSTEM_ROOTS = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec", "/usr/share", "/etc",  # Linux
                "/bin", "/sbin", "/usr/local/bin", "/opt/homebrew/bin", "/Library/Scripts")  # + macOS
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "vendor", "vendored", "third_party", "third-party",
             "__pycache__", ".tox", ".venv", "venv", "site-packages"}
SHELLS = {"sh", "bash", "dash", "ksh", "mksh", "ksh93"}
SHELL_SUFFIXES = (".sh", ".bash")
COMPLETION_DIRS = ("bash-completion/completions/", "bash_completion.d/")
GENERATED_NAMES = {"ltmain.sh", "configure", "config.guess", "config.sub", "libtool", "missing", "install-sh",
                   "depcomp", "compile", "ar-lib", "test-driver", "mkinstalldirs", "py-compile", "ylwrap"}
GENERATED_MARKERS = re.compile(r"generated (automatically )?by|auto-?generated|do not edit|automatically generated",
                               re.IGNORECASE)
LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING", "COPYING.md", "LICENCE", "COPYRIGHT")

# The filters code-model projects use (CodeParrot, BigCode).
MAX_LINE_LENGTH = 1000
MAX_MEAN_LINE_LENGTH = 100
MIN_ALNUM_FRACTION = 0.25

SKIP_REASONS = ("not_shell", "binary", "non_utf8", "empty", "too_large", "symlink_loop", "symlink_broken",
                "symlink_outside", "symlink_inside", "unreadable", "generated", "boilerplate_only", "long_line",
                "long_mean_line", "low_alnum", "exact_duplicate", "near_duplicate", "evaluation_overlap")
PAIR_KINDS = ("comment", "header", "man", "whatis") + EXTERNAL_KINDS  # pairs.py, pair_sources.py


class CollectError(UserError):
    """A source that cannot be used; the message says why and what to do."""


@dataclass
class Script:
    text: str
    source: str  # folder, debian, system or hub
    project: str  # project folder / package name / dataset
    version: str
    path: str  # inside the project
    licence: str
    interpreter: str
    sha256: str = ""
    bash_n_ok: bool | None = None
    bash_n_error: str = ""
    boilerplate_bytes: int = 0  # of generated blocks (debhelper's) cut out of it

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass
class Candidate:
    """A file to look at: where it is and what it belongs to."""

    path: Path
    root: Path  # symlinks must stay under it
    source: str
    project: str
    version: str
    relpath: str
    licence: str


@dataclass
class Report:
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------- detection

def shebang_interpreter(first_line: str) -> str | None:
    """The shell named by a ``#!`` line (directly or through env), or None."""
    if not first_line.startswith("#!"):
        return None
    words = first_line[2:].strip().split()
    if not words:
        return None
    name = os.path.basename(words[0])
    if name == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        name = os.path.basename(rest[0]) if rest else ""
    return name if name in SHELLS else None


def shell_kind(relpath: str, head: str) -> str | None:
    """How a file is a shell script: its interpreter, or None when it is not one."""
    interpreter = shebang_interpreter(head.split("\n", 1)[0])
    if interpreter:
        return interpreter
    if head.startswith("#!"):
        return None  # another interpreter (python, perl, ...)
    if relpath.endswith(".bash") or any(d in "/" + relpath for d in COMPLETION_DIRS):
        return "bash"
    if relpath.endswith(".sh"):
        return "sh"
    return None


def quality_problem(text: str) -> str | None:
    """The CodeParrot/BigCode filters: a skip reason, or None when the file passes."""
    lines = text.splitlines() or [""]
    if max(len(line) for line in lines) > MAX_LINE_LENGTH:
        return "long_line"
    if sum(len(line) for line in lines) / len(lines) > MAX_MEAN_LINE_LENGTH:
        return "long_mean_line"
    if sum(c.isalnum() for c in text) / max(len(text), 1) < MIN_ALNUM_FRACTION:
        return "low_alnum"
    return None


GENERATED_BLOCK = re.compile(r"^# Automatically added by dh_[\w-]+.*?^# End automatically added section[^\n]*\n?",
                             re.MULTILINE | re.DOTALL)
BOILERPLATE_CODE = re.compile(r"^(set -e\w*|exit( 0)?|#DEBHELPER#|true|:)\s*;?$")


def without_generated_blocks(text: str) -> str:
    """``text`` without debhelper's ``# Automatically added by dh_...`` ... ``# End automatically added section``
    blocks: the same few lines in hundreds of maintainer scripts, which a model learns by heart instead of bash."""
    return GENERATED_BLOCK.sub("", text)


def only_boilerplate(text: str) -> bool:
    """Whether nothing but a shebang, comments, ``set -e`` and ``exit 0`` is left."""
    code = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return all(BOILERPLATE_CODE.match(line) for line in code)


def is_generated(relpath: str, text: str) -> bool:
    if os.path.basename(relpath) in GENERATED_NAMES:
        return True
    return bool(GENERATED_MARKERS.search("\n".join(text.splitlines()[:15])))


def symlink_verdict(cand: Candidate) -> str:
    """Why a symlink is skipped: broken, looping, pointing outside its source, or inside it (its target is read on
    its own)."""
    try:
        target = cand.path.resolve(strict=True)
    except FileNotFoundError:
        return "symlink_broken"
    except (RuntimeError, OSError) as err:
        return "symlink_loop" if "loop" in str(err).lower() or getattr(err, "errno", 0) == 40 else "unreadable"
    return "symlink_inside" if target.is_relative_to(cand.root.resolve()) else "symlink_outside"


def cleaned_text(relpath: str, text: str) -> tuple[str, str | None]:
    """The file's text without generated blocks, and the reason it is skipped (None: kept)."""
    if not text.strip():
        return text, "empty"
    if is_generated(relpath, text):
        return text, "generated"
    cleaned = without_generated_blocks(text)
    if only_boilerplate(cleaned):
        return cleaned, "boilerplate_only"
    return cleaned, quality_problem(cleaned)


def read_candidate(cand: Candidate, max_bytes: int) -> tuple[Script | None, str | None]:
    """Read one file: (script, None) or (None, skip reason)."""
    path = cand.path
    try:
        if path.is_symlink():
            return None, symlink_verdict(cand)
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return None, "not_shell"
        if st.st_size == 0:
            return None, "empty"
        with open(path, "rb") as f:
            head = f.read(8192)
            if b"\0" in head:
                return None, "binary"
            try:
                kind = shell_kind(cand.relpath, head.decode("utf-8", errors="ignore"))
            except ValueError:
                kind = None
            if kind is None:
                return None, "not_shell"
            if st.st_size > max_bytes:
                return None, "too_large"
            data = head + f.read()
    except PermissionError:
        return None, "unreadable"
    except OSError:
        return None, "unreadable"
    if b"\0" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "non_utf8"
    cleaned, problem = cleaned_text(cand.relpath, text)
    if problem:
        return None, problem
    return Script(text=cleaned, source=cand.source, project=cand.project, version=cand.version, path=cand.relpath,
                  licence=cand.licence, interpreter=kind,
                  boilerplate_bytes=len(text.encode()) - len(cleaned.encode())), None


# ----------------------------------------------------------------------------- sources

def walk_files(root: Path) -> Iterator[Path]:
    """Every file (and symlink) below ``root``, sorted, never following directory links."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: None):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def folder_licence(folder: Path) -> str:
    """A short licence name from a LICENSE/COPYING file, 'unknown' when there is none."""
    for name in LICENSE_FILES:
        p = folder / name
        if p.is_file():
            head = p.read_text("utf-8", errors="replace")[:3000]
            for needle, spdx in (("Apache License", "Apache-2.0"), ("MIT License", "MIT"),
                                 ("Permission is hereby granted, free of charge", "MIT"),
                                 ("GNU GENERAL PUBLIC LICENSE", "GPL"), ("GNU LESSER GENERAL", "LGPL"),
                                 ("BSD", "BSD"), ("Mozilla Public License", "MPL-2.0"), ("ISC License", "ISC")):
                if needle.lower() in head.lower():
                    if spdx == "GPL":
                        m = re.search(r"Version (\d)", head)
                        return f"GPL-{m.group(1)}.0" if m else "GPL"
                    return spdx
            return f"see {name}"
    return "unknown"


def folder_candidates(root: Path) -> Iterator[Candidate]:
    """A folder of projects (each top-level folder is one project) or a single project."""
    if not root.is_dir():
        raise CollectError(f"source folder {root} does not exist; pass a folder of scripts or git clones")
    licences = {root.name: folder_licence(root)}
    for path in walk_files(root):
        rel = path.relative_to(root).as_posix()
        project = rel.split("/")[0] if "/" in rel else root.name
        if project not in licences:
            own = folder_licence(root / project)
            licences[project] = own if own != "unknown" else licences[root.name]
        yield Candidate(path, root, "folder", project, "", rel, licences[project])


def debian_copyright_licence(pkg_root: Path, package: str) -> str:
    path = pkg_root / "usr/share/doc" / package / "copyright"
    if not path.is_file():
        return "unknown (no copyright file)"
    names = re.findall(r"^License:\s*(\S.*)$", path.read_text("utf-8", errors="replace"), re.MULTILINE)
    unique = sorted({n.strip() for n in names})
    return " AND ".join(unique) if unique else "see debian/copyright"


def newest_deb(files: list[Path]) -> tuple[Path, str]:
    """The .deb of the newest version among ``files`` (dpkg's order: 1.10 is newer than 1.9), and that version."""
    versions = {f: subprocess.run(["dpkg-deb", "-f", str(f), "Version"], capture_output=True, text=True).stdout.strip()
                for f in files}

    def compare(a: Path, b: Path) -> int:
        if versions[a] == versions[b]:
            return 0
        newer = subprocess.run(["dpkg", "--compare-versions", versions[a], "gt", versions[b]]).returncode == 0
        return 1 if newer else -1

    newest = max(sorted(files), key=functools.cmp_to_key(compare))
    return newest, versions[newest]


def fetch_debian(packages: list[str], cache: Path) -> list[tuple[str, str, Path]]:
    """Download and unpack packages into ``cache``; returns (package, version, root). No system install."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CollectError("debian: sources need apt-get and dpkg-deb (Debian/Ubuntu); use a local folder instead")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    os.chmod(debs, 0o777)  # apt's sandbox user must be able to write here
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        proc = subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True)
        if proc.returncode != 0:
            unknown = re.findall(r"Unable to locate package (\S+)|Can't select candidate version from package (\S+)",
                                 proc.stderr)
            names = sorted({a or b for a, b in unknown})
            if names:
                raise CollectError(f"Debian package(s) not found: {', '.join(names)}; check the names with apt-cache search")
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CollectError(f"apt-get download failed ({last}); run 'apt-get update' or check the network")
    out = []
    for package in packages:
        found = list(debs.glob(f"{package}_*.deb"))
        if not found:
            raise CollectError(f"Debian package {package} was not downloaded; check the name with apt-cache search")
        deb, version = newest_deb(found)
        root = cache / "unpacked" / f"{package}_{version}"
        if not root.is_dir():
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            tmp.rename(root)
        if not (root / "DEBIAN").is_dir():  # the maintainer scripts (postinst, prerm, config...): short, real sh
            tmp = root / "DEBIAN.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp)], check=True)
            tmp.rename(root / "DEBIAN")
        out.append((package, version, root))
    return out


def debian_candidates(packages: list[str], cache: Path) -> Iterator[Candidate]:
    for package, version, root in fetch_debian(packages, cache):
        licence = debian_copyright_licence(root, package)
        for path in walk_files(root):
            yield Candidate(path, root, "debian", package, version, path.relative_to(root).as_posix(), licence)


def dpkg_owners() -> dict[str, str]:
    """Map installed file paths to their Debian package (empty where dpkg is absent)."""
    owners = {}
    info = Path("/var/lib/dpkg/info")
    if info.is_dir():
        for lst in info.glob("*.list"):
            package = lst.stem.split(":")[0]
            for line in lst.read_text("utf-8", errors="replace").splitlines():
                owners[line] = package
    return owners


def system_candidates(roots=SYSTEM_ROOTS) -> Iterator[Candidate]:
    owners = dpkg_owners()
    licences: dict[str, str] = {}
    seen_real: set[str] = set()
    for root in map(Path, roots):
        if not root.is_dir() or root.is_symlink():
            continue  # /bin -> /usr/bin on merged-/usr systems
        for path in walk_files(root):
            real = os.path.realpath(path)
            if real in seen_real:
                continue
            seen_real.add(real)
            package = owners.get(str(path), "")
            if package and package not in licences:
                licences[package] = debian_copyright_licence(Path("/"), package)
            yield Candidate(path, Path("/"), "system", package or "system", "", str(path),
                            licences.get(package, "unknown (system file)"))


def hub_scripts(spec: str) -> Iterator[Script]:
    """Scripts from a Hub dataset: ``hub:NAME[:COLUMN]``."""
    from .corpus import load_hub_dataset, text_column

    name, _, column = spec.partition(":")
    ds = load_hub_dataset(name, split="train")
    column = column or text_column(ds)
    for i, row in enumerate(ds):
        text = row[column]
        if isinstance(text, str) and text.strip():
            yield Script(text=text, source="hub", project=name, version=str(ds.info.version or ""),
                         path=str(row.get("path", i)), licence=str(row.get("license", row.get("licence", "unknown"))),
                         interpreter=shebang_interpreter(text.split("\n", 1)[0]) or "bash")


# ----------------------------------------------------------------------------- cleaning

def normalised_hash(text: str) -> str:
    return hashlib.sha256("".join(text.split()).encode("utf-8")).hexdigest()


def shingles(text: str, ngram: int = 5) -> frozenset[int]:
    """Word ``ngram``-grams of a text, as 64-bit hashes (stable across processes, so dedup is reproducible)."""
    words = re.findall(r"\S+", text)
    return frozenset(int.from_bytes(hashlib.blake2b(" ".join(words[j:j + ngram]).encode(), digest_size=8).digest(),
                                    "little") for j in range(max(len(words) - ngram + 1, 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(texts: list[str], threshold: float = 0.7, num_perm: int = 256) -> list[int | None]:
    """For each text, the index of an earlier *kept* text it is a near-duplicate of, or None to keep it.

    MinHash LSH over word 5-gram shingles (BigCode's settings) proposes candidates; each candidate's
    true Jaccard similarity is then computed, and a text is dropped only when it is at least
    ``threshold`` similar to a text that is kept. No clusters are chained: A~B and B~C with A and C
    apart drops B only.
    """
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept_shingles: dict[int, frozenset] = {}
    verdicts: list[int | None] = []
    for i, text in enumerate(texts):
        mine = shingles(text)
        mh = MinHash(num_perm=num_perm, seed=1)
        mh.update_batch([s.to_bytes(8, "little") for s in mine])
        mh.hashvalues = np.asarray(mh.hashvalues)
        twin = next((j for j in sorted(int(k) for k in lsh.query(mh)) if jaccard(mine, kept_shingles[j]) >= threshold),
                    None)
        verdicts.append(twin)
        if twin is None:
            lsh.insert(str(i), mh)
            kept_shingles[i] = mine
    return verdicts


def deduplicate(scripts: list[Script], report: Report, near_threshold: float = 0.7) -> list[Script]:
    """Exact dedup on whitespace-normalised content, then near-dedup against kept files (``near_duplicates``)."""
    scripts = sorted(scripts, key=lambda s: (s.source, s.project, s.path))
    seen, unique = set(), []
    for s in scripts:
        h = normalised_hash(s.text)
        if h in seen:
            report.skipped["exact_duplicate"] += 1
            continue
        seen.add(h)
        unique.append(s)
    verdicts = near_duplicates([s.text for s in unique], threshold=near_threshold)
    kept = [s for s, twin in zip(unique, verdicts, strict=True) if twin is None]
    report.skipped["near_duplicate"] += len(unique) - len(kept)
    return kept


def split_train_validation(scripts: list[Script], fraction: float, seed: int) -> tuple[list[Script], list[Script]]:
    """Split by file, decided by a seeded hash of the content: the same inputs always split the same way."""
    def score(s):
        return int(hashlib.sha256(f"{seed}:{s.sha256}".encode()).hexdigest()[:12], 16) / 16**12

    ranked = sorted(scripts, key=score)
    n_val = round(len(scripts) * fraction)
    if fraction > 0 and len(scripts) >= 2:
        n_val = max(n_val, 1)
    validation = {id(s) for s in ranked[:n_val]}
    order = lambda s: (s.source, s.project, s.path)  # noqa: E731
    return (sorted((s for s in scripts if id(s) not in validation), key=order),
            sorted((s for s in scripts if id(s) in validation), key=order))


# ----------------------------------------------------------------------------- the whole job

def debian_names(word: str) -> list[str]:
    """The packages of a 'debian:PKG,PKG' source ('debian:' alone: the default list), checked."""
    names = [p for p in word[len("debian:"):].split(",") if p] or list(DEFAULT_DEBIAN_PACKAGES)
    bad = [p for p in names if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p)]
    if bad:
        raise CollectError(f"not a Debian package name: {', '.join(bad)}; use debian:PKG,PKG")
    return names


def parse_sources(sources: list[str], cache: Path) -> list[tuple[str, object]]:
    """Turn command-line source words into (kind, iterator factory) pairs, checking them first."""
    parsed = []
    for word in sources:
        if word == "system":
            parsed.append(("system", lambda: system_candidates()))
        elif word.startswith("debian:"):
            names = debian_names(word)
            parsed.append(("debian", lambda names=names: debian_candidates(names, cache)))
        elif word.startswith("hub:"):
            parsed.append(("hub", lambda spec=word[4:]: hub_scripts(spec)))
        else:
            root = Path(word).expanduser()
            if not root.is_dir():
                raise CollectError(f"source {word!r} is not a folder, 'system', 'debian:PKG,...' or 'hub:NAME'")
            parsed.append(("folder", lambda root=root: folder_candidates(root)))
    return parsed


def gather(sources: list[str], cache: Path, max_bytes: int, progress: bool) -> tuple[list[Script], Report]:
    report = Report()
    scripts: list[Script] = []
    for _kind, factory in parse_sources(sources, cache):
        items = list(factory())  # paths only (or hub rows): bounded by the number of files
        bar = tqdm(items, desc="scanning", unit="file", disable=not progress, mininterval=0.5)
        for item in bar:
            report.seen += 1
            if isinstance(item, Script):
                script, reason = item, quality_problem(item.text)
                script = None if reason else script
            else:
                script, reason = read_candidate(item, max_bytes)
            if reason:
                report.skipped[reason] += 1
            else:
                scripts.append(script)
    return scripts, report


def check_syntax(scripts: list[Script], progress: bool) -> None:
    """Record each script's ``bash -n`` result (parsing only; nothing runs)."""
    def one(s):
        r = bash_parse(s.text)
        s.bash_n_ok, s.bash_n_error = r.ok, r.error

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(tqdm(pool.map(one, scripts), total=len(scripts), desc="bash -n", unit="file", disable=not progress))


def write_jsonl(path: Path, scripts: list[Script]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in scripts:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def script_pairs(train: list[Script], kinds: tuple[str, ...]) -> list[Script]:
    """Comment-and-block and header pairs cut from the training scripts, with their provenance."""
    return [replace(script, text=text, source=f"pair:{kind}", path=f"{script.path}#L{line}", bash_n_ok=None,
                    bash_n_error="")
            for script in train for kind, text, line in comment_pairs(script.text) if kind in kinds]


def man_roots(sources: list[str], cache: Path) -> Iterator[tuple[Path, str | None, str, object]]:
    """(root, package or None for this machine, version, licence of a package) of each source with man pages."""
    for word in (w for w in sources if w.startswith("debian:")):
        for package, version, root in fetch_debian(debian_names(word), cache):
            yield root, package, version, functools.partial(debian_copyright_licence, root)
    if "system" in sources:
        yield Path("/"), None, "", functools.partial(debian_copyright_licence, Path("/"))


def man_pairs_of(sources: list[str], cache: Path, kinds: tuple[str, ...], commands: list[str]) -> list[Script]:
    """Pairs from the man pages of the Debian sources and, when ``system`` is a source, of this machine: their
    EXAMPLES (``man``), and their NAME lines over the shortest command of the program among ``commands``
    (``whatis``)."""
    mined, owners = [], dpkg_owners() if "system" in sources else {}
    for root, package, version, licence_of in man_roots(sources, cache):
        examples, names = man_page_pairs(root)
        found = [("man", t, p) for t, p in examples] if "man" in kinds else []
        found += [("whatis", t, p) for t, p in whatis_pairs(names, commands + [man_code(t) for t, _ in examples])] \
            if "whatis" in kinds else []
        for kind, text, path in found:
            owner = package or owners.get("/" + path, "system")
            mined.append(Script(text, f"pair:{kind}", owner, version, path, licence_of(owner), "bash"))
    return mined


def man_code(pair: str) -> str:
    return pair.split("\n", 2)[2].strip() if pair.count("\n") >= 2 else ""


def published_pairs(kinds: tuple[str, ...], cache: Path) -> list[Script]:
    """Pairs from published example collections (pair_sources.py); one whose host does not answer is skipped with
    one line."""
    mined = []
    for kind in (k for k in kinds if k in EXTERNAL_KINDS):
        try:
            found = source_pairs(kind, cache)
        except SourceOffline as why:
            print(f"   {kind} pairs skipped: {why}", flush=True)
            continue
        mined += [Script(p.text, f"pair:{kind}", p.package, p.version, p.path, p.licence, "bash") for p in found]
    return mined


def mine_pairs(train: list[Script], sources: list[str], cache: Path, contamination: Contamination,
               kinds: tuple[str, ...], progress: bool) -> tuple[list[Script], dict]:
    """Description-and-code pairs of ``kinds``, each with the provenance of what it was cut from; deduplicated among
    themselves and against the scripts (exactly and near), clear of evaluation, and parsing with ``bash -n``.
    Returns them and their counts by kind."""
    mined = script_pairs(train, kinds) + published_pairs(kinds, cache)
    if {"man", "whatis"} & set(kinds):
        mined += man_pairs_of(sources, cache, kinds, [man_code(p.text) for p in mined])
    counts = {kind: {"mined": sum(p.source == f"pair:{kind}" for p in mined)} for kind in kinds}
    seen, unique, overlap = {normalised_hash(s.text) for s in train}, [], 0
    for pair in mined:
        h = normalised_hash(pair.text)
        if contamination.found_in(pair.text):
            overlap += 1
        elif h not in seen:
            seen.add(h)
            unique.append(pair)
    twins = near_duplicates([s.text for s in train] + [p.text for p in unique])[len(train):]
    kept = [p for p, twin in zip(unique, twins, strict=True) if twin is None]
    check_syntax(kept, progress)
    kept = [p for p in kept if p.bash_n_ok]
    for kind in kinds:
        counts[kind]["kept"] = sum(p.source == f"pair:{kind}" for p in kept)
    counts["dropped_for_evaluation_overlap"] = overlap
    return kept, counts


def collect(sources: list[str], out: str | Path, validation_fraction: float = 0.05, seed: int = 0,
            max_bytes: int = 1_000_000, near_threshold: float = 0.7, cache: str | Path | None = None,
            tokenizer=None, progress: bool = True, pairs: tuple[str, ...] = ()) -> dict:
    """Collect, clean, split and write the bash corpus; returns the manifest. ``pairs``: the kinds of
    description-and-code pairs (PAIR_KINDS) added to the training split."""
    if not sources:
        raise CollectError("no sources given; pass folders, 'system', 'debian:' or 'hub:NAME'")
    unknown = [k for k in pairs if k not in PAIR_KINDS]
    if unknown:
        raise CollectError(f"unknown pair kind(s) {', '.join(unknown)}; choose from {', '.join(PAIR_KINDS)}")
    out = Path(out)
    cache = Path(cache) if cache else cache_root()
    contamination = Contamination.of_evaluation()  # before any work: a bad task file stops here
    scripts, report = gather(sources, cache, max_bytes, progress)
    kept = deduplicate(scripts, report, near_threshold)
    clean = [s for s in kept if not contamination.found_in(s.text)]
    report.skipped["evaluation_overlap"] += len(kept) - len(clean)
    check_syntax(clean, progress)
    train, validation = split_train_validation(clean, validation_fraction, seed)
    pair_counts = {}
    if pairs:
        mined, pair_counts = mine_pairs(train, sources, cache, contamination, pairs, progress)
        train += mined
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "validation.jsonl", validation)

    def summary(split):
        d = {"files": len(split), "bytes": sum(len(s.text.encode()) for s in split),
             "projects": len({(s.source, s.project) for s in split}),
             "bash_n_ok": sum(bool(s.bash_n_ok) for s in split),
             "pairs": sum(s.source.startswith("pair:") for s in split),
             "maintainer_scripts": sum(s.path.startswith("DEBIAN/") for s in split),
             "boilerplate_bytes_removed": sum(s.boilerplate_bytes for s in split)}
        if tokenizer is not None:
            d["tokens"] = sum(len(ids) + 1 for ids in encode_batch(tokenizer, [s.text for s in split]))
        return d

    manifest = {
        "sources": sources,
        "settings": {"validation_fraction": validation_fraction, "seed": seed, "max_bytes": max_bytes,
                     "near_dedup": {"threshold": near_threshold, "num_perm": 256, "ngram": 5},
                     "filters": {"max_line_length": MAX_LINE_LENGTH, "max_mean_line_length": MAX_MEAN_LINE_LENGTH,
                                 "min_alnum_fraction": MIN_ALNUM_FRACTION}},
        "files_seen": report.seen,
        "skipped": {reason: report.skipped.get(reason, 0) for reason in SKIP_REASONS},
        "kept": len(clean),
        "pairs": pair_counts,
        "projects": sorted({f"{s.source}:{s.project}" + (f"={s.version}" if s.version else "") for s in clean}),
        "splits": {"train": summary(train), "validation": summary(validation)},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def format_summary(manifest: dict, out: str | Path, block_size: int = 1024) -> str:
    """The collection summary in the guide's terms: files, projects, sequences, tokens."""
    lines = [f"bash corpus written to {out}"]
    for split in ("train", "validation"):
        s = manifest["splits"][split]
        pairs = s.get("pairs", 0)
        line = (f"  {split:<10} {s['files'] - pairs:>6} scripts" + (f" + {pairs} pairs" if pairs else "") +
                f" from {s['projects']} projects, {s['bytes'] / 1e6:.2f} MB")
        if "tokens" in s:
            line += f", {s['tokens'] / 1e6:.2f}M tokens, {-(-s['tokens'] // block_size)} sequences of {block_size}"
        line += f", bash -n ok {s['bash_n_ok']}/{s['files']}"
        lines.append(line)
    train = manifest["splits"]["train"]
    if train.get("maintainer_scripts") or train.get("boilerplate_bytes_removed"):
        lines.append(f"  of the training scripts {train['maintainer_scripts']} are Debian maintainer scripts; "
                     f"{train['boilerplate_bytes_removed'] / 1e3:.0f} kB of generated blocks (debhelper's) were cut "
                     f"out of them")
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items() if v)
    lines.append(f"  looked at {manifest['files_seen']} files; skipped: {skipped or 'none'}")
    for kind, c in manifest.get("pairs", {}).items():
        if isinstance(c, dict):
            lines.append(f"  {kind} pairs: {c['mined']} mined, {c['kept']} kept (new, not near-duplicates, parsing)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: bashgpt collect SOURCE... --out DIR")
