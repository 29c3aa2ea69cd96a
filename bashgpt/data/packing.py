"""Tokenise a text corpus and pack it into fixed-length training blocks, cached on disk.

Every document gets an end-of-text token, documents are concatenated and cut into blocks
of ``block_size`` tokens. The tail of each map batch becomes one right-padded block whose
padded positions have label -100 and attention 0, so padding never counts in the loss.
"""

import hashlib
import itertools
import os
import shutil
from pathlib import Path

import datasets

from .tokenization import encode_batch

PACKING_VERSION = 1


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def cache_key(ds: datasets.Dataset, tokenizer, block_size: int) -> str:
    parts = [ds._fingerprint, tokenizer_fingerprint(tokenizer), str(block_size), str(PACKING_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def tokenize_batch(batch, tokenizer):
    ids = encode_batch(tokenizer, batch["text"])
    eos = tokenizer.eos_token_id
    return {"input_ids": [x + [eos] for x in ids]}


def pack_batch(batch, block_size: int, pad_id: int):
    """Concatenate the batch's documents and cut them into blocks; pad the last one."""
    stream = list(itertools.chain.from_iterable(batch["input_ids"]))
    input_ids, labels, attention = [], [], []
    for start in range(0, len(stream), block_size):
        block = stream[start:start + block_size]
        pad = block_size - len(block)
        input_ids.append(block + [pad_id] * pad)
        labels.append(block + [-100] * pad)
        attention.append([1] * len(block) + [0] * pad)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def pack_dataset(ds: datasets.Dataset, tokenizer, block_size: int, num_proc: int | None = None,
                 map_batch_size: int = 1000) -> datasets.Dataset:
    """Tokenise (batched ``datasets.map``) and pack ``ds`` (a ``text`` column) into blocks."""
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs an end-of-text and a padding token; use bashgpt's tokenizer/")
    num_proc = num_proc if num_proc and len(ds) >= 4 * map_batch_size else None
    parallelism_before = os.environ.get("TOKENIZERS_PARALLELISM")
    tokenized = ds.map(tokenize_batch, batched=True, batch_size=map_batch_size, remove_columns=ds.column_names,
                       fn_kwargs={"tokenizer": tokenizer}, num_proc=num_proc, desc="tokenising")
    packed = tokenized.map(pack_batch, batched=True, batch_size=map_batch_size, remove_columns=["input_ids"],
                           fn_kwargs={"block_size": block_size, "pad_id": tokenizer.pad_token_id},
                           num_proc=num_proc, desc=f"packing into blocks of {block_size}")
    if num_proc and parallelism_before is None:
        # datasets leaves TOKENIZERS_PARALLELISM=false behind, which would make later encodes single-core
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    return packed


def packed_splits(dd: datasets.DatasetDict, tokenizer, block_size: int, cache_dir: str | Path | None,
                  num_proc: int | None = None) -> datasets.DatasetDict:
    """Pack every split, reusing a copy on disk keyed by source, tokenizer and block size."""
    out = {}
    for split, ds in dd.items():
        if cache_dir is None:
            out[split] = pack_dataset(ds, tokenizer, block_size, num_proc)
            continue
        path = Path(cache_dir) / f"{split}-{cache_key(ds, tokenizer, block_size)}"
        if (path / "dataset_info.json").is_file():
            out[split] = datasets.load_from_disk(str(path))
            continue
        packed = pack_dataset(ds, tokenizer, block_size, num_proc)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        packed.save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        out[split] = datasets.load_from_disk(str(path))
    return datasets.DatasetDict(out)


def split_stats(ds: datasets.Dataset) -> dict:
    """Sequences and (non-padding) tokens of a packed split."""
    import pyarrow.compute as pc

    tokens = pc.sum(pc.list_flatten(ds.data.column("attention_mask"))).as_py() or 0
    return {"sequences": len(ds), "tokens": int(tokens)}


def format_stats(name: str, stats: dict, block_size: int) -> str:
    lines = [f"Dataset: {name} (blocks of {block_size} tokens)"]
    for split, s in stats.items():
        lines.append(f"  {split:<10} {s['sequences']:>8,} sequences  {s['tokens'] / 1e6:>9.2f}M tokens")
    return "\n".join(lines)

