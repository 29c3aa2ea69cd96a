"""The training command line: the reference guide's flags, with defaults from its recommended commands."""

import argparse
from dataclasses import dataclass, field, fields

from ..configuration_bashgpt import PRESETS
from ..data.corpus import STDLIB, TINYSTORIES
from ..devices import DEVICES
from .levers import ATTENTIONS, OPTIMIZERS
from .reporting import HUB_STRATEGIES, REPORT_TO_CHOICES

STAGES = ("language", "code")

# The guide's recommended commands, per stage and preset:
# (batch size, epochs, steps per epoch, learning rate, warmup steps). nano is ours (CPU demos).
STAGE_DEFAULTS = {
    "language": {
        "nano": (8, 1, 300, 1e-3, 30),
        "tiny": (4, 3, 500, 6e-5, 100),
        "medium": (2, 3, 1000, 5e-5, 200),
        "large": (4, 3, 1000, 3e-5, 300),
        "xlarge": (2, 3, 1000, 2e-5, 400),
    },
    "code": {
        "nano": (8, 2, 100, 5e-4, 10),
        "tiny": (4, 5, 200, 3e-5, 50),
        "medium": (2, 5, 400, 2e-5, 100),
        "large": (4, 5, 400, 1e-5, 150),
        "xlarge": (2, 5, 400, 8e-6, 200),
    },
}
# The guide's loss targets at the end of each stage (nano has none).
LOSS_TARGETS = {
    "language": {"tiny": 5.0, "medium": 4.5, "large": 3.5, "xlarge": 3.0},
    "code": {"tiny": 4.0, "medium": 3.5, "large": 2.5, "xlarge": 2.0},
}


@dataclass
class TrainOptions:
    stage: str = "language"
    model_size: str | None = None  # default: tiny, or the checkpoint's size
    dataset: str | None = None  # default: TinyStories (language); required for code
    output_dir: str | None = None
    checkpoint: str | None = None
    tokenizer: str | None = None
    batch_size: int | None = None
    num_epochs: int | None = None
    steps_per_epoch: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    gradient_accumulation_steps: int = 1
    seq_len: int | None = None
    eval_steps: int | None = None
    eval_blocks: int = 200
    early_stopping: int | None = None  # stop after this many validations in a row without a new best
    lr_schedule: str = "constant"
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    loss_clamp: float | None = 20.0
    max_skip_fraction: float = 0.05
    max_consecutive_skips: int = 5
    use_compile: bool = False
    use_amp: bool = False
    use_gradient_checkpointing: bool = False
    use_rmsnorm: bool = False
    use_rope: bool = False
    optim: str | None = None  # default adamw; --memory-budget may choose another
    attention: str = "auto"
    memory_budget: str | None = None  # e.g. "18GB"; default on MPS: half of the machine's memory
    fsdp: bool = False
    resume: bool = False
    overwrite: bool = False
    seed: int = 42
    device: str = "auto"
    num_proc: int | None = None
    cache_dir: str | None = None
    save_total_limit: int = 2  # at least 2: the last sealed checkpoint stays while the next is written (run_safety.py)
    progress: bool = True
    time_budget: float | None = None  # minutes of training; the step count becomes an upper limit
    report_to: list[str] = field(default_factory=lambda: ["auto"])  # trackers (reporting.py)
    run_name: str | None = None  # the trackers' name for the run (default: the output folder's name)
    push_to_hub: bool = False
    hub_model_id: str | None = None  # default: the output folder's name
    hub_private: bool = False
    hub_strategy: str = "end"

    def fill_defaults(self, preset: str) -> "TrainOptions":
        """Fill every unset numeric option from the guide's command for this stage and preset."""
        bs, epochs, spe, lr, warmup = STAGE_DEFAULTS[self.stage][preset]
        for name, value in (("batch_size", bs), ("num_epochs", epochs), ("steps_per_epoch", spe),
                            ("learning_rate", lr), ("warmup_steps", warmup)):
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.seq_len is None:
            self.seq_len = 256 if preset == "nano" else 1024
        if self.eval_steps is None:
            self.eval_steps = self.steps_per_epoch
        if self.dataset is None and self.stage == "language":
            self.dataset = TINYSTORIES
        if self.output_dir is None:
            self.output_dir = f"runs/{self.stage}-{preset}"
        return self


def defaults_table() -> str:
    """The per-stage, per-preset defaults, for --help."""
    lines = ["defaults (the reference guide's commands; nano is ours):",
             "  stage     size    batch  epochs  steps/epoch  learning-rate  warmup  loss target"]
    for stage, table in STAGE_DEFAULTS.items():
        for size, (bs, epochs, spe, lr, warmup) in table.items():
            target = LOSS_TARGETS[stage].get(size)
            lines.append(f"  {stage:<9} {size:<7} {bs:>5}  {epochs:>6}  {spe:>11}  {lr:>13g}  {warmup:>6}  "
                         f"{'<' + str(target) if target else '-'}")
    return "\n".join(lines)


