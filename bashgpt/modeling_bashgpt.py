"""BashGPT: a GPT-2-style decoder-only language model, written the Transformers way.

Read top to bottom: norms -> rotary embedding -> MLP -> attention -> block -> base
model -> causal-LM head. Weight names follow GPT-2 (``transformer.wte``, ``h.N.attn.c_attn``,
``mlp.c_fc`` ...), so the default architecture maps one to one onto ``GPT2LMHeadModel``.

This file is copied beside the weights by ``save_pretrained`` so that a folder loads with
``trust_remote_code=True`` where bashgpt is not installed: it imports only torch,
transformers and its siblings (configuration, fused loss, packed linears, KV cache, decode loop;
single-level relative imports).
"""

import inspect
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
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep

from .chunked_attention import NAME as CHUNKED_ATTENTION
from .chunked_attention import chunked_attention_forward
from .configuration_bashgpt import BashGPTConfig
from .decode_loop import applies as decode_loop_applies
from .decode_loop import decode
from .fused_loss import chunked_causal_lm_loss
from .kv_cache import GrowingCache
from .packed_linear import linears_packed

# Transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: the forward argument that
# `generate()` passes, the field of the model outputs and the keyword of `create_causal_mask`. This
# file runs under whichever release of our range (5.23 and newer) the user has, so it takes
# the cache under either name and speaks to the library in the names the installed release declares.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def output_cache(outputs) -> Cache | None:
    """The KV cache a model output carries, whatever the installed Transformers calls the field."""
    return getattr(outputs, CACHE_FIELD)


def make_norm(config: BashGPTConfig) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (LLaMA), as the config says."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class BashGPTRotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings, computed from position ids."""

    def __init__(self, config: BashGPTConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: BashGPTConfig) -> torch.Tensor:
        dim = config.head_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


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
    """Plain softmax attention; q, k, v are (B, H, T, D), the mask is additive. Returns (B, T, H, D)."""
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
        attn_output, _ = self.attn(
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
    _skip_keys_device_placement = ["cache", "past_key_values"]  # both names of the KV cache
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        # Base: normal(0, initializer_range) for Linear/Embedding, ones/zeros for norms.
        super()._init_weights(module)
        if isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        # GPT-2's residual scaling: the projections that write into the residual stream get
        # std / sqrt(2 * n_layer). Flagged on the leaf, because Transformers does not call
        # _init_weights on parameter-less containers of custom models.
        if isinstance(module, nn.Linear) and getattr(module, "_is_residual_proj", False):
            std = self.config.initializer_range / (2 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
        # Non-persistent buffers come back as garbage from the meta device: recompute.
        if isinstance(module, BashGPTRotaryEmbedding):
            init.copy_(module.inv_freq, BashGPTRotaryEmbedding.compute_inv_freq(module.config))


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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``cache`` is the KV cache (``past_key_values``, its name before Transformers 5.24, is accepted too)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = past_key_values if cache is None else cache
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache, cache = False, None  # a recomputed block would write its keys/values twice
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if use_cache and cache is None:
            cache = GrowingCache(self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_seen

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_MASK_CACHE_ARG: cache},
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
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states), **{CACHE_FIELD: cache})


class BashGPTForCausalLM(BashGPTPreTrainedModel, GenerationMixin):
    """BashGPT with its (untied) language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}  # used only if tie_word_embeddings

    def __init__(self, config: BashGPTConfig):
        super().__init__(config)
        self.transformer = BashGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

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
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (shifted inside the loss); -100 marks positions that never count.

        ``cache`` is the KV cache (``past_key_values`` is its name before Transformers 5.24; either works).
        With ``fused_lm_loss`` (this call's choice, else ``config.fused_lm_loss``; bashgpt's trainer asks
        for it per call), training with ``labels`` runs the LM head and the loss fused in chunks and
        returns ``logits=None`` (see fused_loss.py).
        """
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        returned_cache = {CACHE_FIELD: output_cache(outputs)}
        fused = self.config.fused_lm_loss if fused_lm_loss is None else fused_lm_loss
        fused = fused and self.training and torch.is_grad_enabled() and logits_to_keep == 0
        if labels is not None and fused:
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, **kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=None, **returned_cache)
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **returned_cache)

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """``GenerationMixin.generate`` with three changes that leave greedy tokens as they were: on CPU the
        linear layers of one-token steps run on oneDNN-packed copies of their weights
        (packed_linear.py), which stream faster; the default KV cache grows in place instead of
        being copied at every token (kv_cache.py); greedy search and sampling run a lean loop
        (``_sample``, decode_loop.py). ``pipeline("text-generation")`` calls this too."""
        with linears_packed(self):
            return super().generate(*args, **kwargs)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Where ``generate`` builds its default ``DynamicCache``, use a ``GrowingCache`` (same values, no
        per-token copy); a cache the caller passed, or another ``cache_implementation``, stays."""
        given = model_kwargs.get(CACHE_FIELD)  # generate's name for the cache is the output field's
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if given is None and type(model_kwargs.get(CACHE_FIELD)) is DynamicCache:
            model_kwargs[CACHE_FIELD] = GrowingCache(self.config)

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                streamer=None, **model_kwargs):
        """Greedy search and sampling, the decoding ``generate`` picks for ``num_beams=1``: the lean loop of
        decode_loop.py where it applies (same greedy tokens, top-k sampling among the k candidates),
        Transformers' own loop otherwise (returned scores, static caches, ...)."""
        if not decode_loop_applies(generation_config, synced_gpus, model_kwargs, model_kwargs.get(CACHE_FIELD)):
            return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config,
                                   synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
        return decode(self, input_ids, logits_processor, stopping_criteria, generation_config, streamer,
                      model_kwargs, CACHE_FIELD)


__all__ = ["BashGPTPreTrainedModel", "BashGPTModel", "BashGPTForCausalLM", "output_cache"]
