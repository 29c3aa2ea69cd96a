"""gpu-results.json and gpu-results.md from bench/gpu_check.py's results: every section present, with a line saying
why where a part gave nothing, and the issue's targets judged from the figures."""

import json
import os
from pathlib import Path

SECTIONS = {"machine": "Machine and the ceilings measured in this run", "train": "Training step",
            "decode": "Decoding (tiny, greedy)", "recipe": "The guide's two-stage tiny recipe through `bashgpt train`"}


def rows(results: dict, part: str) -> list[dict]:
    return results["parts"].get(part, {}).get("rows", [])


def pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def num(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def bashgpt_training(results: dict) -> list[dict]:
    return [r for r in rows(results, "train") if r.get("model") == "bashgpt" and "tokens_per_s" in r]


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "met" if ok else "MISSED"


def mfu_target(results: dict, size: str) -> tuple[str, str, str]:
    found = [r for r in bashgpt_training(results) if r["size"] == size and r.get("kind") != "planned"]
    figure = ", ".join(f"{'compiled' if r['compiled'] else 'eager'} {pct(r['mfu'])}" for r in found) or "-"
    return f"{size} MFU >= 45%", figure, verdict(max(r["mfu"] for r in found) >= 0.45 if found else None)


def compile_target(results: dict) -> tuple[str, str, str]:
    by = {(r["size"], r["compiled"]): r["tokens_per_s"]["median"] for r in bashgpt_training(results)
          if r.get("kind") != "planned"}
    ratios = {size: by[size, True] / by[size, False] for size, compiled in by if compiled and (size, False) in by}
    figure = ", ".join(f"{size} {ratio:.2f}x" for size, ratio in ratios.items()) or "-"
    return "--use-compile faster than eager", figure, verdict(all(r > 1 for r in ratios.values()) if ratios else None)


def planned_target(results: dict) -> tuple[str, str, str]:
    planned = [r for r in rows(results, "train") if r.get("kind") == "planned" and r.get("peak_memory_gb")]
    if not planned:
        return "large at batch 4 x 1024 within 18 GB (planner's levers)", "-", verdict(None)
    r = planned[0]
    return (f"{r['size']} at batch {r['batch']} x {r['seq']} within {r['budget_gb']} GB (planner's levers)",
            f"{r['peak_memory_gb']:.2f} GB measured", verdict(r["peak_memory_gb"] <= r["budget_gb"]))


def estimate_target(results: dict) -> tuple[str, str, str]:
    pairs = [(r.get("estimate_gb") or r.get("predicted_gb"), r.get("peak_memory_gb"), r["size"])
             for r in bashgpt_training(results) if not r["compiled"]]
    pairs = [(e, m, size) for e, m, size in pairs if e and m]
    figure = ", ".join(f"{size} {e / m - 1:+.0%}" for e, m, size in pairs) or "-"
    return "estimate within 20% of the measured peak", figure, verdict(
        all(abs(e / m - 1) <= 0.2 for e, m, _ in pairs) if pairs else None)


def generate_target(results: dict) -> tuple[str, str, str]:
    found = [(r["batch"], r["runners"]["generate(), static cache"]["vs_gpt2"]) for r in rows(results, "decode")
             if r.get("static_cache_compiled") and "error" not in r]
    figure = ", ".join(f"batch {b} {x:.2f}x" for b, x in found) or "-"
    return "compiled static-cache generate() >= 1.0x GPT2LMHeadModel.generate", figure, verdict(
        all(x >= 1.0 for _, x in found) if found else None)


def targets(results: dict) -> list[tuple[str, str, str]]:
    return [mfu_target(results, "tiny"), mfu_target(results, "large"), compile_target(results),
            planned_target(results), estimate_target(results), generate_target(results)]


def machine_lines(results: dict) -> list[str]:
    env = (rows(results, "machine") or [{}])[0]
    if not env:
        return []
    gpu = (f"{env['gpu']} ({env['gpu_memory_gb']} GB, compute capability {env['capability']}, "
           f"{env['multiprocessors']} multiprocessors), driver {env['driver']}") if env.get("gpu") else "no CUDA GPU"
    lines = [f"- GPU: {gpu}", f"- CPU: {env['cpu']}, {env['cores']} cores; Python {env['python']}",
             f"- torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}; bashgpt imported "
             f"from {env['bashgpt_from']}"]
    lines += [f"- requirement: {line}" for line in env["unmet_requirements"]]
    if "bf16_matmul_tflops" in env:
        lines.append(f"- bf16 matrix product ({env['matmul_n']} x {env['matmul_n']}, random data, best median of "
                     f"three): {env['bf16_matmul_tflops']:.1f} TFLOP/s; device copy: {env['copy_GBps']:,.0f} GB/s "
                     f"(read + written)")
    return lines


def train_lines(results: dict) -> list[str]:
    lines = ["bf16 autocast, fused AdamW (bashgpt: its fused LM loss, sdpa), sequence length in the table; MFU "
             "against the bf16 rate above; peak memory is `torch.cuda.max_memory_allocated`.", "",
             "| size | batch x seq | model | compiled | tokens/s | step ms | MFU | first step s | peak memory | "
             "`bashgpt estimate` | guide |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows(results, "train"):
        if r.get("kind") == "planned":
            continue
        if "error" in r:
            lines.append(f"| {r['size']} | {r.get('batch', '-')} x {r.get('seq', '-')} | {r['model']} | "
                         f"{'yes' if r['compiled'] else 'no'} | {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['size']} | {r['batch']} x {r['seq']} | {r['model']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{num(r['tokens_per_s']['median'])} | {num(r['step_ms'], '.1f')} | {pct(r['mfu'])} | "
                     f"{num(r['first_step_s'], '.1f')} | {num(r['peak_memory_gb'], '.2f')} | "
                     f"{num(r.get('estimate_gb'), '.2f')} | {r.get('guide_gb', '')} |")
    for r in rows(results, "train"):
        if r.get("kind") == "planned" and "error" in r:
            lines += ["", f"**{r['size']} under the memory planner's levers**: {r['error']}"]
        elif r.get("kind") == "planned":
            lines += ["", f"**{r['size']} at batch {r['batch']} x {r['seq']}, `--memory-budget {r['budget_gb']}GB`**: "
                      + "; ".join(f"{k}: {v}" for k, v in r["levers"].items()),
                      f"predicted {r['predicted_gb']:.2f} GB, measured "
                      + (f"{num(r.get('peak_memory_gb'), '.2f')} GB allocated ({num(r.get('peak_reserved_gb'), '.2f')} GB "
                         f"reserved), {num(r['tokens_per_s']['median'])} tokens/s, "
                         f"MFU {pct(r['mfu'])}" if "tokens_per_s" in r else r.get("error", "-"))]
            lines += [f"- not available here: {u}" for u in r.get("unavailable", [])]
    return lines


def decode_lines(results: dict) -> list[str]:
    lines = ["| batch | runner | tokens/s | vs GPT2LMHeadModel.generate | first call s | same tokens as generate() |",
             "|---|---|---|---|---|---|"]
    for r in rows(results, "decode"):
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['error']} | | | | |")
            continue
        for name, fig in r["runners"].items():
            same = r["same_tokens_as_generate"].get(name)
            lines.append(f"| {r['batch']} | {name} | {num(fig['tokens_per_s'])} | {fig['vs_gpt2']:.2f}x | "
                         f"{r[name + ' first call s']} | {'-' if same is None else same} |")
        if not r["static_cache_compiled"]:
            lines.append(f"| {r['batch']} | (the static cache is not compiled here: Transformers compiles it on GPUs) "
                         "| | | | |")
    return lines


def recipe_lines(results: dict) -> list[str]:
    lines = ["| stage | size | --time-budget min | wall s | steps | tokens/s | last loss | best validation loss | "
             "peak memory | on |", "|---|---|---|---|---|---|---|---|---|---|"]
    ev = None
    for r in rows(results, "recipe"):
        if r["stage"] == "eval":
            ev = r
            continue
        lines.append(f"| {r['stage']} | {r['size']} | {r['time_budget_minutes']} | {r['wall_s']} | {r['steps']} | "
                     f"{num(r['tokens_per_s'])} | {num(r['last_loss'], '.3f')} | {num(r['best_validation_loss'], '.3f')}"
                     f" | {num(r['peak_memory_gb'], '.2f')} | {r['on']} |")
    if ev:
        held = ", ".join(f"{name} {bpb:.2f}" for name, bpb in ev["bits_per_byte"].items())
        lines += ["", f"`bashgpt eval` (one sample a task; prompts done: {ev['prompts_done']}): held-out bits per byte "
                  f"{held}; guarded samples parse {pct(ev['guarded_parse_rate'])}, end by themselves "
                  f"{pct(ev['guarded_eos_rate'])}, on task {pct(ev['guarded_on_task'])} (raw {pct(ev['raw_on_task'])}) "
                  f"against a chance level of {pct(ev['chance_on_task'])}."]
        if ev["example"]:
            lines += ["", "```bash", ev["example"]["prompt"] + ev["example"]["completion"], "```"]
    return lines


def write_markdown(results: dict, path: Path) -> None:
    smoke = results["smoke"]
    lines = ["# bashgpt on a GPU: `bench/gpu_check.py`", "",
             f"`python3 bench/gpu_check.py {' '.join(results['argv'])}`, started {results['started']}."
             + (" **Smoke run: the same code at tiny dimensions on a CPU; no figure here means anything, and no target "
                "applies.**" if smoke else ""), ""]
    lines += ["## Parts", "", "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {p['status']} | {p['seconds']} |" for name, p in results["parts"].items()]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in results["problems"]] or ["none"])
    lines += ["", "## Targets", "", "| target | figure | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {f} | {'(smoke run)' if smoke else v} |" for t, f, v in targets(results)]
    writers = {"machine": machine_lines, "train": train_lines, "decode": decode_lines, "recipe": recipe_lines}
    for part, title in SECTIONS.items():
        status = results["parts"].get(part, {}).get("status", "not run: not asked for (--only)")
        body = writers[part](results) if rows(results, part) else []
        lines += ["", f"## {title}", ""] + (body or [f"nothing measured: {status}"])
        if body and status != "ok":
            lines += ["", f"(the part {status})"]
    write_atomically(path, "\n".join(lines) + "\n")


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(results: dict, out: Path) -> None:
    results = dict(results, targets=[{"target": t, "figure": f, "verdict": v} for t, f, v in targets(results)])
    write_atomically(out / "gpu-results.json", json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "gpu-results.md")
