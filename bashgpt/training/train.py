"""Run a training stage on HF Trainer: stage 1 (language) or stage 2 (code), on MPS, CUDA or CPU.

``run_training(options)`` is what ``bashgpt train``, ``recipes/stage1.py`` and
``recipes/stage2.py`` call. Output folder layout::

    OUTPUT/best/                 complete model folder of the best validation loss (loads with from_pretrained)
    OUTPUT/checkpoints/          the last checkpoints, for --resume
    OUTPUT/log.jsonl             one line per log event; OUTPUT/train.log, what was said
    OUTPUT/training_curves.png   loss, validation loss and learning rate against steps
    OUTPUT/run.json              the options of the run
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainingArguments, default_data_collator

from .. import BashGPTConfig, BashGPTForCausalLM, logs
from ..data.cache_dirs import packed_cache_dir
from ..data.corpus import load_corpus, stream_corpus
from ..data.packing import commands_only, packed_splits, split_stats, with_replay, with_share
from ..data.streaming import streamed_splits
from ..data.tokenization import default_tokenizer_dir
from ..devices import Precision, choose_precision, resolve_device
from ..errors import UserError
from ..logs import LOGGER
from ..model_folder import load_tokenizer, save_model_folder
from ..sampling import default_generation_config
from .callbacks import Advice, BestModelSaver, EarlyStop, EpochBoundary, JsonlLog, Throughput, TimeBudget
from .checkpoints import check_architecture, checkpoint_config, load_checkpoint_model, preset_of, resolve_checkpoint
from .cpu_memory import keep_large_allocations_on_heap, return_freed_memory
from .estimate import estimate, fit_advice
from .levers import Levers, apply_to_model, optimizer_cls_and_kwargs
from .memory_plan import default_budget, levers_for_run
from .options import DEFAULT_PAIR_SHARE, LOSS_TARGETS, SAVE_TOTAL_LIMIT, TrainOptions
from .progress import ProgressLine
from .report import model_card, plot_training_curves
from .reporting import HubPusher, check_hub, trackers
from .run_safety import (
    OOM_ADVICE,
    CheckpointSeal,
    GracefulStop,
    Interrupted,
    describe_os_error,
    is_out_of_memory,
    newest_sealed_checkpoint,
    remove_unsealed,
    restore_states,
)
from .sharding import full_state_dict
from .stability import NAN_ADVICE, SkipLedger
from .trainer import SafeTrainer

# Options that may differ between a run and its --resume without making it another run.
# (a resumed run keeps the levers it recorded, whatever the budget)
RESUME_MUTABLE = {"resume", "overwrite", "progress", "quiet", "cache_dir", "device", "use_compile", "memory_budget",
                  "attention", "report_to", "run_name", "push_to_hub", "hub_model_id", "hub_private", "hub_strategy"}


class Run:
    """Where a run writes, and how it talks: through the ``bashgpt`` logger (logs.py), to the console and, while
    the run is entered, to OUTPUT/train.log (opened at the first message). Only the main process talks."""

    def __init__(self, output_dir: Path, is_main: bool = True):
        self.dir = output_dir
        self.is_main = is_main
        self.open = ExitStack()  # the run's log file while the run is entered

    def __enter__(self) -> "Run":
        if self.is_main:
            self.open.enter_context(logs.log_file(self.dir / "train.log"))
        return self

    def __exit__(self, *exc) -> None:
        self.open.close()

    def say(self, message: str, console: bool = True) -> None:
        """On the console (above any live progress line) and in the run's log; ``console=False``: the log only."""
        if self.is_main:
            LOGGER.log(logging.INFO if console else logging.DEBUG, message)

    def warn(self, message: str) -> None:
        """A warning ("warning: ..."): shown even with --quiet."""
        if self.is_main:
            LOGGER.warning(message)


def check_flags(opts: TrainOptions) -> None:
    """Refuse flags that contradict each other or miss their partner, before anything is read."""
    if opts.stage == "code" and not opts.dataset:
        raise UserError("stage 2 (--stage code) needs --dataset: a 'bashgpt collect' folder of bash scripts")
    if opts.resume and opts.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    for flag, what in (("replay", "mixes tokenised corpora"),
                       ("max_document_tokens", "leaves documents out as the corpus is tokenised"),
                       ("pair_share", "repeats the tokenised pairs"),
                       ("pair_loss", "marks the tokenised pairs' prompts")):
        if getattr(opts, flag) not in (None, 0, "all") and opts.streaming:
            raise UserError(f"--{flag.replace('_', '-')} {what} and --streaming reads the corpus as it goes; drop "
                            "one of them")


