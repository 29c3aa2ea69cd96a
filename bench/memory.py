"""Peak memory of real training steps under the memory levers, against `bashgpt estimate`; speed cost per lever;
validation loss of the lean settings against float32 fused AdamW.

    python bench/memory.py                       # the guide's runs under --memory-budget; writes bench/memory.md
    python bench/memory.py --only guide-amp      # the guide's runs with --use-amp (bf16 autocast) given
    python bench/memory.py --only levers         # one row per lever at tiny dimensions (speed cost, estimate)
    python bench/memory.py --only quality        # lean settings vs fp32 AdamW, nano and tiny dimensions

Each measurement runs in a fresh process (its own peak RSS, VmHWM): the model, the optimizer
and the steps are built by the same library functions training uses (levers.py: storage dtype,
attention, optimizer with Trainer's parameter groups; gradient checkpointing; the fused LM
loss; gradient clipping; zero_grad(set_to_none=True)), for --steps steps (at least 2: the
optimizer's state appears at the first). Step time is the median of the steps after the first.
On CUDA the same probe reports torch.cuda.max_memory_allocated beside.

On a CPU without native bf16 (no AMX, no AVX512-BF16), bf16 matrix products and attention run
through float32 kernels on the same values (bench/bf16_emulation.py), as a native bf16 kernel
with float32 accumulation computes them. The dataflow, what autograd keeps and the optimizer are
real, so the peak is real too, except for the emulation's own float32 copies, which add at most
the amount reported with each row. The step times of such rows say nothing of bf16 speed.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# The guide's recommended runs and their memory figures (GB), at 1024 tokens.
GUIDE_RUNS = [("tiny", 4, 2.5), ("medium", 2, 8), ("xlarge", 2, 24), ("large", 4, 18)]

PROBE = r"""
import json, sys, time, torch
from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.devices import peak_rss_bytes
from bashgpt.training.cpu_memory import keep_large_allocations_on_heap, return_freed_memory
from bashgpt.training.levers import Levers, apply_to_model, build_optimizer
spec = json.loads(sys.argv[1])
if spec.get("budget"):  # what training does under a memory budget, and without one (cpu_memory.py)
    return_freed_memory()
else:
    keep_large_allocations_on_heap()
device = spec.get("device", "cpu")
cfg = BashGPTConfig.from_preset(spec["preset"], **spec.get("config", {}))
levers = Levers(**spec["levers"])
emulation = None
if spec.get("emulate_bf16"):  # bf16 matmuls through float32 kernels (bench/bf16_emulation.py)
    sys.path.insert(0, spec["emulate_bf16"])
    from bf16_emulation import EmulatedBF16
    emulation = EmulatedBF16()
    emulation.__enter__()
torch.manual_seed(spec.get("seed", 0))
model = apply_to_model(BashGPTForCausalLM(cfg), levers).to(device).train()
if levers.checkpointing:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
opt = build_optimizer(model, levers.optim, spec.get("lr", 3e-4), 0.1, device)
B, T = spec["batch"], spec["seq"]
data = spec.get("data")
if data:
    tokens = torch.load(data, weights_only=True)
gen = torch.Generator().manual_seed(1)
times, opt_times, losses = [], [], []
for step in range(spec["steps"]):
    if data:
        starts = torch.randint(0, len(tokens) - T, (B,), generator=gen)
        ids = torch.stack([tokens[s:s + T] for s in starts]).to(device)
    else:
        ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(device)
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=levers.use_amp):
        loss = model(input_ids=ids, labels=ids, fused_lm_loss=True).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt_start = time.perf_counter()
    opt.step()
    opt_times.append(time.perf_counter() - opt_start)
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
    losses.append(loss.item())
def median(values):  # of the steps after the first
    return sorted(values[1:])[len(values[1:]) // 2]
result = {"peak": peak_rss_bytes(), "step": median(times), "optimizer_step": median(opt_times), "losses": losses}
if spec.get("eval"):
    model.eval()
    etoks = torch.load(spec["eval"], weights_only=True)
    n = (len(etoks) - 1) // T
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=levers.use_amp):
        ids = etoks[: n * T].view(n, T).to(device)
        result["eval_loss"] = sum(model(input_ids=ids[i:i + 4], labels=ids[i:i + 4]).loss.item() * len(ids[i:i + 4])
                                  for i in range(0, n, 4)) / n
