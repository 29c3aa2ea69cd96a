"""Tokenise a text corpus into one stream of token ids on disk, and serve fixed-length training blocks from it.

Every document gets an end-of-text token and the documents of a split are concatenated into one stream, stored as a
flat array of the smallest unsigned dtype the vocabulary allows (uint16 below 65,536 tokens: 2 bytes a token). A
block is a slice of ``block_size`` tokens of it; only the split's last block can be short, and is padded. Labels
and the attention mask are derived when a block is served (padding: label -100, attention 0), so the cache holds
token ids only, and one cache per corpus and tokenizer serves every ``--seq-len``.

Tokenising streams the corpus in batches through the tokenizer's Rust backend, which encodes a batch on all the
cores; memory holds one batch of text and its ids, however large the corpus, and the progress bar counts documents
against the split's known size. A cache entry becomes visible only once complete (written to ``.partial``, then
renamed), so an interrupted run leaves nothing a later run would trust.
"""

import hashlib
import os
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .tokenization import encode_batch

PACKING_VERSION = 2  # 2: token stream of the smallest dtype, blocks cut when served
BATCH_DOCUMENTS = 2000  # documents encoded at once
SAMPLED_DOCUMENTS = 64  # documents whose text identifies a split, with its length and size, in the cache key


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def split_fingerprint(ds: datasets.Dataset) -> str:
    """Identifies a split's text through public API, without reading it all: its length, the size of its table and
    the text of documents spread evenly over it."""
    n = len(ds)
    picks = sorted({round(i * (n - 1) / max(SAMPLED_DOCUMENTS - 1, 1)) for i in range(SAMPLED_DOCUMENTS)}) if n else []
    h = hashlib.sha256(f"{n}|{ds.data.nbytes}".encode())
    for text in ds.select(picks)["text"]:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks over a token stream: ``{"input_ids", "labels", "attention_mask"}`` of ``block_size``.
    ``counted`` (one bool a token, or None for all) says which tokens are training targets: the others, like
    padding, get label -100."""

    def __init__(self, tokens: np.ndarray, block_size: int, pad_id: int, counted: np.ndarray | None = None):
        self.tokens, self.block_size, self.pad_id, self.counted = tokens, block_size, pad_id, counted

    def __len__(self) -> int:
        return -(-len(self.tokens) // self.block_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        span = slice(index * self.block_size, (index + 1) * self.block_size)
        ids = torch.from_numpy(self.tokens[span].astype(np.int64))
        ignored = torch.zeros(self.block_size, dtype=torch.bool)
        if self.counted is not None:
            ignored[:len(ids)] = torch.from_numpy(~self.counted[span])
        pad = self.block_size - len(ids)
        attention = torch.ones(self.block_size, dtype=torch.long)
        if pad:
            attention[len(ids):] = 0
            ids = torch.cat([ids, ids.new_full((pad,), self.pad_id)])
        return {"input_ids": ids, "labels": ids.masked_fill(ignored | (attention == 0), -100),
                "attention_mask": attention}

    def first(self, blocks: int) -> "TokenBlocks":
        """The first ``blocks`` blocks (all of them if there are fewer)."""
        end = blocks * self.block_size
        return TokenBlocks(self.tokens[:end], self.block_size, self.pad_id,
                           None if self.counted is None else self.counted[:end])

    @property
    def num_tokens(self) -> int:
        """Tokens that count in the loss (padding does not)."""
        return len(self.tokens)

    def counted_or_all(self) -> np.ndarray:
        return np.ones(len(self.tokens), dtype=bool) if self.counted is None else self.counted


def encode_documents(tokenizer, texts: list[str]) -> np.ndarray:
    """The token ids of ``texts``, each followed by end of text, as one flat array of the stream's dtype."""
    eos = (tokenizer.eos_token_id,)
    flat = list(chain.from_iterable(chain.from_iterable((ids, eos) for ids in encode_batch(tokenizer, texts))))
    return np.array(flat, dtype=token_dtype(len(tokenizer)))


