"""Export: the stock GPT-2 folder (what other runtimes read in it) and the GGUF file for llama.cpp.

Tests marked ``runtime`` run llama.cpp itself through llama-cpp-python, which builds from source and is not in
the dev extra: ``pip install llama-cpp-python`` and then ``pytest -m runtime tests/test_export.py``.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXTS

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.data.tokenization import default_tokenizer_dir
from bashgpt.model_folder import load_model_and_tokenizer, load_tokenizer, save_model_folder

BASH = [
    "#!/bin/bash\n# Delete log files older than 30 days\nfind \"${1:-.}\" -name '*.log' -mtime +30 -delete\n",
    "for f in *.txt; do\n\twc -l \"$f\"   # count   lines\ndone<|endoftext|>Once upon a time, 3 cats ran.",
    "  echo 'héllo wörld' | tr a-z A-Z && printf '%s\\n' \"$@\"\r\n",
]


def model_folder(tmp_path, tokenizer, name="m", **overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = BashGPTForCausalLM(BashGPTConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():  # biases and norms away from their 0/1 start, so a mislaid one shows in the logits
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return save_model_folder(model, tokenizer, tmp_path / name)


@pytest.fixture
def folder(tmp_path, small_tokenizer):
    return model_folder(tmp_path, small_tokenizer)


def logits_of(folder, ids):
    model, _ = load_model_and_tokenizer(folder)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


# --- the stock GPT-2 folder ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ff", [None, 48])
def test_gpt2_folder_matches_logits_and_says_what_runtimes_read(tmp_path, small_tokenizer, ff):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    src = model_folder(tmp_path, small_tokenizer, intermediate_size=ff)
    assert main(["export", str(src), "--format", "gpt2", "--out", str(tmp_path / "gpt2")]) == 0
    out = tmp_path / "gpt2"
    assert not list(out.glob("*.py"))
    config = json.loads((out / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 64  # llama.cpp's converter reads n_ctx
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] in ("GPT2Tokenizer", "GPT2TokenizerFast")  # classes Transformers 4.x has
    assert tok_config["model_max_length"] == 64

    gpt2 = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(gpt2, GPT2LMHeadModel)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in BASH:
        ids = tokenizer(text).input_ids
        assert ids == small_tokenizer(text).input_ids and tokenizer.decode(ids) == text
    long = tokenizer(" ".join(BASH) * 20, truncation=True).input_ids
    assert len(long) == 64  # truncation stops at the positions the model has
    ids = small_tokenizer(BASH[0]).input_ids[:60]
    with torch.no_grad():
        torch.testing.assert_close(gpt2(torch.tensor([ids])).logits[0], logits_of(src, ids), atol=1e-5, rtol=0)


def test_gpt2_export_ignores_a_half_written_folder_left_by_a_crash(tmp_path, folder):
    leftover = tmp_path / "gpt2.tmp"
    leftover.mkdir()
    (leftover / "modeling_bashgpt.py").write_text("# from an earlier, interrupted export\n")
    (leftover / "pytorch_model.bin").write_bytes(b"stale")
    assert main(["export", str(folder), "--out", str(tmp_path / "gpt2")]) == 0
    assert sorted(p.name for p in (tmp_path / "gpt2").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not leftover.exists()


@pytest.mark.parametrize("overrides, message", [
    ({"position_embedding_type": "rope"}, "no stock equivalent"),
    ({"norm_type": "rmsnorm"}, "no stock equivalent"),
    ({"hidden_act": "silu"}, "tanh GELU"),
])
@pytest.mark.parametrize("fmt", ["gpt2", "gguf"])
def test_export_refuses_what_gpt2_runtimes_cannot_compute(tmp_path, small_tokenizer, capsys, overrides, message, fmt):
    src = model_folder(tmp_path, small_tokenizer, **overrides)
    out = tmp_path / ("x.gguf" if fmt == "gguf" else "x")
    assert main(["export", str(src), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("x*"))


# --- GGUF --------------------------------------------------------------------------------------------------------

def read_gguf(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0].name == "ARRAY":
            fields[name] = [field.contents(i) for i in range(len(field.data))]
        else:
            fields[name] = field.contents()
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    return fields, tensors


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_holds_the_model_and_its_tokenizer(tmp_path, small_tokenizer, dtype):
    padded = len(small_tokenizer) + 20  # a new model rounds its vocabulary up to a multiple of 64
    src = model_folder(tmp_path, small_tokenizer, intermediate_size=48, vocab_size=padded)
    out = tmp_path / "model.gguf"
    assert main(["export", str(src), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.context_length"], fields["gpt2.embedding_length"], fields["gpt2.block_count"],
            fields["gpt2.attention.head_count"]) == (64, 32, 2, 2)
    assert fields["gpt2.feed_forward_length"] == 48  # the config's, not llama.cpp converter's 4 x hidden
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"

    spec = json.loads(small_tokenizer.backend_tokenizer.to_str())
    vocab = small_tokenizer.get_vocab()
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get) + [f"<|unused_{i}|>" for i in
                                                                            range(len(vocab), padded)]
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    eos, pad = small_tokenizer.eos_token_id, small_tokenizer.pad_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == eos and fields["tokenizer.ggml.padding_token_id"] == pad
    assert fields["tokenizer.ggml.add_bos_token"] is False
    types = fields["tokenizer.ggml.token_type"]
    assert types[eos] == types[pad] == 3 and types.count(3) == 2  # CONTROL: only the special tokens
    assert types[len(vocab):] == [5] * 20  # UNUSED: the padding rows

    model, _ = load_model_and_tokenizer(src)
    state = model.state_dict()
    assert len(tensors) == len(state)
    pairs = [("token_embd.weight", "transformer.wte.weight"), ("blk.1.ffn_up.weight", "transformer.h.1.mlp.c_fc.weight"),
             ("blk.0.attn_qkv.bias", "transformer.h.0.attn.c_attn.bias"), ("output.weight", "lm_head.weight"),
             ("output_norm.bias", "transformer.ln_f.bias")]
    for gguf_name, ours in pairs:
        got = tensors[gguf_name].float()
        if dtype == "f16" and got.ndim == 2:
            torch.testing.assert_close(got, state[ours].half().float(), atol=0, rtol=0)
        else:
            assert torch.equal(got, state[ours])
    assert tensors["blk.0.ffn_norm.weight"].dtype == torch.float32  # 1-D tensors stay fp32 in either dtype
    assert not list(tmp_path.glob("*.partial"))


def test_gguf_is_replaced_whole_and_a_failed_write_leaves_the_old_file(tmp_path, folder, monkeypatch):
    import gguf

    out = tmp_path / "model.gguf"
    assert main(["export", str(folder), "--format", "gguf", "--out", str(out)]) == 0
    before = out.read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError):
        main(["export", str(folder), "--format", "gguf", "--out", str(out)])
    assert out.read_bytes() == before and not list(tmp_path.glob("*.partial"))


def test_gguf_refuses_a_tokenizer_llama_cpp_would_split_differently(tmp_path, small_tokenizer, capsys):
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = small_tokenizer.backend_tokenizer.__class__.from_str(small_tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    other = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=small_tokenizer.eos_token,
                                    pad_token=small_tokenizer.pad_token)
    src = model_folder(tmp_path, other)
    assert main(["export", str(src), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    assert "GPT-2's split" in capsys.readouterr().err and not (tmp_path / "m.gguf").exists()


def test_gguf_without_the_package_names_the_extra(tmp_path, folder, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("No module named 'gguf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    assert main(["export", str(folder), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    assert "pip install 'bashgpt[gguf]'" in capsys.readouterr().err


# --- llama.cpp itself (marked: llama-cpp-python builds from source) ----------------------------------------------

def llama(path, n_ctx=64):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2)


def detokenize(runtime, ids: list[int]) -> str:
    """llama.cpp's own detokenizer, with room for every piece. (llama-cpp-python's ``Llama.detokenize`` gives each
    token 32 bytes and cuts longer pieces short: the shipped vocabulary has 103 such tokens, runs of '-' or '#'.)"""
    import ctypes

    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(runtime.model)
    text = ctypes.create_string_buffer(64 * len(ids) + 64)
    n = llama_cpp.llama_detokenize(vocab, (llama_cpp.llama_token * len(ids))(*ids), len(ids), text, len(text),
                                   False, True)
    assert n >= 0
    return text.raw[:n].decode()


@pytest.mark.runtime
@pytest.mark.parametrize("dtype, atol", [("f32", 5e-5), ("f16", 1e-3)])  # seen: 9e-6 and 2e-4
@pytest.mark.parametrize("ff", [None, 48])
def test_llama_cpp_runs_the_gguf_as_transformers_runs_the_model(tmp_path, small_tokenizer, dtype, atol, ff):
    src = model_folder(tmp_path, small_tokenizer, intermediate_size=ff, vocab_size=len(small_tokenizer) + 20)
    out = tmp_path / "model.gguf"
    assert main(["export", str(src), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    runtime = llama(out)
    ids = small_tokenizer(BASH[0]).input_ids[:40]
    runtime.eval(ids)
    torch.testing.assert_close(torch.tensor(runtime.scores[: len(ids)]), logits_of(src, ids), atol=atol, rtol=0)
    if dtype == "f32":  # greedy decoding through llama.cpp's own cache: the tokens Transformers' generate() picks
        runtime.reset()
        theirs = []
        for token in runtime.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            theirs.append(token)
            if len(theirs) == 20:
                break
        model, _ = load_model_and_tokenizer(src)
        ours = model.generate(torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
        assert theirs == ours[0, len(ids):].tolist()


@pytest.mark.runtime
@pytest.mark.parametrize("shipped", [False, True], ids=["small", "shipped"])
def test_llama_cpp_tokenizes_as_our_tokenizer_does(tmp_path, small_tokenizer, shipped):
    tokenizer = load_tokenizer(default_tokenizer_dir()) if shipped else small_tokenizer
    out = tmp_path / "model.gguf"
    src = model_folder(tmp_path, tokenizer, max_position_embeddings=512)
    assert main(["export", str(src), "--format", "gguf", "--out", str(out)]) == 0
    runtime = llama(out, n_ctx=512)
    for text in BASH + SAMPLE_TEXTS + [Path(__file__).read_text()[:3000]]:
        ours = tokenizer(text).input_ids
        theirs = runtime.tokenize(text.encode(), add_bos=False, special=True)
        assert theirs == ours, text
        assert detokenize(runtime, theirs) == text
    assert runtime.token_eos() == tokenizer.eos_token_id
    assert runtime.token_bos() == tokenizer.bos_token_id
