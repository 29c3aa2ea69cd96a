"""The parts of bench/gpu_check.py. Each runs in a process of its own (``gpu_check.py --part NAME``), writes its
rows as they come (one JSON line each), and stops starting work that its deadline says would not finish.

  machine      GPU, driver, torch, transformers, where bashgpt was imported from, unmet requirements; the bf16
               matrix-product rate (the MFU denominator) and a device-to-device copy's bandwidth, measured
  train        tokens/s, MFU and peak memory of a training step (forward, backward, update) of each preset at the
               guide's batch size, bashgpt beside GPT2LMHeadModel of the same dimensions, eager and compiled; then
               large at batch 4 with the levers the memory planner picks for the guide's 18 GB
  decode       greedy tokens/s at tiny: bashgpt's engine, generate() with a static cache (which Transformers
               compiles on GPUs) and plain generate(), against GPT2LMHeadModel.generate
  recipe       the guide's two-stage tiny recipe through `bashgpt train` (stage 1 on stories made here from this
               Python's documentation, stage 2 on the carried corpus), then `bashgpt eval` with task relevance
"""

import contextlib
import functools
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from common import cpu_description, gpt2_twin, interleaved, median_minmax, timed, train_step_fn
from gpu_wheels import unmet_requirements

# The guide's "Model Sizes" table: GB each preset takes at its recommended batch size.
GUIDE_MEMORY_GB = {"tiny": "~2", "medium": "~6-8", "large": "~16-18", "xlarge": "~22-24"}
PLANNED = ("large", 4, 18)  # the guide's large run: batch 4 in ~16-18 GB; the memory planner picks the levers
NO_CUDA = "sees no CUDA GPU"


class CheckProblem(Exception):
    """Something the check cannot measure, said in one line."""


@dataclass(frozen=True)
class Scale:
    """What one check measures: the guide's sizes on a GPU; the same code at tiny dimensions on a CPU (--smoke)."""

    device: str
    sizes: tuple[str, ...]
    seq: int
    warmup: int
    steps: int
    matmul_n: int
    decode_batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    reps: int
    stories: int
    compile_backend: str  # torch.compile's; the smoke run's skips Inductor's code generation (minutes on a CPU)
    planned_budget_gb: float
    smoke: bool


GPU = Scale("cuda", ("tiny", "medium", "large"), 1024, 3, 10, 8192, (1, 8), 32, 128, 5, 20_000, "inductor",
            PLANNED[2], False)
SMOKE = Scale("cpu", ("tiny",), 64, 1, 2, 256, (1, 2), 8, 8, 2, 300, "aot_eager", 2.0, True)
SMOKE_DIMENSIONS = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=128)


@dataclass
class Context:
    scale: Scale
    work: Path  # scratch: corpora, runs, the parts' rows
    deadline: float  # time.monotonic() by which the part must be done
    corpus: Path | None  # the stage-2 corpus (a `bashgpt collect` folder)
    tokenizer: Path  # the repository's tokenizer folder
    rows_file: Path

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, row: dict) -> None:
        with self.rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def row_error(row: dict):
    """A failure inside the block becomes ``row["error"]``, one line (the traceback goes to the log): the part
    goes on with its next row."""
    try:
        yield
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        row["error"] = one_line(err)


