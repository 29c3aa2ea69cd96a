"""Export a default-architecture bashgpt model as a stock ``GPT2LMHeadModel`` folder (no custom code).

Our weights keep GPT-2's names; GPT-2 stores its block matrices as Conv1D (in, out), so they
are transposed. RMSNorm or RoPE models have no stock GPT-2 equivalent.

The folder is what other runtimes read, so it says what they look for: ``n_ctx`` beside
``n_positions`` (llama.cpp's converter reads it), a tokenizer class Transformers 4.x has
(``GPT2Tokenizer``, which 4.x loads as ``GPT2TokenizerFast`` from ``tokenizer.json``), and
``model_max_length`` equal to the positions, so ``truncation=True`` never overruns them.
"""

from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from ..errors import UserError
from ..model_folder import save_model_folder

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPT-2's GELU is the tanh approximation; both names Transformers gives it compute the same function
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def check_gpt2_shape(config) -> None:
    """Raise the one-line reason a model cannot be written as a stock GPT-2, if there is one."""
    if config.norm_type != "layernorm" or config.position_embedding_type != "learned":
        raise UserError(f"this model uses {config.norm_type} and {config.position_embedding_type} positions; "
                        f"only LayerNorm + learned positions map onto a stock GPT-2 (no stock equivalent exists)")
    if config.hidden_act not in GPT2_ACTIVATIONS:
        raise UserError(f"this model's activation is {config.hidden_act!r}; GPT-2 runtimes compute only the tanh "
                        f"GELU ({', '.join(GPT2_ACTIVATIONS)}), so its outputs would differ")


def gpt2_config(config) -> GPT2Config:
    check_gpt2_shape(config)
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        activation_function=config.hidden_act, layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        n_ctx=config.max_position_embeddings,  # GPT-2's original name for the context; llama.cpp's converter needs it
    )


def to_gpt2(model) -> GPT2LMHeadModel:
    gpt2 = GPT2LMHeadModel(gpt2_config(model.config)).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else tensor
    missing, unexpected = gpt2.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise UserError(f"export mapping failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return gpt2


def portable_tokenizer(tokenizer, positions: int) -> GPT2TokenizerFast:
    """The same tokenizer (pipeline, vocabulary, special tokens), saved under a class every Transformers has."""
    return GPT2TokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token, model_max_length=positions, add_prefix_space=False)


def export_gpt2(model, tokenizer, out: str | Path) -> Path:
    """Write the stock GPT-2 folder atomically; a folder left half-written by an earlier crash is discarded."""
    gpt2 = to_gpt2(model)
    portable = portable_tokenizer(tokenizer, model.config.max_position_embeddings) if tokenizer is not None else None
    return save_model_folder(gpt2, portable, out)
