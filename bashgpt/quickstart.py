"""The whole job offline, for a newcomer: pretrain nano on English, fine-tune on this machine's bash,
evaluate, and generate a few checked samples. About 10 minutes on 2 CPU cores."""

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .data.collect import DEFAULT_DEBIAN_PACKAGES, CollectError, collect, format_summary
from .data.corpus import STDLIB, load_corpus
from .data.tokenization import default_tokenizer_dir, load_tokenizer
from .devices import bf16_is_fast, resolve_device
from .inference.generate import SamplingOptions, check_report, generate
from .training.options import TrainOptions
from .training.train import run_training


@dataclass
class QuickstartPlan:
    out: Path
    stage1_steps: int = 300
    stage2_steps: int = 200
    seq_len: int = 256
    batch_size: int = 8
    debian: bool = True  # try Debian packages when apt-get is there and the network answers
    sources: tuple = ("system",)
    eval_prompts: int = 6
    samples_per_prompt: int = 2
    max_new_tokens: int = 160
    show_samples: int = 2
    scale_with_bf16: bool = True

    @classmethod
    def smoke(cls, out: Path, source: str) -> "QuickstartPlan":
        """The reduced plan the test suite runs (well under a minute)."""
        return cls(out=out, stage1_steps=4, stage2_steps=4, seq_len=64, batch_size=4, debian=False,
                   sources=(source,), eval_prompts=2, samples_per_prompt=1, max_new_tokens=16, show_samples=1,
                   scale_with_bf16=False)


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def debian_available(timeout: float = 60.0) -> bool:
    """Whether apt-get can download here (a quick look-up with a time limit)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    try:
        proc = subprocess.run(["apt-get", "download", "--print-uris", DEFAULT_DEBIAN_PACKAGES[0]],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and "'" in proc.stdout


def collect_bash(plan: QuickstartPlan, tokenizer) -> Path:
    corpus = plan.out / "bash-corpus"
    sources = list(plan.sources)
    if plan.debian and debian_available():
        sources.append("debian:")
        say("Debian packages are reachable: adding the default 42 bash-heavy packages")
    try:
        manifest = collect(sources, corpus, tokenizer=tokenizer)
    except CollectError as err:
        if "debian:" not in sources:
            raise
        print(f"   Debian packages failed ({err}); using this machine's scripts only", flush=True)
        manifest = collect(list(plan.sources), corpus, tokenizer=tokenizer)
    print(format_summary(manifest, corpus, block_size=plan.seq_len), flush=True)
    return corpus


def run_quickstart(plan: QuickstartPlan, device: str = "auto") -> dict:
    start = time.monotonic()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    tokenizer = load_tokenizer(default_tokenizer_dir())
    amp = bf16_is_fast(device)  # about 2.5x faster for nano on a CPU with native bf16
    if amp and plan.scale_with_bf16:  # the time saved buys a better model, within the same ~10 minutes
        plan.stage1_steps, plan.stage2_steps = plan.stage1_steps * 7 // 3, plan.stage2_steps * 5 // 2
    common = dict(model_size="nano", batch_size=plan.batch_size, seq_len=plan.seq_len, device=device,
                  cache_dir=str(out / "cache"), overwrite=True, num_epochs=1, eval_blocks=64, use_amp=amp)

    say(f"Stage 1: pretraining the nano preset on offline English ({STDLIB}: Python's own documentation), "
        f"{plan.stage1_steps} steps on {device}")
    s1 = run_training(TrainOptions(stage="language", dataset=STDLIB, output_dir=str(out / "stage1"),
                                   steps_per_epoch=plan.stage1_steps, learning_rate=1e-3,
                                   warmup_steps=max(plan.stage1_steps // 10, 1), **common))

    say("Collecting shell scripts for stage 2 (read and parsed only, never run)")
    corpus = collect_bash(plan, tokenizer)

    say(f"Stage 2: fine-tuning on that bash, {plan.stage2_steps} steps, from the stage-1 model")
    s2 = run_training(TrainOptions(stage="code", dataset=str(corpus), checkpoint=str(out / "stage1"),
                                   output_dir=str(out / "stage2"), steps_per_epoch=plan.stage2_steps,
                                   learning_rate=5e-4, warmup_steps=max(plan.stage2_steps // 10, 1),
                                   **{k: v for k, v in common.items() if k != "model_size"}))

    say("Evaluating: held-out loss on both corpora, and the bash the model writes")
    from .inference.evaluate import add_to_model_card, evaluate, format_table, load_prompts, save_json
    from .inference.modelio import load_model_and_tokenizer

    best = Path(s2["best"])
    model, tok = load_model_and_tokenizer(best)
    sampling = SamplingOptions(max_new_tokens=plan.max_new_tokens)
    result = evaluate(model, tok, list(load_corpus(STDLIB)["validation"]["text"]),
                      list(load_corpus(str(corpus))["validation"]["text"]), load_prompts()[:plan.eval_prompts],
                      samples_per_prompt=plan.samples_per_prompt, sampling=sampling, seq_len=plan.seq_len,
                      max_blocks=32, real_scripts=30)
    print(format_table(result), flush=True)
    save_json(out / "eval.json", result)
    add_to_model_card(best, result)

    say("A few samples, with their checks (never executed)")
    for prompt in load_prompts()[:plan.show_samples]:
        sample = generate(model, tok, prompt, sampling, seed=0)[0]
        print(f"----- prompt -----\n{prompt}----- model -----\n{sample.completion}\n" + "\n".join(check_report(sample.script)))

    elapsed = time.monotonic() - start
    summary = {"model": str(best), "stage1": s1["best"], "curves": [s1["curves"], s2["curves"]],
               "eval": str(out / "eval.json"), "corpus": str(corpus), "minutes": round(elapsed / 60, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"Done in {elapsed / 60:.1f} minutes.")
    print(f"""   model:        {best}   (AutoModelForCausalLM / pipeline, model card README.md inside)
   plots:        {s1['curves']}
                 {s2['curves']}
   evaluation:   {out / 'eval.json'}
   bash corpus:  {corpus}

Next:
   bashgpt generate {best} --prompt '#!/bin/bash' --check
   # the guide's real runs (need the network for TinyStories; GPU or Apple silicon recommended):
   bashgpt collect debian: --out data/bash
   accelerate launch recipes/stage1.py --model-size tiny --batch-size 4 --num-epochs 3 --steps-per-epoch 500 --learning-rate 6e-5 --warmup-steps 100
   accelerate launch recipes/stage2.py --model-size tiny --checkpoint runs/language-tiny --dataset data/bash --batch-size 4 --num-epochs 5 --steps-per-epoch 200 --learning-rate 3e-5 --warmup-steps 50""",
          flush=True)
    return summary

