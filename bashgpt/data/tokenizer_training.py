"""Train the tokenizer of a job on its corpora, and report how compactly it encodes their held-out text."""

import json
from pathlib import Path

from .corpus import load_corpus
from .packing import split_bytes, token_stream
from .tokenization import train_tokenizer


def bytes_per_token(tokenizer, split, cache_dir: str | Path | None = None) -> float:
    """Compression of a split: UTF-8 bytes per token (higher is better; end-of-text tokens left out). Its token
    stream goes to ``cache_dir``, where the job's later commands find it."""
    n_tokens = len(token_stream(split, tokenizer, cache_dir)) - len(split)  # one end of text a document
    return split_bytes(split) / max(n_tokens, 1)


def train_on_corpora(english: str, bash: str, out: str | Path, vocab_size: int = 32000, min_frequency: int = 1,
                     cache_dir: str | Path | None = None) -> dict:
    """Train the tokenizer on an English corpus and a ``bashgpt collect`` folder; save it to ``out``.

    Both corpora's validation splits are held out and used to report compression (tokenised into ``cache_dir``,
    where given, for the rest of the job). The text order is fixed, so the same inputs give the same files.
    """
    eng = load_corpus(english)
    sh = load_corpus(bash)
    train_texts = list(eng["train"]["text"]) + list(sh["train"]["text"])
    tokenizer = train_tokenizer(train_texts, vocab_size=vocab_size, min_frequency=min_frequency)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    report = {
        "vocab_size": len(tokenizer),
        "trained_on": {"english": english, "english_docs": len(eng["train"]), "bash": bash, "bash_docs": len(sh["train"])},
        "bytes_per_token": {"english_validation": round(bytes_per_token(tokenizer, eng["validation"], cache_dir), 3),
                            "bash_validation": round(bytes_per_token(tokenizer, sh["validation"], cache_dir), 3)},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
