"""Training: the two stages, NaN skipping, loss clamping, abort, resume, stage-2 checkpoints."""

import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.data.tokenization import default_tokenizer_dir
from bashgpt.errors import UserError
from bashgpt.model_folder import load_model, load_tokenizer, save_model_folder
from bashgpt.training import callbacks
from bashgpt.training.callbacks import TimeBudget
from bashgpt.training.options import TrainOptions
from bashgpt.training.stability import clamp_loss
from bashgpt.training.train import run_training

ROOT = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, kind: str, n: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "english":
        docs = [f"Once upon a time, story {i} told of a cat named Tom who liked the number {i * 7}." for i in range(n)]
    else:
        docs = [f"#!/bin/bash\n# task {i}\nfor f in /tmp/{i}/*; do\n  echo \"$f\" | wc -c\ndone\nexit {i % 3}\n"
                for i in range(n)]
    split = n // 6
    for name, part in (("train", docs[split:]), ("validation", docs[:split])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    return folder


def options(tmp_path, **kw) -> TrainOptions:
    base = dict(stage="language", model_size="nano", dataset=str(write_corpus(tmp_path / "english", "english")),
                output_dir=str(tmp_path / "run"), batch_size=2, num_epochs=2, steps_per_epoch=3, learning_rate=1e-3,
                warmup_steps=1, seq_len=32, eval_blocks=4, device="cpu", cache_dir=str(tmp_path / "cache"),
                progress=False, seed=7)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture
def transformers_log():
    """What Transformers logs (warnings and up) while the test runs: a warning about our code is a failure."""
    from transformers.utils import logging as hf_logging

    stream, root = io.StringIO(), hf_logging.get_logger()
    handler, level = logging.StreamHandler(stream), root.level
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    hf_logging.set_verbosity_warning()
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_stage1_then_stage2_from_its_checkpoint(tmp_path, transformers_log):
    s1 = run_training(options(tmp_path))
    assert s1["step"] == 6 and len(s1["eval_losses"]) == 2  # validated at the end of each epoch
    best = Path(s1["best"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "modeling_bashgpt.py", "README.md"} <= {
        p.name for p in best.iterdir()}
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 10_000
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in log) and all("peak_memory_gb" in r for r in log)
    assert "validation loss" in (best / "README.md").read_text()

    from transformers import AutoModelForCausalLM, pipeline

    trained = AutoModelForCausalLM.from_pretrained(best)
    assert isinstance(trained, BashGPTForCausalLM) and not trained.config.fused_lm_loss
    ids = torch.tensor([[5, 6, 7, 8]])
    assert trained.train()(input_ids=ids, labels=ids).logits.shape == (1, 4, trained.config.vocab_size)  # own loops
    assert pipeline("text-generation", model=str(best))("Once", max_new_tokens=3, do_sample=False)

    s2 = run_training(options(tmp_path, stage="code", model_size=None, checkpoint=str(tmp_path / "run"),
                              dataset=str(write_corpus(tmp_path / "bash", "bash")), output_dir=str(tmp_path / "run2"),
                              replay=str(tmp_path / "english"), replay_share=0.25))
    assert s2["step"] == 6
    card = (Path(s2["best"]) / "README.md").read_text()
    assert "code stage" in card and str(best) in card
    assert "(of them 25% " in (tmp_path / "run2" / "train.log").read_text()  # English replayed in stage 2
    # (Trainer once aligned a bos_token_id our generation config lacked). Trainer's checkpoint rotation says once per
    # process that mtime is unreliable when two checkpoints are under a second apart, as a test's tiny ones are
    said = [line for line in transformers_log.getvalue().splitlines() if not line.startswith("mtime may not be reliable")]
    assert said == []


def test_a_new_model_takes_its_vocabulary_from_the_tokenizer(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path / "tok")
    s1 = run_training(options(tmp_path, tokenizer=str(tmp_path / "tok"), num_epochs=1))
    config = json.loads((Path(s1["best"]) / "config.json").read_text())
    assert config["vocab_size"] == 320 and len(small_tokenizer) == 300  # rounded up to a multiple of 64
    s2 = run_training(options(tmp_path, stage="code", model_size=None, checkpoint=str(tmp_path / "run"), num_epochs=1,
                              dataset=str(write_corpus(tmp_path / "bash", "bash")), output_dir=str(tmp_path / "run2")))
    assert json.loads((Path(s2["best"]) / "config.json").read_text())["vocab_size"] == 320  # the checkpoint's
    assert len(load_tokenizer(s2["best"])) == 300


class Poison(TrainerCallback):
    """Injects NaN at chosen optimizer steps, in the loss or in a gradient, and snapshots state around them."""

    def __init__(self, steps, where="loss", micro=None):
        self.steps, self.where, self.micro = set(steps), where, micro
        self.before, self.after, self.active, self.handles, self.micro_count = {}, {}, False, [], 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        def forward_hook(module, inputs, output):
            self.micro_count += 1
            if self.active and self.where == "loss" and (self.micro is None or self.micro_count == self.micro):
                return output * float("nan")

        def grad_hook(grad):
            if self.active and self.where == "grad":
                return grad * float("nan")

        self.handles = [model.transformer.wte.register_forward_hook(forward_hook),
                        model.transformer.h[0].mlp.c_fc.weight.register_hook(grad_hook)]

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        step = state.global_step + 1
        self.active, self.micro_count = step in self.steps, 0
        if self.active:
            self.before[step] = snapshot(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        if state.global_step in self.steps:
            self.after[state.global_step] = snapshot(model, optimizer)
        self.active = False


def snapshot(model, optimizer):
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
           for s in optimizer.state_dict()["state"].values()] if optimizer else []
    return weights, opt


def assert_same(a, b):
    (wa, oa), (wb, ob) = a, b
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(oa) == len(ob)
    for sa, sb in zip(oa, ob, strict=True):
        assert all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa)


