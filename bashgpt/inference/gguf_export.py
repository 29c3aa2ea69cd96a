"""Write a bashgpt model as one GGUF file that llama.cpp (and everything built on it) loads directly.

The file uses llama.cpp's ``gpt2`` architecture, which is our default architecture exactly
(LayerNorm, learned positions, fused QKV, tanh GELU, biases, untied head). It is written with
the ``gguf`` package, llama.cpp's own writer, rather than through llama.cpp's converter,
because the converter cannot say two things our models need:

- the feed-forward size: its GPT-2 path writes ``4 * n_embd`` whatever the config says;
- the pre-tokenizer: it recognises a BPE vocabulary by hashing how it splits a test text and
  stops on any vocabulary it has not seen, which is every freshly trained one. Ours splits
  text with GPT-2's own regex (byte-level, no normaliser), which llama.cpp knows as ``gpt-2``;
  that is declared here, and a tokenizer that splits otherwise is refused.

Weights keep ``nn.Linear``'s (out, in) layout, which is GGUF's row order for matrices. Norms
and biases are written in fp32, as llama.cpp expects; matrices in ``f16`` (default) or ``f32``.
"""

import json
import os
from pathlib import Path

from ..errors import UserError
from .export import check_gpt2_shape

DTYPES = ("f16", "f32")


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("writing GGUF needs the gguf package: pip install 'bashgpt[gguf]'") from None
    return gguf


def vocabulary(tokenizer) -> tuple[list[str], list[str], set[int]]:
    """Tokens in id order, merges as "a b" lines, and the ids of special tokens, from ``tokenizer.json``."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) \
            or pre.get("add_prefix_space") or spec.get("normalizer"):
        raise UserError("this tokenizer is not a plain byte-level BPE with GPT-2's split (no normaliser, no prefix "
                        "space), the only kind llama.cpp's 'gpt-2' pre-tokenizer reproduces; retrain it with "
                        "`bashgpt tokenizer` or export with --format gpt2")
    ids = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        ids[added["content"]] = added["id"]
    tokens = [None] * len(ids)
    for token, i in ids.items():
        tokens[i] = token
    if None in tokens:
        raise UserError("the tokenizer's ids have gaps; llama.cpp needs ids 0..n-1 each with a token")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {added["id"] for added in spec.get("added_tokens", []) if added.get("special")}
    return tokens, merges, special


def gguf_tensor_name(tensor_names, name: str) -> str:
    mapped = tensor_names.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise UserError(f"export mapping failed: no GGUF name for {name}")
    return mapped


def export_gguf(model, tokenizer, out: str | Path, dtype: str = "f16", name: str = "bashgpt") -> Path:
    """Write ``out`` (a ``.gguf`` file) atomically: into ``out.partial``, then renamed over any old file."""
    gguf = require_gguf()
    config = model.config
    check_gpt2_shape(config)
    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if tokenizer is None:
        raise UserError("a GGUF file carries its tokenizer, and this model folder has none; copy tokenizer.json in")
    tokens, merges, special = vocabulary(tokenizer)
    if len(tokens) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokens)} tokens but the model only {config.vocab_size} rows; "
                        f"export with the tokenizer the model was trained with")
    padding = range(len(tokens), config.vocab_size)  # rows a new model rounds its vocabulary up with (never sampled)
    tokens += [f"<|unused_{i}|>" for i in padding]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.UNUSED if i in padding
                            else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)  # bashgpt prompts start with the text itself

    tensor_names = gguf.TensorNameMap(gguf.MODEL_ARCH.GPT2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        if dtype == "f16" and array.ndim == 2:
            array = array.astype("float16")
        writer.add_tensor(gguf_tensor_name(tensor_names, name), array)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