def validate(opts: TrainOptions) -> None:
    """Refuse impossible numbers (the guide's defaults filled in) before any work."""
    for name in ("batch_size", "num_epochs", "steps_per_epoch", "gradient_accumulation_steps", "seq_len",
                 "eval_steps", "eval_blocks", "early_stopping", "max_document_tokens"):
        value = getattr(opts, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}")
    if opts.learning_rate is not None and not opts.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {opts.learning_rate}")
    if opts.warmup_steps is not None and opts.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be 0 or more, got {opts.warmup_steps}")
    if not 0 < opts.replay_share < 1:
        raise UserError(f"--replay-share must be between 0 and 1 (a share of the training tokens), got "
                        f"{opts.replay_share}")
    if opts.time_budget is not None and not opts.time_budget > 0:
        raise UserError(f"--time-budget must be a positive number of minutes, got {opts.time_budget}")
    if opts.pair_share is not None and not 0 <= opts.pair_share < 1:
        raise UserError(f"--pair-share must be at least 0 and below 1 (a share of the bash training tokens), got "
                        f"{opts.pair_share}")


def check_fsdp(opts: TrainOptions, device: str) -> None:
    """--fsdp shards over several CUDA GPUs; elsewhere Trainer would quietly run DDP (every process a full copy)."""
    if not opts.fsdp:
        return
    if device != "cuda":
        raise UserError(f"--fsdp shards a model over several CUDA GPUs; on {device} Trainer would quietly keep a full "
                        f"copy per process instead. Drop --fsdp (and use --memory-budget to fit one device)")
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 and not (dist.is_available() and dist.is_initialized()):
        raise UserError("--fsdp needs several processes: start it with accelerate launch --num_processes N "
                        "recipes/stage1.py ... --fsdp")


def plan_model(opts: TrainOptions):
    """(config, preset name, checkpoint path or None, legacy state or None); checks flags against the checkpoint."""
    if opts.checkpoint:
        path = resolve_checkpoint(opts.checkpoint)
        config, state = checkpoint_config(path)
        check_architecture(config, opts.model_size, opts.use_rmsnorm, opts.use_rope, f"checkpoint {path}")
        return config, preset_of(config) or "tiny", path, state
    if opts.stage == "code":
        LOGGER.warning("warning: stage 2 without --checkpoint trains a new model from scratch on bash")
    preset = opts.model_size or "tiny"
    config = BashGPTConfig.from_preset(preset, norm_type="rmsnorm" if opts.use_rmsnorm else "layernorm",
                                       position_embedding_type="rope" if opts.use_rope else "learned")
    return config, preset, None, None


def last_checkpoint(out: Path) -> str | None:
    """The newest complete (sealed) checkpoint of the run in ``out``."""
    found = newest_sealed_checkpoint(out / "checkpoints")
    return str(found) if found else None


def check_same_options(opts: TrainOptions, out: Path) -> None:
    """--resume must continue the same run: refuse options that differ from its run.json."""
    record = out / "run.json"
    if not record.is_file():
        return
    mine = {k: v for k, v in dataclasses.asdict(opts).items() if k not in RESUME_MUTABLE}
    theirs = {k: v for k, v in json.loads(record.read_text()).items() if k not in RESUME_MUTABLE}
    changed = sorted(k for k in mine if theirs.get(k) != mine[k])
    if changed:
        raise UserError(f"--resume with different options than the run in {out} ({', '.join(changed)}); "
                        f"use the same flags, or a new --output-dir")


def finished_at(out: Path, max_steps: int) -> int | None:
    """The step of the last checkpoint when it already reached ``max_steps`` (the run is complete), else None."""
    last = last_checkpoint(out)
    state = Path(last) / "trainer_state.json" if last else None
    if state is None or not state.is_file():
        return None
    step = json.loads(state.read_text()).get("global_step", 0)
    return step if step >= max_steps else None


