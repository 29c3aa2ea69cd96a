"""What a Hugging Face user reaches for works on BashGPT as on any stock Transformers causal LM: hidden states and
attentions, return_dict, every generate mode, static caches under torch.compile, torch.export, RoPE scaling through
rope_parameters, a tensor-parallel plan."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VARIANTS, small_config
from transformers import DynamicCache, StaticCache

from bashgpt import BashGPTConfig, BashGPTForCausalLM

GREEDY = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)


def model_for(**overrides) -> BashGPTForCausalLM:
    torch.manual_seed(0)
    return BashGPTForCausalLM(small_config(**overrides)).eval()


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_hidden_states_and_attentions_come_back_from_forward(norm, pos):
    model = model_for(norm_type=norm, position_embedding_type=pos)
    layers = model.config.num_hidden_layers
    ids = torch.randint(2, 96, (2, 7))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == layers + 1 and out.attentions is None
    assert torch.equal(out.hidden_states[0], model.transformer.wte(ids) + (
        model.transformer.wpe(torch.arange(7))[None] if pos == "learned" else 0))  # the embeddings come first
    assert torch.equal(out.hidden_states[-1], model.transformer(ids).last_hidden_state)  # after the final norm
    model.set_attn_implementation("eager")
    eager = model(ids, output_attentions=True, output_hidden_states=True)
    heads = model.config.num_attention_heads
    assert len(eager.attentions) == layers and eager.attentions[0].shape == (2, heads, 7, 7)
    torch.testing.assert_close(eager.attentions[0].sum(-1), torch.ones(2, heads, 7))  # rows of probabilities
    assert torch.all(eager.attentions[0].triu(1) == 0)  # causal
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(model(ids).logits, eager.logits, atol=1e-5, rtol=0)


def test_output_attentions_under_sdpa_is_said_not_silent(caplog):
    from transformers.utils import logging as hf_logging

    model = model_for()
    logging.Logger.warning_once.cache_clear()  # Transformers says it once per process: let it say it here
    verbosity = hf_logging.get_verbosity()  # bashgpt's CLI, run by earlier tests, turns Transformers' warnings off
    hf_logging.set_verbosity_warning()
    try:
        with caplog.at_level(logging.WARNING):
            out = model(torch.randint(2, 96, (1, 5)), output_attentions=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    assert not out.attentions and "output_attentions" in caplog.text  # Transformers' own notice


def test_return_dict_false_gives_a_tuple_by_argument_and_by_config():
    model = model_for()
    ids = torch.randint(2, 96, (1, 6))
    as_tuple = model(ids, labels=ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], model(ids).logits)
    assert isinstance(model.transformer(ids, return_dict=False), tuple)
    model.config.return_dict = False
    assert isinstance(model(ids), tuple)


def test_no_cache_is_built_in_training_and_transformers_own_cache_in_evaluation():
    model = model_for()
    ids = torch.randint(2, 96, (2, 6))
    assert model.config.use_cache
    model.train()
    assert model(ids, labels=ids).cache is None
    model.eval()
    assert type(model(ids).cache) is DynamicCache


def test_generate_returns_scores_logits_hidden_states_and_attentions():
    model = model_for()
    model.set_attn_implementation("eager")
    out = model.generate(torch.randint(2, 96, (2, 5)), return_dict_in_generate=True, output_scores=True,
                         output_logits=True, output_hidden_states=True, output_attentions=True, **GREEDY)
    assert len(out.scores) == len(out.logits) == len(out.hidden_states) == len(out.attentions) == 8
    assert len(out.hidden_states[0]) == model.config.num_hidden_layers + 1
    assert out.attentions[-1][0].shape[-1] == 5 + 7  # the last step attends to the prompt and 7 new tokens


def test_every_decoding_mode_runs():
    model = model_for()
    draft = model_for(num_hidden_layers=1)
    ids = torch.randint(2, 96, (1, 6))
    greedy = model.generate(ids, **GREEDY)
    assert torch.equal(model.generate(ids, assistant_model=draft, **GREEDY), greedy)  # assisted: the same tokens
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=3, **GREEDY), greedy)
    model.set_attn_implementation("eager")
    draft.set_attn_implementation("eager")
    out = model.generate(ids, assistant_model=draft, return_dict_in_generate=True, output_hidden_states=True,
                         output_attentions=True, **GREEDY)
    assert torch.equal(out.sequences, greedy) and out.hidden_states and out.attentions
    beams = model.generate(ids, num_beams=3, num_return_sequences=2, **GREEDY)
    assert beams.shape == (2, 14)
    torch.manual_seed(0)
    assert model.generate(ids, num_beams=2, do_sample=True, max_new_tokens=8, pad_token_id=0).shape == (1, 14)


@pytest.mark.parametrize("norm, pos", VARIANTS)
def test_left_padding_and_inputs_embeds_generate_what_the_plain_prompt_does(norm, pos):
    model = model_for(norm_type=norm, position_embedding_type=pos)
    ids = torch.randint(2, 96, (1, 6))
    alone = model.generate(ids, **GREEDY)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    batch = model.generate(torch.cat([padded, torch.randint(2, 96, (1, 9))]), attention_mask=torch.cat(
        [mask, torch.ones(1, 9, dtype=torch.long)]), **GREEDY)
    assert torch.equal(batch[0, 3:], alone[0])
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), **GREEDY)
    assert torch.equal(from_embeds[0], alone[0, 6:])  # only the new tokens, as for any model


def test_compiled_static_cache_generate_matches_eager_without_recompiling_for_a_shorter_prompt():
    torch._dynamo.reset()
    model = model_for()
    ids = torch.randint(2, 96, (1, 8))
    eager = model.generate(ids, cache_implementation="static", **GREEDY)
    compiled = BashGPTForCausalLM(model.config).eval()
    compiled.load_state_dict(model.state_dict())
    compiled.forward = torch.compile(compiled.forward, fullgraph=True, dynamic=True)
    static = dict(cache_implementation="static", **GREEDY)
    assert torch.equal(compiled.generate(ids, **static), eager)  # compiles the prefill and the one-token step
    with torch._dynamo.config.patch(error_on_recompile=True):
        shorter = compiled.generate(ids[:, :5], **static)
        compiled.generate(ids[:, 3:], **static)  # same length again
    assert torch.equal(shorter, model.generate(ids[:, :5], cache_implementation="static", **GREEDY))


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_torch_export_of_a_cached_forward_gives_the_eager_outputs(attention):
    """Exactly with eager attention; with sdpa, which export decomposes into plain ops, to float rounding."""
    model = model_for(position_embedding_type="rope")
    model.set_attn_implementation(attention)
    ids = torch.randint(2, 96, (1, 6))

    class Step(torch.nn.Module):
        """One forward over a static cache that holds the first 4 tokens."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, position_ids):
            cache = StaticCache(config=self.lm.config, max_cache_len=16)
            self.lm(input_ids[:, :4], position_ids=position_ids[:, :4], cache=cache)
            return self.lm(input_ids[:, 4:], position_ids=position_ids[:, 4:], cache=cache).logits

    step = Step(model).eval()
    positions = torch.arange(6)[None]
    with torch.no_grad():
        eager = step(ids, positions)
        exported = torch.export.export(step, (ids, positions), strict=False)
        if attention == "eager":
            assert torch.equal(exported.module()(ids, positions), eager)
        torch.testing.assert_close(exported.module()(ids, positions), eager, atol=1e-6, rtol=0)
        torch.testing.assert_close(eager[:, -1], model(ids).logits[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_rope_parameters_change_the_positions_as_transformers_computes_them(rope, tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    plain = model_for(position_embedding_type="rope")
    scaled = model_for(position_embedding_type="rope", rope_parameters=dict(rope))
    scaled.load_state_dict(plain.state_dict())
    ids = torch.randint(2, 96, (1, 80))  # past the 64 positions dynamic starts from, so it rescales too
    assert not torch.allclose(scaled(ids).logits, plain(ids).logits)
    expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](scaled.config, seq_len=80)
    if rope["rope_type"] != "dynamic":  # dynamic recomputes from the positions it has seen
        torch.testing.assert_close(scaled.transformer.rotary_emb.inv_freq, expected)
    scaled.save_pretrained(tmp_path)
    loaded = BashGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.rope_parameters["rope_type"] == rope["rope_type"]
    assert torch.equal(loaded(ids).logits, scaled(ids).logits)


def test_an_old_rope_theta_is_read_into_rope_parameters():
    saved = small_config(position_embedding_type="rope").to_dict()
    del saved["rope_parameters"]  # a config.json written before rope_parameters
    cfg = BashGPTConfig(**saved | {"rope_theta": 500.0})
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}


def test_a_learned_position_model_carries_no_rope_parameters(tmp_path):
    learned = small_config()
    assert learned.rope_parameters is None and learned.to_dict()["rope_parameters"] is None
    learned.save_pretrained(tmp_path)
    assert BashGPTConfig.from_pretrained(tmp_path).rope_parameters is None
    old = learned.to_dict() | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}  # saved before
    assert BashGPTConfig(**old).rope_parameters is None
    assert small_config(position_embedding_type="rope").rope_parameters == {"rope_type": "default",
                                                                            "rope_theta": 10000.0}


