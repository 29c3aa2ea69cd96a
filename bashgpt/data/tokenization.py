"""Our byte-level BPE tokenizer: training it, and loading it with clear errors.

Byte-level BPE is lossless: every byte sequence (tabs, trailing spaces, CRLF, non-ASCII)
encodes and decodes back to itself. End of text and padding are separate special tokens,
so padding can be masked out of the loss without masking the end-of-text targets.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 4096,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; returns a Transformers tokenizer.

    The vocabulary may come out smaller than ``vocab_size`` on little text: use
    ``len(tokenizer)`` for the model's ``vocab_size``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, straight from the fast backend (no length warnings)."""
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "tokenizer"


def default_tokenizer_dir() -> Path:
    """The repository's shipped tokenizer folder."""
    return DEFAULT_TOKENIZER_DIR
