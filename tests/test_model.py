"""The model: presets, architecture switches, attention parity, cache, padding, save/load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import VARIANTS, small_config
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, DynamicCache, pipeline

from bashgpt import PRESETS, BashGPTConfig, BashGPTForCausalLM

GUIDE_PARAMS = {"tiny": 137e6, "medium": 371e6, "large": 1092e6, "xlarge": 1509e6}


@pytest.mark.parametrize("name", list(GUIDE_PARAMS))
def test_preset_parameter_counts_match_the_guide(name):
    with torch.device("meta"):
        model = BashGPTForCausalLM(BashGPTConfig.from_preset(name))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - GUIDE_PARAMS[name]) / GUIDE_PARAMS[name] < 0.01, n
    assert model.config.head_dim == 64


def test_nano_is_a_few_million_and_overrides_apply():
    cfg = BashGPTConfig.from_preset("nano", norm_type="rmsnorm", vocab_size=1000)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.norm_type, cfg.vocab_size) == (4, 128, "rmsnorm", 1000)
    with torch.device("meta"):
        n = sum(p.numel() for p in BashGPTForCausalLM(BashGPTConfig.from_preset("nano")).parameters())
    assert 1e6 < n < 20e6
    assert set(PRESETS) == {"nano", "tiny", "medium", "large", "xlarge"}


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: BashGPTConfig.from_preset("huge"), ["'huge'", "nano", "tiny", "medium", "large", "xlarge"]),
        (lambda: small_config(hidden_size=30, num_attention_heads=4), ["hidden_size=30", "num_attention_heads=4"]),
        (lambda: small_config(norm_type="batchnorm"), ["'batchnorm'", "layernorm", "rmsnorm"]),
        (lambda: small_config(position_embedding_type="alibi"), ["'alibi'", "learned", "rope"]),
    ],
)
def test_bad_config_is_one_clear_error(call, words):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_architecture_switches_are_recorded_in_config_json(tmp_path):
    small_config(norm_type="rmsnorm", position_embedding_type="rope").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["norm_type"] == "rmsnorm" and saved["position_embedding_type"] == "rope"
    assert saved["model_type"] == "bashgpt" and saved["tie_word_embeddings"] is False


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_forward_backward_shapes_and_loss(norm, pos):
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos))
    ids = torch.randint(0, 96, (3, 17))
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 17, 96)
    # A fresh model predicts roughly uniformly: loss near ln(vocab).
    assert abs(out.loss.item() - torch.log(torch.tensor(96.0)).item()) < 0.5
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()  # untied


def test_labels_minus_100_never_count():
    model = BashGPTForCausalLM(small_config())
    ids = torch.randint(0, 96, (2, 12))
    labels = ids.clone()
    labels[:, 6:] = -100
    full = model(ids[:, :6], labels=ids[:, :6]).loss
    masked = model(ids, labels=labels).loss
    torch.testing.assert_close(full, masked)


def test_residual_projections_get_gpt2_scaled_init():
    cfg = small_config(hidden_size=256, num_attention_heads=4, num_hidden_layers=8)
    model = BashGPTForCausalLM(cfg)
    expected = cfg.initializer_range / (2 * cfg.num_hidden_layers) ** 0.5
    block = model.transformer.h[0]
    assert abs(block.attn.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(block.mlp.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(block.mlp.c_fc.weight.std().item() - cfg.initializer_range) < 0.1 * cfg.initializer_range


def _left_padded_batch():
    ids = torch.randint(2, 96, (2, 9))
    mask = torch.ones_like(ids)
    ids[1, :4] = 0
    mask[1, :4] = 0
    return ids, mask


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_sdpa_and_eager_agree(norm, pos):
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    assert model.config._attn_implementation == "sdpa"
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        sdpa_plain = model(ids).logits
        sdpa_padded = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager_plain = model(ids).logits
        eager_padded = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(sdpa_plain, eager_plain, atol=1e-5, rtol=0)
    keep = mask.bool()
    torch.testing.assert_close(sdpa_padded[keep], eager_padded[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm, pos", VARIANTS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_generation_with_and_without_cache_is_identical(norm, pos, attn):
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    model.set_attn_implementation(attn)
    prompt = torch.randint(2, 96, (2, 5))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without_cache = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)
    assert with_cache.shape == (2, 17)


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_left_padded_row_generates_like_the_unpadded_prompt(norm, pos):
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    ids, mask = _left_padded_batch()
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    alone = model.generate(ids[1:, 4:], attention_mask=mask[1:, 4:], **kwargs)
    assert torch.equal(batch[1, 9:], alone[0, 5:])


def test_incremental_decoding_matches_full_forward():
    model = BashGPTForCausalLM(small_config(position_embedding_type="rope")).eval()
    ids = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        out = model(ids[:, :7], use_cache=True)
        cache = out.cache
        assert type(cache) is DynamicCache  # Transformers' own cache by default
        for t in range(7, 10):
            out = model(ids[:, t : t + 1], use_cache=True, cache=cache)
            assert out.cache is cache and cache.get_seq_length() == t + 1
        with pytest.warns(FutureWarning, match="past_key_values"):  # the old name still works, with Transformers' notice
            assert model(ids[:, :1], past_key_values=DynamicCache(config=model.config)).cache.get_seq_length() == 1
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    model = BashGPTForCausalLM(small_config())
    ids = torch.randint(0, 96, (2, 16))
    model.train()
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(block.gradient_checkpointing for block in model.transformer.h)
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_position_past_the_table_is_a_clear_error():
    model = BashGPTForCausalLM(small_config(max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_save_and_load_is_bit_exact(tmp_path, norm, pos):
    model = BashGPTForCausalLM(small_config(norm_type=norm, position_embedding_type=pos)).eval()
    model.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"config.json", "model.safetensors", "configuration_bashgpt.py", "modeling_bashgpt.py", "fused_loss.py",
            "chunked_attention.py"} <= set(names)  # the model's code, for trust_remote_code
    assert not {"packed_linear.py", "engine.py"} & set(names)  # the decode engine is bashgpt's, not the model's
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_bashgpt.BashGPTForCausalLM"

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is BashGPTForCausalLM
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    if pos == "rope":  # a non-persistent buffer, rebuilt on load
        assert torch.equal(model.transformer.rotary_emb.inv_freq, loaded.transformer.rotary_emb.inv_freq)
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_pipeline_text_generation_end_to_end(tmp_path, small_tokenizer):
    cfg = small_config(vocab_size=len(small_tokenizer), eos_token_id=small_tokenizer.eos_token_id,
                       pad_token_id=small_tokenizer.pad_token_id)
    BashGPTForCausalLM(cfg).save_pretrained(tmp_path)
    small_tokenizer.save_pretrained(tmp_path)
    pipe = pipeline("text-generation", model=str(tmp_path))
    out = pipe("#!/bin/bash\n", max_new_tokens=10, do_sample=False, return_full_text=True)
    assert out[0]["generated_text"].startswith("#!/bin/bash\n")
    assert len(small_tokenizer(out[0]["generated_text"])["input_ids"]) > len(small_tokenizer("#!/bin/bash\n")["input_ids"])


@pytest.mark.parametrize("norm, pos", [("layernorm", "learned"), ("rmsnorm", "rope")])
def test_pipeline_greedy_text_is_generate_with_and_without_cache(tmp_path, small_tokenizer, norm, pos):
    """The KV cache must reach the model under the name the installed Transformers passes it (5.24: ``cache``)."""
    cfg = small_config(norm_type=norm, position_embedding_type=pos, vocab_size=len(small_tokenizer),
                       eos_token_id=small_tokenizer.eos_token_id, pad_token_id=small_tokenizer.pad_token_id)
    model = BashGPTForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    small_tokenizer.save_pretrained(tmp_path)
    prompt = "#!/bin/bash\nfor f in"
    ids = small_tokenizer(prompt, return_tensors="pt")
    kwargs = dict(max_new_tokens=24, do_sample=False, min_new_tokens=24)
    with_cache = model.generate(**ids, use_cache=True, **kwargs)
    without_cache = model.generate(**ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)
    pipe = pipeline("text-generation", model=str(tmp_path))
    text = pipe(prompt, return_full_text=True, **kwargs)[0]["generated_text"]
    assert text == small_tokenizer.decode(with_cache[0], skip_special_tokens=True)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.modules["bashgpt"] = None  # bashgpt is not importable here
    try:
        import bashgpt  # noqa: F401
        raise SystemExit("bashgpt was importable")
    except ImportError:
        pass
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, DynamicCache, pipeline
    model_dir, ids_file, out_file = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    ids = load_file(ids_file)["ids"]
    with torch.no_grad():
        logits = model(ids).logits
        kwargs = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
        cached = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)
        uncached = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs)
    pipe = pipeline("text-generation", model=model_dir, trust_remote_code=True)
    text = pipe("#!/bin/sh\\n", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("#!/bin/sh"), text
    save_file({"logits": logits, "cached": cached, "uncached": uncached}, out_file)
    """
)