def prepare_output_dir(opts: TrainOptions) -> str | None:
    """Create or check the output folder; returns the checkpoint to resume from."""
    out = Path(opts.output_dir)
    if opts.resume:
        remove_unsealed(out / "checkpoints")
        last = last_checkpoint(out)
        if last is None:
            raise UserError(f"--resume: no checkpoint in {out / 'checkpoints'}; start the run without --resume")
        check_same_options(opts, out)
        return last
    if (out / "run.json").is_file() or (out / "checkpoints").is_dir():
        if not opts.overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                            f"or another --output-dir")
        for name in ("checkpoints", "best", "log.jsonl", "train.log", "training_curves.png", "run.json", "runs"):
            p = out / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{describe_os_error(err, str(out))}; pick a writable --output-dir") from None
    return None


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Rows of a new model's embedding and LM head: the tokenizer's size rounded up to ``multiple`` (faster matmuls)."""
    return -(-n_tokens // multiple) * multiple


def choose_tokenizer(opts: TrainOptions, ckpt_path: Path | None):
    if opts.tokenizer:
        return load_tokenizer(opts.tokenizer)
    if ckpt_path is not None and ckpt_path.is_dir() and (ckpt_path / "tokenizer.json").is_file():
        return load_tokenizer(ckpt_path)
    return load_tokenizer(default_tokenizer_dir())


def training_arguments(opts: TrainOptions, out: Path, device: str, precision, max_steps: int,
                       report_to: list[str]) -> TrainingArguments:
    fsdp = {}
    if opts.fsdp:  # FSDP2 through accelerate; one transformer block per unit (_no_split_modules)
        fsdp = {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["BashGPTBlock"],
                                "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
                                "cpu_ram_efficient_loading": False}}
    return TrainingArguments(
        **fsdp,
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        max_steps=max_steps,
        learning_rate=opts.learning_rate,
        warmup_steps=opts.warmup_steps,
        lr_scheduler_type="constant_with_warmup" if opts.lr_schedule == "constant" else "cosine",
        weight_decay=opts.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=opts.max_grad_norm,
        optim="adamw_torch" if (device == "mps" and precision.fp16) else "adamw_torch_fused",
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=device == "cpu",
        torch_compile=opts.use_compile,
        activation_checkpointing=opts.use_gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if opts.use_gradient_checkpointing else None,
        eval_strategy="steps",
        eval_steps=opts.eval_steps,
        save_strategy="steps",
        save_steps=opts.eval_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        logging_steps=max(1, min(10, max_steps // 50)),
        logging_first_step=True,
        report_to=report_to or "none",
        run_name=opts.run_name or out.resolve().name,
        seed=opts.seed,
        data_seed=opts.seed,
        dataloader_pin_memory=device == "cuda",
        dataloader_drop_last=False,  # True would also drop a validation set smaller than one batch
        disable_tqdm=True,  # the bar is ProgressLine's (progress.py)
    )


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Every choice of a run, settled before any work (every refusal comes while making it): the options filled
    from the guide, the model's config, the tokenizer, the device, the precision and the memory levers."""

    opts: TrainOptions
    config: BashGPTConfig
    preset: str
    checkpoint: Path | None
    legacy_state: dict | None
    tokenizer: object
    device: str
    levers: Levers
    lever_plan: str | None  # what --memory-budget chose, to be said
    budgeted: bool
    precision: Precision
    report_to: list[str]
    hub_repo: str

    @property
    def out(self) -> Path:
        return Path(self.opts.output_dir)

    @property
    def max_steps(self) -> int:
        return self.opts.num_epochs * self.opts.steps_per_epoch


def fit_vocabulary(config: BashGPTConfig, tokenizer, checkpoint: Path | None) -> None:
    """A new model takes its tokenizer's vocabulary (the shipped one: the presets' 32,000); a checkpoint's must
    hold the tokenizer's."""
    if checkpoint is None:
        config.vocab_size = padded_vocab_size(len(tokenizer))
    elif len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}; "
                        f"use the tokenizer the checkpoint was trained with (--tokenizer)")


def plan_run(opts: TrainOptions) -> RunPlan:
    """Resolve the options into a RunPlan, whose options are ``opts`` with the guide's defaults and the chosen
    levers filled in (what run.json records); ``opts`` itself is left as it is."""
    check_flags(opts)
    config, preset, checkpoint, legacy_state = plan_model(opts)
    opts = opts.fill_defaults(preset)
    validate(opts)
    tokenizer = choose_tokenizer(opts, checkpoint)
    fit_vocabulary(config, tokenizer, checkpoint)
    out = Path(opts.output_dir)
    report_to = trackers(opts.report_to)  # before any work: a missing package or an unreachable tracker
    hub_repo = opts.hub_model_id or out.resolve().name
    if opts.push_to_hub:
        check_hub(hub_repo)
    device = resolve_device(opts.device)
    check_fsdp(opts, device)
    recorded = json.loads((out / "run.json").read_text()) if opts.resume and (out / "run.json").is_file() else None
    levers, lever_plan, opts = levers_for_run(opts, preset, config, device, recorded)  # may refuse
    precision = choose_precision(device, opts.use_amp)
    if levers.kind.bf16_weights and not precision.bf16:
        precision.note = f"bf16 weights and optimizer state ({levers.optim})"
    return RunPlan(opts, config, preset, checkpoint, legacy_state, tokenizer, device, levers, lever_plan,
                   budgeted=bool(opts.memory_budget) or default_budget(device) is not None, precision=precision,
                   report_to=report_to, hub_repo=hub_repo)


