"""Memory levers, the estimate and --memory-budget (levers.py, estimate.py, memory_plan.py)."""

import contextlib
import functools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import small_config
from test_training import options

from bashgpt import BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.errors import UserError
from bashgpt.model_folder import load_model
from bashgpt.training import levers as levers_module
from bashgpt.training import memory_plan
from bashgpt.training.estimate import estimate
from bashgpt.training.levers import Levers, build_optimizer, optimizer_problem
from bashgpt.training.memory_plan import parse_budget, plan_memory
from bashgpt.training.train import run_training


def test_estimate_parts_respond_to_the_levers():
    base = estimate("tiny", 4, 512, device="cpu", measure=False)
    assert 137e6 < base.parameters < 138e6
    assert base.parts["optimizer"] == 8 * base.parameters
    amp = estimate("tiny", 4, 512, Levers(use_amp=True), device="cpu", measure=False)
    ckpt = estimate("tiny", 4, 512, Levers(use_amp=True, checkpointing=True), device="cpu", measure=False)
    assert ckpt.parts["activations"] < amp.parts["activations"] < base.parts["activations"]
    assert ckpt.flops_per_step > amp.flops_per_step  # recomputation costs a forward
    lean = {name: estimate("large", 4, 1024, Levers(optim=name, checkpointing=True), device="cpu", measure=False)
            for name in ("adamw", "adamw-8bit", "adamw-bf16", "adafactor")}
    p = lean["adamw"].parameters
    assert lean["adamw-8bit"].total < lean["adamw"].total - 4 * p  # 6 bytes/parameter of state saved, less temps
    assert lean["adamw-bf16"].total < lean["adamw"].total - 5 * p
    assert lean["adafactor"].total < lean["adamw-8bit"].total
    mac = Levers(attention="sdpa")  # MPS' sdpa keeps B x H x T x T float32 probabilities in training
    assert (estimate("large", 4, 1024, mac, device="mps", measure=False).parts["activations"]
            - estimate("large", 4, 1024, Levers(attention="chunked"), device="mps", measure=False).parts["activations"]
            > 32 * 4 * 25 * 1024 * 1024 * 4)