def one_line(err: Exception) -> str:
    """An exception as one line: its type and its message's first line."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


def config_for(size: str, scale: Scale):
    from bashgpt import BashGPTConfig

    return BashGPTConfig(**SMOKE_DIMENSIONS) if scale.smoke else BashGPTConfig.from_preset(size)


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str, reserved: bool = False) -> float | None:
    """The device's peak since the last ``free``: allocated (tensors), or reserved (the caching allocator's hold)."""
    if device != "cuda":
        return None
    return (torch.cuda.max_memory_reserved() if reserved else torch.cuda.max_memory_allocated()) / 2**30


# ---------------------------------------------------------------------------------------------------- environment
def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine(ctx: Context) -> None:
    import transformers

    import bashgpt

    row = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "bashgpt_from": str(Path(bashgpt.__file__).parent),
           "cpu": cpu_description(), "cores": os.cpu_count(), "driver": nvidia_driver(),
           "unmet_requirements": unmet_requirements()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    if ctx.scale.device == "cuda" and not torch.cuda.is_available():
        ctx.emit(row)
        raise CheckProblem(f"torch {torch.__version__} {NO_CUDA} (torch.cuda.is_available() is False; driver "
                           f"{row['driver'] or 'not found'}): the GPU parts cannot run")
    ctx.emit(dict(row, **ceilings(ctx.scale)))


def copy_bandwidth(device: str, gb: float, reps: int = 10) -> float:
    """GB/s of a device-to-device copy, counting the bytes read and the bytes written."""
    src = torch.randn(int(gb * 2**30 / 4), device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        sync(device)
        began = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - began)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def ceilings(scale: Scale) -> dict:
    from bashgpt.training.estimate import matmul_rate

    tflops = max(matmul_rate(scale.device, torch.bfloat16, n=scale.matmul_n, reps=20) for _ in range(3)) / 1e12
    return {"bf16_matmul_tflops": round(tflops, 3), "matmul_n": scale.matmul_n,  # the best of three medians
            "copy_GBps": round(copy_bandwidth(scale.device, 2.0 if scale.device == "cuda" else 0.05), 1)}


# ---------------------------------------------------------------------------------------------------------- train
def peak_tflops(ctx: Context) -> float:
    """The machine part's bf16 rate, or one measured now if that part gave none."""
    rows = [r for r in read_rows(ctx.rows_file.parent / "machine.jsonl") if "bf16_matmul_tflops" in r]
    if rows:
        return rows[0]["bf16_matmul_tflops"]
    from bashgpt.training.estimate import matmul_rate

    return matmul_rate(ctx.scale.device, torch.bfloat16, n=ctx.scale.matmul_n) / 1e12


def build(model_name: str, size: str, scale: Scale, levers=None):
    """(model, optimizer or None) on the device: bashgpt as its training runs it (fused LM loss, the levers' dtype,
    attention, optimizer and checkpointing), or the GPT-2 twin."""
    from bashgpt import BashGPTForCausalLM
    from bashgpt.training.levers import Levers, apply_to_model, build_optimizer

    cfg = config_for(size, scale)
    with torch.device(scale.device):
        if model_name == "GPT2LMHeadModel":
            return gpt2_twin(cfg).train(), None
        model = BashGPTForCausalLM(cfg).train()
    model.config.fused_lm_loss = True
    levers = levers or Levers(use_amp=True)
    apply_to_model(model, levers)
    if levers.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = None if levers.optim == "adamw" else build_optimizer(model, levers.optim, 1e-4, 0.1, scale.device)
    return model, optimizer


def time_steps(step, scale: Scale) -> tuple[float, list[float]]:
    """(seconds of the first step, compilation included; seconds of each timed step after the warm-up)."""
    device_sync = functools.partial(sync, scale.device)
    first = timed(step, device_sync)[1]
    for _ in range(scale.warmup):
        step()
    return first, interleaved({"step": step}, scale.steps, device_sync)["step"]


def measure_training(model_name: str, size: str, batch: int, compiled: bool, scale: Scale, tflops: float,
                     levers=None) -> dict:
    from bashgpt.training.flops import training_flops_per_token

    free(scale.device)
    row = {"size": size, "batch": batch, "seq": scale.seq, "model": model_name, "compiled": compiled}
    try:
        model, optimizer = build(model_name, size, scale, levers)
        amp = levers is None or levers.use_amp
        step = train_step_fn(model, "bf16" if amp else "fp32", batch, scale.seq, scale.device, optimizer,
                             torch.compile(model, backend=scale.compile_backend) if compiled else None)
        first, times = time_steps(step, scale)
    except torch.OutOfMemoryError:
        row["error"] = f"out of GPU memory at batch {batch} x {scale.seq}"
        return row
    finally:
        model = optimizer = step = None  # noqa: F841  (the next row starts from free memory)
    tokens_per_s = [batch * scale.seq / t for t in times]
    cfg = config_for(size, scale)
    row.update(tokens_per_s=median_minmax(tokens_per_s), step_ms=round(1e3 * statistics.median(times), 2),
               first_step_s=round(first, 1), peak_memory_gb=peak_memory_gb(scale.device),
               peak_reserved_gb=peak_memory_gb(scale.device, reserved=True),
               mfu=statistics.median(tokens_per_s) * training_flops_per_token(cfg, scale.seq) / (tflops * 1e12))
    return row