def claim_output_dir(plan: RunPlan, args: TrainingArguments, run: "Run") -> str | None:
    """The run folder's protocol: one process checks, cleans and claims the folder (run.json, the log cut back to
    the checkpoint resumed from); the others wait, then only look up the checkpoint. Returns that checkpoint."""
    with args.main_process_first(desc="preparing the output folder"):
        if not run.is_main:
            return last_checkpoint(plan.out) if plan.opts.resume else None
        resume_from = prepare_output_dir(plan.opts)
        (plan.out / "run.json").write_text(json.dumps(dataclasses.asdict(plan.opts), indent=2) + "\n")
        if resume_from:
            truncate_log(plan.out / "log.jsonl", int(Path(resume_from).name.split("-")[-1]))
        return resume_from


def new_model(plan: RunPlan) -> BashGPTForCausalLM:
    config, tokenizer, opts = plan.config, plan.tokenizer, plan.opts
    config.eos_token_id, config.pad_token_id, config.bos_token_id = (
        tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    if opts.seq_len > config.max_position_embeddings and config.position_embedding_type == "learned":
        raise UserError(f"--seq-len {opts.seq_len} is longer than the model's {config.max_position_embeddings} "
                        f"positions; lower --seq-len")
    torch.manual_seed(opts.seed)
    return BashGPTForCausalLM(config)


def build_model(plan: RunPlan) -> BashGPTForCausalLM:
    """The model to train, from the checkpoint or new, in the levers' dtype and attention."""
    if plan.checkpoint is not None:
        model = load_checkpoint_model(plan.checkpoint, plan.config, plan.legacy_state)
    else:
        model = new_model(plan)
    if model.generation_config.do_sample is None:  # new, or saved before bashgpt wrote its sampling defaults
        model.generation_config = default_generation_config(plan.tokenizer)  # saved as generation_config.json
    apply_to_model(model, plan.levers)  # storage dtype (bf16 for adamw-bf16) and the training attention
    if plan.budgeted:
        return_freed_memory()  # CPU under a budget: the peak is what is alive at once (cpu_memory.py)
    else:
        keep_large_allocations_on_heap()  # CPU: reuse big buffers instead of page-faulting them in (cpu_memory.py)
    return model


def announce(run: "Run", plan: RunPlan, model, args: TrainingArguments, stats: dict, eval_blocks: int) -> None:
    """What the run is about to do: the model, the processes, the data, the memory plan and the estimate."""
    opts, config = plan.opts, plan.config
    n_params = sum(p.numel() for p in model.parameters())
    world = args.world_size
    run.say(f"stage {opts.stage}: {plan.preset} preset, {n_params / 1e6:.1f}M parameters "
            f"({config.norm_type}, {config.position_embedding_type} positions) on {plan.device} ({plan.precision.note})")
    run.say(f"{world} process{'es' if world > 1 else ''} took part ({args.parallel_mode.name}); effective batch "
            f"{effective_batch(opts, world)} x {opts.seq_len} tokens; {opts.num_epochs} epochs x "
            f"{opts.steps_per_epoch} steps")
    train_text = (f"{stats['train']['sequences']:,} sequences / {stats['train']['tokens'] / 1e6:.2f}M tokens"
                  if stats["train"]["sequences"] is not None else "streamed")
    replay = f" (of them {opts.replay_share:.0%} {opts.replay}, replayed)" if opts.replay else ""
    if stats["train"].get("pairs_share"):
        replay += f"; description-and-command pairs make up {stats['train']['pairs_share']:.0%} of the bash tokens"
    if stats["train"].get("documents"):
        kept, total = stats["train"]["documents"]
        replay += f"; {kept:,} of its {total:,} documents have at most {opts.max_document_tokens} tokens"
    run.say(f"data {opts.dataset}: train {train_text}{replay}, validation {stats['validation']['sequences']:,} / "
            f"{stats['validation']['tokens'] / 1e6:.2f}M (evaluating on {eval_blocks} sequences)")
    if not run.is_main:
        return
    for line in (plan.lever_plan or "").splitlines():
        run.say(line)
    e = estimate(plan.preset, opts.batch_size, opts.seq_len, plan.levers, opts.gradient_accumulation_steps,
                 device=plan.device, config=config, budgeted=plan.budgeted)
    run.say(f"estimate: {e.total / 2**30:.2f} GB (weights {e.parts['weights'] / 2**30:.2f}, optimizer "
            f"{e.parts['optimizer'] / 2**30:.2f}, activations {e.parts['activations'] / 2**30:.2f}), "
            f"about {e.seconds_per_step:.2f} s per step, " +
            (f"training for {opts.time_budget:.3g} minutes (--time-budget)" if opts.time_budget else
             f"{e.seconds_per_step * plan.max_steps / 3600:.2f} h in all"))
    if warning := fit_advice(e):
        run.warn(f"warning: {warning}")


def effective_batch(opts: TrainOptions, world: int) -> int:
    return opts.batch_size * opts.gradient_accumulation_steps * world


@dataclasses.dataclass
class Watchers:
    """What looks after a run beside Trainer, and what ``finish`` asks of it afterwards."""

    ledger: SkipLedger
    advice: Advice
    saver: BestModelSaver
    stopper: GracefulStop
    pusher: HubPusher | None
    save_best: object  # callable(model, state)


def last_train_loss(state) -> float:
    """The last training loss Trainer logged (its own record, whatever the callbacks' order)."""
    return next((r["loss"] for r in reversed(state.log_history) if "loss" in r), float("nan"))


def best_saver(plan: RunPlan, run: "Run", card_info: dict, pusher: HubPusher | None):
    """save_best(model, state, loss): best/ as a whole model folder with its records. Called on every process:
    gathering a sharded (--fsdp) model's weights takes them all."""
    best_dir, lineage = plan.out / "best", training_lineage(plan.opts, plan.checkpoint)

    def save_best(model_to_save, state, loss: float):
        weights = full_state_dict(model_to_save)  # None unless sharded
        if not run.is_main:
            return
        info = dict(card_info, step=state.global_step, eval_loss=loss, train_loss=last_train_loss(state))
        records = {"bashgpt_best.json": json.dumps({"step": state.global_step, "eval_loss": loss}),
                   "bashgpt_training.json": json.dumps(lineage, indent=2) + "\n"}
        save_model_folder(model_to_save, plan.tokenizer, best_dir, card=model_card(info), state_dict=weights,
                          records=records)  # best/ appears with its records or not at all
        run.say(f"new best validation loss {loss:.4f} at step {state.global_step}: saved {best_dir}", console=False)
        if pusher:
            pusher.on_new_best(best_dir, state.global_step)

    return save_best


def card_facts(plan: RunPlan, model, stats: dict, world: int) -> dict:
    """What the model card says of the run, besides the step and the losses."""
    opts, config = plan.opts, plan.config
    return {"preset": plan.preset, "stage": opts.stage, "parameters": sum(p.numel() for p in model.parameters()),
            "dataset": opts.dataset, "architecture": f"{config.norm_type}, {config.position_embedding_type} positions",
            "train_sequences": stats["train"]["sequences"], "train_tokens": stats["train"]["tokens"],
            "validation_tokens": stats["validation"]["tokens"], "max_steps": plan.max_steps,
            "effective_batch": effective_batch(opts, world), "seq_len": opts.seq_len,
            "path": str(plan.out / "best"), "from_checkpoint": str(plan.checkpoint) if plan.checkpoint else None}


def first_best_loss(plan: RunPlan, resume_from: str | None) -> float:
    """The best loss so far; a checkpoint's seal overrides it (restore_states). A checkpoint sealed before the
    saver's state was sealed too resumes from best/'s own record."""
    record = plan.out / "best" / "bashgpt_best.json"
    return json.loads(record.read_text())["eval_loss"] if resume_from and record.is_file() else math.inf


def build_trainer(plan: RunPlan, run: "Run", model, args: TrainingArguments, train_ds, eval_ds, stats: dict,
                  resume_from: str | None, extra_callbacks=()) -> tuple[SafeTrainer, Watchers]:
    """Trainer with bashgpt's callbacks, their states restored when resuming."""
    opts = plan.opts
    ledger = SkipLedger(max_fraction=opts.max_skip_fraction, max_consecutive=opts.max_consecutive_skips)
    advice = Advice(ledger, run.warn, early_stopping=bool(opts.early_stopping))
    pusher = HubPusher(plan.hub_repo, opts.hub_private, opts.hub_strategy) if opts.push_to_hub and run.is_main else None
    save_best = best_saver(plan, run, card_facts(plan, model, stats, args.world_size), pusher)
    saver = BestModelSaver(save_best, first_best_loss(plan, resume_from))
    budget = TimeBudget(opts.time_budget * 60, opts.warmup_steps) if opts.time_budget else None
    throughput = Throughput(effective_batch(opts, args.world_size) * opts.seq_len)
    progress = ProgressLine(opts.steps_per_epoch, opts.num_epochs, throughput, run.say,
                            opts.progress and not opts.quiet, run.is_main, saver, budget)
    early = [EarlyStop(opts.early_stopping, saver, run.say)] if opts.early_stopping else []
    # sealed into every checkpoint together, so the best loss and early stopping's patience resume as one
    stateful = {"time_budget": budget, "early_stopping": early[0] if early else None, "skip_ledger": ledger,
                "best_model": saver}
    stateful = {name: part for name, part in stateful.items() if part is not None}
    if resume_from:
        restore_states(Path(resume_from), stateful)
    callbacks = [*([budget] if budget else []), EpochBoundary(opts.steps_per_epoch), CheckpointSeal(stateful),
                 throughput, JsonlLog(plan.out / "log.jsonl", throughput, opts.steps_per_epoch, plan.device, ledger,
                                      run.is_main),
                 progress, advice, *early, saver, *extra_callbacks]  # in any order (tests/test_training.py)
    stopper = GracefulStop(run.say)
    trainer = SafeTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=default_data_collator, processing_class=plan.tokenizer,
                          callbacks=[*callbacks, stopper], loss_clamp=opts.loss_clamp, skip_ledger=ledger,
                          optimizer_cls_and_kwargs=None if plan.levers.optim == "adamw" else
                          optimizer_cls_and_kwargs(plan.levers.optim, opts.learning_rate, plan.device),
                          lr_factor=budget.lr_factor if budget else None)
    progress.replace_trainers_printing(trainer)
    return trainer, Watchers(ledger, advice, saver, stopper, pusher, save_best)