def test_estimate_command_lists_settings_and_refuses_what_cannot_fit(capsys):
    assert main(["estimate", "--model-size", "nano", "--batch-size", "2", "--seq-len", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "gradients", "optimizer", "activations", "peak", "fits", "TFLOP", "per step"):
        assert word in out
    assert main(["estimate", "--model-size", "large", "--batch-size", "4", "--memory-budget", "18GB",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "predicted peak" in out and out.count(" yes ") + out.count(" no ") >= 4
    chosen = next(line for line in out.splitlines() if "<- chosen" in line)
    assert float(chosen.split("GB")[0].split()[-1]) <= 18
    assert main(["estimate", "--model-size", "xlarge", "--batch-size", "8", "--memory-budget", "4GB",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing fits" in err and "--model-size" in err
    assert main(["estimate", "--model-size", "nano", "--batch-size", "0"]) == 2


@pytest.mark.parametrize("text, size", [("18GB", 18 * 2**30), ("18", 18 * 2**30), ("500MB", 500 * 2**20),
                                        ("1.5 GiB", int(1.5 * 2**30))])
def test_budget_sizes_parse(text, size):
    assert parse_budget(text) == size


@pytest.mark.parametrize("text", ["lots", "-3GB", "0", "18XB"])
def test_bad_budget_is_one_line(text):
    with pytest.raises(UserError, match="write it like 18GB"):
        parse_budget(text)


def test_plan_keeps_settings_that_fit_and_never_overrides_a_flag():
    roomy = plan_memory("tiny", 4, 1024, "cpu", 64 * 2**30, Levers(), set())
    assert roomy.kept and roomy.levers == Levers()
    tight = plan_memory("large", 4, 1024, "cpu", 18 * 2**30, Levers(), set())
    assert not tight.kept and tight.estimate.total <= 18 * 2**30 and tight.levers != Levers()
    fixed = plan_memory("large", 4, 1024, "cpu", 18 * 2**30, Levers(optim="adamw-bf16"), {"optim"})
    assert fixed.levers.optim == "adamw-bf16"
    with pytest.raises(UserError, match="nothing fits the 12.00 GB .* use --model-size medium"):
        plan_memory("large", 4, 1024, "cpu", 12 * 2**30, Levers(optim="adamw"), {"optim"})  # 16 bytes/parameter


def test_default_budget_is_half_the_memory_on_a_mac_only(monkeypatch):
    monkeypatch.setattr(memory_plan, "device_memory_bytes", lambda device: 24 * 2**30 if device == "mps" else 48)
    assert memory_plan.default_budget("mps") == 24 * 2**30
    assert memory_plan.default_budget("cpu") is None and memory_plan.default_budget("cuda") is None


def test_optimizer_that_cannot_run_here_is_named_with_its_fix(monkeypatch):
    assert "use --optim adamw-bf16" in optimizer_problem("adamw-8bit", "mps")
    real = levers_module.importlib.util.find_spec
    monkeypatch.setattr(levers_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "optimi" else real(name, *a))
    assert "pip install 'bashgpt[lean]'" in optimizer_problem("adamw-bf16", "cpu")


def test_missing_package_refuses_training_before_anything_is_written(tmp_path, monkeypatch, capsys):

    real = levers_module.importlib.util.find_spec
    monkeypatch.setattr(levers_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--stage", "language", "--model-size", "nano", "--dataset", "stdlib", "--output-dir", str(out),
                                         "--optim", "adamw-8bit", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bitsandbytes" in err[0] and "pip install" in err[0]
    assert main(["train", "--stage", "language", "--model-size", "large", "--dataset", "stdlib", "--output-dir", str(out),
                                         "--memory-budget", "3GB", "--device", "cpu"]) == 2
    assert "nothing fits" in capsys.readouterr().err
    assert not out.exists()


@functools.cache
def losses_after(name: str, steps: int = 15) -> tuple[float, ...]:
    torch.manual_seed(0)
    model = levers_module.apply_to_model(BashGPTForCausalLM(small_config()), Levers(optim=name)).train()
    opt = build_optimizer(model, name, 1e-2, 0.1, "cpu")
    ids = torch.arange(96).repeat(2, 1)[:, :48]  # a pattern worth learning
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, fused_lm_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return tuple(losses)


@pytest.mark.parametrize("name", ["adamw-8bit", "adamw-bf16", "adafactor"])
def test_each_lean_optimizer_learns(name):
    reference, lean = losses_after("adamw"), losses_after(name)
    assert lean[-1] < 0.5 * lean[0]
    assert math.isfinite(lean[-1]) and lean[-1] < 2 * reference[-1] + 0.5


@pytest.mark.parametrize("name", ["adamw-8bit", "adamw-bf16"])
def test_training_with_a_lean_optimizer_saves_a_model_that_loads(tmp_path, name):
    summary = run_training(options(tmp_path, num_epochs=1, optim=name, use_gradient_checkpointing=True))
    assert summary["step"] == 3 and math.isfinite(summary["eval_losses"][-1])
    model = load_model(summary["best"])
    assert next(model.parameters()).dtype == (torch.bfloat16 if name == "adamw-bf16" else torch.float32)
    record = json.loads((Path(summary["output_dir"]) / "run.json").read_text())
    assert record["optim"] == name and record["use_gradient_checkpointing"]


def test_budget_run_records_its_levers_and_resume_keeps_them(tmp_path, capsys):
    tight = estimate("nano", 2, 32, Levers(optim="adamw-bf16", checkpointing=True), device="cpu", measure=False)
    budget = f"{tight.total / 2**20 + 1:.0f}MB"  # only the leanest settings fit
    run_training(options(tmp_path, num_epochs=1, memory_budget=budget))
    err = capsys.readouterr().err
    assert "memory budget" in err and "predicted peak" in err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["optim"] != "adamw" and record["memory_budget"] == budget
    again = run_training(options(tmp_path, num_epochs=1, memory_budget=budget, resume=True))
    assert again.get("complete")  # same levers as recorded: the same run


def test_plan_offers_bf16_autocast_on_a_mac_only_where_macos_has_it(monkeypatch):
    for supported in (False, True):
        monkeypatch.setattr(memory_plan, "mps_bf16_ok", lambda s=supported: s)
        combos, unavailable = memory_plan.candidate_levers("mps", Levers(attention="chunked"), set())
        assert any(lv.use_amp for lv in combos) == supported
        assert not any(lv.optim == "adamw-8bit" for lv in combos) and any("adamw-8bit" in u for u in unavailable)


def test_the_benchmarks_bf16_emulation_computes_what_native_bf16_does():
    """bench/bf16_emulation.py lets bench/memory.py measure bf16 steps on CPUs without native bf16: same dtypes,
    same loss and gradients as the native bf16 kernels (up to summation order), and its copies are counted."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from bf16_emulation import EmulatedBF16

    def step(emulate: bool):
        torch.manual_seed(0)
        model = BashGPTForCausalLM(small_config(hidden_size=64, num_attention_heads=4)).train()
        ids = torch.randint(0, 96, (2, 32))
        mode = EmulatedBF16()
        with mode if emulate else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=ids, fused_lm_loss=True)
            out.loss.backward()
            bf16 = model.transformer.wte.weight.to(torch.bfloat16)
            q = torch.randn(1, 2, 8, 16).to(torch.bfloat16).requires_grad_()
            attn = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            attn.float().sum().backward()
            products = [bf16 @ bf16.T, torch.addmm(bf16[:, :3], bf16, bf16[:3].T), torch.bmm(bf16[None], bf16.T[None])]
        return out.loss, [p.grad for p in model.parameters()], [attn, q.grad, *products], mode

    loss, grads, tensors, _ = step(False)
    loss_e, grads_e, tensors_e, mode = step(True)
    assert mode.calls > 10 and mode.largest_transient > 0
    torch.testing.assert_close(loss_e, loss, rtol=2e-2, atol=0)
    for native, emulated in zip(grads + tensors, grads_e + tensors_e, strict=True):
        assert emulated.dtype == native.dtype
        torch.testing.assert_close(emulated.detach().float(), native.detach().float(), rtol=0.05, atol=0.05 * native.detach().float().abs().max().item())