@pytest.mark.parametrize("where, accumulation, micro", [("loss", 1, None), ("grad", 1, None), ("loss", 2, 2)])
def test_nan_update_is_skipped_with_state_bit_identical(tmp_path, where, accumulation, micro):
    poison = Poison(steps=[4], where=where, micro=micro)
    summary = run_training(options(tmp_path, gradient_accumulation_steps=accumulation), extra_callbacks=[poison])
    assert summary["step"] == 6 and summary["skipped_steps"] == 1
    assert_same(poison.before[4], poison.after[4])
    final = load_model(summary["best"])
    assert all(torch.isfinite(p).all() for p in final.parameters())
    assert math.isfinite(summary["eval_losses"][-1])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped_steps"] == 1


def test_run_that_keeps_failing_aborts_with_advice_and_keeps_best(tmp_path):
    poison = Poison(steps=range(4, 100))
    with pytest.raises(UserError) as err:
        run_training(options(tmp_path, num_epochs=4, max_consecutive_skips=3), extra_callbacks=[poison])
    message = str(err.value)
    assert "3 updates in a row" in message and "--learning-rate" in message and "--warmup-steps" in message
    assert torch.isfinite(next(load_model(tmp_path / "run" / "best").parameters())).all()


def test_trainer_asks_for_the_fused_loss_per_call_only_while_training(tmp_path):
    from transformers import TrainingArguments

    from bashgpt.training.trainer import SafeTrainer

    model = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", max_position_embeddings=64))
    trainer = SafeTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    ids = torch.randint(0, 1000, (2, 16))
    batch = {"input_ids": ids, "labels": ids}
    loss, out = trainer.compute_loss(model.train(), batch, return_outputs=True)
    assert out.logits is None and loss.requires_grad  # chunked head + loss: no full-size logits
    with torch.no_grad():
        eval_loss, out = trainer.compute_loss(model.eval(), batch, return_outputs=True)
    assert out.logits is not None and torch.allclose(loss.detach(), eval_loss, atol=1e-4)
    assert not model.config.fused_lm_loss


def test_skip_fraction_threshold():
    from bashgpt.training.stability import SkipLedger

    ledger = SkipLedger(max_fraction=0.05, max_consecutive=100)
    for step in range(1, 101):
        ledger.record(step % 17 == 0, step)  # 5 skips: at the threshold, not past it
    assert ledger.abort_reason is None
    ledger.record(True, 101)
    assert ledger.abort_reason and "more than 5%" in ledger.abort_reason