def finish(plan: RunPlan, run: "Run", trainer: SafeTrainer, w: Watchers) -> dict:
    """After training: best/ if no validation ever gave one, the plot, the summary; an interrupted, aborted or
    unpushed run is its one-line error."""
    best_dir = plan.out / "best"
    if not w.ledger.abort_reason and not w.saver.saved_once and not (best_dir / "config.json").is_file():
        run.warn("warning: no finite validation loss was measured; saving the final model as best/")
        w.save_best(trainer.model, trainer.state, float("nan"))
    if run.is_main:
        plot_training_curves(plan.out / "log.jsonl", plan.out / "training_curves.png",
                             f"bashgpt {plan.preset}, stage {plan.opts.stage}")
    step = trainer.state.global_step
    summary = {"output_dir": str(plan.out), "best": str(best_dir), "step": step, "max_steps": plan.max_steps,
               "skipped_steps": w.ledger.skipped_total, "world_size": trainer.args.world_size,
               "eval_losses": w.advice.eval_losses,
               "train_loss": w.advice.train_losses[-1] if w.advice.train_losses else None,
               "curves": str(plan.out / "training_curves.png")}
    if w.stopper.signal_name:
        raise Interrupted(f"stopped by {w.stopper.signal_name} at step {step}; a resumable checkpoint is in "
                          f"{last_checkpoint_text(plan.out)}; continue with: {resume_command()}", w.stopper.exit_code())
    if w.ledger.abort_reason:
        raise UserError(f"training stopped: {w.ledger.abort_reason}. {NAN_ADVICE}. "
                        f"The last good model is in {best_dir}; checkpoints in {plan.out / 'checkpoints'}")
    if w.pusher:
        push_best(w.pusher, best_dir, step, plan.hub_repo, run)
    for line in closing_lines(plan.opts.stage, plan.preset, w.advice.eval_losses, summary):
        run.say(line)
    return summary


