"""The whole job offline, for a newcomer: pretrain nano on English, fine-tune on real bash, evaluate,
and generate a few checked samples, in at most 10 minutes of wall-clock time on any 2-core machine.

The budget is time, not steps: collecting and tokenising take what they take, then each training
stage runs until its share of what is left is used (learning rate annealed over that time), and
evaluation stops taking new prompts at the deadline. A slow or busy machine gets a less-trained
model, never a late one.
"""

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .data.collect import DEFAULT_DEBIAN_PACKAGES, CollectError, collect, format_summary
from .data.corpus import STDLIB, load_corpus
from .data.packing import packed_splits
from .data.tokenization import default_tokenizer_dir
from .data.tokenizer_training import train_on_corpora
from .devices import bf16_is_fast, resolve_device
from .inference.generate import check_report
from .model_folder import load_tokenizer
from .sampling import SamplingOptions
from .training.options import TrainOptions
from .training.train import run_training


@dataclass
class QuickstartPlan:
    out: Path
    minutes: float | None = 10.0  # the whole job, start to end; None: fixed step counts (the test suite's smoke run)
    stage1_share: float = 0.2  # of the training time: English helps bash less than bash does
    eval_share: float = 0.2  # of the time left after data preparation, kept for evaluation and samples
    stage1_steps: int = 100_000  # upper limits; under a time budget the clock ends each stage
    stage2_steps: int = 100_000
    # stage 2 validates this often and stops after 3 validations without a new best (best/ keeps the lowest
    # validation loss): its few hundred short scripts are learnt by heart within minutes on a fast machine (44
    # passes on a Xeon with AMX: training loss 0.03, held-out bash 10.5 nats/token; validation was lowest at step 800)
    stage2_eval_steps: int = 200
    stage2_patience: int = 3
    seq_len: int = 256
    batch_size: int = 8
    max_script_tokens: int | None = 256  # stage 2 trains on whole scripts this short, so the model learns to end
    strip_licences: bool = True  # stage 2 drops licence-notice header comments
    shebang_only: bool = True  # stage 2 keeps only files that start with #! (no completions, no sourced libraries)
    vocab_size: int | None = 8192  # a BPE trained on the run's own English and cleaned bash (~7 s here), the job's
    # one tokenizer (stage 2's length filter counts with it): as compact on bash as the shipped 32,000-token one, and a 4x smaller LM head (2.4x nano's training throughput, bench/quickstart.md); None: the shipped tokenizer
    debian: bool = True  # try Debian packages when apt-get is there and the network answers
    sources: tuple = ("system",)
    # description-and-command pairs in the prompt's shape (pair_sources.py): what teaches which command a task calls
    # for. Not tldr and nl2sh-alfa: their ~70,000 pairs would take minutes of the ten to deduplicate and parse, and
    # were never measured here (no network to fetch them)
    pairs: tuple = ("man", "whatis", "cheat", "eg")
    pair_share: float | None = 0.5  # share of stage 2's bash tokens that are pairs (train's --pair-share: each
    # repeated to make it up; bench/pairs.md: relevance 10% [5-18%] at 50% against 3% [1-9%] with each pair once, without replay)
    pair_loss: str | None = None  # train's --pair-loss (None: its stage-2 default, each pair's command alone)
    english_replay: float = 0.1  # share of stage 2's training tokens that are stage 1's English, so the model keeps
    # the language its prompts are written in (bench/pairs.md: 2.0 nats below a uniform guess at 10%, 0.6 at none,
    # 2.5 at 20%, where relevance fell within its noise)
    eval_prompts: int | None = None  # the first this many tasks of tasks.txt (None: all 74), one sample each: more
    samples_per_prompt: int = 1  # tasks rather than more samples of each, for a task relevance that means something
    max_new_tokens: int = 192
    show_samples: int = 2

    @classmethod
    def smoke(cls, out: Path, source: str) -> "QuickstartPlan":
        """The reduced plan the test suite runs (well under a minute): fixed step counts, no clock."""
        return cls(out=out, minutes=None, stage1_steps=4, stage2_steps=4, seq_len=64, batch_size=4,
                   max_script_tokens=64, debian=False, sources=(source,), pairs=(), eval_prompts=2, samples_per_prompt=1,
                   max_new_tokens=16, show_samples=1)


class Clock:
    """The quickstart's deadline."""

    def __init__(self, minutes: float | None):
        self.start = time.monotonic()
        self.deadline = None if minutes is None else self.start + minutes * 60

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def minutes_used(self) -> float:
        return (time.monotonic() - self.start) / 60


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


