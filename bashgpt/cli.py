"""The ``bashgpt`` command: one sub-command per job, each a thin layer over library code."""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .configuration_bashgpt import PRESETS
from .devices import DEVICES
from .errors import UserError
from .inference.gguf_export import DTYPES as GGUF_DTYPES


def cmd_collect(args):
    from .data.collect import collect, format_summary
    from .model_folder import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    manifest = collect(args.sources, args.out, validation_fraction=args.validation_fraction, seed=args.seed,
                       pairs=tuple(k for k in args.pairs.split(",") if k),
                       max_bytes=args.max_bytes, near_threshold=args.near_threshold, cache=args.cache,
                       tokenizer=tokenizer)
    print(format_summary(manifest, args.out, block_size=args.block_size))


def cmd_tokenizer_train(args):
    from .data.tokenizer_training import train_on_corpora

    report = train_on_corpora(args.english, args.bash, args.out, vocab_size=args.vocab_size)
    print(json.dumps(report, indent=2))
    print(f"tokenizer written to {args.out}")


def cmd_data_stats(args):
    from .data.corpus import load_corpus
    from .data.packing import format_stats, packed_splits, split_stats
    from .model_folder import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    packed = packed_splits(load_corpus(args.dataset), tokenizer, args.seq_len, cache_dir=args.cache)
    print(format_stats(args.dataset, {s: split_stats(ds) for s, ds in packed.items()}, args.seq_len))


def cmd_train(args):
    from .training.options import options_from_args
    from .training.train import run_training

    run_training(options_from_args(args))


def load_for_inference(model_dir: str, device: str, trust_remote_code: bool = False):
    from .devices import resolve_device
    from .model_folder import load_foreign_model, load_model_and_tokenizer, read_model_type

    folder = Path(model_dir)
    model_type = read_model_type(folder)
    if trust_remote_code and model_type not in (None, "bashgpt"):
        model, tokenizer = load_foreign_model(folder, trust_remote_code=True)
    else:
        model, tokenizer = load_model_and_tokenizer(model_dir)
    return model.to(resolve_device(device)), tokenizer


def cmd_generate(args):
    from .inference.generate import check_report, generate, rank, sample_record
    from .sampling import SamplingOptions

    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --prompt-file {args.prompt_file}: {err}") from None
        if not prompt.strip():
            raise UserError(f"--prompt-file {args.prompt_file} is empty; put the opening of a script in it")
    else:
        prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    if not prompt:
        raise UserError("the prompt is empty; pass --prompt TEXT (e.g. '#!/bin/bash') or a non-empty --prompt-file")
    if args.num_samples <= 0:
        raise UserError(f"--num-samples must be positive, got {args.num_samples}")
    if args.examples:
        prompt = with_retrieved_examples([prompt], args)[0]
    model, tokenizer = load_for_inference(args.model_dir, args.device, args.trust_remote_code)
    sampling = SamplingOptions.from_args(args)
    if args.no_guard and args.num_samples == 1 and not args.json:  # raw, one sample: stream it as it comes
        print(f"----- sample -----\n{prompt}", end="", flush=True)
        samples = generate(model, tokenizer, prompt, sampling, seed=args.seed, stream=sys.stdout)
    else:
        samples = generate(model, tokenizer, prompt, sampling, num_samples=args.num_samples, seed=args.seed,
                           guard=not args.no_guard)
        samples = rank(model, tokenizer, samples) if len(samples) > 1 else samples
    for i, sample in enumerate(samples, 1):
        if args.json:
            print(json.dumps({**sample_record(sample), "rank": i}), flush=True)
            continue
        if not (args.no_guard and args.num_samples == 1):
            best = " (ranked: parses, then ShellCheck, then likelihood)" if len(samples) > 1 else ""
            print(f"----- sample {i} of {len(samples)}{best} -----\n{sample.script}", end="")
        print()
        if not sample.ended:
            print("  (stopped at --max-new-tokens before end of text" +
                  ("; cut back to its last complete line)" if sample.guarded else ")"))
        if not sample.good:
            print("  NOT GOOD: " + ("it does not parse" if not sample.parses else "it writes no command (nothing, "
                                   "or only comments, exit or :)"))
        if args.check:
            print("\n".join(check_report(sample.script)))


def example_index(args):
    """The pairs --examples retrieves from: --pairs, else the corpus the model was fine-tuned on."""
    from .inference.examples import PairIndex
    from .model_folder import trained_on

    if args.examples < 0:
        raise UserError(f"--examples must be 0 or more, got {args.examples}")
    folder = args.pairs or trained_on(args.model_dir, "code")
    if not folder:
        raise UserError("--examples needs pairs to retrieve from and this model does not say what it was fine-tuned "
                        "on; pass --pairs a 'bashgpt collect --pairs ...' folder")
    return PairIndex.from_corpus(folder)


