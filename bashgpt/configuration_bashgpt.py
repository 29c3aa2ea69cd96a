"""BashGPT configuration: the model's hyper-parameters and the size presets.

This file is copied beside the weights by ``save_pretrained`` (remote code), so it
imports nothing but ``transformers``.
"""

from transformers import PreTrainedConfig

# The size presets, one table. Source: the reference training guide's "Model Sizes"
# table (layers x hidden, parameter counts 137M / 371M / 1092M / 1509M), head size 64.
# With a 32,000-token vocabulary, an untied LM head and 4,096 learned positions the
# counts land within 0.3% of the guide's. `nano` is ours: a few million parameters for
# tests and CPU demos.
#            name:      (layers, hidden, positions)
PRESETS = {
    "nano": (4, 128, 1024),
    "tiny": (12, 768, 4096),
    "medium": (24, 1024, 4096),
    "large": (32, 1600, 4096),
    "xlarge": (36, 1792, 4096),
}
PRESET_HEAD_DIM = 64
PRESET_VOCAB_SIZE = 32000  # below 32,767: see the M1/M2 MPS matmul note in the README

NORM_TYPES = ("layernorm", "rmsnorm")
POSITION_EMBEDDING_TYPES = ("learned", "rope")
# The kinds of `rope_parameters["rope_type"]` the rotary embedding computes, through Transformers' own RoPE
# functions (`transformers.modeling_rope_utils`); "proportional" and the axial kinds are other architectures.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


class BashGPTConfig(PreTrainedConfig):
    """A GPT-2-style decoder: pre-norm blocks, GELU (tanh) MLP, untied LM head.

    Two switches change the architecture (and the meaning of the weights):
    ``norm_type`` (layernorm | rmsnorm) and ``position_embedding_type`` (learned | rope). A rope model reads
    ``rope_parameters`` as Transformers' models do (``{"rope_type": "linear", "factor": 4.0, "rope_theta": ...}``);
    a ``rope_theta`` of an older ``config.json`` is moved into it.
    """

    model_type = "bashgpt"
    keys_to_ignore_at_inference = ["cache"]
    # Tensor parallelism (`from_pretrained(..., tp_plan="auto")`), weights named as in BashGPTModel:
    # - the token embeddings split by vocabulary rows, as Transformers does for Llama's `embed_tokens` (which it
    #   finds by that name, not ours): the tied head (`_tp_plan`, split by output rows) then holds the same rows;
    # - q/k/v are one fused layer laid out [q | k | v], which a plain column split would cut across (rank 0 would
    #   get q and half of k): it is split by columns and gathered whole, attention runs whole on every rank, and the
    #   projection back is split by input rows from that whole input;
    # - the MLP split by columns, then by rows.
    base_model_tp_plan = {
        "wte": "embedding_rowwise",
        "h.*.attn.c_attn": "colwise_rep",
        "h.*.attn.c_proj": "rowwise_split_input",
        "h.*.mlp.c_fc": "colwise",
        "h.*.mlp.c_proj": "rowwise",
    }

    vocab_size: int = PRESET_VOCAB_SIZE
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None  # defaults to 4 * hidden_size
    max_position_embeddings: int = 4096
    hidden_act: str = "gelu_pytorch_tanh"
    norm_type: str = "layernorm"
    position_embedding_type: str = "learned"
    rope_parameters: dict | None = None  # rope only (None for learned positions); default {"rope_type": "default",
    # "rope_theta": 10000.0}
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    fused_lm_loss: bool = False  # training with labels: LM head + loss in chunks, logits not returned

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)  # standardises rope_parameters (and moves an old rope_theta into them)
        self.validate_architecture()
        if self.position_embedding_type != "rope":
            self.rope_parameters = None  # learned positions: nothing rotary to scale, so no RoPE parameters

    def validate_architecture(self):
        """Raise one clear ValueError naming the bad value and the allowed choices."""
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} is not supported; choose one of {', '.join(NORM_TYPES)}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; "
                f"choose one of {', '.join(POSITION_EMBEDDING_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                f"pick a head count that divides it (head size {PRESET_HEAD_DIM} gives {self.hidden_size // PRESET_HEAD_DIM or 1})"
            )
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size, got {self.head_dim}; change hidden_size or num_attention_heads")
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_parameters rope_type={rope_type!r} is not supported; choose one of {', '.join(ROPE_TYPES)}")
        if rope_type != "default" and self.position_embedding_type != "rope":
            raise ValueError(f"rope_parameters rope_type={rope_type!r} needs position_embedding_type='rope', "
                             f"not {self.position_embedding_type!r}")
        self.validate_rope()  # Transformers' own checks of each kind's fields (factor, beta_fast, ...)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "BashGPTConfig":
        """Build the config of a named size preset (nano, tiny, medium, large, xlarge).

        ``overrides`` replace any field, e.g. ``from_preset("tiny", norm_type="rmsnorm")``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden, positions = PRESETS[name]
        fields = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=hidden // PRESET_HEAD_DIM,
            max_position_embeddings=positions,
            vocab_size=PRESET_VOCAB_SIZE,
        )
        fields.update(overrides)
        return cls(**fields)


__all__ = ["BashGPTConfig", "PRESETS", "NORM_TYPES", "POSITION_EMBEDDING_TYPES", "ROPE_TYPES"]
