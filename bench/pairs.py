"""What description-and-command pairs and English replay do to the quickstart's model: task relevance (with its 95%
interval and the same samples held against the other tasks), parse rate, end of text, held-out bits per byte of bash
and English, one quickstart per variant, on the same collected corpus.

    bashgpt collect system debian: --out /tmp/c-pairs --pairs man,cheat,eg
    python bench/pairs.py --corpus /tmp/c-pairs [--minutes 8.5] [--only NAME ...] [--examples 3]

Each variant is the corpus's training split with some kinds of pair left out (the validation split, scripts only,
is the same for all), and the quickstart's pair share and English replay set; the real quickstart
(`run_quickstart`) trains on it for --minutes (collection skipped: it is the same for all) and evaluates as it always
does: every task of bashgpt/data/tasks.txt, one raw and one guarded sample each, until its clock runs out. With
--examples K, each model is evaluated again with the K closest pairs above each task (reported apart). Rows are
added to bench/pairs.json (a row of the same variant and minutes is replaced) and bench/pairs.md is rewritten from
all of them, with the CPU named.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_description  # noqa: E402

PUBLISHED = ("man", "whatis", "cheat", "eg", "tldr", "nl2sh-alfa")
VARIANTS = {  # name: (kinds of pair kept, QuickstartPlan.pair_share, .english_replay, .pair_loss)
    "scripts only": ((), None, 0.0, "all"),
    "+ pairs, each once": (PUBLISHED, None, 0.0, "all"),
    "+ pairs at 50% of bash tokens": (PUBLISHED, 0.5, 0.0, "all"),
    "+ pairs at 50%, English replay 20%": (PUBLISHED, 0.5, 0.2, "all"),
    "+ pairs at 50%, English replay 10%": (PUBLISHED, 0.5, 0.1, "all"),
    "+ pairs at 50%, English replay 10%, pairs' commands only learnt": (PUBLISHED, 0.5, 0.1, "command"),
    "scripts, English replay 20%": ((), None, 0.2, "all"),
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


def with_examples(model: Path, corpus: Path, k: int, out: Path) -> dict:
    from bashgpt.cli import main

    main(["eval", str(model), "--examples", str(k), "--pairs", str(corpus), "--samples-per-prompt", "1",
          "--max-blocks", "8", "--out", str(out), "--device", "cpu"])
    return json.loads(out.read_text())["relevance"]["guarded"]


def run_variant(name: str, corpus: Path, minutes: float, work: Path, examples: int, reuse: bool) -> dict:
    import bashgpt.quickstart as qs

    kinds, pair_share, replay, pair_loss = VARIANTS[name]
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    out = work / f"{slug}-{minutes:g}"
    if not (reuse and (out / "summary.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        data = variant_corpus(corpus, kinds, work / f"corpus-{slug}")
        qs.collect_bash = lambda plan: data
        plan = qs.QuickstartPlan(out=out, minutes=minutes, pair_share=pair_share, english_replay=replay,
                                 pair_loss=pair_loss)
        qs.run_quickstart(plan, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    result = json.loads((out / "eval.json").read_text())
    rel, english = result["relevance"], result["heldout"]["language"]
    vocab = json.loads((out / "stage2" / "best" / "config.json").read_text())["vocab_size"]
    log = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
    row = {"variant": name, "minutes_budget": minutes, "minutes": summary["minutes"], "stage2_steps": log[-1]["step"],
           "tasks_sampled": rel["guarded"]["samples"], "guarded_on_task": rel["guarded"]["on_task"],
           "guarded_interval": rel["guarded"]["on_task_interval_95"], "own_chance": rel["guarded"]["own_chance"],
           "raw_on_task": rel["raw"]["on_task"], "chance": rel["chance"]["on_task"],
           "guarded_no_command": rel["guarded"]["no_command"], "guarded_parse": result["guarded"]["parse_rate"],
           "guarded_eos": result["guarded"]["eos_rate"], "code_bits_per_byte": result["heldout"]["code"]["bits_per_byte"],
           "english_bits_per_byte": english["bits_per_byte"],
           "english_nats_below_uniform": round(math.log(vocab) - english["loss"], 2)}
    if examples:
        ex = with_examples(out / "stage2" / "best", corpus, examples, out / "eval-examples.json")  # all pairs
        row.update(examples=examples, examples_on_task=ex["on_task"], examples_interval=ex["on_task_interval_95"])
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| training split | minutes | stage-2 steps | on task, guarded [95%] | same samples, other tasks | "
             "chance (real scripts) | on task, raw | no command, guarded | guarded parse | guarded end of text | "
             "held-out bash bits/byte | English bits/byte | English nats below uniform | with examples, guarded |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["guarded_interval"]
        ex = (f"{r['examples_on_task']:.0%} [{r['examples_interval'][0]:.0%}-{r['examples_interval'][1]:.0%}] "
              f"(K={r['examples']})" if "examples" in r else "")
        lines.append(f"| {r['variant']} | {r['minutes_budget']:g} | {r['stage2_steps']} | "
                     f"**{r['guarded_on_task']:.0%}** [{lo:.0%}-{hi:.0%}] | {r['own_chance']:.0%} | {r['chance']:.0%} | "
                     f"{r['raw_on_task']:.0%} | {r['guarded_no_command']:.0%} | {r['guarded_parse']:.0%} | "
                     f"{r['guarded_eos']:.0%} | {r['code_bits_per_byte']:.3f} | {r['english_bits_per_byte']:.3f} | "
                     f"{r['english_nats_below_uniform']:.2f} | {ex} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a `bashgpt collect --pairs ...` folder")
    parser.add_argument("--minutes", type=float, default=8.5, help="each quickstart's budget (default 8.5: the 10 "
                        "minus the time collecting takes)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bashgpt-bench-pairs"))
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--examples", type=int, default=0, metavar="K", help="also evaluate with K retrieved examples "
                        "(from all of --corpus's pairs, whatever the variant trained on)")
    parser.add_argument("--reuse", action="store_true", help="a variant whose quickstart already finished in --work "
                        "is evaluated again, not retrained")
    args = parser.parse_args()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    saved = HERE / "pairs.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for name in args.only or VARIANTS:
        row = run_variant(name, args.corpus, args.minutes, args.work, args.examples, args.reuse)
        rows = [r for r in rows if (r.get("variant"), r.get("minutes_budget")) != (name, args.minutes)] + [row]
        print(json.dumps(row), flush=True)
        saved.write_text(json.dumps({"cpu": cpu_description(), "pairs": manifest.get("pairs"), "rows": rows},
                                    indent=2) + "\n")
    train = manifest["splits"]["train"]
    lines = ["# Pairs and English replay: what each does to the quickstart's model", "",
             f"`python bench/pairs.py --corpus {args.corpus} --minutes M` on {cpu_description()}. Corpus: "
             f"`bashgpt collect system debian: --pairs man,cheat,eg`: {train['files'] - train['pairs']} training "
             f"scripts, " + ", ".join(f"{k} {v['kept']}" for k, v in manifest["pairs"].items() if isinstance(v, dict))
             + " pairs; the validation split (scripts only) is the same for every variant. Each row is one "
               "quickstart: every task once, so each relevance figure is one sample a task, with its 95% interval.",
             "", *table([r for r in rows if "guarded_interval" in r])]
    (HERE / "pairs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