@pytest.mark.parametrize("rope, words", [
    ({"rope_type": "proportional", "factor": 2.0}, "rope_type='proportional' is not supported"),
    ({"rope_type": "linear"}, "factor"),
])
def test_unsupported_rope_parameters_are_refused(rope, words):
    with pytest.raises((ValueError, KeyError), match=words):
        small_config(position_embedding_type="rope", rope_parameters=rope)
    with pytest.raises(ValueError, match="needs position_embedding_type='rope'"):
        small_config(rope_parameters={"rope_type": "linear", "factor": 2.0})


def test_tensor_parallel_plan_names_real_weights():
    model = model_for()
    names = {name for name, _ in model.named_modules()}
    plan = {**{f"transformer.{k}": v for k, v in model.config.base_model_tp_plan.items()},
            **BashGPTForCausalLM._tp_plan}
    for pattern in plan:
        assert any(name == pattern.replace("*", "0") for name in names), pattern
    assert plan["transformer.wte"] == "embedding_rowwise" and plan["lm_head"] == "colwise_gather_output"


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
def test_tensor_parallel_loading_shards_the_embedding_with_its_head_and_computes_the_same_logits(tmp_path, tied):
    """``from_pretrained(tp_plan="auto")`` on 2 CPU processes (gloo): the embedding split by vocabulary rows as
    Llama's is, a tied head holding the same rows, q/k/v computed whole (a plain column split of the fused layer
    would cut across q and k), and the logits and greedy tokens of the unsplit model."""
    folder = tmp_path / "model"
    model_for(tie_word_embeddings=tied).save_pretrained(folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve().parent / "tp_worker.py"), str(folder), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world"] == 2 and report["max_diff"] < 1e-4 and report["same_greedy"], report
        assert report["wte"] == [48, 32] and report["lm_head"] == [48, 32] and report["tied"] == tied, report
        assert report["c_attn"] == [48, 32], report  # 3 x 32 outputs, split in two, gathered whole for attention