def estimate_gb(size: str, batch: int, scale: Scale, levers=None) -> float:
    from bashgpt.training.estimate import estimate
    from bashgpt.training.levers import Levers

    e = estimate(size, batch, scale.seq, levers or Levers(use_amp=True), device=scale.device,
                 config=config_for(size, scale), measure=False)
    return e.total / 2**30


def guide_batch(size: str) -> int:
    from bashgpt.training.options import STAGE_DEFAULTS

    return STAGE_DEFAULTS["language"][size][0]


# Compiled rows in the order the targets need them; a part that runs short of time leaves out the last.
COMPILED_ORDER = (("tiny", "bashgpt"), ("large", "bashgpt"), ("tiny", "GPT2LMHeadModel"), ("medium", "bashgpt"),
                  ("large", "GPT2LMHeadModel"), ("medium", "GPT2LMHeadModel"))


def train_rows(scale: Scale) -> list[tuple[str, str, bool]]:
    """(size, model, compiled) in the order they run: every eager row first (they compile nothing), then the
    compiled ones."""
    eager = [(size, model, False) for size in scale.sizes for model in ("bashgpt", "GPT2LMHeadModel")]
    return eager + [(size, model, True) for size, model in COMPILED_ORDER if size in scale.sizes]


def train(ctx: Context) -> None:
    scale, tflops = ctx.scale, peak_tflops(ctx)
    longest = {}  # seconds the slowest row of each kind (compiled or not) took, per layer
    for size, model_name, compiled in train_rows(scale):
        layers = config_for(size, scale).num_hidden_layers
        needed = longest.get(compiled, 0) * layers
        if needed > ctx.left():
            ctx.emit({"size": size, "model": model_name, "compiled": compiled,
                      "error": f"not started: about {needed:.0f} s needed, {ctx.left():.0f} s left in the part"})
            continue
        began = time.monotonic()
        row = {"size": size, "model": model_name, "compiled": compiled}
        with row_error(row):
            row = measure_training(model_name, size, guide_batch(size), compiled, scale, tflops)
            if model_name == "bashgpt":
                row.update(estimate_gb=round(estimate_gb(size, row["batch"], scale), 2), guide_gb=GUIDE_MEMORY_GB[size])
        longest[compiled] = max(longest.get(compiled, 0), (time.monotonic() - began) / layers)
        ctx.emit(row)
        if size == scale.sizes[-1] and model_name == "GPT2LMHeadModel" and not compiled:
            planned = {"kind": "planned", "size": size, "model": "bashgpt", "compiled": False}
            with row_error(planned):
                planned = planned_memory(ctx.scale, tflops)  # after the eager rows: it needs no compilation
            ctx.emit(planned)


def planned_memory(scale: Scale, tflops: float) -> dict:
    """Large at batch 4 x seq with the levers `--memory-budget 18GB` picks on this device, measured."""
    from bashgpt.training.levers import Levers
    from bashgpt.training.memory_plan import describe, plan_memory

    size, batch, budget_gb = (scale.sizes[-1], 2, scale.planned_budget_gb) if scale.smoke else PLANNED
    plan = plan_memory(size, batch, scale.seq, scale.device, int(budget_gb * 2**30), Levers(), set(),
                       config=config_for(size, scale))
    row = measure_training("bashgpt", size, batch, False, scale, tflops, plan.levers)
    row.update(kind="planned", budget_gb=budget_gb, predicted_gb=round(plan.estimate.total / 2**30, 2),
               levers={name: value for _, name, value in describe(plan.levers)}, unavailable=plan.unavailable)
    return row