def with_retrieved_examples(prompts: list, args) -> list:
    """Tasks (or plain prompts) with the --examples closest pairs above each task."""
    from dataclasses import replace

    from .data.tasks import Task, task_statement
    from .inference.examples import with_examples

    index = example_index(args)

    def one(prompt: str) -> str:
        return with_examples(prompt, index.closest(task_statement(prompt), args.examples))

    return [replace(p, prompt=one(p.prompt)) if isinstance(p, Task) else one(p) for p in prompts]


def add_example_flags(p) -> None:
    p.add_argument("--examples", type=int, default=0, metavar="K",
                   help="write the K description-and-command pairs closest to the prompt's task (BM25) above it, as "
                        "commented examples (default 0: none)")
    p.add_argument("--pairs", metavar="DIR", help="the 'bashgpt collect --pairs' folder --examples retrieves from "
                                                 "(default: the corpus the model was fine-tuned on)")


def cmd_eval(args):
    deadline = time.monotonic() + args.time_limit * 60 if args.time_limit else None
    from .data.cache_dirs import packed_cache_dir
    from .data.corpus import load_corpus
    from .data.nl2sh import load_nl2sh
    from .data.tasks import TASKS_FILE, load_tasks
    from .inference.evaluate import add_to_model_card, evaluate, evaluate_nl2sh, format_table, load_prompts, save_json
    from .model_folder import check_model_folder, trained_on
    from .sampling import SamplingOptions

    prompts = load_prompts(Path(args.prompts)) if args.prompts else load_tasks(Path(args.tasks or TASKS_FILE))
    if args.examples:
        prompts = with_retrieved_examples(prompts, args)
    nl2sh_tasks = load_nl2sh()[:args.nl2sh_tasks] if args.nl2sh else None
    model_dir = Path(args.model_dir) if args.trust_remote_code else check_model_folder(args.model_dir)
    language = args.language_data or trained_on(model_dir, "language")
    code = args.code_data or trained_on(model_dir, "code")
    if not language and not code:
        raise UserError("cannot tell what data this model was trained on; pass --language-data and/or --code-data")
    model, tokenizer = load_for_inference(str(model_dir), args.device, args.trust_remote_code)
    held_out = {name: load_corpus(src)["validation"] if src else None for name, src in (("language", language),
                                                                                          ("code", code))}
    result = evaluate(model, tokenizer, held_out["language"], held_out["code"], prompts,
                      samples_per_prompt=args.samples_per_prompt, sampling=SamplingOptions.from_args(args),
                      seq_len=args.seq_len, max_blocks=args.max_blocks, seed=args.seed, deadline=deadline,
                      cache_dir=packed_cache_dir())  # where training tokenised them
    if nl2sh_tasks:
        result["nl2sh"] = evaluate_nl2sh(model, tokenizer, nl2sh_tasks, SamplingOptions.from_args(args), seed=args.seed)
    result["data"] = {"language": language, "code": code, "examples_in_prompt": args.examples}
    print(format_table(result))
    out = Path(args.out) if args.out else model_dir / "eval.json"
    save_json(out, result)
    add_to_model_card(model_dir, result)
    print(f"\nJSON written to {out}; figures added to {model_dir / 'README.md'}")


def cmd_export(args):
    from .model_folder import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    if args.format == "gguf":
        from .inference.gguf_export import export_gguf

        out = export_gguf(model, tokenizer, args.out, dtype=args.dtype, name=Path(args.model_dir).resolve().name)
        print(f"GGUF ({args.dtype}) written to {out}: llama.cpp's gpt2 architecture with its tokenizer; "
              f"e.g. llama-cli -m {out} -p '#!/bin/bash' -n 128")
        return
    from .inference.export import export_gpt2

    out = export_gpt2(model, tokenizer, args.out)
    print(f"stock GPT2LMHeadModel folder written to {out} (no custom code; loads with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}))")


def cmd_quickstart(args):
    from .quickstart import QuickstartPlan, run_quickstart

    plan = QuickstartPlan(out=Path(args.out), minutes=args.minutes)
    if args.smoke:
        plan = QuickstartPlan.smoke(Path(args.out), args.smoke_source or "system")
    if args.no_debian:
        plan.debian = False
    run_quickstart(plan, device=args.device)