def test_loss_clamp_scales_and_keeps_direction():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    loss = (w**2).sum()  # 14
    (g_plain,) = torch.autograd.grad(loss, w, retain_graph=True)
    clamped = clamp_loss(loss, 7.0)
    (g_clamped,) = torch.autograd.grad(clamped, w)
    assert clamped.item() == pytest.approx(7.0)
    assert torch.allclose(g_clamped, g_plain * 0.5)
    assert torch.nn.functional.cosine_similarity(g_plain, g_clamped, dim=0).item() == pytest.approx(1.0)
    assert clamp_loss(loss, 20.0) is loss


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = run_training(options(tmp_path, output_dir=str(tmp_path / "a"), num_epochs=3, eval_steps=2))
    run_training(options(tmp_path, output_dir=str(tmp_path / "b"), num_epochs=3, eval_steps=2),
                 extra_callbacks=[StopAt(4)])
    resumed = run_training(options(tmp_path, output_dir=str(tmp_path / "b"), num_epochs=3, eval_steps=2, resume=True))
    assert resumed["step"] == straight["step"] == 9
    a = load_model(Path(straight["output_dir"]) / "checkpoints" / "checkpoint-9")
    b = load_model(Path(resumed["output_dir"]) / "checkpoints" / "checkpoint-9")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def folder_snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):

    run_training(options(tmp_path, num_epochs=1))
    before = folder_snapshot(tmp_path / "run")
    again = run_training(options(tmp_path, num_epochs=1, resume=True))
    assert again["complete"] and again["step"] == 3 and again["best"] == str(tmp_path / "run" / "best")
    argv = ["--model-size", "nano", "--dataset", str(tmp_path / "english"), "--output-dir", str(tmp_path / "run"),
            "--batch-size", "2", "--num-epochs", "1", "--steps-per-epoch", "3", "--learning-rate", "1e-3",
            "--warmup-steps", "1", "--seq-len", "32", "--eval-blocks", "4", "--device", "cpu", "--seed", "7",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--resume"]
    assert main(["train", "--stage", "language", *argv]) == 0
    assert "already complete (step 3 of 3)" in capsys.readouterr().err
    assert folder_snapshot(tmp_path / "run") == before  # no checkpoint-4, no log line, no new best/


class StepClock(TrainerCallback):
    """The time budget's clock, advanced ``seconds`` by each step and by nothing else: the budget then ends after
    a known number of steps however slow or busy the machine is."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def on_step_begin(self, args, state, control, **kwargs):  # the step's time passes
        self.now += self.seconds


def test_time_budget_stops_validates_and_saves_before_the_step_limit(tmp_path, monkeypatch):
    clock = StepClock(0.4)
    monkeypatch.setattr(callbacks, "time", clock)  # TimeBudget reads callbacks.time.perf_counter
    result = run_training(options(tmp_path, num_epochs=1, steps_per_epoch=1000, time_budget=0.03),
                          extra_callbacks=[clock])  # 1.8 s of 0.4 s steps: the 1.8 s are used up at step 5
    assert result["step"] == 5
    best = json.loads((tmp_path / "run" / "best" / "bashgpt_best.json").read_text())
    assert best["step"] == result["step"]  # validated and saved at the step the time ran out
    evals = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if "eval_loss" in e] == [result["step"]]


def test_time_budget_schedule_warms_up_then_anneals_over_the_time():
    budget = TimeBudget(seconds=100, warmup_steps=4)
    assert budget.lr_factor(0) == pytest.approx(0.25) and budget.lr_factor(3) == pytest.approx(1.0)
    budget.fraction = 0.5
    assert budget.lr_factor(50) == pytest.approx(0.55)
    budget.fraction = 1.0
    assert budget.lr_factor(99) == pytest.approx(0.1) and budget.seconds_left() == 0


def test_output_folder_of_another_run_is_refused(tmp_path):
    run_training(options(tmp_path, num_epochs=1))
    with pytest.raises(UserError, match="already holds a run"):
        run_training(options(tmp_path, num_epochs=1))
    with pytest.raises(UserError, match="different options"):
        run_training(options(tmp_path, num_epochs=1, learning_rate=5e-4, resume=True))
    assert run_training(options(tmp_path, num_epochs=1, overwrite=True))["step"] == 3


@pytest.fixture
def nano_checkpoint(tmp_path):
    tok = load_tokenizer(default_tokenizer_dir())
    model = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", max_position_embeddings=64))
    return save_model_folder(model, tok, tmp_path / "stage1" / "best"), model


@pytest.mark.parametrize(
    "flags, words",
    [(["--use-rope"], ["--use-rope", "learned"]), (["--use-rmsnorm"], ["--use-rmsnorm", "layernorm"]),
     (["--model-size", "tiny"], ["--model-size tiny", "nano"])],
)
def test_architecture_mismatch_is_refused_before_any_work(tmp_path, nano_checkpoint, capsys, flags, words):
    code = main(["train", "--stage", "code", "--checkpoint", str(tmp_path / "stage1"), "--dataset", str(tmp_path / "none"),
                 "--output-dir", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and all(w in err for w in words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prefix, transpose, suffix", [("", False, ".pth"), ("_orig_mod.", False, ".pth"),
                                                       ("module.", True, ".pth"), ("", False, ".npz")])
def test_legacy_checkpoints_import_with_names_mapped(tmp_path, nano_checkpoint, prefix, transpose, suffix):
    from bashgpt.training.checkpoints import checkpoint_config, load_checkpoint_model

    _, model = nano_checkpoint
    state = {}
    for name, tensor in model.state_dict().items():
        if transpose and name.endswith("weight") and ".h." in name and tensor.dim() == 2:
            tensor = tensor.t().contiguous()  # GPT-2 Conv1D layout
        state[prefix + name] = tensor
    path = tmp_path / f"language_model_best{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        import numpy as np

        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    config, loaded_state = checkpoint_config(path)
    assert (config.num_hidden_layers, config.hidden_size, config.norm_type) == (4, 128, "layernorm")
    loaded = load_checkpoint_model(path, config, loaded_state)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/bashgpt-pwned",))


def test_pth_with_pickled_code_is_refused(tmp_path):
    from bashgpt.training.checkpoints import checkpoint_config

    path = tmp_path / "evil.pth"
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": Exploit()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint_config(path)
    assert not Path("/tmp/bashgpt-pwned").exists()


@pytest.mark.parametrize("flags, words", [(["--batch-size", "0"], ["--batch-size", "0"]),
                                          (["--learning-rate", "-1"], ["--learning-rate", "-1"]),
                                          (["--stage", "code"], ["--dataset"]),
                                          (["--time-budget", "0"], ["--time-budget", "minutes"])])
def test_bad_numbers_are_one_line_errors(tmp_path, capsys, flags, words):
    code = main(["train", "--output-dir", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and all(w in err for w in words)


def test_recipe_help_lists_the_guide_flags():
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "stage1.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--stage", "--model-size", "--batch-size", "--num-epochs", "--steps-per-epoch", "--learning-rate",
                 "--warmup-steps", "--checkpoint", "--gradient-accumulation-steps", "--use-compile", "--use-amp",
                 "--use-gradient-checkpointing", "--use-rmsnorm", "--use-rope", "--dataset", "--output-dir",
                 "--seq-len", "--eval-steps", "--resume", "--seed", "--device"):
        assert flag in out.stdout


def launcher(kind: str, tmp_path: Path) -> list[str]:
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
            "--mpirun_hostfile", str(hostfile)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchrun", pytest.param("accelerate-mpi", marks=pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="accelerate's multi-CPU launch needs OpenMPI (apt-get install openmpi-bin)"))])
def test_two_cpu_processes_train_with_ddp(tmp_path, kind):
    """torchrun, or accelerate launch through MPI, gives real DDP on CPU; the log must say two processes took part."""
    corpus = write_corpus(tmp_path / "english", "english", n=120)
    common = ["--stage", "language", "--model-size", "nano", "--dataset", str(corpus), "--num-epochs", "1",
              "--steps-per-epoch", "4", "--learning-rate", "1e-3", "--warmup-steps", "1", "--seq-len", "32",
              "--eval-blocks", "4", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    for attempt in range(2):  # a process that aborts with "terminate called without an active exception" (a C++
        # thread torn down; the torchrun case failed so once in four full runs on 2 cores) gets one more try, in a
        # folder of its own; any other failure fails at once
        two = subprocess.run([*launcher(kind, tmp_path), str(ROOT / "recipes" / "stage1.py"), *common, "--batch-size",
                              "2", "--output-dir", str(tmp_path / f"two{attempt}")], capture_output=True, text=True,
                             env=env, timeout=600)
        if two.returncode == 0 or "terminate called without an active exception" not in two.stderr:
            break
    assert two.returncode == 0, two.stderr[-3000:]
    shutil.move(tmp_path / f"two{attempt}", tmp_path / "two")
    assert "2 processes took part (DISTRIBUTED)" in (tmp_path / "two" / "train.log").read_text()
    one = subprocess.run([sys.executable, str(ROOT / "recipes" / "stage1.py"), *common, "--batch-size", "4",
                          "--output-dir", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    def eval_loss(run):
        return json.loads((tmp_path / run / "best" / "bashgpt_best.json").read_text())["eval_loss"]

    # Same global batch (2 x 2 vs 4 x 1), same seed: consistent loss curves (data order differs).
    assert abs(eval_loss("two") - eval_loss("one")) < 0.1 * eval_loss("one")
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_amp_checkpointing_and_accumulation_train_together(tmp_path):
    summary = run_training(options(tmp_path, use_amp=True, use_gradient_checkpointing=True,
                                   gradient_accumulation_steps=2, num_epochs=1))
    assert summary["step"] == 3 and math.isfinite(summary["eval_losses"][-1])
    assert "bf16 autocast" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_compiled_training_runs(tmp_path):
    summary = run_training(options(tmp_path, use_compile=True, num_epochs=1))
    assert summary["step"] == 3 and math.isfinite(summary["eval_losses"][-1])
    assert "_orig_mod" not in "".join(load_model(summary["best"]).state_dict())


def test_advice_says_the_guides_warning_signs_plainly():
    from bashgpt.training.callbacks import Advice
    from bashgpt.training.stability import SkipLedger

    said = []
    ledger = SkipLedger()
    advice = Advice(ledger, said.append)
    advice.train_losses = [3.6] * 5
    advice.eval_losses = [4.0, 4.5]  # the loss rose early in the run, near the training loss
    notes = advice.advise(4.5, 0.2)
    assert any("rose" in n and "--learning-rate" in n for n in notes) and not any("overfitting" in n for n in notes)
    advice.train_losses = [3.0] * 5  # 4.5 > 1.3 x 3.0 + 0.2: the rise is overfitting, not the learning rate
    notes = advice.advise(4.5, 0.2)
    assert any("overfitting" in n and "--early-stopping" in n for n in notes)
    assert not any("--learning-rate" in n for n in notes)
    stopping = Advice(ledger, said.append, early_stopping=True)  # a run that stops itself is not told to
    stopping.train_losses, stopping.eval_losses = [3.0] * 5, [4.0, 4.5]
    assert not any("--early-stopping" in n for n in stopping.advise(4.5, 0.2))
    for step in range(20):
        ledger.record(step % 4 == 0, step)
    assert any("skipped for NaN/inf" in n for n in advice.advise(3.1, 0.9))
    assert not any("warning" in n for n in Advice(SkipLedger(), said.append).advise(3.0, 0.5))


def test_early_stopping_stops_after_n_validations_without_a_new_best(tmp_path, monkeypatch, capsys):
    """--early-stopping 2 with a validation every step: the first validation is the best and no later one beats it
    (the saver is told so), so training stops at the third validation, step 3 of 6, and best/ is step 1's."""
    from bashgpt.training.callbacks import BestModelSaver, EarlyStop

    monkeypatch.setattr(BestModelSaver, "improves", lambda self, loss: self.best_loss == math.inf)
    summary = run_training(options(tmp_path, num_epochs=1, steps_per_epoch=6, eval_steps=1, early_stopping=2))
    assert summary["step"] == 3 and len(summary["eval_losses"]) == 3
    assert json.loads((Path(summary["best"]) / "bashgpt_best.json").read_text())["step"] == 1
    assert "stopping early at step 3: 2 validations without a new best" in capsys.readouterr().err

    said, saver = [], BestModelSaver(lambda model, state, loss: None)
    stop = EarlyStop(3, saver, said.append)
    monkeypatch.undo()
    state, control = type("S", (), {"global_step": 0})(), type("C", (), {"should_training_stop": False})()
    for step, loss in enumerate((3.0, 2.9, 3.1, 2.8, 3.2, 3.0), 1):  # a new best (2.8) resets the count
        state.global_step = step
        for callback in (saver, stop) if step % 2 else (stop, saver):  # the saver first or last: the same count
            callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    assert not control.should_training_stop and stop.without_best == 2 and saver.best_loss == 2.8
    state.global_step = 7
    stop.on_evaluate(None, state, control, metrics={"eval_loss": 3.3})
    assert control.should_training_stop and said


def test_the_callbacks_give_the_same_run_in_any_order(tmp_path, monkeypatch, capsys):
    """bashgpt's callbacks reversed (the best-model saver now first, the progress line and early stopping after it):
    the same steps, validations, console lines, best/ and log as in the usual order."""
    from bashgpt.training import train as train_module

    early = dict(num_epochs=1, steps_per_epoch=8, eval_steps=1, early_stopping=1, learning_rate=3e-3)
    usual = run_training(options(tmp_path, output_dir=str(tmp_path / "usual"), **early))
    usual_said = capsys.readouterr().err

    class Reversed(train_module.SafeTrainer):
        def __init__(self, *args, callbacks=(), **kwargs):
            super().__init__(*args, callbacks=list(reversed(callbacks)), **kwargs)

    monkeypatch.setattr(train_module, "SafeTrainer", Reversed)
    reversed_run = run_training(options(tmp_path, output_dir=str(tmp_path / "reversed"), **early))
    reversed_said = capsys.readouterr().err
    assert reversed_run["step"] == usual["step"] and reversed_run["eval_losses"] == usual["eval_losses"]

    def lines(said):
        return [re.sub(r"/tmp\S*", "", line) for line in said.splitlines() if "validation loss" in line or "stopping" in line]

    assert sorted(lines(reversed_said)) == sorted(lines(usual_said)) and "best so far" in usual_said  # said in any order
    assert [json.loads((tmp_path / run / "best" / "bashgpt_best.json").read_text()) for run in ("usual", "reversed")] \
        == [json.loads((tmp_path / "usual" / "best" / "bashgpt_best.json").read_text())] * 2
    timing = ("tokens_per_s", "peak_memory_gb", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
              "train_runtime", "train_samples_per_second", "train_steps_per_second")
    logs = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("usual", "reversed")]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("live", [True, False])
