"""Syntax-guarded generation: bash's three verdicts, the guard's take-backs, and the HF objects."""

import json

import pytest
import torch
from transformers import LogitsProcessorList, pipeline

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.data.tokenization import default_tokenizer_dir
from bashgpt.inference.generate import generate
from bashgpt.inference.syntax_guard import (
    BROKEN,
    COMPLETE,
    OPEN_QUOTE,
    OPEN_STRING,
    UNFINISHED,
    EndOnlyWhenParses,
    LineChecker,
    ScriptGuard,
    guarded_generate,
)
from bashgpt.model_folder import load_tokenizer, save_model_folder
from bashgpt.sampling import SamplingOptions
from bashgpt.shellcheck import bash_parse

PROMPT = "#!/bin/bash\n"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(default_tokenizer_dir())


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def nano(tok, favour: dict[str, float] | None = None, eos: float | None = None):
    """A random nano model; with ``favour``, its next-token logits no longer depend on the input: the named
    tokens get 10 + the given logits and the rest 0, so that they take nearly all the mass of a fixed
    distribution to sample from."""
    torch.manual_seed(0)
    cfg = BashGPTConfig.from_preset("nano", max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
    model = BashGPTForCausalLM(cfg).eval()
    if favour is not None or eos is not None:
        with torch.no_grad():
            model.lm_head.weight.zero_()
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.fill_(1.0)
            for text, logit in (favour or {}).items():
                (token,) = ids_of(tok, text)
                model.lm_head.weight[token] = (10 + logit) / cfg.hidden_size
            if eos is not None:
                model.lm_head.weight[tok.eos_token_id] = (10 + eos) / cfg.hidden_size
    return model


def test_bash_tells_unfinished_from_broken():
    unfinished = ["if true; then\n  echo a\n", "for f in *; do\n", "echo \"abc\n", "cat <<EOF\nhello\n",
                  "f() {\n", "case $x in\n  a) echo;;\n"]
    broken = ["echo a\nfi\n", "if true; then\nfi\n", "echo a\ndone\n", "x=$(\n)\n)\n", "esac\n"]
    for text in unfinished:
        r = bash_parse(PROMPT + text)
        assert not r.ok and r.unfinished, text
    for text in broken:
        r = bash_parse(PROMPT + text)
        assert not r.ok and not r.unfinished, text
    assert bash_parse(PROMPT + "if true; then\n  echo a\nfi\n").ok


def feed(guard, tok, ids, text):
    """Append ``text``'s tokens one by one; the guard's answer after the last one."""
    answer = None
    for token in ids_of(tok, text):
        ids.append(token)
        answer = guard.after_token(list(ids))
    return answer


def test_guard_takes_back_broken_lines_then_backtracks(tok):
    checker = LineChecker.for_tokenizer(tok)
    ids = ids_of(tok, PROMPT)
    guard = ScriptGuard.for_prompt(checker, ids, max_retries=2)
    assert guard.marks == [(len(ids), COMPLETE)] and not guard.may_end(len(ids))  # nothing written yet
    assert feed(guard, tok, ids, "if true; then\n") is None
    opened = len(ids)
    assert guard.marks[-1] == (opened, UNFINISHED) and not guard.may_end(opened)  # no end inside an if
    assert feed(guard, tok, ids, "  echo a\n") is None
    body = len(ids)
    for _ in range(2):  # a stray "done" is taken back to the end of the line before it
        assert feed(guard, tok, ids, "done\n") == body
        del ids[body:]
        assert guard.banned[body] == {ids_of(tok, "done")[0]}
    assert feed(guard, tok, ids, "done\n") == opened  # third failure: the line before is taken back too
    del ids[opened:]
    assert guard.marks[-1][0] == opened and guard.rollbacks == 3
    assert feed(guard, tok, ids, "  echo b\nfi\n") is None
    assert guard.may_end(len(ids)) and guard.last_complete() == len(ids)
    scores = torch.zeros(len(tok))
    guard.restrict(opened, scores, tok.eos_token_id)  # end of text banned inside the if, "done" banned at body
    assert scores[tok.eos_token_id] == -float("inf")


def test_a_line_may_not_leave_a_double_quote_backquote_or_expansion_open(tok):
    checker = LineChecker.for_tokenizer(tok)
    start = ids_of(tok, PROMPT)
    for opened in ('echo "abc\n', "x=`date\n", "echo ${HOME\n"):
        ids = list(start)
        guard = ScriptGuard.for_prompt(checker, ids)
        assert feed(guard, tok, ids, opened) == len(start), opened  # taken back like a broken line
    for spans, verdict in (("awk '{\n", OPEN_QUOTE), ("x=$(date \\\n", UNFINISHED), ("if true; then\n", UNFINISHED)):
        ids = list(start)  # these may go on over lines
        guard = ScriptGuard.for_prompt(checker, ids)
        assert feed(guard, tok, ids, spans) is None and guard.marks[-1][1] == verdict, spans
    ids = ids_of(tok, PROMPT + 'echo "usage:\n')  # a string the prompt opened may go on, and close
    guard = ScriptGuard.for_prompt(checker, ids)
    assert guard.marks[-1][1] == OPEN_STRING and guard.active
    assert feed(guard, tok, ids, "  -h  help\n") is None and feed(guard, tok, ids, 'end"\n') is None
    assert guard.marks[-1] == (len(ids), COMPLETE)
    ids = list(start)  # a single-quoted string may span 2 line ends here; at the third, its first line is redone
    guard = ScriptGuard.for_prompt(checker, ids, max_open_lines=2)
    assert feed(guard, tok, ids, "echo a\n") is None
    before = len(ids)
    assert feed(guard, tok, ids, "awk '{\n") is None and feed(guard, tok, ids, "print\n") is None
    assert guard.marks[-1][1] == OPEN_QUOTE
    assert feed(guard, tok, ids, "x\n") == before and guard.marks[-1][0] == before
    assert guard.banned[before] == {ids_of(tok, "awk")[0]}
    del ids[before:]
    assert feed(guard, tok, ids, "awk '{\n") is None and feed(guard, tok, ids, "print }'\n") is None
    assert guard.marks[-1] == (len(ids), COMPLETE)
    pipeline_guard = ScriptGuard.for_prompt(checker, list(start), can_take_back=False)  # nothing to take back:
    ids = list(start)
    assert feed(pipeline_guard, tok, ids, 'echo "abc\n') is None and pipeline_guard.active  # end of text waits


def test_a_broken_prompt_turns_the_guard_off(tok):
    checker = LineChecker.for_tokenizer(tok)
    ids = ids_of(tok, PROMPT + "fi\n")
    guard = ScriptGuard.for_prompt(checker, ids)
    assert guard.marks[-1][1] == BROKEN and not guard.active and guard.may_end(len(ids))
    assert feed(guard, tok, ids, "done\n") is None


def test_guarded_generate_takes_back_broken_lines_and_returns_scripts_that_parse(tok):
    # a fixed distribution over a few words and line ends: stray closers come often, unfinished ifs too
    model = nano(tok, {"fi": 3.0, "done": 3.0, "echo": 3.5, "if": 2.5, " true": 2.0, ";": 2.0, " then": 2.0, "\n": 3.5},
                 eos=2.0)
    config = SamplingOptions(max_new_tokens=40, temperature=1.0, top_p=1.0, top_k=0,
                             repetition_penalty=1.0).generation_config(model, tok)
    prompt = torch.tensor([ids_of(tok, PROMPT)])
    rollbacks, raw_broken = 0, 0
    for seed in range(6):
        torch.manual_seed(seed)
        result, = guarded_generate(model, tok, prompt, config)
        script = tok.decode(result.ids)
        assert script.startswith(PROMPT) and bash_parse(script).ok, script
        assert len(result.ids) - prompt.shape[1] <= 40
        rollbacks += result.rollbacks
        torch.manual_seed(seed)
        raw_broken += not bash_parse(tok.decode(model.generate(prompt, generation_config=config)[0],
                                                skip_special_tokens=True)).ok
    assert rollbacks > 0 and raw_broken > 0  # the same sampling unguarded writes scripts that do not parse


def test_a_prompts_guarded_samples_share_one_prefill_and_take_lines_back_inside_one_generate(tok, monkeypatch):
    model = nano(tok, {"fi": 3.0, "done": 3.0, "echo": 3.5, "\n": 3.5}, eos=1.0)
    config = SamplingOptions(max_new_tokens=30, temperature=1.0, top_p=1.0, top_k=0,
                             repetition_penalty=1.0).generation_config(model, tok)
    prompt = torch.tensor([ids_of(tok, PROMPT + "# Say hello to the world, then stop.\n")])
    fed, generate_calls = [], []
    model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: generate_calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    results = guarded_generate(model, tok, prompt, config, num_samples=3)
    assert len(results) == 3 and sum(r.rollbacks for r in results) > 0
    assert [n for n in fed if n > 1] == [prompt.shape[1] - 1]  # the prompt once; every other forward is one token
    assert len(generate_calls) == 3  # one per sample, however many lines were taken back
    for r in results:
        assert r.ids[:prompt.shape[1]] == prompt[0].tolist() and bash_parse(tok.decode(r.ids)).ok


def test_end_of_text_only_where_the_script_parses_in_generate_and_pipeline(tok):
    model = nano(tok, {"echo": 0.0, "\n": 0.1}, eos=5.0)  # end of text is by far the likeliest, then "echo"
    unfinished = PROMPT + "if true; then\n  echo a\n"
    options = SamplingOptions(max_new_tokens=6, greedy=True)
    raw = generate(model, tok, unfinished, options)[0]
    assert raw.ended and raw.completion == ""
    guarded = generate(model, tok, unfinished, options, guard=True)[0]
    assert not guarded.ended and not guarded.good  # it could not finish the if: cut back to the prompt
    complete = generate(model, tok, PROMPT + "true\n", options, guard=True)[0]  # the repetition penalty: echo, \\n
    assert complete.ended and complete.completion == "echo\n"  # not at once: after a line of its own that parses

    pipe = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    plain = pipe(unfinished, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    held = pipe(unfinished, max_new_tokens=6, do_sample=False, return_full_text=False,
                logits_processor=LogitsProcessorList([EndOnlyWhenParses(tok)]))[0]["generated_text"]
    assert plain == "" and len(held) >= 5  # without the processor it ends at once; with it, 6 tokens come


def test_generate_command_guards_and_ranks_by_default(tok, tmp_path, capsys):
    folder = save_model_folder(nano(tok), tok, tmp_path / "m")
    assert main(["generate", str(folder), "--prompt", PROMPT, "--max-new-tokens", "12", "--seed", "1",
                 "--num-samples", "3", "--json", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in records] == [1, 2, 3] and all(r["guarded"] for r in records)
    assert all(r["parses"] for r in records)  # cut back to the last complete line where needed
    keys = [(not r["good"], r["mean_logprob"] is None) for r in records]
    assert keys == sorted(keys)
    assert main(["generate", str(folder), "--prompt", PROMPT, "--max-new-tokens", "8", "--seed", "1",
                 "--no-guard", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["guarded"] is False
