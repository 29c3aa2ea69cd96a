"""Load a text corpus as a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits.

A source is one of:
  roneneldan/TinyStories (the default for stage 1), or any Hub dataset name with a text column
  a local file or folder of .txt / .jsonl / .json / .parquet files
  a ``bashgpt collect`` output folder (train.jsonl, validation.jsonl, manifest.json)
  ``stdlib``: offline English prose that every Python install carries, the docstrings of the
  standard library and the language-reference topics in ``pydoc_data`` (about 2 MB)

A corpus without a validation split of its own has one cut by a hash of each document's text
(``held_out``): the same documents in every command, every run and every seed, streamed or not, so
what ``bashgpt eval`` calls held out was never trained on (and a document's exact copies fall on
the same side).
"""

import ast
import functools
import hashlib
import json
import os
import sysconfig
from pathlib import Path

import datasets

from ..errors import UserError
from ..network import hub_reachable

TINYSTORIES = "roneneldan/TinyStories"
STDLIB = "stdlib"
TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
VALIDATION_FRACTION = 0.02  # of the documents, where a corpus has no validation split of its own


class CorpusError(UserError):
    """A corpus that cannot be loaded; the message says why and what to do."""


READ_ERRORS = (datasets.exceptions.DatasetGenerationError, ValueError, OSError)  # a streamed file that cannot be read


def read_error(err: Exception) -> CorpusError:
    """A file met while streaming that cannot be read, as one line (the stream does not say which file)."""
    return CorpusError(f"cannot read the corpus while streaming ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else 'no detail'}); fix or remove the damaged file")


TEXT_COLUMNS = ("text", "content", "code", "story")


def pick_text_column(columns: list[str], strings: list[str]) -> str:
    """'text', else 'content', 'code' or 'story', else the only string column."""
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    if len(strings) == 1:
        return strings[0]
    raise CorpusError(f"cannot tell which column holds the text among {columns}; name one 'text'")


def text_column(ds: datasets.Dataset | datasets.IterableDataset) -> str:
    """The column that holds the text; a stream whose files do not declare their columns shows its first row."""
    if ds.features is None:
        try:
            first = next(iter(ds), None)
        except READ_ERRORS as err:
            raise read_error(err) from None
        if first is None:
            raise CorpusError("the corpus has no documents; point --dataset at files with text in them")
        return pick_text_column(list(first), [k for k, v in first.items() if isinstance(v, str)])
    strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    return pick_text_column(list(ds.features), strings)


def offline_hint(name: str) -> str:
    return (f"could not reach the Hugging Face Hub for dataset {name!r} and it is not cached; "
            f"connect to the network, or pass local files with --dataset PATH (.txt/.jsonl/.parquet), "
            f"or --dataset stdlib for offline English text")


def load_hub_dataset(name: str, split: str | None = None, streaming: bool = False):
    """``datasets.load_dataset(name)``, failing within seconds with one clear line when offline."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # use the local cache only, no retries
        constants.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except (ConnectionError, FileNotFoundError) as err:
        if constants.HF_HUB_OFFLINE or "offline" in str(err).lower() or isinstance(err, ConnectionError):
            raise CorpusError(offline_hint(name)) from None
        raise CorpusError(f"dataset {name!r} not found on the Hub or locally; check the name") from None


def stdlib_texts(min_chars: int = 200) -> list[str]:
    """English prose from the running Python: stdlib docstrings and pydoc's language topics.

    Parsed with ``ast`` (nothing is imported or run), in a fixed order, so the same Python gives the same text.
    Parsed once per process (about 2 s): training, evaluation and the quickstart each ask for it.
    """
    return list(_parse_stdlib(min_chars))


@functools.lru_cache(maxsize=2)
def _parse_stdlib(min_chars: int) -> tuple[str, ...]:
    texts = []
    try:
        from pydoc_data.topics import topics

        texts.extend(topics[key].strip() for key in sorted(topics) if len(topics[key]) >= min_chars)
    except ImportError:  # some distributions strip pydoc_data
        pass
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "dist-packages"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = ast.parse(Path(dirpath, name).read_text("utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:
                        texts.append(doc)
    if not texts:
        raise CorpusError("found no standard-library text in this Python; pass --dataset PATH with local text files")
    return tuple(texts)


def document_hash(text: str) -> int:
    """64 bits of a document's text, the same on every machine and in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def held_out_hash(digest: int, fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether a document of this ``document_hash`` falls in the held-out share."""
    return digest < fraction * 2**64