def add_train_arguments(parser: argparse.ArgumentParser, stage: str | None = None) -> argparse.ArgumentParser:
    """The training flags; ``stage`` fixes --stage's default (the recipes)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = defaults_table()
    g = parser.add_argument_group("what to train")
    g.add_argument("--stage", choices=STAGES, default=stage or "language",
                   help="language = stage 1 pretraining on English; code = stage 2 fine-tuning on bash")
    g.add_argument("--model-size", choices=list(PRESETS),
                   help="size preset (default tiny; at stage 2 the checkpoint's size)")
    g.add_argument("--dataset", help=f"Hub name (default {TINYSTORIES} at stage 1), a local file or folder, "
                                     f"a 'bashgpt collect' folder (stage 2), or '{STDLIB}' for offline English")
    g.add_argument("--checkpoint", help="stage-1 output folder (its best/), or a legacy .pth / .npz state dict")
    g.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's, else the repository's tokenizer/); a new model "
                   "gets its vocabulary size (rounded up to a multiple of 64)")
    g.add_argument("--output-dir", help="where checkpoints, best/, logs and plots go (default runs/STAGE-SIZE)")

    g = parser.add_argument_group("schedule (defaults: the guide's command for the stage and size)")
    g.add_argument("--batch-size", type=int, help="sequences per device per step")
    g.add_argument("--num-epochs", type=int, help="epochs; an epoch is --steps-per-epoch optimizer steps")
    g.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch")
    g.add_argument("--learning-rate", type=float, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, help="linear warmup steps, then constant (or cosine decay)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="after warmup: constant (the guide) or cosine decay to 0")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step (effective batch = batch size x this x processes)")
    g.add_argument("--seq-len", type=int, help="tokens per training sequence (default 1024; nano 256)")
    g.add_argument("--eval-steps", type=int, help="validate every N steps (default: once per epoch)")
    g.add_argument("--eval-blocks", type=int, default=200, help="validation sequences used per evaluation")
    g.add_argument("--early-stopping", type=int, metavar="N",
                   help="stop once N validations in a row bring no new best validation loss (best/ keeps the best)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=42)

    g = parser.add_argument_group("stability")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    g.add_argument("--loss-clamp", type=float, default=20.0,
                   help="scale losses above this down to it, keeping the gradient direction (0 = off)")
    g.add_argument("--max-skip-fraction", type=float, default=0.05,
                   help="abort when more than this share of the last 100 updates were skipped for NaN/inf")
    g.add_argument("--max-consecutive-skips", type=int, default=5, help="abort after this many skipped updates in a row")

    g = parser.add_argument_group("optimisations")
    g.add_argument("--use-compile", action="store_true", help="torch.compile the model (pays off on long runs)")
    g.add_argument("--use-amp", action="store_true",
                   help="mixed precision: bf16 on CPU, Ampere+ CUDA and MPS (macOS 14+); fp16 on older CUDA")
    g.add_argument("--use-gradient-checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    g.add_argument("--optim", choices=list(OPTIMIZERS),
                   help="adamw (fused, float32: 16 bytes/parameter; the default), adamw-8bit (bitsandbytes, CPU and CUDA: "
                        "10), adamw-bf16 (bf16 weights with Kahan summation, torch-optimi: 10), adafactor (~8)")
    g.add_argument("--attention", choices=ATTENTIONS, default="auto",
                   help="training attention: auto = query-chunked on MPS (its sdpa keeps T x T matrices), sdpa elsewhere")
    g.add_argument("--memory-budget", metavar="SIZE",
                   help="e.g. 18GB: pick the fastest memory levers (optimizer, checkpointing, autocast) whose predicted "
                        "peak fits, before any work; flags you give are kept (default on MPS: half of the memory)")
    g.add_argument("--fsdp", action="store_true",
                   help="several CUDA GPUs: shard weights, gradients and optimizer state (FSDP2, one block per unit)")
    g.add_argument("--use-rmsnorm", action="store_true", help="RMSNorm instead of LayerNorm (architecture: stage 1 only)")
    g.add_argument("--use-rope", action="store_true", help="rotary instead of learned positions (architecture: stage 1 only)")

    g = parser.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    g.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop after this many minutes of training, then validate and save best/; the learning "
                        "rate decays over the time instead of the steps, and the step count is only an upper limit")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --output-dir that holds another run")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto picks MPS, then CUDA, then CPU")
    g.add_argument("--num-proc", type=int, help="processes for tokenising (default: one)")
    g.add_argument("--cache-dir", help="where tokenised datasets are cached (default ~/.cache/bashgpt/packed)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    g = parser.add_argument_group("reporting and sharing")
    g.add_argument("--report-to", nargs="+", choices=REPORT_TO_CHOICES, default=["auto"], metavar="TRACKER",
                   help=f"experiment trackers Trainer logs to: {', '.join(REPORT_TO_CHOICES)} (default auto: "
                        "TensorBoard where it is installed); each needs its package")
    g.add_argument("--run-name", help="the run's name in the trackers (default: the output folder's name)")
    g.add_argument("--push-to-hub", action="store_true",
                   help="upload best/ (weights, tokenizer, model card) to the Hugging Face Hub at the end; checked "
                        "before training (login, network)")
    g.add_argument("--hub-model-id", metavar="USER/NAME", help="the Hub repository (default: the output folder's name)")
    g.add_argument("--hub-private", action="store_true", help="create the Hub repository private")
    g.add_argument("--hub-strategy", choices=HUB_STRATEGIES, default="end",
                   help="end: push once at the end; every_best: also push each new best, in the background")
    return parser


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    names = {f.name for f in fields(TrainOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("loss_clamp") == 0:
        values["loss_clamp"] = None
    return TrainOptions(**values)