def add_sampling_arguments(p, max_new_tokens: int | None):
    from .sampling import DEFAULTS

    model_or = "default: the model's generation_config.json, else {}"
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=model_or.format(DEFAULTS["max_new_tokens"]) if max_new_tokens is None else None)
    for flag, kind in (("temperature", float), ("top-p", float), ("top-k", int), ("repetition-penalty", float)):
        p.add_argument(f"--{flag}", type=kind, default=None, help=model_or.format(DEFAULTS[flag.replace("-", "_")]))
    p.add_argument("--seed", type=int, default=None if max_new_tokens is None else 0, help="seed for sampling")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a folder of another model type to run its own Python code (only for folders you trust)")


def cmd_estimate(args):
    from .devices import resolve_device
    from .training.estimate import estimate, fit_advice, format_estimate
    from .training.levers import require_optimizer
    from .training.memory_plan import format_candidates, format_plan, given_levers, parse_budget, plan_memory

    for name in ("batch_size", "seq_len", "gradient_accumulation_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    device = resolve_device(args.device)
    levers, fixed = given_levers(args, device)
    if "optim" in fixed:
        require_optimizer(levers.optim, device)
    if args.memory_budget:
        plan = plan_memory(args.model_size, args.batch_size, args.seq_len, device, parse_budget(args.memory_budget),
                           levers, fixed, args.gradient_accumulation_steps)
        print(f"settings considered for {args.model_size} at batch {args.batch_size} x {args.seq_len} on {device} "
              f"(cost: time per step against the fastest):")
        print(format_candidates(plan))
        print(format_plan(plan, fixed, device))
        levers = plan.levers
    e = estimate(args.model_size, args.batch_size, args.seq_len, levers, args.gradient_accumulation_steps, device=device,
                 budgeted=bool(args.memory_budget))
    print(format_estimate(e, args.batch_size, args.seq_len, args.gradient_accumulation_steps))
    advice = None if args.memory_budget else fit_advice(e)
    if advice:
        print(f"warning: {advice}")


def build_parser() -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    from .data.cache_dirs import cache_root, packed_cache_dir
    from .data.collect import PAIR_KINDS
    from .data.tokenization import default_tokenizer_dir
    from .training.options import USAGE as TRAIN_USAGE
    from .training.options import HelpFormatter, MemoryLevers, defaults_table, train_parser

    parser = argparse.ArgumentParser(
        prog="bashgpt", description="Train your own GPT-style model that writes bash. New here? Run: bashgpt quickstart",
        epilog="Each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="build the stage-2 bash corpus from folders, Debian packages, this machine or the Hub",
                       description="Find shell scripts, clean and deduplicate them, split by file, write "
                                   "train.jsonl, validation.jsonl and manifest.json. Scripts are never executed.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a folder (e.g. git clones), 'system' (this machine's scripts), 'debian:PKG,PKG' "
                        "('debian:' alone = the default shell-rich packages, bashgpt/data/debian_packages.txt), or "
                        "'hub:NAME[:COLUMN]'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--validation-fraction", type=float, default=0.05, help="share of files held out (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="skip files larger than this (default 1 MB)")
    p.add_argument("--near-threshold", type=float, default=0.7, help="MinHash Jaccard threshold for near-duplicates")
    p.add_argument("--cache", default=str(cache_root()), help="where Debian packages are downloaded and unpacked")
    p.add_argument("--tokenizer", default=str(default_tokenizer_dir()), help="tokenizer for the token counts")
    p.add_argument("--block-size", type=int, default=1024, help="sequence length for the summary's sequence count")
    p.add_argument("--pairs", default="", metavar="KIND[,KIND]",
                   help=f"add description-and-command pairs in the prompt's shape to the training split: "
                        f"{', '.join(PAIR_KINDS)}. comment/header: cut from the collected scripts; man: the EXAMPLES "
                        f"of the Debian sources' and (with 'system') this machine's man pages; whatis: their NAME "
                        f"lines over a command of the program from the other pairs; cheat, eg: PyPI's "
                        f"example collections (fetched with pip); tldr, nl2sh-alfa: online, skipped offline "
                        f"(default: none; bench/pairs.md measures what each does to task relevance)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train a stage: --stage language (TinyStories) or --stage code (bash)",
                       description="Train on HF Trainer with NaN-skipping, loss clamping, best-model saving and resume. "
                                   "Numeric defaults follow the reference guide's command for the stage and size.",
                       parents=[train_parser(add_help=False)], formatter_class=HelpFormatter, epilog=defaults_table(),
                       usage=TRAIN_USAGE)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="write bash with a trained model, line by line syntax-checked (never run)")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a saved model folder, e.g. runs/code-tiny/best")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="#!/bin/bash\n", help="the opening of the script (default: a bash shebang)")
    src.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--escapes", action="store_true", help="interpret \\n and \\t in --prompt")
    p.add_argument("--num-samples", type=int, default=1,
                   help="write N scripts and print them best first: those that parse, then fewer ShellCheck "
                        "findings by severity, then the model's higher mean log-likelihood")
    p.add_argument("--no-guard", action="store_true",
                   help="raw sampling, streamed: no line-by-line syntax check (by default a line that breaks the "
                        "script is sampled again, end of text comes only where the script parses, and a script "
                        "that runs out of tokens is cut back to its last complete line)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--check", action="store_true", help="run bash -n and ShellCheck on each sample (never executes it)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sample instead of streaming: text "
                   "(prompt included), ended (end of text was generated), parses (bash -n), shellcheck counts")
    add_example_flags(p)
    add_sampling_arguments(p, None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="held-out loss on both corpora and the quality of generated bash")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--language-data", help="stage-1 corpus (default: what the model was trained on)")
    p.add_argument("--code-data", help="bash corpus (default: what the model was fine-tuned on)")
    p.add_argument("--tasks", help="task file: prompts with the commands each task needs, for task relevance "
                                   "(default: the shipped 74 tasks, bashgpt/data/tasks.txt, which says the format)")
    p.add_argument("--prompts", help="plain prompt file instead, prompts separated by lines '===' (no task relevance)")
    p.add_argument("--nl2sh", action="store_true", help="also score NL2SH-ALFA's 300 tasks (pip install "
                   "'bashgpt[nl2sh]'): one guarded sample each, credited when it uses the reference command's "
                   "utilities; nothing is run")
    p.add_argument("--nl2sh-tasks", type=int, metavar="N", help="only the first N NL2SH-ALFA tasks")
    p.add_argument("--samples-per-prompt", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-blocks", type=int, default=100, help="validation sequences per corpus")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="start no prompt that would end past this many minutes from the command's start (the "
                        "result says how many prompts were done; default: no limit)")
    p.add_argument("--out", help="JSON output (default MODEL_DIR/eval.json)")
    add_example_flags(p)
    add_sampling_arguments(p, 200)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export for production: a stock GPT-2 folder, or one GGUF file for llama.cpp",
                       description="Export a LayerNorm + learned-position model (the default architecture). "
                                   "gpt2: a GPT2LMHeadModel folder with no custom code (Transformers 4.x and 5.x, "
                                   "ONNX exporters). gguf: one file llama.cpp, llama-cpp-python, Ollama and LM Studio "
                                   "load, tokenizer included.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--format", choices=("gpt2", "gguf"), default="gpt2", help="what to write (default: gpt2)")
    p.add_argument("--out", required=True, help="the folder (gpt2) or file, e.g. model.gguf (gguf) to write")
    p.add_argument("--dtype", choices=GGUF_DTYPES, default="f16", help="GGUF matrix precision (default: f16)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("estimate", help="memory by part, whether it fits, FLOPs and time per step, before training",
                       parents=[HfArgumentParser(MemoryLevers, add_help=False)],  # the same flags as train's
                       description="Estimate a run's memory (weights, gradients, optimizer state, activations) and "
                                   "step time from this device's measured matmul rate.")
    p.add_argument("--model-size", choices=list(PRESETS), required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("quickstart", help="the whole job offline on this machine (~10 minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--no-debian", action="store_true", help="do not try Debian packages for stage 2")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget for the whole job (default 10); more time buys a better model")
    p.add_argument("--smoke", action="store_true", help="a tiny run that finishes in under a minute (for tests)")
    p.add_argument("--smoke-source", help=argparse.SUPPRESS)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train on English text plus a bash corpus",
                        description="Train a byte-level BPE on an English corpus and a bash corpus; reports "
                                    "bytes per token on both held-out splits.")
    t.add_argument("--english", default="stdlib", help="English corpus: 'stdlib' (offline), a path, or a Hub name")
    t.add_argument("--bash", required=True, help="a bashgpt collect output folder")
    t.add_argument("--out", default="tokenizer", help="output folder (default tokenizer/)")
    t.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size (default 32000; keep < 32767)")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="dataset information")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("stats", help="sequences and tokens per split, after packing")
    d.add_argument("--dataset", required=True, help="'stdlib', a path, a bashgpt collect folder, or a Hub name")
    d.add_argument("--seq-len", type=int, default=1024)
    d.add_argument("--tokenizer", default=str(default_tokenizer_dir()))
    d.add_argument("--cache", default=str(packed_cache_dir()))
    d.set_defaults(func=cmd_data_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars; bashgpt shows its own progress
    hf_logging.set_verbosity_error()
    # datasets' file readers log a file they cannot parse, then raise; bashgpt names the file in its own one line
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    try:
        args.func(args)
    except UserError as err:
        print(f"bashgpt: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("bashgpt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