def encode_stream(ds: datasets.Dataset, tokenizer, desc: str = "tokenising", progress: bool = True):
    """Arrays of token ids, one per batch of documents, each document followed by end of text."""
    with tqdm(total=len(ds), desc=desc, unit="doc", disable=not progress, dynamic_ncols=True) as bar:
        for batch in ds.iter(batch_size=BATCH_DOCUMENTS):
            bar.update(len(batch["text"]))
            yield encode_documents(tokenizer, batch["text"])


def tokenize_split(ds: datasets.Dataset, tokenizer, path: Path | None = None, desc: str = "tokenising",
                   progress: bool = True) -> np.ndarray:
    """The split's token stream: written to ``path`` (complete or not at all) and memory-mapped from it, or in
    memory when ``path`` is None."""
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise UserError("the tokenizer needs an end-of-text and a padding token; use bashgpt's tokenizer/")
    if path is None:
        parts = list(encode_stream(ds, tokenizer, desc, progress))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=token_dtype(len(tokenizer)))
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            for part in encode_stream(ds, tokenizer, desc, progress):
                part.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return open_stream(path, token_dtype(len(tokenizer)))


def open_stream(path: Path, dtype: np.dtype) -> np.ndarray:
    """A cached token stream, memory-mapped (read where it is needed, never all held in memory)."""
    if path.stat().st_size == 0:  # an empty split: nothing to map
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def token_stream(ds: datasets.Dataset, tokenizer, cache_dir: str | Path | None = None, progress: bool = False,
                 desc: str = "tokenising") -> np.ndarray:
    """The split's token stream, the one route by which every command tokenises a corpus: from the stream on disk in
    ``cache_dir`` keyed by the split's text and the tokenizer (tokenised by whichever command of a job reads the split
    first, memory-mapped by the rest), or tokenised in memory when ``cache_dir`` is None."""
    if cache_dir is None:
        return tokenize_split(ds, tokenizer, None, desc, progress)
    key = hashlib.sha256(f"{split_fingerprint(ds)}|{tokenizer_fingerprint(tokenizer)}|{PACKING_VERSION}"
                         .encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{key}.tokens"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return open_stream(path, token_dtype(len(tokenizer)))
    return tokenize_split(ds, tokenizer, path, desc, progress)


def documents_at_most(tokens: np.ndarray, eos_id: int, max_tokens: int) -> np.ndarray:
    """The stream without its documents of more than ``max_tokens`` tokens (a document: the tokens up to and
    including an end of text), in memory."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id)
    lengths = np.diff(ends, prepend=-1)  # with the end of text
    keep = np.repeat(lengths - 1 <= max_tokens, lengths)
    return np.asarray(tokens[:len(keep)])[keep]


def first_documents(tokens: np.ndarray, eos_id: int, n: int) -> list[list[int]]:
    """The token ids of the stream's first ``n`` documents, without their end of text."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id)[:n]
    starts = np.concatenate([[0], ends + 1])[:len(ends)]
    return [np.asarray(tokens[start:end]).tolist() for start, end in zip(starts, ends, strict=True)]


def split_bytes(ds: datasets.Dataset) -> int:
    """The UTF-8 bytes of a split's text."""
    return sum(len(text.encode("utf-8")) for batch in ds.iter(batch_size=BATCH_DOCUMENTS) for text in batch["text"])


def pack_dataset(ds: datasets.Dataset, tokenizer, block_size: int, progress: bool = False) -> TokenBlocks:
    """Blocks of ``ds`` (a ``text`` column), tokenised in memory."""
    return TokenBlocks(token_stream(ds, tokenizer, None, progress), block_size, tokenizer.pad_token_id)


def packed_splits(dd: datasets.DatasetDict, tokenizer, block_size: int, cache_dir: str | Path | None,
                  progress: bool = True, splits: tuple[str, ...] | None = None,
                  max_doc_tokens: int | None = None) -> dict[str, TokenBlocks]:
    """Blocks of every split (or of ``splits``), from its ``token_stream`` (on disk in ``cache_dir``: a later run,
    whatever its block size, memory-maps it); with ``max_doc_tokens``, the documents of more tokens left out."""
    out = {}
    for split, ds in dd.items():
        if splits is not None and split not in splits:
            continue
        tokens = token_stream(ds, tokenizer, cache_dir, progress, desc=f"tokenising {split}")
        if max_doc_tokens:
            tokens = documents_at_most(tokens, tokenizer.eos_token_id, max_doc_tokens)
        out[split] = TokenBlocks(tokens, block_size, tokenizer.pad_token_id)
    return out


def commands_only(blocks: TokenBlocks, tokenizer, prompt_lines: int = 2) -> TokenBlocks:
    """``blocks`` with the first ``prompt_lines`` lines of each document (a pair's ``#!/bin/bash`` and
    ``# <description>``) no longer training targets: the model learns the command given the description, not the
    description. A document is the tokens up to its end of text; byte-level BPE keeps newlines in tokens of their
    own, so a token starts on the line its newlines before it say."""
    newlines = np.array([tokenizer.decode([i]).count("\n") for i in range(len(tokenizer))], dtype=np.int64)
    ids = np.asarray(blocks.tokens).astype(np.int64)
    seen = np.cumsum(newlines[ids]) - newlines[ids]  # newlines before each token, since the stream began
    starts = np.flatnonzero(np.concatenate([[True], ids[:-1] == tokenizer.eos_token_id]))
    doc_start = np.repeat(starts, np.diff(np.append(starts, len(ids))))  # each token's document's first token
    counted = blocks.counted_or_all() & (seen - seen[doc_start] >= prompt_lines)
    return TokenBlocks(blocks.tokens, blocks.block_size, blocks.pad_id, counted)


def with_replay(main: TokenBlocks, replay: TokenBlocks, share: float) -> TokenBlocks:
    """``main``'s tokens followed by the first of ``replay``'s (repeated if it is short), so that they make up
    ``share`` of the whole; each block is one or the other but at the seam, and training draws blocks in random
    order."""
    want = round(main.num_tokens * share / (1 - share))
    if want == 0 or replay.num_tokens == 0:
        return main
    repeats = -(-want // replay.num_tokens)
    def repeated(a):  # the first ``want`` of ``a`` repeated (read from the stream's map where it is long enough)
        return np.tile(np.asarray(a), repeats)[:want] if repeats > 1 else np.asarray(a[:want])

    extra = repeated(replay.tokens)
    counted = None
    if main.counted is not None or replay.counted is not None:
        counted = np.concatenate([main.counted_or_all(), repeated(replay.counted_or_all())])
    return TokenBlocks(np.concatenate([np.asarray(main.tokens), extra.astype(main.tokens.dtype)]), main.block_size,
                       main.pad_id, counted)


def with_share(main: TokenBlocks, extra: TokenBlocks, share: float) -> TokenBlocks:
    """``with_replay``, but every one of ``extra``'s tokens is used at least once: repeated to make up ``share`` of
    the whole, or all of it once where that is already more."""
    whole = main.num_tokens + extra.num_tokens
    return with_replay(main, extra, max(share, extra.num_tokens / whole) if whole else share)


def split_stats(blocks: TokenBlocks) -> dict:
    """Sequences and (non-padding) tokens of a split."""
    return {"sequences": len(blocks), "tokens": blocks.num_tokens}


def format_stats(name: str, stats: dict, block_size: int) -> str:
    lines = [f"Dataset: {name} (blocks of {block_size} tokens)"]
    for split, s in stats.items():
        lines.append(f"  {split:<10} {s['sequences']:>8,} sequences  {s['tokens'] / 1e6:>9.2f}M tokens")
    return "\n".join(lines)

