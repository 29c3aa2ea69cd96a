"""Guarded generation's speed: tokens/s of ``bashgpt generate``'s guarded samples, this checkout against another
(an older commit in a git worktree), taking turns in one run.

    git worktree add /tmp/before <commit>
    python bench/guard.py --model runs/quickstart/stage1/best runs/quickstart/stage2/best --before /tmp/before

Each side runs in its own process (``PYTHONPATH`` set to its checkout), loads the model once, warms up on one
prompt, then times ``generate(..., guard=True)`` on the first ``--prompts`` tasks of the task set, ``--samples`` each,
from the same seed. Kept tokens are the completions' tokens as returned (what the user gets); every line the guard
took back cost tokens that are not counted. The sides alternate ``--reps`` times; medians and their ratio are printed
and written to bench/guard.md and bench/guard.json. Nothing generated is executed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(args) -> None:
    """One side's measurement, printed as one JSON line (run with PYTHONPATH set to its checkout)."""
    import torch

    from bashgpt.cli import load_for_inference
    from bashgpt.data.tasks import load_tasks
    from bashgpt.inference.generate import generate
    from bashgpt.sampling import SamplingOptions

    torch.set_num_threads(args.threads)
    model, tokenizer = load_for_inference(args.model[0], "cpu")
    prompts = [t.prompt for t in load_tasks()][: args.prompts]
    sampling = SamplingOptions(max_new_tokens=args.max_new_tokens)
    generate(model, tokenizer, prompts[0], sampling, num_samples=1, seed=0, guard=True)  # warm-up
    began, kept, rollbacks, ended = time.perf_counter(), 0, 0, 0
    for i, prompt in enumerate(prompts):
        for s in generate(model, tokenizer, prompt, sampling, num_samples=args.samples, seed=args.seed + i,
                          guard=True):
            kept += len(tokenizer(s.completion, add_special_tokens=False)["input_ids"])
            rollbacks += s.rollbacks
            ended += s.ended
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "kept_tokens": kept, "rollbacks": rollbacks, "ended": ended,
                      "samples": len(prompts) * args.samples, "bashgpt": str(Path(sys.modules["bashgpt"].__file__))}))


def run_side(checkout: Path, model: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--prompts",
           str(args.prompts), "--samples", str(args.samples), "--seed", str(args.seed), "--max-new-tokens",
           str(args.max_new_tokens), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(checkout))
    if out.returncode:
        sys.exit(f"the run in {checkout} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, nargs="+",
                   help="trained model folders (the quickstart's stage1/best takes many lines back, stage2/best few)")
    p.add_argument("--before", help="another bashgpt checkout to compare with (e.g. a git worktree of an older commit)")
    p.add_argument("--prompts", type=int, default=12, help="how many tasks of the task set (default 12)")
    p.add_argument("--samples", type=int, default=3, help="guarded samples per prompt (default 3, as eval takes)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from common import cpu_description

    sides = {"this checkout": ROOT} | ({"before": Path(args.before).resolve()} if args.before else {})
    result = {"cpu": cpu_description(), "prompts": args.prompts, "samples": args.samples,
              "max_new_tokens": args.max_new_tokens, "reps": args.reps, "before": str(sides.get("before", "")),
              "models": {model: compare(sides, model, args) for model in args.model}}
    (HERE / "guard.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result)
    print((HERE / "guard.md").read_text())


def compare(sides: dict, model: str, args) -> dict:
    """The sides' runs on one model, alternating, with their medians and the ratio of samples/s."""
    runs = {name: [] for name in sides}
    for rep in range(args.reps):
        for name, checkout in (sides.items() if rep % 2 == 0 else reversed(sides.items())):
            runs[name].append(run_side(checkout, model, args))
            r = runs[name][-1]
            print(f"{model} rep {rep + 1} {name}: {r['kept_tokens'] / r['seconds']:.1f} kept tok/s "
                  f"({r['kept_tokens']} tokens, {r['rollbacks']} lines taken back, {r['seconds']:.1f} s)", flush=True)
    rows = {name: {"kept_tokens_per_s": statistics.median(r["kept_tokens"] / r["seconds"] for r in rs),
                   "samples_per_s": statistics.median(r["samples"] / r["seconds"] for r in rs),
                   "rollbacks": statistics.median(r["rollbacks"] for r in rs), "runs": rs}
            for name, rs in runs.items()}
    ratio = rows["this checkout"]["samples_per_s"] / rows["before"]["samples_per_s"] if "before" in rows else None
    outputs = {(r["kept_tokens"], r["rollbacks"], r["ended"]) for rs in runs.values() for r in rs}
    return {"sides": rows, "ratio": ratio, "same_output": len(outputs) == 1}


def write_markdown(result: dict) -> None:
    lines = ["# Guarded generation: this checkout against an older one", "",
             f"CPU: {result['cpu']}. {result['prompts']} tasks x {result['samples']} guarded samples, "
             f"--max-new-tokens {result['max_new_tokens']}, medians of {result['reps']} alternating runs "
             f"(`python bench/guard.py`); before: `{result['before'] or '-'}`.", "",
             "| model | side | kept tokens/s | samples/s | lines taken back | samples/s vs before |",
             "|---|---|---|---|---|---|"]
    for model, m in result["models"].items():
        for name, row in m["sides"].items():
            ratio = f"**{m['ratio']:.2f}x**" if name == "this checkout" and m["ratio"] is not None else ""
            lines.append(f"| `{model}` | {name} | {row['kept_tokens_per_s']:.1f} | {row['samples_per_s']:.3f} | "
                         f"{row['rollbacks']:.0f} | {ratio} |")
    same = [m["same_output"] for m in result["models"].values()]
    lines += ["", "Every run of a model kept the same number of tokens, took back the same lines and ended the same "
              "samples: " + ("yes" if all(same) else "**no**") + "."]
    (HERE / "guard.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