if device == "cuda":
    result["cuda_peak"] = torch.cuda.max_memory_allocated()
if emulation is not None:
    result["emulation_transient"] = emulation.largest_transient
print(json.dumps(result))
"""


def bf16_emulated(levers, device: str) -> bool:
    """The levers compute in bf16 on a CPU without native bf16 (a step would take minutes to hours): the probe
    runs bf16 matrix products through float32 kernels instead (bf16_emulation.py)."""
    from bashgpt.devices import bf16_is_fast

    return levers.bf16_compute and device == "cpu" and not bf16_is_fast("cpu")


def probe(spec: dict) -> dict:
    from bashgpt.training.levers import Levers

    if bf16_emulated(Levers(**spec["levers"]), spec.get("device", "cpu")):
        spec = {**spec, "emulate_bf16": str(HERE)}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def guide_rows(args, use_amp: bool = False) -> list[dict]:
    """The guide's runs under --memory-budget (its memory figure): the plan's levers, then the measured peak.
    ``use_amp``: as `--use-amp --memory-budget` plans them (bf16 autocast given, the other levers chosen)."""
    from bashgpt.training.levers import Levers, resolve_attention
    from bashgpt.training.memory_plan import plan_memory

    records = []
    for preset, batch, budget_gb in GUIDE_RUNS:
        given = Levers(use_amp=use_amp, attention=resolve_attention("auto", args.device))
        fixed = {"use_amp"} if use_amp else set()
        lv = plan_memory(preset, batch, 1024, args.device, int(budget_gb * 2**30), given, fixed).levers
        record = {"preset": preset, "batch": batch, "budget_gb": budget_gb, "device": args.device,
                  "levers": {"optim": lv.optim, "use_amp": lv.use_amp, "checkpointing": lv.checkpointing,
                             "attention": lv.attention}}
        r = probe({"preset": preset, "batch": batch, "seq": 1024, "steps": args.steps, "device": args.device,
                   "budget": True, "levers": record["levers"]})
        record.update(peak=r.get("cuda_peak", r["peak"]), step=r["step"])
        if "emulation_transient" in r:
            record["emulation_transient"] = r["emulation_transient"]
        records.append(record)
        print(render_guide([record])[-1], flush=True)
    return records


def measured_cells(r: dict) -> tuple[str, str]:
    """(peak, s/step) table cells; a step run through the bf16 emulation gives its copies' bound and no speed."""
    if "emulation_transient" in r:
        return (f"{r['peak'] / 2**30:.2f} GB (of which at most {r['emulation_transient'] / 2**30:.2f} GB "
                f"emulation copies)", "emulated")
    return f"{r['peak'] / 2**30:.2f} GB", f"{r['step']:.2f}"