def test_console_shows_one_progress_line_and_one_line_per_validation(tmp_path, capsys, live):
    run_training(options(tmp_path, progress=live))
    err = capsys.readouterr().err
    assert "{'loss'" not in err and "'epoch':" not in err  # no Trainer dict prints
    validations = [line for line in err.splitlines() if "validation loss" in line]
    assert len(validations) == 2, validations
    assert "step 3/6, end of epoch 1/2: validation loss" in validations[0] and "perplexity" in validations[0]
    assert "step 6/6, end of epoch 2/2: validation loss" in validations[1]
    if live:  # a tqdm bar over optimizer steps, the guide's epoch, loss, lr and throughput beside it
        assert re.search(r"train 100%\|.*\| 6/6 steps, epoch 2/2 · loss \d+\.\d{3} · lr [\d.e+-]+ · [\d,]+ tok/s · ETA 00:00", err)
    else:  # one plain line per log event, for log files
        lines = [line for line in err.splitlines() if line.startswith("[bashgpt] step ") and "ETA" in line]
        assert lines and re.search(r"step 6/6 · epoch 2/2 · loss \d+\.\d{3} · lr \S+ · [\d,]+ tok/s · ETA 0:00", lines[-1])
        # the console and log.jsonl give the same throughput, step for step (measured once: callbacks.Throughput)
        console = {int(m[1]): int(m[2].replace(",", "")) for line in lines
                   if (m := re.search(r"step (\d+)/\d+ .* ([\d,]+) tok/s", line))}
        logged = {r["step"]: r["tokens_per_s"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").open())
                  if "tokens_per_s" in r}
        assert console and console.keys() == logged.keys()
        assert all(abs(console[step] - logged[step]) <= 0.55 for step in console), (console, logged)  # 0 vs 1 decimal


def test_resumed_time_budget_and_early_stopping_go_on_where_the_checkpoint_was(tmp_path, monkeypatch):
    """The time budget's clock and the early-stopping count are sealed into each checkpoint and restored by --resume:
    a run stopped at step 2 and resumed ends where the uninterrupted run ends, with the same weights (the learning
    rate did not jump back to its peak)."""
    from bashgpt.training.callbacks import BestModelSaver

    clock = StepClock(0.4)
    monkeypatch.setattr(callbacks, "time", clock)
    budget = dict(num_epochs=1, steps_per_epoch=1000, time_budget=0.03, eval_steps=1)  # 1.8 s: step 5
    straight = run_training(options(tmp_path, output_dir=str(tmp_path / "a"), **budget), extra_callbacks=[clock])
    clock.now = 0.0
    run_training(options(tmp_path, output_dir=str(tmp_path / "b"), **budget), extra_callbacks=[clock, StopAt(2)])
    seal = json.loads((tmp_path / "b" / "checkpoints" / "checkpoint-2" / "bashgpt-complete.json").read_text())
    assert seal["step"] == 2 and seal["states"]["time_budget"]["used"] == pytest.approx(0.8)
    assert seal["states"]["skip_ledger"]["skipped_total"] == 0
    resumed = run_training(options(tmp_path, output_dir=str(tmp_path / "b"), resume=True, **budget),
                           extra_callbacks=[clock])
    assert resumed["step"] == straight["step"] == 5
    a = load_model(tmp_path / "a" / "checkpoints" / "checkpoint-5")
    b = load_model(tmp_path / "b" / "checkpoints" / "checkpoint-5")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name

    monkeypatch.setattr(BestModelSaver, "improves", lambda self, loss: self.best_loss == math.inf)
    early = dict(num_epochs=1, steps_per_epoch=6, eval_steps=1, early_stopping=2)
    run_training(options(tmp_path, output_dir=str(tmp_path / "c"), **early), extra_callbacks=[StopAt(2)])
    resumed = run_training(options(tmp_path, output_dir=str(tmp_path / "c"), resume=True, **early))
    assert resumed["step"] == 3  # as without the interruption: the count of validations without a best went on


def test_a_best_written_after_the_last_sealed_checkpoint_resumes_as_the_uninterrupted_run(tmp_path):
    """Killed after best/ took step 3's model but before checkpoint-3 was sealed: --resume replays step 3 from
    checkpoint-2, whose seal holds the best loss and early stopping's patience of that moment together, so the
    replayed validation is a new best again (not a validation without one) and the run ends as it would have."""
    early = dict(num_epochs=1, steps_per_epoch=6, eval_steps=1, early_stopping=1)
    straight = run_training(options(tmp_path, output_dir=str(tmp_path / "a"), **early))
    run_training(options(tmp_path, output_dir=str(tmp_path / "b"), **early), extra_callbacks=[StopAt(3)])
    assert json.loads((tmp_path / "b" / "best" / "bashgpt_best.json").read_text())["step"] == 3
    seal = json.loads((tmp_path / "b" / "checkpoints" / "checkpoint-2" / "bashgpt-complete.json").read_text())
    assert seal["states"]["best_model"]["best_loss"] == straight["eval_losses"][1]
    (tmp_path / "b" / "checkpoints" / "checkpoint-3" / "bashgpt-complete.json").unlink()  # never sealed
    resumed = run_training(options(tmp_path, output_dir=str(tmp_path / "b"), resume=True, **early))
    assert resumed["step"] == straight["step"] and straight["step"] > 3
    assert json.loads((tmp_path / "b" / "best" / "bashgpt_best.json").read_text()) == json.loads(
        (tmp_path / "a" / "best" / "bashgpt_best.json").read_text())
    a, b = load_model(tmp_path / "a" / "best"), load_model(tmp_path / "b" / "best")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_best_appears_whole_with_its_records_or_not_at_all(tmp_path, monkeypatch):
    from bashgpt import model_folder as modelio

    model, tokenizer = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", max_position_embeddings=64)), None
    modelio.save_model_folder(model, tokenizer, tmp_path / "best", records={"bashgpt_best.json": '{"step": 1}'})
    assert json.loads((tmp_path / "best" / "bashgpt_best.json").read_text()) == {"step": 1}
    real_write = Path.write_text

    def crash_on_records(self, text, *args, **kwargs):
        if self.name == "bashgpt_training.json":
            raise OSError("killed")
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash_on_records)
    with pytest.raises(OSError):
        modelio.save_model_folder(model, tokenizer, tmp_path / "best", records={
            "bashgpt_best.json": '{"step": 2}', "bashgpt_training.json": "{}"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "best" / "bashgpt_best.json").read_text()) == {"step": 1}  # the last whole one
    assert not (tmp_path / "best" / "bashgpt_training.json").exists()


