"""What description-and-code pairs (`bashgpt collect --pairs`) do to the quickstart's model: task relevance, parse
rate, end of text and held-out bits per byte, one quickstart per kind of pair, on the same collected corpus.

    bashgpt collect system debian: --out /tmp/c-pairs --pairs comment,header,man
    python bench/pairs.py --corpus /tmp/c-pairs [--minutes 8.5]

Each variant is the corpus's training split with some kinds of pair left out (the validation split, scripts only,
is the same for all); the real quickstart (`run_quickstart`) trains on it for --minutes (collection skipped: it is the
same for all) and evaluates as it always does: every task of bashgpt/data/tasks.txt, one raw and one guarded
sample each, until its clock runs out. Writes bench/pairs.md and bench/pairs.json with the CPU named.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_description  # noqa: E402

VARIANTS = {  # name: the kinds of pair kept in the training split
    "scripts only (no pairs)": (),
    "+ comment and header pairs": ("comment", "header"),
    "+ man-page example pairs": ("man",),
    "+ all three": ("comment", "header", "man"),
}


def variant_corpus(corpus: Path, kinds: tuple[str, ...], out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(corpus / "train.jsonl") as src, open(out / "train.jsonl", "w") as dst:
        for line in src:
            source = json.loads(line)["source"]
            if not source.startswith("pair:") or source[len("pair:"):] in kinds:
                dst.write(line)
    for name in ("validation.jsonl", "manifest.json"):
        shutil.copy(corpus / name, out / name)
    return out


def run_variant(name: str, kinds: tuple[str, ...], corpus: Path, minutes: float, work: Path) -> dict:
    import bashgpt.quickstart as qs

    out = work / f"variant-{'-'.join(kinds) or 'none'}"
    shutil.rmtree(out, ignore_errors=True)
    data = variant_corpus(corpus, kinds, work / f"corpus-{'-'.join(kinds) or 'none'}")
    qs.collect_bash = lambda plan, tokenizer: data
    summary = qs.run_quickstart(qs.QuickstartPlan(out=out, minutes=minutes), device="cpu")
    result = json.loads((out / "eval.json").read_text())
    rel = result["relevance"]
    log = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
    return {"variant": name, "pairs": list(kinds), "minutes": summary["minutes"], "stage2_steps": log[-1]["step"],
            "prompts_done": result.get("prompts_done", "all"), "tasks_sampled": rel["guarded"]["samples"],
            "guarded_on_task": rel["guarded"]["on_task"], "raw_on_task": rel["raw"]["on_task"],
            "guarded_no_command": rel["guarded"]["no_command"], "chance": rel["chance"]["on_task"],
            "guarded_parse": result["guarded"]["parse_rate"], "guarded_eos": result["guarded"]["eos_rate"],
            "code_bits_per_byte": result["heldout"]["code"]["bits_per_byte"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a `bashgpt collect --pairs ...` folder")
    parser.add_argument("--minutes", type=float, default=8.5, help="each quickstart's budget (default 8.5: the 10 "
                        "minus the time collecting takes)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bashgpt-bench-pairs"))
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    args = parser.parse_args()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    rows = []
    for name, kinds in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        rows.append(run_variant(name, kinds, args.corpus, args.minutes, args.work))
        print(json.dumps(rows[-1]), flush=True)
        (HERE / "pairs.json").write_text(json.dumps({"cpu": cpu_description(), "pairs": manifest.get("pairs"),
                                                      "rows": rows}, indent=2) + "\n")
    lines = ["# Description-and-code pairs: what each kind does to the quickstart's model", "",
             f"`python bench/pairs.py --corpus {args.corpus} --minutes {args.minutes:g}` on {cpu_description()}. "
             f"Corpus: `bashgpt collect system debian: --pairs comment,header,man`: "
             f"{manifest['splits']['train']['files'] - manifest['splits']['train']['pairs']} training scripts, "
             + ", ".join(f"{k} {v['kept']}" for k, v in manifest["pairs"].items() if isinstance(v, dict))
             + " pairs; the validation split (scripts only) is the same for every variant.", "",
             "| training split | stage-2 steps | tasks sampled | on task, guarded | on task, raw | chance | "
             "no command, guarded | guarded parse | guarded end of text | held-out code bits/byte |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['stage2_steps']} | {r['tasks_sampled']} | **{r['guarded_on_task']:.0%}** | "
              f"{r['raw_on_task']:.0%} | {r['chance']:.0%} | {r['guarded_no_command']:.0%} | {r['guarded_parse']:.0%} | "
              f"{r['guarded_eos']:.0%} | {r['code_bits_per_byte']:.3f} |" for r in rows]
    (HERE / "pairs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