@pytest.mark.parametrize("norm, pos", [("layernorm", "learned"), ("rmsnorm", "rope")])
def test_remote_code_load_without_bashgpt_gives_the_same_logits(tmp_path, small_tokenizer, norm, pos):
    model_dir = tmp_path / "model"
    cfg = small_config(norm_type=norm, position_embedding_type=pos, vocab_size=len(small_tokenizer))
    model = BashGPTForCausalLM(cfg).eval()
    model.save_pretrained(model_dir)
    small_tokenizer.save_pretrained(model_dir)
    ids = torch.randint(0, len(small_tokenizer), (2, 9))
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path / "ids.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    out = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        expected = model(ids).logits
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                   do_sample=False)
    assert torch.equal(out["logits"], expected)
    assert torch.equal(out["cached"], out["uncached"]) and torch.equal(out["cached"], generated)


def test_a_normal_run_prints_no_warning(tmp_path):
    """Transformers 5.24 renamed the cache; our file must not trip its deprecation notices (nor any other)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home")}
    script = os.path.join(os.path.dirname(__file__), "normal_run_warnings.py")
    result = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", result.stdout[-3000:]


@pytest.mark.parametrize("with_items", [False, True])
def test_fused_lm_loss_matches_the_standard_loss_and_gradients(with_items):
    torch.manual_seed(3)
    model = BashGPTForCausalLM(small_config(vocab_size=300))
    ids = torch.randint(0, 300, (2, 40))
    labels = ids.clone()
    labels[0, :7] = -100
    kwargs = {"num_items_in_batch": torch.tensor(60)} if with_items else {}
    standard = model(ids, labels=labels, **kwargs)
    standard.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.config.fused_lm_loss = True
    fused = model(ids, labels=labels, **kwargs)
    assert fused.logits is None
    fused.loss.backward()
    torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    model.eval()  # evaluation and generation still see logits
    assert model(ids, labels=labels).logits.shape == (2, 40, 300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_is_the_same_for_any_chunk_and_group_size(dtype):
    """Rows are worked on in chunks within groups (one matrix product per group): any sizes, including ones that do
    not divide the rows, give the loss and gradients of the full logits; under bf16 autocast within bf16 rounding."""
    from bashgpt.fused_loss import chunked_causal_lm_loss

    torch.manual_seed(4)
    hidden = torch.randn(3, 50, 16, requires_grad=True)
    weight = torch.randn(70, 16, requires_grad=True)
    labels = torch.randint(0, 70, (3, 50))
    labels[0, :9] = -100
    results = []
    for chunk, group in ((7, 7), (7, 30), (64, 64), (5, 1000), (1000, 1000)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=chunk, group_size=group)
        gh, gw = torch.autograd.grad(loss, (hidden, weight))
        assert gh.dtype == gw.dtype == torch.float32
        results.append((loss, gh, gw))
    tol = {} if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    logits = hidden @ weight.t()
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 70), labels[:, 1:].reshape(-1))
    ref_gh, ref_gw = torch.autograd.grad(reference, (hidden, weight))
    for loss, gh, gw in results:
        torch.testing.assert_close(loss, reference, **tol)
        torch.testing.assert_close(gh, ref_gh, **tol)
        torch.testing.assert_close(gw, ref_gw, **tol)