# --------------------------------------------------------------------------------------------------------- decode
def decode(ctx: Context) -> None:
    from bashgpt import BashGPTForCausalLM
    from bashgpt.inference import engine

    scale = ctx.scale
    dtype = torch.bfloat16 if scale.device == "cuda" else torch.float32
    cfg = config_for("tiny", scale)
    cfg.pad_token_id, cfg.eos_token_id = 0, 1
    torch.manual_seed(0)
    with torch.device(scale.device):
        ours = BashGPTForCausalLM(cfg).eval().to(dtype)
        twin = gpt2_twin(cfg).eval().to(dtype)
    for batch in scale.decode_batches:
        prompt = torch.randint(2, cfg.vocab_size, (batch, scale.prompt_len), device=scale.device)
        kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=scale.new_tokens,
                      min_new_tokens=scale.new_tokens, do_sample=False, pad_token_id=0)
        runners = {"engine": lambda p=prompt, k=kwargs: engine.generate(ours, p, **k),
                   "generate(), static cache": lambda p=prompt, k=kwargs: ours.generate(p, cache_implementation="static", **k),
                   "generate()": lambda p=prompt, k=kwargs: ours.generate(p, **k),
                   "GPT2LMHeadModel.generate": lambda p=prompt, k=kwargs: twin.generate(p, **k)}
        row = {"batch": batch}
        with row_error(row):
            row = decode_row(runners, batch, scale)
        ctx.emit(row)


def decode_row(runners: dict, batch: int, scale: Scale) -> dict:
    """Each runner's first call (compilation included), then ``scale.reps`` interleaved timed calls."""
    row, outputs = {"batch": batch, "prompt": scale.prompt_len, "new_tokens": scale.new_tokens}, {}
    device_sync = functools.partial(sync, scale.device)
    with torch.inference_mode():
        for name, run in runners.items():
            outputs[name], seconds = timed(run, device_sync)
            row[f"{name} first call s"] = round(seconds, 2)
        times = interleaved(runners, scale.reps, device_sync)
    baseline = statistics.median(times["GPT2LMHeadModel.generate"])
    row["runners"] = {name: {"tokens_per_s": batch * scale.new_tokens / statistics.median(ts),
                             "vs_gpt2": baseline / statistics.median(ts)} for name, ts in times.items()}
    row["same_tokens_as_generate"] = {name: torch.equal(out, outputs["generate()"])
                                      for name, out in outputs.items() if name != "GPT2LMHeadModel.generate"}
    row["static_cache_compiled"] = scale.device == "cuda"  # Transformers compiles it on GPUs only
    return row


# --------------------------------------------------------------------------------------------------------- recipe
def bashgpt_command(argv: list[str]) -> None:
    """One `bashgpt` command, in this process (the console script's own entry point)."""
    from bashgpt.cli import main

    print("$ bashgpt " + " ".join(argv), flush=True)
    code = main(argv)
    if code:
        raise CheckProblem(f"`bashgpt {argv[0]}` failed (exit {code}); its one-line reason is in the part's log")


def smoke_sentences() -> list[str]:
    """English for the smoke run's stories: pydoc's language topics (reading all of `stdlib` takes seconds)."""
    from pydoc_data.topics import topics

    from stage1_data import sentences

    return sentences(list(topics.values()))


def smoke_corpus(work: Path, tokenizer: Path) -> Path:
    """A `bashgpt collect` folder of 40 small scripts (CPU smoke runs carry no corpus)."""
    scripts = work / "scripts" / "demo"
    scripts.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (scripts / f"job{i}.sh").write_text(f"#!/bin/bash\n# job {i}: list the files of step {i}\nfor f in "
                                            f"/tmp/step{i}/*; do\n  ls -l \"$f\" | grep -c x{i}\ndone\n")
    bashgpt_command(["collect", str(work / "scripts"), "--out", str(work / "corpus"), "--tokenizer", str(tokenizer)])
    return work / "corpus"


