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

import torch
from transformers import TrainingArguments, default_data_collator

from .. import BashGPTConfig, BashGPTForCausalLM, logs
from ..data.cache_dirs import packed_cache_dir
from ..data.corpus import load_corpus, stream_corpus
from ..data.packing import packed_splits, split_stats
from ..data.streaming import streamed_splits
from ..data.tokenization import default_tokenizer_dir
from ..devices import choose_precision, resolve_device
from ..errors import UserError
from ..logs import LOGGER
from ..model_folder import load_tokenizer, save_model_folder
from ..sampling import default_generation_config
from .callbacks import Advice, BestModelSaver, EarlyStop, EpochBoundary, JsonlLog, Throughput, TimeBudget
from .checkpoints import check_architecture, checkpoint_config, load_checkpoint_model, preset_of, resolve_checkpoint
from .cpu_memory import keep_large_allocations_on_heap, return_freed_memory
from .estimate import estimate, fit_advice
from .levers import apply_to_model, optimizer_cls_and_kwargs
from .memory_plan import default_budget, levers_for_run
from .options import LOSS_TARGETS, SAVE_TOTAL_LIMIT, TrainOptions
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


def validate(opts: TrainOptions) -> None:
    """Refuse impossible numbers before any work."""
    for name in ("batch_size", "num_epochs", "steps_per_epoch", "gradient_accumulation_steps", "seq_len",
                 "eval_steps", "eval_blocks", "early_stopping"):
        value = getattr(opts, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}")
    if opts.learning_rate is not None and not opts.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {opts.learning_rate}")
    if opts.warmup_steps is not None and opts.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be 0 or more, got {opts.warmup_steps}")
    if opts.stage == "code" and not opts.dataset:
        raise UserError("stage 2 (--stage code) needs --dataset: a 'bashgpt collect' folder of bash scripts")
    if opts.resume and opts.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if opts.time_budget is not None and not opts.time_budget > 0:
        raise UserError(f"--time-budget must be a positive number of minutes, got {opts.time_budget}")


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