def push_best(pusher: HubPusher, best_dir: Path, step: int, hub_repo: str, run: "Run") -> None:
    try:
        run.say(f"pushed {best_dir} to {pusher.finish(best_dir, step)}")
    except Exception as err:  # the network or the Hub failed after training: the model is safe on disk
        raise UserError(f"pushing to the Hub failed ({type(err).__name__}: {err}); {best_dir} is complete: upload "
                        f"it later with `hf upload {hub_repo} {best_dir}`") from None


def run_training(opts: TrainOptions, extra_callbacks=()) -> dict:
    """Train one stage end to end; returns a summary (paths, losses, steps, skipped updates): settle every choice,
    claim the folder, make the data and the model, train, finish."""
    logs.set_quiet(opts.quiet)
    plan = plan_run(opts)
    opts = plan.opts  # the guide's defaults and the chosen levers filled in
    if opts.resume and (done := finished_at(plan.out, plan.max_steps)) is not None:
        return already_complete(opts, plan.out, done, plan.max_steps)
    args = training_arguments(opts, plan.out, plan.device, plan.precision, plan.max_steps, plan.report_to)
    run = Run(plan.out, is_main=args.process_index == 0)
    with run:  # its messages also go to OUTPUT/train.log until it ends, however it ends
        resume_from = claim_output_dir(plan, args, run)
        with args.main_process_first(desc="tokenising"):
            train_ds, eval_ds, stats = training_data(opts, plan.tokenizer, progress=run.is_main and opts.progress
                                                     and not opts.quiet)
        model = build_model(plan)
        announce(run, plan, model, args, stats, len(eval_ds))
        trainer, watchers = build_trainer(plan, run, model, args, train_ds, eval_ds, stats, resume_from,
                                          extra_callbacks)
        train_guarded(trainer, watchers.stopper, resume_from, plan.out)
        return finish(plan, run, trainer, watchers)