def render_guide(records: list[dict]) -> list[str]:
    """Table rows, with the estimate as bashgpt computes it now (budgeted: freed buffers go back)."""
    from bashgpt.training.estimate import estimate
    from bashgpt.training.levers import Levers

    rows = ["| preset | batch x seq | budget | chosen levers | estimate | measured peak | est/measured | s/step |",
            "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lv = Levers(**r["levers"])
        e = estimate(r["preset"], r["batch"], 1024, lv, device=r["device"], measure=False, budgeted=True)
        compute = "bf16 autocast" if lv.use_amp else "bf16 weights" if lv.kind.bf16_weights else "fp32"
        levers = f"{lv.optim}, checkpointing {'on' if lv.checkpointing else 'off'}, {compute}"
        head = f"| {r['preset']} | {r['batch']} x 1024 | {r['budget_gb']:g} GB | {levers} | {e.total / 2**30:.2f} GB |"
        peak, step = measured_cells(r)
        rows.append(f"{head} {peak} | {e.total / r['peak'] - 1:+.0%} | {step} |")
    return rows


LEVER_ROWS = [("adamw", {}), ("adamw", {"checkpointing": True}), ("adamw-8bit", {}), ("adamw-bf16", {}),
              ("adafactor", {}), ("adamw", {"use_amp": True}), ("adamw", {"attention": "chunked"})]


def lever_rows(args) -> list[str]:
    """One lever at a time at tiny dimensions (batch 2 x 512): time per step and peak against plain fused AdamW.
    The levers take turns for --reps rounds, a fresh process each, and each keeps its fastest round (its highest
    peak), so that other work on the machine weighs alike on all of them."""
    from bashgpt.training.estimate import estimate
    from bashgpt.training.levers import Levers

    runs = {i: [] for i in range(len(LEVER_ROWS))}
    for round_ in range(args.reps):
        for i, (optim, extra) in enumerate(LEVER_ROWS):
            runs[i].append(probe({"preset": "tiny", "batch": 2, "seq": 512, "steps": 4, "device": args.device,
                                  "levers": {"optim": optim, **extra}}))
            print(f"round {round_ + 1}/{args.reps}: {optim} {extra}: {runs[i][-1]['step']:.2f} s/step", flush=True)
    rows = ["| lever | s/step | vs adamw | optimizer step s | peak RSS | estimate |", "|---|---|---|---|---|---|"]
    base = None
    for i, (optim, extra) in enumerate(LEVER_ROWS):
        r = {key: max(run[key] for run in runs[i]) for key in ("peak", "emulation_transient") if key in runs[i][0]}
        r.update({key: min(run[key] for run in runs[i]) for key in ("step", "optimizer_step")})
        peak, step = measured_cells(r)
        emulated = "emulation_transient" in r
        base = base or (None if emulated else r["step"])
        ratio = "" if emulated else f"{r['step'] / base:.2f}x"
        name = optim + "".join(f", {k}={v}" for k, v in extra.items())
        e = estimate("tiny", 2, 512, Levers(optim=optim, **extra), device=args.device, measure=False)
        rows.append(f"| {name} | {step} | {ratio} | {r['optimizer_step']:.3f} | {peak} | {e.total / 2**30:.2f} GB |")
    print("\n".join(rows), flush=True)
    return rows


# Every setting --memory-budget chooses in the guide's runs, with or without --use-amp (activation checkpointing
# changes no number, so it is left out), against float32 fused AdamW.
LEAN = [{"optim": "adamw-8bit"}, {"optim": "adamw-bf16"}, {"optim": "adamw", "use_amp": True},
        {"optim": "adamw-bf16", "use_amp": True}]
QUALITY = [("nano", 8, 128, 200), ("tiny", 2, 128, 60)]


def settings_name(levers: dict) -> str:
    return levers["optim"] + (" + bf16 autocast" if levers.get("use_amp") else "")


def token_files(folder: Path) -> tuple[str, str]:
    """Offline English (the stdlib corpus) through the repository's tokenizer: train and validation token streams."""
    import torch

    from bashgpt.data.corpus import STDLIB, load_corpus
    from bashgpt.data.tokenization import default_tokenizer_dir
    from bashgpt.model_folder import load_tokenizer

    tok = load_tokenizer(default_tokenizer_dir())
    corpus = load_corpus(STDLIB, seed=0)
    paths = []
    for split, limit in (("train", None), ("validation", 40_000)):
        ids = [i for text in corpus[split]["text"] for i in tok(text)["input_ids"] + [tok.eos_token_id]]
        paths.append(str(folder / f"{split}.pt"))
        torch.save(torch.tensor(ids[:limit]), paths[-1])
    return paths[0], paths[1]


def quality_rows(args) -> list[str]:
    """Same data, seed and steps: validation loss of each lean optimizer against float32 fused AdamW."""
    import tempfile

    rows = ["| dimensions | batch x seq | steps | settings | validation loss | vs adamw | s/step |",
            "|---|---|---|---|---|---|---|"]
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        train, val = token_files(Path(tmp))
        for preset, batch, seq, steps in QUALITY:
            base = None
            for levers in [{"optim": "adamw"}, *LEAN]:
                r = probe({"preset": preset, "batch": batch, "seq": seq, "steps": steps, "lr": 1e-3,
                           "levers": levers, "data": train, "eval": val, "device": args.device})
                base = base or r["eval_loss"]
                curves[f"{preset}/{settings_name(levers)}"] = r["losses"]
                step = measured_cells(r)[1]
                rows.append(f"| {preset} | {batch} x {seq} | {steps} | {settings_name(levers)} | {r['eval_loss']:.4f} | "
                            f"{r['eval_loss'] / base - 1:+.2%} | {step} |")
                print(rows[-1], flush=True)
    plot_curves(curves)
    return rows


def plot_curves(curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({k.split("/")[0] for k in curves})
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4))
    for ax, preset in zip(axes if len(presets) > 1 else [axes], presets, strict=True):
        for key, losses in curves.items():
            if key.startswith(preset + "/"):
                ax.plot(range(1, len(losses) + 1), losses, label=key.split("/")[1], linewidth=1)
        ax.set(title=f"{preset} dimensions: training loss", xlabel="step", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "memory_quality.png", dpi=100)


