"""The training command line: the reference guide's flags, with defaults from its recommended commands."""

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from transformers import HfArgumentParser

from ..configuration_bashgpt import PRESETS
from ..data.corpus import STDLIB, TINYSTORIES
from ..devices import DEVICES
from .levers import ATTENTIONS, OPTIMIZERS
from .reporting import HUB_STRATEGIES, REPORT_TO_CHOICES

SAVE_TOTAL_LIMIT = 2  # checkpoints kept; at least 2: the last sealed one stays while the next is written
DEFAULT_PAIR_SHARE = 0.5  # --pair-share at stage 2 where the corpus has pairs (bench/pairs.md)

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


def option(default=None, help: str | None = None, **argparse_kwargs):
    """A training option: its default, and its --help (and argparse's choices, metavar...) for HfArgumentParser."""
    if help and default is not None and default is not False:  # unset and off say nothing: "(default: None)" is noise
        help += f" (default: {', '.join(map(str, default)) if isinstance(default, list) else default})"
    metadata = {"help": help, **argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# The options in the groups --help shows them in; TrainOptions has them all. Each is defined here once: its flag
# (kebab-case, from the name), type, default and help come from the field.
@dataclass
class WhatToTrain:
    _argument_group_name = "what to train"
    stage: Literal["language", "code"] = option(
        "language", "language = stage 1 pretraining on English; code = stage 2 fine-tuning on bash")
    model_size: str | None = option(None, "size preset (default tiny; at stage 2 the checkpoint's size)",
                                    choices=list(PRESETS))
    dataset: str | None = option(None, f"Hub name (default {TINYSTORIES} at stage 1), a local file or folder, a "
                                       f"'bashgpt collect' folder (stage 2), or '{STDLIB}' for offline English")
    replay: str | None = option(None, "a second corpus whose training documents are mixed into this run's "
                                      f"training blocks, e.g. '{STDLIB}' or TinyStories at stage 2 so that the "
                                      "model keeps the language its prompts are written in (validation stays "
                                      "--dataset's)")
    replay_share: float = option(0.2, "the share of training tokens --replay makes up")
    pair_share: float | None = option(None, "the share of the bash training tokens that the corpus's description-and-"
                                            "command pairs ('bashgpt collect --pairs') make up, each pair repeated "
                                            "to reach it (never fewer than once); 0 turns it off (default: "
                                            f"{DEFAULT_PAIR_SHARE} at stage 2 where the corpus has pairs: 10%% of "
                                            "tasks on task against 3%% with each pair once, bench/pairs.md)")
    pair_loss: Literal["all", "command"] | None = option(
        None, "what of each description-and-command pair is learnt: all of it, or only the command (its #!/bin/bash "
              "and description lines are read as the prompt, not learnt; default: command at stage 2 where the "
              "corpus has pairs: guarded samples on task 7%% of our tasks and 12%% of NL2SH-ALFA's against 3%% and 5%% "
              "learning all of it, bench/pair-loss.md)")
    streaming: bool = option(False, "read the corpus as training uses it (datasets' iterable datasets) instead of "
                                    "tokenising it all first: for corpora larger than the disk or memory; --resume "
                                    "continues on the exact block")
    checkpoint: str | None = option(None, "stage-1 output folder (its best/), or a legacy .pth / .npz state dict")
    tokenizer: str | None = option(None, "tokenizer folder (default: the checkpoint's, else the repository's "
                                         "tokenizer/); a new model gets its vocabulary size (rounded up to a multiple "
                                         "of 64)")
    output_dir: str | None = option(None, "where checkpoints, best/, logs and plots go (default runs/STAGE-SIZE)")


@dataclass
class Schedule:
    _argument_group_name = "schedule (unset: the guide's command for the stage and size, below)"
    batch_size: int | None = option(None, "sequences per device per step")
    num_epochs: int | None = option(None, "epochs; an epoch is --steps-per-epoch optimizer steps")
    steps_per_epoch: int | None = option(None, "optimizer steps per epoch")
    learning_rate: float | None = option(None, "peak learning rate")
    warmup_steps: int | None = option(None, "linear warmup steps, then constant (or cosine decay)")
    lr_schedule: Literal["constant", "cosine"] = option(
        "constant", "after warmup: constant (the guide) or cosine decay to 0")
    gradient_accumulation_steps: int = option(
        1, "micro-batches per optimizer step (effective batch = batch size x this x processes)")
    seq_len: int | None = option(None, "tokens per training sequence (unset: 1024; nano 256)")
    max_document_tokens: int | None = option(None, "leave out the documents (scripts, pairs) of more tokens than "
                                                   "this, in training and validation alike: whole short scripts, each "
                                                   "ending in end of text, teach a model trained for minutes to end "
                                                   "(the quickstart uses 256)")
    eval_steps: int | None = option(None, "validate every N steps (unset: once per epoch)")
    eval_blocks: int = option(200, "validation sequences used per evaluation")
    early_stopping: int | None = option(
        None, "stop once N validations in a row bring no new best validation loss (best/ keeps the best)", metavar="N")
    weight_decay: float = option(0.1, "AdamW weight decay (never on biases or norms)")
    seed: int = option(42, "seed of the weights, the data order and dropout")


@dataclass
class Stability:
    _argument_group_name = "stability"
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)")
    loss_clamp: float | None = option(20.0, "scale losses above this down to it, keeping the gradient direction "
                                            "(0 = off)")
    max_skip_fraction: float = option(0.05, "abort when more than this share of the last 100 updates were skipped "
                                            "for NaN/inf")
    max_consecutive_skips: int = option(5, "abort after this many skipped updates in a row")