def training_data(opts: TrainOptions, tokenizer, progress: bool):
    """Training and evaluation blocks, and the counts of both splits: from the token cache (tokenised once), or
    streamed (--streaming: training blocks read as used, not counted)."""
    if opts.streaming:
        train_docs, validation_docs = stream_corpus(opts.dataset)
        train_ds, validation = streamed_splits(train_docs, validation_docs, tokenizer, opts.seq_len,
                                               opts.eval_blocks, opts.seed)
        train_stats = {"sequences": None, "tokens": None}
    else:
        train_ds, validation, train_stats = packed_training_data(opts, tokenizer, progress)
    eval_ds = validation.first(opts.eval_blocks)
    if (not opts.streaming and len(train_ds) < opts.batch_size) or len(eval_ds) == 0:
        trained = "streamed" if opts.streaming else f"{len(train_ds)}"
        raise UserError(f"{opts.dataset} gives {trained} training and {len(eval_ds)} validation sequences of "
                        f"{opts.seq_len} tokens; use more data or a smaller --seq-len/--batch-size")
    return train_ds, eval_ds, {"train": train_stats, "validation": split_stats(validation)}


def packed_training_data(opts: TrainOptions, tokenizer, progress: bool):
    """Training blocks (the scripts, the pairs at their share, the replayed corpus at its), validation blocks, and
    the training split's counts (with how many documents --max-document-tokens kept of how many)."""
    cache_dir, cut = opts.cache_dir or str(packed_cache_dir()), opts.max_document_tokens
    corpus, pairs = scripts_and_pairs(opts, load_corpus(opts.dataset, also=("source",)))
    packed = packed_splits(corpus, tokenizer, opts.seq_len, cache_dir, progress=progress, max_doc_tokens=cut)
    train_ds, validation = packed["train"], packed["validation"]
    scripts_tokens, kept = train_ds.num_tokens, documents_in(train_ds, tokenizer) if cut else 0
    if pairs is not None:
        pair_blocks = packed_splits(datasets.DatasetDict(train=pairs), tokenizer, opts.seq_len, cache_dir,
                                    progress=progress, max_doc_tokens=cut)["train"]
        kept += documents_in(pair_blocks, tokenizer) if cut else 0
        if pair_loss(opts) == "command":
            pair_blocks = commands_only(pair_blocks, tokenizer)
        train_ds = with_share(train_ds, pair_blocks, pair_share(opts))
    pairs_part = 1 - scripts_tokens / train_ds.num_tokens if train_ds.num_tokens else 0.0
    if opts.replay:
        replayed = packed_splits(load_corpus(opts.replay), tokenizer, opts.seq_len, cache_dir, progress=progress,
                                 splits=("train",))["train"]
        train_ds = with_replay(train_ds, replayed, opts.replay_share)
    documents = (kept, len(corpus["train"]) + (len(pairs) if pairs is not None else 0)) if cut else None
    return train_ds, validation, dict(split_stats(train_ds), pairs_share=pairs_part, documents=documents)


def documents_in(blocks, tokenizer) -> int:
    """How many documents a token stream holds (each ends in end of text)."""
    return int(np.count_nonzero(np.asarray(blocks.tokens) == tokenizer.eos_token_id))


