import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# bashgpt's caches (token streams, downloads) for this test session only, never the user's
os.environ["BASHGPT_CACHE"] = tempfile.mkdtemp(prefix="bashgpt-tests-")
atexit.register(shutil.rmtree, os.environ["BASHGPT_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from bashgpt import BashGPTConfig  # noqa: E402

SAMPLE_TEXTS = [
    "#!/bin/bash\n# Back up the home folder\nset -euo pipefail\nfor f in \"$HOME\"/*; do\n\techo \"$f\"\ndone\n",
    "Once upon a time there was a little cat. The cat liked to play in the sun.\n",
    "#!/bin/sh\nif [ -z \"$1\" ]; then\n  echo 'usage: $0 FILE' >&2\n  exit 1\nfi\ncat <<EOF\nhello $1\nEOF\n",
    "The dog ran to the park. It was a sunny day and everyone was happy.\n",
]


def small_config(**overrides) -> BashGPTConfig:
    fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)
    fields.update(overrides)
    return BashGPTConfig(**fields)


VARIANTS = [(n, p) for n in ("layernorm", "rmsnorm") for p in ("learned", "rope")]


@pytest.fixture(scope="session")
def small_tokenizer():
    from bashgpt.data.tokenization import train_tokenizer

    return train_tokenizer(SAMPLE_TEXTS * 20, vocab_size=300, model_max_length=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory):
    """A saved, untrained nano model folder with the shipped tokenizer (for generate and eval)."""
    from bashgpt import BashGPTConfig, BashGPTForCausalLM
    from bashgpt.data.tokenization import default_tokenizer_dir
    from bashgpt.model_folder import load_tokenizer, save_model_folder

    torch.manual_seed(0)
    tok = load_tokenizer(default_tokenizer_dir())
    cfg = BashGPTConfig.from_preset("nano", max_position_embeddings=128, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
    return save_model_folder(BashGPTForCausalLM(cfg), tok, tmp_path_factory.mktemp("m") / "best")