@dataclass
class MemoryLevers:
    """What trades speed for memory; `bashgpt estimate` takes the same options."""

    _argument_group_name = "memory levers"
    use_amp: bool = option(False, "mixed precision: bf16 on CPU, Ampere+ CUDA and MPS (macOS 14+); fp16 on older CUDA")
    use_gradient_checkpointing: bool = option(False, "recompute activations: less memory, ~30%% slower")
    optim: str | None = option(None, "adamw (fused, float32: 16 bytes/parameter; the default), adamw-8bit "
                                     "(bitsandbytes, CPU and CUDA: 10), adamw-bf16 (bf16 weights with Kahan summation, "
                                     "torch-optimi: 10), adafactor (~8)", choices=list(OPTIMIZERS))
    attention: str = option("auto", "training attention: auto = query-chunked on MPS (its sdpa keeps T x T "
                                    "matrices), sdpa elsewhere", choices=list(ATTENTIONS))
    memory_budget: str | None = option(None, "e.g. 18GB: pick the fastest memory levers (optimizer, checkpointing, "
                                             "autocast) whose predicted peak fits, before any work; levers you give "
                                             "are kept (unset on MPS: half of the memory)", metavar="SIZE")


@dataclass
class Architecture:
    _argument_group_name = "architecture and speed"
    use_rmsnorm: bool = option(False, "RMSNorm instead of LayerNorm (architecture: stage 1 only)")
    use_rope: bool = option(False, "rotary instead of learned positions (architecture: stage 1 only)")
    use_compile: bool = option(False, "torch.compile the model (pays off on long runs)")
    fsdp: bool = option(False, "several CUDA GPUs: shard weights, gradients and optimizer state (FSDP2, one block "
                               "per unit)")


@dataclass
class RunControl:
    _argument_group_name = "run"
    resume: bool = option(False, "continue the run in --output-dir from its last complete checkpoint")
    time_budget: float | None = option(None, "stop after this many minutes of training, then validate and save "
                                             "best/; the learning rate decays over the time instead of the steps, and "
                                             "the step count is only an upper limit", metavar="MINUTES")
    overwrite: bool = option(False, "start afresh in an --output-dir that holds another run")
    device: str = option("auto", "auto picks MPS, then CUDA, then CPU", choices=list(DEVICES))
    cache_dir: str | None = option(None, "where tokenised datasets are cached (unset: ~/.cache/bashgpt/packed)")
    progress: bool = option(True, "the live progress line (--no-progress: a plain line per log instead)")
    quiet: bool = option(False, "warnings and errors only on the console (no progress); OUTPUT/train.log keeps all")


@dataclass
class Reporting:
    _argument_group_name = "reporting and sharing"
    report_to: list[str] = option(["auto"], f"experiment trackers Trainer logs to: {', '.join(REPORT_TO_CHOICES)} "
                                            "(auto: TensorBoard where it is installed); each needs its package",
                                  choices=list(REPORT_TO_CHOICES), metavar="TRACKER")
    run_name: str | None = option(None, "the run's name in the trackers (unset: the output folder's name)")
    push_to_hub: bool = option(False, "upload best/ (weights, tokenizer, model card) to the Hugging Face Hub at the "
                                      "end; checked before training (login, network)")
    hub_model_id: str | None = option(None, "the Hub repository (unset: the output folder's name)",
                                      metavar="USER/NAME")
    hub_private: bool = option(False, "create the Hub repository private")
    hub_strategy: str = option("end", "end: push once at the end; every_best: also push each new best, in the "
                                      "background", choices=list(HUB_STRATEGIES))


TRAIN_GROUPS = (WhatToTrain, Schedule, Stability, MemoryLevers, Architecture, RunControl, Reporting)


@dataclass
class TrainOptions(Reporting, RunControl, Architecture, MemoryLevers, Stability, Schedule, WhatToTrain):
    """Every training option (the groups above; fields in --help order)."""

    def fill_defaults(self, preset: str) -> "TrainOptions":
        """These options with every unset one filled from the guide's command for this stage and preset (a new
        object; this one is left as it is)."""
        bs, epochs, spe, lr, warmup = STAGE_DEFAULTS[self.stage][preset]
        guide = {"batch_size": bs, "num_epochs": epochs, "steps_per_epoch": spe, "learning_rate": lr,
                 "warmup_steps": warmup, "seq_len": 256 if preset == "nano" else 1024,
                 "dataset": TINYSTORIES if self.stage == "language" else None,
                 "output_dir": f"runs/{self.stage}-{preset}"}
        filled = replace(self, **{name: value for name, value in guide.items() if getattr(self, name) is None})
        return filled if filled.eval_steps is not None else replace(filled, eval_steps=filled.steps_per_epoch)


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog (the defaults table) as written; each option's help already ends with its default (option())."""


USAGE = "%(prog)s [--stage {language,code}] [--model-size SIZE] [--dataset DATA] [OPTION ...]"


def train_parser(description: str | None = None, stage: str | None = None, **kwargs) -> HfArgumentParser:
    """The training flags, parsed from TrainOptions' fields; ``stage`` fixes --stage's default (the recipes)."""
    parser = HfArgumentParser(TRAIN_GROUPS, description=description, formatter_class=HelpFormatter,
                              epilog=defaults_table(), usage=USAGE, **kwargs)
    if stage:
        parser.set_defaults(stage=stage)
    return parser


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})
    if options.loss_clamp == 0:
        options.loss_clamp = None
    return options
