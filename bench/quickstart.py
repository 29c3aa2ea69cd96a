"""What the quickstart's ten minutes buy: training throughput by vocabulary size, and the recipe's variants
judged by the bash their models write.

    python bench/quickstart.py --only speed                       # nano steps, 32,000 vs 8,192 tokens (a minute)
    python bench/quickstart.py --only recipe --corpus runs/quickstart/bash-corpus   # ~10 minutes per variant

`speed` times nano training steps (fused loss, fused AdamW, batch 8 x 256) at the shipped tokenizer's
vocabulary and at the quickstart's, interleaved in one run, and reports the ratio. `recipe` runs the real
quickstart (`run_quickstart`) once per variant on an already collected corpus (collecting is the same for
all, so it is skipped and its time taken off the budget), then samples every evaluation prompt 4 times,
raw and guarded, at the quickstart's 192 new tokens. Writes bench/quickstart.md and quickstart-*.json.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from common import cpu_description  # noqa: E402  (bench/run.py)

from bashgpt import BashGPTConfig, BashGPTForCausalLM  # noqa: E402

# name: changes to QuickstartPlan's defaults
VARIANTS = {
    "shipped 32k tokenizer, scripts <= 512 tokens, licences kept (the recipe before)":
        dict(vocab_size=None, max_script_tokens=512, strip_licences=False),
    "own 8k tokenizer, scripts <= 512 tokens, licences kept": dict(max_script_tokens=512, strip_licences=False),
    "own 8k tokenizer, scripts <= 256 tokens, licences dropped (the default)": {},
}


def speed(reps: int) -> dict:
    times = {}
    models = {}
    for vocab in (32000, 8192):
        torch.manual_seed(0)
        model = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", vocab_size=vocab, fused_lm_loss=True)).train()
        models[vocab] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True),
                         torch.randint(0, vocab, (8, 256)))
        times[vocab] = []
    for _ in range(reps + 1):  # interleaved, so that other work on the machine falls on both alike
        for vocab, (model, opt, ids) in models.items():
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[vocab].append(time.perf_counter() - start)
    result = {v: statistics.median(t[1:]) for v, t in times.items()}  # the first step warms up
    return {"cpu": cpu_description(), "seconds_per_step": result, "tokens_per_s": {v: 2048 / s for v, s in result.items()},
            "speedup": result[32000] / result[8192]}


def recipe(corpus: Path, minutes: float, work: Path) -> list[dict]:
    import bashgpt.quickstart as qs
    from bashgpt.data.tasks import load_tasks
    from bashgpt.inference.evaluate import evaluate
    from bashgpt.inference.generate import SamplingOptions
    from bashgpt.model_folder import load_model_and_tokenizer

    def copy_corpus(plan):
        shutil.copytree(corpus, plan.out / "bash-corpus", dirs_exist_ok=True)
        return plan.out / "bash-corpus"

    qs.collect_bash = copy_corpus
    rows = []
    for name, changes in VARIANTS.items():
        out = work / f"variant{len(rows)}"
        shutil.rmtree(out, ignore_errors=True)
        plan = qs.QuickstartPlan(out=out, minutes=minutes, **changes)
        summary = qs.run_quickstart(plan, device="cpu")
        model, tok = load_model_and_tokenizer(Path(summary["model"]))
        result = evaluate(model, tok, None, None, load_tasks(), samples_per_prompt=2, progress=False,
                          sampling=SamplingOptions(max_new_tokens=plan.max_new_tokens), seq_len=plan.seq_len)
        quick = json.loads((out / "eval.json").read_text())
        log = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
        rows.append({"variant": name, "minutes": summary["minutes"], "stage2_steps": log[-1]["step"],
                     "code_bits_per_byte": quick["heldout"]["code"]["bits_per_byte"],
                     **{f"{kind}_{m}": result[kind][m] for kind in ("raw", "guarded")
                        for m in ("samples", "parse_rate", "eos_rate", "shellcheck_error_free")}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_markdown(speed_result: dict | None, rows: list[dict] | None, minutes: float) -> None:
    lines = ["# The quickstart's recipe, measured", "", "Written by `python bench/quickstart.py`.", ""]
    if speed_result:
        s = speed_result
        lines += ["## Training throughput by vocabulary (nano, batch 8 x 256, fused loss, fused AdamW)", "",
                  f"CPU: {s['cpu']}", "", "| vocabulary | s/step | tokens/s |", "|---|---|---|"]
        lines += [f"| {v:,} | {s['seconds_per_step'][v]:.3f} | {s['tokens_per_s'][v]:,.0f} |" for v in (32000, 8192)]
        lines += ["", f"8,192 tokens train **{s['speedup']:.2f}x** as fast as 32,000 (same run, interleaved).", ""]
    if rows:
        lines += [f"## Recipe variants: the real quickstart for {minutes:g} minutes (collection skipped), then each of "
                  "the 12 evaluation prompts sampled 4 times at 192 new tokens", "",
                  f"CPU: {cpu_description()}", "",
                  "| variant | stage-2 steps | code bits/byte | raw parse | raw end | guarded parse | guarded end "
                  "| guarded ShellCheck error-free |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['stage2_steps']} | {r['code_bits_per_byte']:.3f} | {r['raw_parse_rate']:.0%} "
                  f"| {r['raw_eos_rate']:.0%} | **{r['guarded_parse_rate']:.0%}** | **{r['guarded_eos_rate']:.0%}** "
                  f"| {r['guarded_shellcheck_error_free']:.0%} |" for r in rows]
        lines += ["", "Code bits per byte are over held-out scripts of every length (the full corpus's validation "
                  "split), which the short-script variants do not train on.", ""]
    (HERE / "quickstart.md").write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["speed", "recipe"])
    ap.add_argument("--corpus", type=Path, help="a collected corpus folder (train.jsonl, validation.jsonl)")
    ap.add_argument("--minutes", type=float, default=8.5, help="each variant's quickstart budget (default: 10 "
                    "minus the ~1.5 minutes collecting takes)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bashgpt-bench-quickstart"))
    args = ap.parse_args()
    speed_file, recipe_file = HERE / "quickstart-speed.json", HERE / "quickstart-recipe.json"
    if args.only in (None, "speed"):
        speed_file.write_text(json.dumps(speed(args.reps), indent=1) + "\n")
    if args.only in (None, "recipe"):
        if args.corpus is None or not (args.corpus / "train.jsonl").is_file():
            sys.exit("--corpus must be a collected corpus folder (e.g. runs/quickstart/bash-corpus after a quickstart)")
        recipe_file.write_text(json.dumps(recipe(args.corpus, args.minutes, args.work), indent=1) + "\n")
    read = lambda f: json.loads(f.read_text(), object_hook=lambda d: {int(k) if k.isdigit() else k: v  # noqa: E731
                                                                     for k, v in d.items()}) if f.is_file() else None
    write_markdown(read(speed_file), read(recipe_file), args.minutes)
    print((HERE / "quickstart.md").read_text())


if __name__ == "__main__":
    main()
