"""Export a default-architecture bashgpt model as a stock ``GPT2LMHeadModel`` folder (no custom code).

Our weights keep GPT-2's names; GPT-2 stores its block matrices as Conv1D (in, out), so they
are transposed. RMSNorm or RoPE models have no stock GPT-2 equivalent.
"""

from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel

from ..errors import UserError
from .modelio import atomic_replace_dir

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_config(config) -> GPT2Config:
    if config.norm_type != "layernorm" or config.position_embedding_type != "learned":
        raise UserError(f"this model uses {config.norm_type} and {config.position_embedding_type} positions; "
                        f"only LayerNorm + learned positions map onto a stock GPT-2 (no stock equivalent exists)")
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        activation_function=config.hidden_act, layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
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


def export_gpt2(model, tokenizer, out: str | Path) -> Path:
    out = Path(out)
    gpt2 = to_gpt2(model)
    tmp = out.with_name(out.name + ".tmp")
    gpt2.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    atomic_replace_dir(tmp, out)
    return out