def main():
    from common import cpu_description  # bench/run.py

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("guide", "guide-amp", "levers", "quality"))
    ap.add_argument("--steps", type=int, default=2, help="training steps per run in the guide sections")
    ap.add_argument("--reps", type=int, default=2, help="rounds of the lever section (each lever keeps its fastest)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    machine = cpu_description()
    print(machine, flush=True)
    sections = {}
    if args.only in (None, "guide"):
        sections["guide"] = guide_rows(args)
    if args.only in (None, "guide-amp"):
        sections["guide-amp"] = guide_rows(args, use_amp=True)
    if args.only in (None, "levers"):
        sections["levers"] = lever_rows(args)
    if args.only in (None, "quality"):
        sections["quality"] = quality_rows(args)
    for name, rows in sections.items():
        (HERE / f"memory-{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    write_report()


INTRO = {
    "levers": "## Speed cost of each lever, one at a time (tiny dimensions, batch 2 x 512, 4 steps)\n\nMedian step "
              "time after the first, the optimizer step alone, and peak RSS, in one run; ratios against fused AdamW. "
              "The levers take turns for 2 rounds (`--reps`), each keeps its fastest.",
    "guide": "## The guide's runs under `--memory-budget` (seq 1024)\n\nThe levers are what the plan chose on this "
             "machine (`plan_memory`, as `bashgpt train --memory-budget` does); each row is a fresh process running "
             "real training steps with them; peak RSS (VmHWM) against `bashgpt estimate`.",
    "guide-amp": "## The guide's runs with bf16 autocast: `--use-amp --memory-budget` (seq 1024)\n\nAs above, with "
                 "`--use-amp` given, so the plan chooses the other levers around bf16 autocast: what a machine with "
                 "native bf16 (a Mac, a GPU, a CPU with AMX) trains with. Where this CPU has no native bf16, the "
                 "matrix products ran through the emulation described at the top, so the step times are not bf16's.",
    "quality": "## Quality: lean settings against float32 fused AdamW\n\nSame data (the offline English corpus "
               "through the repository's tokenizer), seed, batches and steps; validation loss on held-out text after "
               "the last step. Training curves: `memory_quality.png`.",
}


def sections_of(markdown: str) -> dict[str, str]:
    """``{heading line: the section's text}`` for the ``## `` sections of a report."""
    blocks = {}
    for block in ("\n" + markdown).split("\n## ")[1:]:
        blocks["## " + block.split("\n", 1)[0]] = "## " + block.rstrip("\n") + "\n"
    return blocks


def write_report() -> None:
    """bench/memory.md from the sections' latest results (memory-guide.json, memory-quality.json, ...); a section
    whose results file this checkout lacks keeps the text the report already has."""
    usage, *method = __doc__.split("\n\n")[1:4]
    parts = ["# Memory levers: measured\n", "```\n" + usage.strip("\n") + "\n```\n",
             *(" ".join(paragraph.split()) + "\n" for paragraph in method)]
    report = HERE / "memory.md"
    kept = sections_of(report.read_text()) if report.is_file() else {}
    for name, intro in INTRO.items():
        path, heading = HERE / f"memory-{name}.json", intro.split("\n", 1)[0]
        if path.is_file():
            data = json.loads(path.read_text())
            rows = render_guide(data["rows"]) if name.startswith("guide") else data["rows"]
            parts += [intro + f"\n\nMachine: {data['machine']}.\n", "\n".join(rows) + "\n"]
        elif heading in kept:
            parts.append(kept[heading])
    report.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