def test_resume_takes_the_newest_sealed_checkpoint_and_drops_an_unsealed_one(tmp_path):
    run_training(options(tmp_path, num_epochs=1, eval_steps=1))
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = checkpoints / "checkpoint-3"
    (newest / "bashgpt-complete.json").unlink()  # as if killed while checkpoint-3 was being written
    (newest / "optimizer.pt").unlink()
    resumed = run_training(options(tmp_path, num_epochs=1, eval_steps=1, resume=True))
    assert resumed["step"] == 3 and (newest / "bashgpt-complete.json").is_file()  # step 3 again, from checkpoint-2
    assert (newest / "optimizer.pt").is_file()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_no_weight_decay_on_norms_or_biases(tmp_path, norm):
    from transformers import TrainingArguments

    from bashgpt.training.trainer import SafeTrainer

    model = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", norm_type=norm, vocab_size=64))
    trainer = SafeTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    decayed = set(trainer.get_decay_parameter_names(model))
    names = {name for name, _ in model.named_parameters()}
    norms = {n for n in names if ".ln_" in n or n.startswith("transformer.ln_f")}
    assert norms and not decayed & norms
    assert not any(n.endswith(".bias") for n in decayed)
    assert decayed == names - norms - {n for n in names if n.endswith(".bias")}  # every matrix and embedding decays