def run_training(opts: TrainOptions, extra_callbacks=()) -> dict:
    """Train one stage end to end; returns a summary (paths, losses, steps, skipped updates)."""
    logs.set_quiet(opts.quiet)
    validate(opts)
    config, preset, ckpt_path, legacy_state = plan_model(opts)
    tokenizer = choose_tokenizer(opts, ckpt_path)
    if ckpt_path is None:  # a new model's vocabulary is its tokenizer's (the shipped one: the presets' 32,000)
        config.vocab_size = padded_vocab_size(len(tokenizer))
    elif len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}; "
                        f"use the tokenizer the checkpoint was trained with (--tokenizer)")
    opts.fill_defaults(preset)
    validate(opts)
    out = Path(opts.output_dir)
    report_to = trackers(opts.report_to)  # before any work: a missing package or an unreachable tracker
    hub_repo = opts.hub_model_id or out.resolve().name
    if opts.push_to_hub:
        check_hub(hub_repo)
    device = resolve_device(opts.device)
    check_fsdp(opts, device)
    recorded = json.loads((out / "run.json").read_text()) if opts.resume and (out / "run.json").is_file() else None
    levers, plan_text = levers_for_run(opts, preset, config, device, recorded)  # before any work: may refuse
    budgeted = bool(opts.memory_budget) or default_budget(device) is not None
    precision = choose_precision(device, opts.use_amp)
    if levers.kind.bf16_weights and not precision.bf16:
        precision.note = f"bf16 weights and optimizer state ({levers.optim})"
    max_steps = opts.num_epochs * opts.steps_per_epoch
    if opts.resume and (done := finished_at(out, max_steps)) is not None:
        return already_complete(opts, out, done, max_steps)
    args = training_arguments(opts, out, device, precision, max_steps, report_to)
    run = Run(out, is_main=args.process_index == 0)
    with run:  # its messages also go to OUTPUT/train.log until it ends, however it ends
        # One process checks, cleans and claims the folder; the others wait, then only look up the checkpoint.
        with args.main_process_first(desc="preparing the output folder"):
            if run.is_main:
                resume_from = prepare_output_dir(opts)
                (out / "run.json").write_text(json.dumps(dataclasses.asdict(opts), indent=2) + "\n")
                if resume_from:
                    truncate_log(out / "log.jsonl", int(Path(resume_from).name.split("-")[-1]))
            else:
                resume_from = last_checkpoint(out) if opts.resume else None

        with args.main_process_first(desc="tokenising"):
            train_ds, eval_ds, stats = training_data(opts, tokenizer, progress=run.is_main and opts.progress
                                                     and not opts.quiet)

        if ckpt_path is not None:
            model = load_checkpoint_model(ckpt_path, config, legacy_state)
        else:
            config.eos_token_id, config.pad_token_id, config.bos_token_id = (
                tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
            if opts.seq_len > config.max_position_embeddings and config.position_embedding_type == "learned":
                raise UserError(f"--seq-len {opts.seq_len} is longer than the model's {config.max_position_embeddings} "
                                f"positions; lower --seq-len")
            torch.manual_seed(opts.seed)
            model = BashGPTForCausalLM(config)
        if model.generation_config.do_sample is None:  # new, or saved before bashgpt wrote its sampling defaults
            model.generation_config = default_generation_config(tokenizer)  # saved as generation_config.json
        apply_to_model(model, levers)  # storage dtype (bf16 for adamw-bf16) and the training attention
        if budgeted:
            return_freed_memory()  # CPU under a budget: the peak is what is alive at once (cpu_memory.py)
        else:
            keep_large_allocations_on_heap()  # CPU: reuse big buffers instead of page-faulting them in (cpu_memory.py)
        n_params = sum(p.numel() for p in model.parameters())
        world = args.world_size
        effective_batch = opts.batch_size * opts.gradient_accumulation_steps * world
        run.say(f"stage {opts.stage}: {preset} preset, {n_params / 1e6:.1f}M parameters "
                f"({config.norm_type}, {config.position_embedding_type} positions) on {device} ({precision.note})")
        run.say(f"{world} process{'es' if world > 1 else ''} took part ({args.parallel_mode.name}); effective batch "
                f"{effective_batch} x {opts.seq_len} tokens; {opts.num_epochs} epochs x {opts.steps_per_epoch} steps")
        train_text = (f"{stats['train']['sequences']:,} sequences / {stats['train']['tokens'] / 1e6:.2f}M tokens"
                      if stats["train"]["sequences"] is not None else "streamed")
        run.say(f"data {opts.dataset}: train {train_text}, validation {stats['validation']['sequences']:,} / "
                f"{stats['validation']['tokens'] / 1e6:.2f}M (evaluating on {len(eval_ds)} sequences)")

        if run.is_main:
            if plan_text:
                for line in plan_text.splitlines():
                    run.say(line)
            plan = estimate(preset, opts.batch_size, opts.seq_len, levers, opts.gradient_accumulation_steps,
                            device=device, config=config, budgeted=budgeted)
            run.say(f"estimate: {plan.total / 2**30:.2f} GB (weights {plan.parts['weights'] / 2**30:.2f}, optimizer "
                    f"{plan.parts['optimizer'] / 2**30:.2f}, activations {plan.parts['activations'] / 2**30:.2f}), "
                    f"about {plan.seconds_per_step:.2f} s per step, " +
                    (f"training for {opts.time_budget:.3g} minutes (--time-budget)" if opts.time_budget else
                     f"{plan.seconds_per_step * max_steps / 3600:.2f} h in all"))
            warning = fit_advice(plan)
            if warning:
                run.warn(f"warning: {warning}")

        ledger = SkipLedger(max_fraction=opts.max_skip_fraction, max_consecutive=opts.max_consecutive_skips)
        best_dir = out / "best"
        card_info = {
            "preset": preset, "stage": opts.stage, "parameters": n_params, "dataset": opts.dataset,
            "architecture": f"{config.norm_type}, {config.position_embedding_type} positions",
            "train_sequences": stats["train"]["sequences"], "train_tokens": stats["train"]["tokens"],
            "validation_tokens": stats["validation"]["tokens"], "max_steps": max_steps,
            "effective_batch": effective_batch, "seq_len": opts.seq_len, "path": str(best_dir),
            "from_checkpoint": str(ckpt_path) if ckpt_path else None,
        }
        advice = Advice(ledger, run.warn, early_stopping=bool(opts.early_stopping))
        lineage = training_lineage(opts, ckpt_path)

        pusher = HubPusher(hub_repo, opts.hub_private, opts.hub_strategy) if opts.push_to_hub and run.is_main else None

        def save_best(model_to_save, state):
            """Called on every process: gathering a sharded (--fsdp) model's weights takes them all."""
            weights = full_state_dict(model_to_save)  # None unless sharded
            if not run.is_main:
                return
            loss = advice.eval_losses[-1] if advice.eval_losses else float("nan")
            info = dict(card_info, step=state.global_step, eval_loss=loss,
                        train_loss=advice.train_losses[-1] if advice.train_losses else float("nan"))
            records = {"bashgpt_best.json": json.dumps({"step": state.global_step, "eval_loss": loss}),
                       "bashgpt_training.json": json.dumps(lineage, indent=2) + "\n"}
            save_model_folder(model_to_save, tokenizer, best_dir, card=model_card(info), state_dict=weights,
                              records=records)  # best/ appears with its records or not at all
            run.say(f"new best validation loss {loss:.4f} at step {state.global_step}: saved {best_dir}", console=False)
            if pusher:
                pusher.on_new_best(best_dir, state.global_step)

        best_loss = math.inf  # a checkpoint sealed before the saver's state was sealed too: best/'s own record
        if resume_from and (best_dir / "bashgpt_best.json").is_file():
            best_loss = json.loads((best_dir / "bashgpt_best.json").read_text())["eval_loss"]
        tokens_per_step = effective_batch * opts.seq_len
        saver = BestModelSaver(save_best, best_loss)
        budget = TimeBudget(opts.time_budget * 60, opts.warmup_steps) if opts.time_budget else None
        throughput = Throughput(tokens_per_step)
        live = opts.progress and not opts.quiet
        progress = ProgressLine(opts.steps_per_epoch, opts.num_epochs, throughput, run.say, live, run.is_main, saver,
                                budget)  # before the saver in the list: it asks, then the saver updates
        early = [EarlyStop(opts.early_stopping, saver, run.say)] if opts.early_stopping else []
        # sealed into every checkpoint together, so the best loss and early stopping's patience resume as one
        stateful = {"time_budget": budget, "early_stopping": early[0] if early else None, "skip_ledger": ledger,
                    "best_model": saver}
        stateful = {name: part for name, part in stateful.items() if part is not None}
        if resume_from:
            restore_states(Path(resume_from), stateful)
        callbacks = [*([budget] if budget else []), EpochBoundary(opts.steps_per_epoch), CheckpointSeal(stateful),
                     throughput, JsonlLog(out / "log.jsonl", throughput, opts.steps_per_epoch, device, ledger, run.is_main),
                     progress, advice, *early, saver, *extra_callbacks]  # early asks the saver before it updates
        stopper = GracefulStop(run.say)
        trainer = SafeTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              data_collator=default_data_collator, processing_class=tokenizer,
                              callbacks=[*callbacks, stopper], loss_clamp=opts.loss_clamp, skip_ledger=ledger,
                              optimizer_cls_and_kwargs=None if levers.optim == "adamw" else
                              optimizer_cls_and_kwargs(levers.optim, opts.learning_rate, device),
                              lr_factor=budget.lr_factor if budget else None)
        progress.replace_trainers_printing(trainer)
        train_guarded(trainer, stopper, resume_from, out)

        if not ledger.abort_reason and not saver.saved_once and not (best_dir / "config.json").is_file():
            run.warn("warning: no finite validation loss was measured; saving the final model as best/")
            save_best(trainer.model, trainer.state)
        if run.is_main:
            plot_training_curves(out / "log.jsonl", out / "training_curves.png",
                                 f"bashgpt {preset}, stage {opts.stage}")
        summary = {"output_dir": str(out), "best": str(best_dir), "step": trainer.state.global_step,
                   "max_steps": max_steps, "skipped_steps": ledger.skipped_total, "world_size": world,
                   "eval_losses": advice.eval_losses, "train_loss": advice.train_losses[-1] if advice.train_losses else None,
                   "curves": str(out / "training_curves.png")}
        if stopper.signal_name:
            raise Interrupted(f"stopped by {stopper.signal_name} at step {trainer.state.global_step}; a resumable "
                              f"checkpoint is in {last_checkpoint_text(out)}; continue with: {resume_command()}",
                              stopper.exit_code())
        if ledger.abort_reason:
            raise UserError(f"training stopped: {ledger.abort_reason}. {NAN_ADVICE}. "
                            f"The last good model is in {best_dir}; checkpoints in {out / 'checkpoints'}")
        if pusher:
            try:
                run.say(f"pushed {best_dir} to {pusher.finish(best_dir, trainer.state.global_step)}")
            except Exception as err:  # the network or the Hub failed after training: the model is safe on disk
                raise UserError(f"pushing to the Hub failed ({type(err).__name__}: {err}); {best_dir} is complete: upload "
                                f"it later with `hf upload {hub_repo} {best_dir}`") from None
        for line in closing_lines(opts.stage, preset, advice.eval_losses, summary):
            run.say(line)
        return summary