def collect_bash(plan: QuickstartPlan) -> Path:
    """The collected corpus (its token counts come later, from the job's tokenizer)."""
    corpus = plan.out / "bash-corpus"
    sources = list(plan.sources)
    if plan.debian and debian_available():
        sources.append("debian:")
        say(f"Debian packages are reachable: adding the default {len(DEFAULT_DEBIAN_PACKAGES)} shell-rich packages")
    try:
        manifest = collect(sources, corpus, pairs=plan.pairs)
    except CollectError as err:
        if "debian:" not in sources:
            raise
        print(f"   Debian packages failed ({err}); using this machine's scripts only", flush=True)
        manifest = collect(list(plan.sources), corpus, pairs=plan.pairs)
    print(format_summary(manifest, corpus, block_size=plan.seq_len), flush=True)
    return corpus


LICENCE_WORDS = re.compile(r"copyright|licen[cs]e|warranty|\bGNU\b|SPDX|free software|\(c\)", re.IGNORECASE)


def without_licence_header(text: str) -> str:
    """``text`` without its opening comment block when that block is a licence notice (the manifest keeps
    each file's licence): a model trained for minutes should spend them on code, not on reciting the GPL."""
    lines = text.splitlines(keepends=True)
    start = 1 if lines and lines[0].startswith("#!") else 0
    end = start
    while end < len(lines) and (lines[end].lstrip().startswith("#") or not lines[end].strip()):
        end += 1
    if LICENCE_WORDS.search("".join(lines[start:end])):
        return "".join(lines[:start] + lines[end:])
    return text


BYTES_PER_TOKEN_CAP = 6  # no script of at most 256 tokens took more (5.5 at most, of 3,182 collected from Debian)


