"""What a finished run leaves for people: the loss-curve plot and the model card."""

import json
import math
from pathlib import Path


def transformers_requirement() -> str:
    """The Transformers releases bashgpt asks for, as pyproject.toml states them (read from the installed package)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    found = [Requirement(text) for text in requires("bashgpt") or []]
    spec = next((str(r.specifier) for r in found if r.name == "transformers" and r.marker is None), "")
    return "transformers" + ",".join(sorted(spec.split(","), reverse=True)) if spec else "transformers"


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(log_path: Path, out_path: Path, title: str) -> Path | None:
    """Loss and validation loss (top) and learning rate (bottom) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    lrs = [(r["step"], r["learning_rate"]) for r in records if isinstance(r.get("learning_rate"), (int, float))]
    if not train and not evals:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="training loss", color="tab:blue")
    if evals:
        ax_loss.plot(*zip(*evals, strict=True), "o-", label="validation loss", color="tab:orange")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if lrs:
        ax_lr.plot(*zip(*lrs, strict=True), color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_path.with_name(out_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def training_data_text(info: dict) -> str:
    if info["train_sequences"] is None:
        return "streamed (--streaming: read as training used it, not counted ahead)"
    return f"{info['train_sequences']:,} training sequences, {info['train_tokens'] / 1e6:.2f}M tokens"


def model_card(info: dict) -> str:
    """The README.md of a saved model folder."""
    loss = info.get("eval_loss")
    ppl = f"{math.exp(loss):.1f}" if isinstance(loss, float) and loss < 50 else "n/a"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [bashgpt, text-generation, bash]",
        "---",
        f"# bashgpt {info['preset']} ({info['stage']} stage)",
        "",
        "A GPT-style model trained with bashgpt to write bash.",
        "",
        "| | |",
        "|---|---|",
        f"| preset | {info['preset']} ({info['parameters'] / 1e6:.1f}M parameters, {info['architecture']}) |",
        f"| stage | {info['stage']} |",
        f"| data | {info['dataset']}: {training_data_text(info)}; {info['validation_tokens'] / 1e6:.2f}M validation "
        f"tokens |",
        f"| steps | {info['step']} of {info['max_steps']} (batch {info['effective_batch']} x {info['seq_len']} tokens) |",
        f"| training loss | {info.get('train_loss', float('nan')):.3f} |",
        f"| validation loss | {loss if loss is None else f'{loss:.3f}'} (perplexity {ppl}) |",
    ]
    if info.get("from_checkpoint"):
        lines.append(f"| started from | {info['from_checkpoint']} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import bashgpt  # registers the model type",
        "from transformers import pipeline",
        f'pipe = pipeline("text-generation", model="{info["path"]}")',
        'print(pipe("#!/bin/bash\\n# back up my home folder\\n", max_new_tokens=128)[0]["generated_text"])',
        "```",
        "",
        "Without bashgpt installed, pass `trust_remote_code=True` (the folder carries its modeling code; it needs",
        f"`{transformers_requirement()}`).",
        f"From the command line: `bashgpt generate {info['path']} --prompt '#!/bin/bash' --check`.",
        "",
        "Never run a generated script before reading it: `bashgpt generate --check` parses it with `bash -n`",
        "and ShellCheck without executing it.",
        "",
    ]
    if info.get("evaluation"):
        lines += ["## Evaluation", "", info["evaluation"], ""]
    return "\n".join(lines)