def training_data(opts: TrainOptions, tokenizer, progress: bool):
    """Training and evaluation blocks, and the counts of both splits: from the token cache (tokenised once), or
    streamed (--streaming: training blocks read as used, not counted)."""
    if opts.streaming:
        train_docs, validation_docs = stream_corpus(opts.dataset)
        train_ds, validation = streamed_splits(train_docs, validation_docs, tokenizer, opts.seq_len,
                                               opts.eval_blocks, opts.seed)
        train_stats = {"sequences": None, "tokens": None}
    else:
        packed = packed_splits(load_corpus(opts.dataset), tokenizer, opts.seq_len,
                               cache_dir=opts.cache_dir or str(packed_cache_dir()), progress=progress)
        train_ds, validation = packed["train"], packed["validation"]
        train_stats = split_stats(train_ds)
    eval_ds = validation.first(opts.eval_blocks)
    if (not opts.streaming and len(train_ds) < opts.batch_size) or len(eval_ds) == 0:
        trained = "streamed" if opts.streaming else f"{len(train_ds)}"
        raise UserError(f"{opts.dataset} gives {trained} training and {len(eval_ds)} validation sequences of "
                        f"{opts.seq_len} tokens; use more data or a smaller --seq-len/--batch-size")
    return train_ds, eval_ds, {"train": train_stats, "validation": split_stats(validation)}


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


def corpus_of(lineage: dict | None, stage: str) -> str | None:
    """The dataset a model (or its ancestors) was trained on at ``stage``."""
    while lineage:
        if lineage.get("stage") == stage:
            return lineage.get("dataset")
        lineage = lineage.get("parent")
    return None


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