def held_out(text: str, fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether a document belongs to the validation split of a corpus that has none of its own."""
    return held_out_hash(document_hash(text), fraction)


def split_off_validation(ds: datasets.Dataset, fraction: float = VALIDATION_FRACTION) -> datasets.DatasetDict:
    """Validation = the documents ``held_out`` picks, in their order; where it picks none, or all, the one of the
    lowest hash is validation and the rest train (a small corpus)."""
    if len(ds) < 2:
        raise CorpusError(f"the corpus has {len(ds)} document(s); at least 2 are needed for a validation split")
    column = text_column(ds)
    hashes = [document_hash(text) for batch in ds.select_columns([column]).iter(batch_size=10_000)
              for text in batch[column]]
    validation = [i for i, h in enumerate(hashes) if held_out_hash(h, fraction)]
    if not validation or len(validation) == len(hashes):
        validation = [min(range(len(hashes)), key=hashes.__getitem__)]
    chosen = set(validation)
    train = [i for i in range(len(hashes)) if i not in chosen]
    return datasets.DatasetDict(train=ds.select(train), validation=ds.select(validation))


def local_files(path: Path) -> dict[str, list[str]]:
    """Data files of one kind under ``path``, grouped as {builder: files}."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    grouped: dict[str, list[str]] = {}
    for f in files:
        builder = TEXT_SUFFIXES.get(f.suffix.lower())
        if builder:
            grouped.setdefault(builder, []).append(str(f))
    if not grouped:
        raise CorpusError(f"no .txt, .jsonl, .json or .parquet files in {path}")
    if len(grouped) > 1:
        raise CorpusError(f"{path} mixes file kinds ({', '.join(sorted(grouped))}); point at one kind")
    return grouped


def local_data_files(path: Path) -> tuple[str, dict, dict]:
    """How ``datasets`` reads a local corpus: (builder, data files by split, builder options). A 'bashgpt collect'
    folder (train.jsonl + validation.jsonl) brings its own validation split; other files are one train split."""
    if (path / "train.jsonl").is_file() and (path / "validation.jsonl").is_file():
        return "json", {"train": str(path / "train.jsonl"), "validation": str(path / "validation.jsonl")}, {}
    ((builder, files),) = local_files(path).items()
    return builder, {"train": files}, {"sample_by": "paragraph"} if builder == "text" else {}


def load_local(path: Path, validation_fraction: float) -> datasets.DatasetDict:
    builder, files, kwargs = local_data_files(path)
    if "validation" in files:
        if os.path.getsize(files["validation"]) == 0:
            raise CorpusError(f"{files['validation']} is empty; collect more scripts or raise --validation-fraction")
        return datasets.load_dataset(builder, data_files=files)
    try:
        ds = datasets.load_dataset(builder, data_files=files["train"], split="train", **kwargs)
    except datasets.exceptions.DatasetGenerationError as err:
        damaged, why = first_damaged(files["train"], builder) or (path, str(err.__cause__ or err))
        raise CorpusError(f"cannot read {damaged}: {why.splitlines()[0]}; fix it, or move it out of {path}") from None
    return split_off_validation(ds, validation_fraction)


def first_damaged(files: list[str], builder: str) -> tuple[str, str] | None:
    """The first file of a corpus that cannot be read whole, and why (asked only after a load failed)."""
    import pyarrow.parquet as pq

    for name in files:
        try:
            if builder == "parquet":
                pq.read_metadata(name)
                continue
            with open(name, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if builder == "json" and line.strip():
                        try:
                            json.loads(line)
                        except ValueError as err:
                            return name, f"line {number} is not JSON ({err})"
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, or not parquet
            return name, str(err)
    return None


HELD_OUT_SPLITS = ("validation", "valid", "test")  # a corpus's own held-out split, by the names datasets use


def source_kind(source: str) -> str:
    """'stdlib', 'local' or 'hub', or the one-line error for a source that is none of them."""
    if source == STDLIB:
        return "stdlib"
    if Path(source).expanduser().exists():
        return "local"
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return "hub"
    raise CorpusError(f"dataset {source!r} is neither a local path nor a Hub name like owner/name; "
                      f"check the path, or use --dataset stdlib for offline English text")


def hub_splits(source: str, streaming: bool = False):
    """A Hub dataset's splits (streamed or downloaded), with a train split, and the name of its held-out one."""
    raw = load_hub_dataset(source, streaming=streaming)
    if "train" not in raw:
        raise CorpusError(f"dataset {source!r} has no train split (it has {', '.join(raw)})")
    return raw, next((s for s in HELD_OUT_SPLITS if s in raw), None)


def text_only(ds, also: tuple[str, ...] = ()):
    """``ds`` with its text column, named ``text``, and of the columns ``also`` names those it has."""
    column = text_column(ds)
    ds = ds.rename_column(column, "text") if column != "text" else ds
    return ds.select_columns(["text", *(c for c in also if c in ds.column_names and c != "text")])


def load_corpus(source: str = TINYSTORIES, validation_fraction: float = VALIDATION_FRACTION,
                also: tuple[str, ...] = ()) -> datasets.DatasetDict:
    """Load ``source`` as train/validation splits, each with a ``text`` column (and of the columns ``also`` names,
    those it has): its own validation split, else the documents ``held_out`` picks."""
    kind = source_kind(source)
    if kind == "stdlib":
        dd = split_off_validation(datasets.Dataset.from_dict({"text": stdlib_texts()}), validation_fraction)
    elif kind == "local":
        dd = load_local(Path(source).expanduser(), validation_fraction)
    else:
        raw, own = hub_splits(source)
        dd = (datasets.DatasetDict(train=raw["train"], validation=raw[own]) if own
              else split_off_validation(raw["train"], validation_fraction))
    return datasets.DatasetDict({split: text_only(ds, also) for split, ds in dd.items()})


def stream_corpus(source: str = TINYSTORIES) -> tuple[datasets.IterableDataset, datasets.IterableDataset]:
    """``source`` as streams of ``{"text"}`` rows read as they are used (``datasets``' iterable datasets): train and
    validation, the corpus's own validation split where it has one, else the documents ``held_out`` picks (which
    the train stream then leaves out). Nothing is converted or cached, so a corpus larger than the disk or memory
    trains."""
    kind = source_kind(source)
    if kind == "stdlib":
        splits, own = {"train": datasets.Dataset.from_dict({"text": stdlib_texts()}).to_iterable_dataset()}, None
    elif kind == "local":
        path = Path(source).expanduser()
        builder, files, kwargs = local_data_files(path)
        try:
            splits = datasets.load_dataset(builder, data_files=files, streaming=True, **kwargs)
        except StopIteration:  # the json reader's way of finding an empty first file
            raise CorpusError(f"{path} has no documents; point --dataset at files with text in them") from None
        except READ_ERRORS as err:
            raise read_error(err) from None
        own = "validation" if "validation" in files else None
    else:
        splits, own = hub_splits(source, streaming=True)
    train = text_only(splits["train"])
    if own:
        return train, text_only(splits[own])
    return (train.filter(lambda batch: [not held_out(t) for t in batch["text"]], batched=True),
            train.filter(lambda batch: [held_out(t) for t in batch["text"]], batched=True))