def pair_share(opts: TrainOptions) -> float:
    """--pair-share, or its default: ``DEFAULT_PAIR_SHARE`` at stage 2, none at stage 1."""
    if opts.pair_share is not None:
        return opts.pair_share
    return DEFAULT_PAIR_SHARE if opts.stage == "code" else 0.0


def pair_loss(opts: TrainOptions) -> str:
    """--pair-loss, or its default: the command alone at stage 2, all of each pair at stage 1."""
    return opts.pair_loss or ("command" if opts.stage == "code" else "all")


def scripts_and_pairs(opts: TrainOptions, corpus: datasets.DatasetDict):
    """(the corpus, None), or, with a pair share or --pair-loss command, (the corpus with only scripts in its
    training split, the training pairs): the pairs are then mixed in at their share (``with_share``), each tokenised
    once."""
    train = corpus["train"]
    apart = pair_share(opts) or pair_loss(opts) == "command"
    sources = train["source"] if apart and "source" in train.column_names else []
    is_pair = [str(source).startswith("pair:") for source in sources]
    corpus = datasets.DatasetDict({split: ds.select_columns(["text"]) for split, ds in corpus.items()})  # as the
    # other commands load it, so that they share its token cache
    if not any(is_pair):
        asked = "--pair-share" if opts.pair_share else "--pair-loss" if opts.pair_loss == "command" else None
        if asked:  # asked for, not defaulted
            raise UserError(f"{asked}: {opts.dataset} has no description-and-command pairs; collect it with "
                            f"'bashgpt collect ... --pairs man,cheat,eg' or drop {asked}")
        return corpus, None
    scripts = corpus["train"].select([i for i, p in enumerate(is_pair) if not p])
    pairs = corpus["train"].select([i for i, p in enumerate(is_pair) if p])
    return datasets.DatasetDict(train=scripts, validation=corpus["validation"]), pairs


def already_complete(opts: TrainOptions, out: Path, step: int, max_steps: int) -> dict:
    """--resume of a run that has reached its last step: say so and change nothing (Trainer would add a step)."""
    check_same_options(opts, out)
    best = out / "best"
    LOGGER.info(f"the run in {out} is already complete (step {step} of {max_steps}); nothing to resume. "
                f"Its best model is {best}")
    return {"output_dir": str(out), "best": str(best), "step": step, "max_steps": max_steps, "complete": True}


def training_lineage(opts: TrainOptions, ckpt_path: Path | None) -> dict:
    """What this model was trained on, and what its starting checkpoint was trained on (for bashgpt eval)."""
    parent = None
    if ckpt_path is not None and ckpt_path.is_dir() and (ckpt_path / "bashgpt_training.json").is_file():
        parent = json.loads((ckpt_path / "bashgpt_training.json").read_text())
    return {"stage": opts.stage, "dataset": opts.dataset, "seq_len": opts.seq_len, "seed": opts.seed, "parent": parent}


def train_guarded(trainer, stopper: GracefulStop, resume_from: str | None, out: Path) -> None:
    """``trainer.train`` with signals handled and disk/memory failures turned into one clear line."""
    stopper.install()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped at once by a second Ctrl-C; the last complete checkpoint is "
                          f"{last_checkpoint_text(out)}; continue with: {resume_command()}", 130) from None
    except OSError as err:
        remove_unsealed(out / "checkpoints")  # a save cut short: nothing a later run should see
        raise UserError(f"{describe_os_error(err, str(out))}; free space or pick another --output-dir; the last "
                        f"good checkpoint is {last_checkpoint_text(out)}") from None
    except Exception as err:
        if is_out_of_memory(err):
            raise UserError(OOM_ADVICE) from None
        raise
    finally:
        stopper.uninstall()


def last_checkpoint_text(out: Path) -> str:
    return last_checkpoint(out) or "none yet (start again without --resume)"


def resume_command() -> str:
    argv = [a for a in sys.argv if a != "--overwrite"]
    return " ".join(argv + ([] if "--resume" in argv else ["--resume"]))


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run starts from."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))


def closing_lines(stage: str, preset: str, eval_losses: list[float], summary: dict) -> list[str]:
    lines = [f"done: {summary['step']} steps, {summary['skipped_steps']} skipped; best model in {summary['best']}; "
             f"curves in {summary['curves']}"]
    target = LOSS_TARGETS[stage].get(preset)
    if eval_losses and target is not None:
        best = min(eval_losses)
        verdict = "meets" if best < target else "is above"
        lines.append(f"best validation loss {best:.3f} {verdict} the guide's target for {preset} at this stage (<{target})")
    return lines
