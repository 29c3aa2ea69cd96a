"""Training blocks streamed from a corpus too large to tokenise ahead (``--streaming``).

Documents are read as training uses them (``datasets``' iterable datasets), shuffled through a
seeded buffer, tokenised a batch at a time and cut into full blocks of the block size, the
remainder carried into the next block, so no token is padded or dropped. The stream never ends:
when a pass over the corpus is used up the next begins, shuffled with the next seed. To Trainer it
is one endless epoch, so resuming skips exactly the blocks the run has used (Trainer fast-forwards
the stream, re-reading without training) and continues on the same blocks an uninterrupted run
would have seen.

Validation is the corpus's own validation split where it has one; otherwise the documents that
``corpus.held_out`` picks by a hash of their text, as every command picks them (corpus.stream_corpus).
"""

from itertools import count

import datasets
import numpy as np
import torch

from .corpus import READ_ERRORS, CorpusError, read_error
from .packing import BATCH_DOCUMENTS, TokenBlocks, encode_documents, token_dtype

SHUFFLE_BUFFER = 10_000  # documents held in the shuffle buffer


def read_batches(docs: datasets.IterableDataset):
    """``docs`` in batches of documents; a file that cannot be read is one line (read_error)."""
    try:
        yield from docs.iter(batch_size=BATCH_DOCUMENTS)
    except Exception as err:  # not BaseException: a generator closed mid-pass is not a read error
        if isinstance(err, READ_ERRORS):
            raise read_error(err) from None
        raise


class StreamedBlocks(torch.utils.data.IterableDataset):
    """Endless ``{"input_ids", "labels", "attention_mask"}`` blocks of ``block_size`` tokens from ``docs``."""

    def __init__(self, docs: datasets.IterableDataset, tokenizer, block_size: int, seed: int,
                 shuffle_buffer: int = SHUFFLE_BUFFER):
        self.docs, self.tokenizer, self.block_size = docs, tokenizer, block_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer

    def __iter__(self):
        carried = np.zeros(0, dtype=token_dtype(len(self.tokenizer)))
        for corpus_pass in count():
            docs = self.docs.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer) if self.shuffle_buffer else self.docs
            docs.set_epoch(corpus_pass)  # a new order each pass, the same for the same seed and pass
            read_any = False
            for batch in read_batches(docs):
                read_any = True
                tokens = np.concatenate([carried, encode_documents(self.tokenizer, batch["text"])])
                full = len(tokens) // self.block_size
                blocks = TokenBlocks(tokens[:full * self.block_size], self.block_size, self.tokenizer.pad_token_id)
                yield from (blocks[i] for i in range(full))
                carried = tokens[full * self.block_size:]
            if not read_any:
                raise CorpusError("the training stream has no documents; point --dataset at a corpus with text in it")


def held_out_blocks(docs: datasets.IterableDataset, tokenizer, block_size: int, blocks: int) -> tuple[TokenBlocks, int]:
    """The first documents of ``docs``, whole batches of them, until they fill ``blocks`` blocks: their blocks and
    how many documents they were."""
    parts, tokens, documents = [], 0, 0
    for batch in read_batches(docs):
        parts.append(encode_documents(tokenizer, batch["text"]))
        tokens, documents = tokens + len(parts[-1]), documents + len(batch["text"])
        if tokens >= blocks * block_size:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=token_dtype(len(tokenizer)))
    return TokenBlocks(stream, block_size, tokenizer.pad_token_id), documents


def streamed_splits(train: datasets.IterableDataset, validation: datasets.IterableDataset, tokenizer,
                    block_size: int, eval_blocks: int, seed: int) -> tuple[StreamedBlocks, TokenBlocks]:
    """Training blocks as a stream, and the first validation documents, whole batches of them, as blocks in memory.
    A corpus with no validation document is too small to stream (without --streaming one is always held out)."""
    held_out, documents = held_out_blocks(validation, tokenizer, block_size, eval_blocks)
    if not documents:
        raise CorpusError("no document of the corpus falls in its held-out share; it is small enough to train "
                          "without --streaming")
    return StreamedBlocks(train, tokenizer, block_size, seed), held_out
