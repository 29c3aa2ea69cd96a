"""BashGPT: a GPT-2-style decoder-only language model, written the Transformers way.

Read top to bottom: norms -> rotary embedding -> MLP -> attention -> block -> base
model -> causal-LM head. Weight names follow GPT-2 (``transformer.wte``, ``h.N.attn.c_attn``,
``mlp.c_fc`` ...), so the default architecture maps one to one onto ``GPT2LMHeadModel``.

A stock Transformers causal LM: ``generate``, ``pipeline``, caches, hidden states and attentions, RoPE
scaling and tensor parallelism are Transformers' own, reached through the documented hooks (the attention
interface, ``create_causal_mask``, ``capture_outputs`` / ``can_return_tuple``, the RoPE functions, the
``_supports_*`` / ``_can_record_outputs`` class flags, ``_init_weights``). bashgpt's faster CPU decoding is
not here: it lives in ``bashgpt.inference.engine`` and is asked for per call (``generate(custom_generate=...)``).

This file is copied beside the weights by ``save_pretrained`` so that a folder loads with
``trust_remote_code=True`` where bashgpt is not installed: it imports only torch, transformers
and its siblings (configuration, fused loss, chunked attention; single-level relative imports).
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask, sdpa_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .chunked_attention import NAME as CHUNKED_ATTENTION
from .chunked_attention import chunked_attention_forward
from .configuration_bashgpt import BashGPTConfig
from .fused_loss import chunked_causal_lm_loss


def make_norm(config: BashGPTConfig) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (LLaMA), as the config says."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class BashGPTRotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings from position ids, for any ``rope_parameters["rope_type"]``
    Transformers' RoPE functions compute (default, linear, dynamic, yarn, longrope, llama3)."""

    def __init__(self, config: BashGPTConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: BashGPTConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Plain RoPE: inverse frequencies theta^(-2i/D), no attention scaling."""
        dim = config.head_dim
        steps = torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim
        return 1.0 / (config.rope_parameters["rope_theta"] ** steps), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # dynamic and longrope recompute inv_freq from the positions they see
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """Rotate q and k (B, H, T, D) by the position tables cos/sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class BashGPTMLP(nn.Module):
    def __init__(self, config: BashGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.c_proj._is_residual_proj = True  # scaled init, see _init_weights
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention; q, k, v are (B, H, T, D), the mask is additive. Returns (B, T, H, D) and the
    attention weights (B, H, T, S)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


# Query-chunked attention for training where sdpa would keep T x T probabilities (MPS): see chunked_attention.py.
# Selected with model.set_attn_implementation("bashgpt_chunked"); it takes sdpa's masks.
ALL_ATTENTION_FUNCTIONS.register(CHUNKED_ATTENTION, chunked_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(CHUNKED_ATTENTION, sdpa_mask)


class BashGPTAttention(nn.Module):
    """Causal multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, config: BashGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attn_pdrop
        self.is_causal = True  # the sdpa path gets mask=None for unpadded batches and relies on this
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.c_proj._is_residual_proj = True
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]  # (B, T)
        hidden_shape = (*input_shape, -1, self.head_dim)  # (B, T, H, D)
        q, k, v = self.c_attn(hidden_states).split(self.hidden_size, dim=-1)
        q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)

        if position_embeddings is not None:  # rope
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1)  # (B, T, C)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


class BashGPTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: BashGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = BashGPTAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = BashGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(  # the weights are recorded from the attention module (_can_record_outputs)
            self.ln_1(hidden_states),
            attention_mask=attention_mask,
            cache=cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class BashGPTPreTrainedModel(PreTrainedModel):
    config_class = BashGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BashGPTBlock"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # output_hidden_states / output_attentions: what Transformers records from these modules' outputs
    _can_record_outputs = {"hidden_states": BashGPTBlock, "attentions": BashGPTAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        # Base: normal(0, initializer_range) for Linear/Embedding, ones/zeros for norms, and the rotary
        # embedding's non-persistent inv_freq buffers recomputed (they come back empty from the meta device).
        super()._init_weights(module)
        if isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        # GPT-2's residual scaling: the projections that write into the residual stream get
        # std / sqrt(2 * n_layer). Flagged on the leaf, because Transformers does not call
        # _init_weights on parameter-less containers of custom models.
        if isinstance(module, nn.Linear) and getattr(module, "_is_residual_proj", False):
            std = self.config.initializer_range / (2 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)


class BashGPTModel(BashGPTPreTrainedModel):
    """The decoder stack without the LM head."""

    def __init__(self, config: BashGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.rotary_emb = BashGPTRotaryEmbedding(config)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([BashGPTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``use_cache`` defaults to ``config.use_cache`` in evaluation mode and to no cache in training."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache, cache = False, None  # a recomputed block would write its keys/values twice
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_seen

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        position_embeddings = None
        if self.config.position_embedding_type == "learned":
            if not torch.compiler.is_compiling() and int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence position {int(position_ids.max())} is past max_position_embeddings="
                    f"{self.config.max_position_embeddings}; use a shorter input"
                )
            hidden_states = inputs_embeds + self.wpe(position_ids)
        else:
            hidden_states = inputs_embeds
            position_embeddings = self.rotary_emb(hidden_states, position_ids)
        hidden_states = self.drop(hidden_states)

        for block in self.h:
            hidden_states = block(
                hidden_states,
                attention_mask=causal_mask,
                cache=cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states), cache=cache)


class BashGPTForCausalLM(BashGPTPreTrainedModel, GenerationMixin):
    """BashGPT with its (untied) language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}  # used only if tie_word_embeddings
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: BashGPTConfig):
        super().__init__(config)
        self.transformer = BashGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        fused_lm_loss: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (shifted inside the loss); -100 marks positions that never count.

        With ``fused_lm_loss`` (this call's choice, else ``config.fused_lm_loss``; bashgpt's trainer asks
        for it per call), training with ``labels`` runs the LM head and the loss fused in chunks and
        returns ``logits=None`` (see fused_loss.py).
        """
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,  # this forward makes the tuple, if one is asked for (can_return_tuple)
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        fused = self.config.fused_lm_loss if fused_lm_loss is None else fused_lm_loss
        fused = fused and self.training and torch.is_grad_enabled() and logits_to_keep == 0
        logits = loss = None
        if labels is not None and fused:
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, **kwargs)
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # (B, T, V)
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["BashGPTPreTrainedModel", "BashGPTModel", "BashGPTForCausalLM"]