def test_report_to_tensorboard_and_run_name_reach_trainer(tmp_path):
    pytest.importorskip("tensorboard")
    run_training(options(tmp_path, num_epochs=1, report_to=["tensorboard"], run_name="my-run"))
    events = list((tmp_path / "run" / "checkpoints").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    args = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint-3" / "training_args.bin", weights_only=False)
    assert args.report_to == ["tensorboard"] and args.run_name == "my-run"


@pytest.mark.parametrize("flags, words", [
    (["--report-to", "neptune"], "invalid choice: 'neptune'"),
    (["--report-to", "wandb"], "needs the wandb package: pip install wandb"),
    (["--push-to-hub"], "the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)"),
])
def test_reporting_that_cannot_work_is_one_line_before_any_training(tmp_path, capsys, monkeypatch, flags, words):
    from bashgpt.training import reporting

    real = reporting.installed
    monkeypatch.setattr(reporting, "installed", lambda package: package != "wandb" and real(package))
    argv = ["train", "--model-size", "nano", "--dataset", str(write_corpus(tmp_path / "english", "english")),
            "--output-dir", str(tmp_path / "run"), "--device", "cpu", *flags]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusal of a choice: its usage, then one line
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and words in err[-1]
    assert err[0].startswith("usage:") or len(err) == 1
    assert not (tmp_path / "run").exists()  # refused before the output folder was touched


def test_push_to_hub_uploads_best_at_each_new_best_and_at_the_end(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from bashgpt.training import reporting

    calls = []
    monkeypatch.setattr(reporting, "check_hub", lambda repo: calls.append(("check", repo)))
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    class Done:
        def result(self):
            return None

    def upload(self, repo_id, folder_path, commit_message, run_as_future):
        assert (Path(folder_path) / "model.safetensors").is_file() and (Path(folder_path) / "README.md").is_file()
        calls.append(("upload", repo_id, run_as_future))
        return Done() if run_as_future else None

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    monkeypatch.setattr("bashgpt.training.train.check_hub", reporting.check_hub)
    run_training(options(tmp_path, num_epochs=1, eval_steps=1, push_to_hub=True, hub_model_id="me/bash-nano",
                         hub_private=True, hub_strategy="every_best"))
    assert calls[0] == ("check", "me/bash-nano")
    assert [c for c in calls if c[0] == "create"] == [("create", "me/bash-nano", {"private": True, "exist_ok": True,
                                                                                 "repo_type": "model"})]
    uploads = [c for c in calls if c[0] == "upload"]
    assert uploads[-1] == ("upload", "me/bash-nano", False) and len(uploads) >= 2  # new bests in the background
    assert all(future for _, _, future in uploads[:-1])


def test_quiet_keeps_warnings_on_the_console_and_everything_in_train_log(tmp_path, capsys):
    run_training(options(tmp_path, num_epochs=1, quiet=True, stage="code",
                         dataset=str(write_corpus(tmp_path / "bash", "bash"))))
    err = capsys.readouterr().err
    assert "stage 2 without --checkpoint" in err  # a warning still shows
    said = [line for line in err.splitlines() if line.startswith("[bashgpt]")]
    assert said and all(line.startswith("[bashgpt] warning:") for line in said)
    assert "steps, epoch" not in err  # no progress line
    log = (tmp_path / "run" / "train.log").read_text()
    assert "validation loss" in log and "stage 2 without --checkpoint" not in log  # said before the run's log opened
    assert "new best validation loss" in log  # the details the console never shows


def write_pair_corpus(folder: Path) -> Path:
    """A collect-style folder: 30 scripts and 12 description-and-command pairs in training, both in validation."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = [{"text": f"#!/bin/bash\nfor f in /srv/{i}/*; do\n  gzip -k \"$f\"\ndone\n", "source": "debian"}
               for i in range(30)]
    pairs = [{"text": f"#!/bin/bash\n# Count the lines of file {i}.\nwc -l file{i}\n", "source": "pair:cheat"}
             for i in range(12)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scripts + pairs))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scripts[:3] + pairs[:2]))
    return folder


def test_pair_share_repeats_the_pairs_to_their_share_of_the_bash_tokens(tmp_path):
    from bashgpt.training.train import training_data

    corpus = str(write_pair_corpus(tmp_path / "bash"))
    tok = load_tokenizer(default_tokenizer_dir())

    def train_stats(**kw):
        kw = {"stage": "code", **kw}
        return training_data(options(tmp_path, dataset=corpus, **kw), tok, progress=False)[2]["train"]

    once = train_stats(pair_share=0, pair_loss="all")  # pairs stay where they are, each once
    natural = 12 * len(tok("#!/bin/bash\n# Count the lines of file 10.\nwc -l file10\n")["input_ids"]) / once["tokens"]
    assert once["pairs_share"] == 0 and 0.15 < natural < 0.35
    apart = train_stats(pair_share=0)  # each once, apart from the scripts for stage 2's --pair-loss command
    assert apart["tokens"] == once["tokens"] and abs(apart["pairs_share"] - natural) < 0.03
    default = train_stats()  # stage 2's default: half of the bash tokens
    assert abs(default["pairs_share"] - 0.5) < 0.01 and default["tokens"] > once["tokens"]
    low = train_stats(pair_share=0.01)  # below their own share: every pair still once
    assert low["tokens"] == once["tokens"] and abs(low["pairs_share"] - natural) < 0.03
    assert train_stats(stage="language")["pairs_share"] == 0  # stage 1 mixes nothing by default


def test_pair_loss_command_learns_each_pair_command_and_end_not_its_prompt(tmp_path):
    from bashgpt.training.train import training_data

    corpus = str(write_pair_corpus(tmp_path / "bash"))
    tok = load_tokenizer(default_tokenizer_dir())
    blocks = training_data(options(tmp_path, dataset=corpus, stage="code", seq_len=16, pair_share=0.5), tok,
                           progress=False)[0]  # stage 2's default: --pair-loss command
    targets = [(int(t), bool(c)) for t, c in zip(blocks.tokens, blocks.counted, strict=True)]
    text = tok.decode([t for t, counted in targets if counted])
    assert "# Count the lines" not in text and text.count("wc -l file") >= 12  # every pair's command, repeated
    assert text.count("gzip -k") == 30 and text.count(tok.eos_token) >= 42  # scripts whole; each document's end
    skipped = tok.decode([t for t, counted in targets if not counted])
    assert skipped.count("# Count the lines of file") == skipped.count("#!/bin/bash") >= 12  # only pairs' prompts
    block = next(blocks[i] for i in range(len(blocks)) if not blocks.counted[i * 16:(i + 1) * 16].all())
    ignored = block["labels"] == -100
    assert ignored.any() and bool((block["attention_mask"][ignored] == 1).all())  # not padding: prompt tokens
    whole = training_data(options(tmp_path, dataset=corpus, stage="code", seq_len=16, pair_share=0.5,
                                  pair_loss="all"), tok, progress=False)[0]
    assert whole.counted is None and np.array_equal(whole.tokens, blocks.tokens)
    refused = dict(pair_loss="command", stage="code", dataset=str(write_corpus(tmp_path / "plain", "bash")))
    with pytest.raises(UserError, match="--pair-loss: .* has no description-and-command pairs"):
        run_training(options(tmp_path, **refused))


@pytest.mark.parametrize("kw, words", [
    (dict(pair_loss="command", streaming=True), "--pair-loss marks the tokenised pairs' prompts and --streaming"),
    (dict(max_document_tokens=0), "--max-document-tokens must be a positive whole number"),
    (dict(max_document_tokens=64, streaming=True), "--max-document-tokens leaves documents out"),
    (dict(pair_share=0.5), "has no description-and-command pairs"),  # the English corpus
    (dict(pair_share=1.0), "--pair-share must be at least 0 and below 1"),
    (dict(pair_share=0.5, streaming=True), "--pair-share repeats the tokenised pairs and --streaming"),
])
def test_pair_share_and_document_limit_refuse_what_they_cannot_do(tmp_path, kw, words):
    with pytest.raises(UserError, match=words):
        run_training(options(tmp_path, **kw))