def stage_summary(out: Path) -> dict:
    log = read_rows(out / "log.jsonl")
    steps = [r for r in log if "loss" in r]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    said = (out / "train.log").read_text() if (out / "train.log").is_file() else ""
    precision = re.search(r" parameters \(.*?\) on (.+)", said)
    return {"steps": steps[-1]["step"] if steps else 0, "last_loss": steps[-1]["loss"] if steps else None,
            "best_validation_loss": min(evals) if evals else None,
            "tokens_per_s": statistics.median([r["tokens_per_s"] for r in steps[1:]]) if len(steps) > 1 else None,
            "peak_memory_gb": max((r.get("peak_memory_gb") or 0 for r in log), default=None),
            "on": precision.group(1) if precision else None}


def recipe(ctx: Context) -> None:
    from stage1_data import write_corpus

    scale, work = ctx.scale, ctx.work / "recipe"
    if ctx.corpus and not (ctx.corpus / "train.jsonl").is_file():
        raise CheckProblem(f"no stage-2 corpus at {ctx.corpus} (no train.jsonl): run bash bench/gpu_prepare.sh and "
                           f"carry .gpu")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_corpus(work / "stories", scale.stories, pool=smoke_sentences() if scale.smoke else None)
    corpus = ctx.corpus or smoke_corpus(work, ctx.tokenizer)
    size = "nano" if scale.smoke else "tiny"
    small = ["--seq-len", "64", "--batch-size", "4", "--num-epochs", "1", "--steps-per-epoch", "3",
             "--eval-blocks", "4"] if scale.smoke else []
    common = ["--tokenizer", str(ctx.tokenizer), "--report-to", "none", "--no-progress", "--device", scale.device,
              "--cache-dir", str(work / "cache"), "--overwrite", *small]
    eval_minutes = 0.05 if scale.smoke else 1.0
    minutes = max(0.2, (ctx.left() - 60 * eval_minutes - 50) / 120)  # each stage's --time-budget (~25 s start-up)
    stages = {"language": ["--model-size", size, "--dataset", str(work / "stories")],
              "code": ["--checkpoint", str(work / "language"), "--dataset", str(corpus)]}
    for stage, what in stages.items():
        began = time.monotonic()
        bashgpt_command(["train", "--stage", stage, *what, "--output-dir", str(work / stage),
                         "--time-budget", f"{minutes:.2f}", *common])
        ctx.emit({"stage": stage, "size": size, "time_budget_minutes": round(minutes, 2),
                  "wall_s": round(time.monotonic() - began, 1), **stage_summary(work / stage)})
    bashgpt_command(["eval", str(work / "code" / "best"), "--samples-per-prompt", "1", "--device", scale.device,
                     "--time-limit", f"{min(eval_minutes, max(0.05, ctx.left() / 60 - 0.3)):.2f}",
                     "--out", str(work / "eval.json"), *(["--max-new-tokens", "16", "--max-blocks", "4"] if scale.smoke else [])])
    ctx.emit(eval_row(json.loads((work / "eval.json").read_text())))


def eval_row(result: dict) -> dict:
    """What the report shows of `bashgpt eval`'s result."""
    relevance = result.get("relevance", {})
    return {"stage": "eval", "prompts_done": result.get("prompts_done", "all"),
            "bits_per_byte": {name: m["bits_per_byte"] for name, m in result["heldout"].items()},
            **{f"{kind}_{m}": result[kind][m] for kind in ("raw", "guarded") for m in ("samples", "parse_rate", "eos_rate")},
            **{f"{kind}_on_task": relevance.get(kind, {}).get("on_task") for kind in ("raw", "guarded")},
            "chance_on_task": relevance.get("chance", {}).get("on_task"), "example": (result.get("examples") or [None])[0]}


PARTS = {"machine": machine, "train": train, "decode": decode, "recipe": recipe}
