"""Retrieved examples: the K description-and-command pairs closest to a prompt's task, written above it.

``bashgpt generate --examples K`` (and ``bashgpt eval --examples K``, reported apart) finds, with BM25 (the
``bm25s`` library) over the descriptions of a corpus's training pairs, the K closest to the prompt's comment lines,
and writes them between the prompt's shebang and its task, as commented examples::

    #!/bin/bash
    # Display free disk space of all file systems.
    df -a

    # Show disk usage of each mounted filesystem and warn when one is over 90%.

The pairs are training data (``bashgpt collect --pairs``), kept clear of every evaluation set as collect keeps them;
the guard checks the examples with the rest of the script, so they must parse (collect keeps only pairs that do).
"""

import json
from pathlib import Path

from ..errors import UserError


class PairIndex:
    """BM25 over the descriptions of (description, code) pairs."""

    def __init__(self, pairs: list[tuple[str, str]]):
        import bm25s

        if not pairs:
            raise UserError("no description-and-command pairs to retrieve examples from; collect a corpus with "
                            "'bashgpt collect ... --pairs cheat,eg,man' and pass it with --pairs")
        self.pairs = pairs
        self._bm25s = bm25s
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize([d for d, _ in pairs], stopwords="en", show_progress=False),
                         show_progress=False)

    @classmethod
    def from_corpus(cls, folder: str | Path) -> "PairIndex":
        """The pairs of a ``bashgpt collect`` folder's training split (each once)."""
        path = Path(folder) / "train.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the pairs in {path}: {err}; pass --pairs a 'bashgpt collect' folder") from None
        seen, pairs = set(), []
        for line in lines:
            row = json.loads(line) if line.strip() else {}
            if str(row.get("source", "")).startswith("pair:") and row["text"] not in seen:
                seen.add(row["text"])
                pairs.append(split_pair(row["text"]))
        if not pairs:
            raise UserError(f"{path} holds no description-and-command pairs; collect it with --pairs "
                            f"cheat,eg,man (or pass --pairs another folder)")
        return cls(pairs)

    def closest(self, query: str, k: int) -> list[tuple[str, str]]:
        """The ``k`` pairs whose descriptions are closest to ``query`` (fewer when fewer share a word with it)."""
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.ids[0]:
            return []
        found, scores = self.index.retrieve(tokens, k=min(k, len(self.pairs)), show_progress=False)
        return [self.pairs[int(i)] for i, s in zip(found[0], scores[0], strict=True) if s > 0]


def split_pair(text: str) -> tuple[str, str]:
    """(description, code) of a pair's text ``#!/bin/bash`` + ``# description`` + code."""
    lines = text.splitlines()[1:] if text.startswith("#!") else text.splitlines()
    return lines[0].lstrip("# ").strip(), "\n".join(lines[1:]).strip()


def with_examples(prompt: str, examples: list[tuple[str, str]]) -> str:
    """``prompt`` with ``examples`` written between its shebang and the rest."""
    if not examples:
        return prompt
    shebang, rest = prompt.split("\n", 1) if prompt.startswith("#!") else ("", prompt)
    block = "".join(f"# {desc}\n{code}\n\n" for desc, code in examples)
    return (shebang + "\n" if shebang else "") + block + rest