def cleaned_scripts(corpus: Path, out: Path, strip_licences: bool = True, shebang_only: bool = False,
                    max_bytes: int | None = None) -> Path:
    """A copy of ``corpus`` with only the files that start with ``#!`` (``shebang_only``), without licence header
    comments (``strip_licences``) and of at most ``max_bytes`` bytes: text only, before any tokenizer sees it."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines() if line]
        if shebang_only:
            rows = [r for r in rows if r["text"].startswith("#!")]
        if strip_licences:
            rows = [{**r, "text": without_licence_header(r["text"])} for r in rows]
        if max_bytes:
            rows = [r for r in rows if len(r["text"].encode()) <= max_bytes]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def job_tokenizer(plan: QuickstartPlan, bash: Path, common: dict):
    """The job's one tokenizer: a BPE trained on the English and ``bash`` (``plan.vocab_size``), or the shipped one;
    ``common`` (the training options) is told which."""
    if not plan.vocab_size:
        return load_tokenizer(default_tokenizer_dir())
    say(f"Training its own BPE tokenizer ({plan.vocab_size:,} tokens) on the English and the bash it will learn")
    report = train_on_corpora(STDLIB, str(bash), plan.out / "tokenizer", vocab_size=plan.vocab_size,
                              cache_dir=common["cache_dir"])  # the held-out text, tokenised here for the whole job
    print(f"   bytes per token on held-out text: English {report['bytes_per_token']['english_validation']}, "
          f"bash {report['bytes_per_token']['bash_validation']}", flush=True)
    common["tokenizer"] = str(plan.out / "tokenizer")
    return load_tokenizer(plan.out / "tokenizer")


def run_quickstart(plan: QuickstartPlan, device: str = "auto") -> dict:
    clock = Clock(plan.minutes)
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    amp = bf16_is_fast(device)  # about 2.5x faster for nano on a CPU with native bf16
    common = dict(model_size="nano", batch_size=plan.batch_size, seq_len=plan.seq_len, device=device,
                  cache_dir=str(out / "cache"), overwrite=True, num_epochs=1, eval_blocks=64, use_amp=amp)
    if plan.minutes is not None:
        say(f"Budget: {plan.minutes:g} minutes in all. Data first, then each training stage gets its share of "
            f"the time left, then evaluation.")

    say("Collecting shell scripts for stage 2 (read and parsed only, never run)")
    corpus = collect_bash(plan)
    stage2_data = corpus
    if plan.max_script_tokens:
        stage2_data = cleaned_scripts(corpus, out / "bash-clean", plan.strip_licences, plan.shebang_only,
                                      max_bytes=plan.max_script_tokens * BYTES_PER_TOKEN_CAP)  # none could fit
    tokenizer = job_tokenizer(plan, stage2_data, common)
    say("Tokenising the English")  # cached where run_training looks, so stage 1 starts at once (stage 2's bash,
    # a few hundred thousand tokens, takes a second; its held-out scripts are already in the cache from the
    # tokenizer's report, and the 256-token cut is taken from the cached stream)
    packed_splits(load_corpus(STDLIB), tokenizer, plan.seq_len, cache_dir=common["cache_dir"])
    eval_reserve = plan.eval_share * clock.left()  # seconds kept for evaluation and samples
    budget1 = budget2 = None
    if plan.minutes is not None:
        budget1 = max((clock.left() - eval_reserve) * plan.stage1_share, 30) / 60

    say(f"Stage 1: pretraining the nano preset on offline English ({STDLIB}: Python's own documentation) on "
        f"{device}" + (f", for {budget1:.1f} minutes" if budget1 else f", {plan.stage1_steps} steps"))
    s1 = run_training(TrainOptions(stage="language", dataset=STDLIB, output_dir=str(out / "stage1"),
                                   steps_per_epoch=plan.stage1_steps, learning_rate=1e-3, warmup_steps=20,
                                   time_budget=budget1, **common))
    if plan.minutes is not None:  # stage 2 gets what stage 1 left, less ~20 s to load, validate and save
        budget2 = max(clock.left() - eval_reserve - 20, 30) / 60

    say("Stage 2: fine-tuning on that bash, from the stage-1 model" +
        (f", for {budget2:.1f} minutes" if budget2 else f", {plan.stage2_steps} steps"))
    s2 = run_training(TrainOptions(stage="code", dataset=str(stage2_data), checkpoint=str(out / "stage1"),
                                   output_dir=str(out / "stage2"), steps_per_epoch=plan.stage2_steps,
                                   learning_rate=1e-3, warmup_steps=20, time_budget=budget2,
                                   eval_steps=plan.stage2_eval_steps, early_stopping=plan.stage2_patience,
                                   replay=STDLIB if plan.english_replay else None,
                                   replay_share=plan.english_replay or 0.2,
                                   pair_share=(plan.pair_share or 0) if plan.pairs else 0, pair_loss=plan.pair_loss,
                                   max_document_tokens=plan.max_script_tokens,
                                   **{k: v for k, v in common.items() if k != "model_size"}))

    say("Evaluating: held-out loss on both corpora, and the bash the model writes")
    from .data.tasks import load_tasks
    from .inference.evaluate import add_to_model_card, evaluate, format_table, save_json, task_verdict
    from .model_folder import load_model_and_tokenizer

    best = Path(s2["best"])
    model, tok = load_model_and_tokenizer(best)
    sampling = SamplingOptions(max_new_tokens=plan.max_new_tokens)
    result = evaluate(model, tok, load_corpus(STDLIB)["validation"], load_corpus(str(corpus))["validation"],
                      load_tasks()[:plan.eval_prompts], samples_per_prompt=plan.samples_per_prompt, sampling=sampling,
                      seq_len=plan.seq_len, max_blocks=32, real_scripts=30, deadline=clock.deadline,
                      cache_dir=common["cache_dir"])
    print(format_table(result), flush=True)
    save_json(out / "eval.json", result)
    add_to_model_card(best, result)

    say("A few guarded samples from the evaluation, with their checks (never executed)")
    for example in result["examples"][:plan.show_samples]:
        verdict = task_verdict(example)
        print(f"----- prompt -----\n{example['prompt']}----- model -----\n{example['completion']}\n"
              + "\n".join(check_report(example["prompt"] + example["completion"]) + ([verdict] if verdict else [])))

    minutes = clock.minutes_used()
    summary = {"model": str(best), "stage1": s1["best"], "curves": [s1["curves"], s2["curves"]],
               "eval": str(out / "eval.json"), "corpus": str(corpus), "minutes": round(minutes, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"Done in {minutes:.1f} minutes.")
    print(f"""   model:        {best}   (AutoModelForCausalLM / pipeline, model card README.md inside)
   plots:        {s1['curves']}
                 {s2['curves']}
   evaluation:   {out / 'eval.json'}
   bash corpus:  {corpus}

Next:
   bashgpt generate {best} --prompt '#!/bin/bash\\n# what the script should do\\n' --escapes --num-samples 4 --check
   # the guide's real runs (need the network for TinyStories; GPU or Apple silicon recommended):
   bashgpt collect debian: --out data/bash
   accelerate launch recipes/stage1.py --model-size tiny --batch-size 4 --num-epochs 3 --steps-per-epoch 500 --learning-rate 6e-5 --warmup-steps 100
   accelerate launch recipes/stage2.py --model-size tiny --checkpoint runs/language-tiny --dataset data/bash --batch-size 4 --num-epochs 5 --steps-per-epoch 200 --learning-rate 3e-5 --warmup-steps 50""",
          flush=True)
    return summary

