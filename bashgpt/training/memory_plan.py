"""--memory-budget: the fastest combination of memory levers (levers.py) whose predicted peak fits.

Before any work, every combination the user left open (optimizer, activation checkpointing,
bf16 autocast) is estimated (estimate.py: peak memory by part, and time per step from the
device's matmul rate measured now plus the optimizer's own time). When the settings asked for
fit, they are kept; otherwise the fastest combination that fits is chosen. Flags the user gave are fixed, never overridden. When nothing fits, one line says
which smaller batch or preset would.
"""

import dataclasses
import re
from dataclasses import dataclass, replace

from ..configuration_bashgpt import PRESETS, BashGPTConfig
from ..devices import bf16_is_fast, device_memory_bytes, mps_bf16_ok
from ..errors import UserError
from .estimate import Estimate, estimate, gib
from .levers import OPTIMIZERS, Levers, optimizer_problem, require_optimizer, resolve_attention

UNITS = {"": 2**30, "G": 2**30, "GB": 2**30, "GIB": 2**30, "M": 2**20, "MB": 2**20, "MIB": 2**20,
         "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_budget(text: str) -> int:
    """'18GB', '18G', '18', '500MB' -> bytes (GB means GiB, as the estimates print)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise UserError(f"--memory-budget {text!r} is not a size; write it like 18GB or 500MB")
    return int(float(match.group(1)) * UNITS[unit])


def default_budget(device: str) -> int | None:
    """On a Mac (MPS), half of the machine's memory, the guide's '50% usage' target; elsewhere none."""
    return device_memory_bytes("mps") if device == "mps" else None


@dataclass
class Plan:
    levers: Levers
    estimate: Estimate
    budget: int
    fastest_seconds: float  # the fastest combination considered, whatever its memory
    candidates: list[tuple[Levers, Estimate]]
    unavailable: list[str]  # optimizers left out here, with the reason
    kept: bool = False  # the settings asked for fit as they are

    @property
    def slowdown(self) -> float:
        return self.estimate.seconds_per_step / self.fastest_seconds


def candidate_levers(device: str, given: Levers, fixed: set[str]) -> tuple[list[Levers], list[str]]:
    """Every combination of the levers the user left open; ``fixed`` names the ones they set."""
    unavailable = []
    if "optim" in fixed:
        optims = [given.optim]
    else:
        optims = []
        for name, kind in OPTIMIZERS.items():
            problem = optimizer_problem(name, device)
            if problem is None and kind.automatic:
                optims.append(name)
            elif problem and kind.automatic:
                unavailable.append(problem)
    amps = [True] if given.use_amp else [False, True] if device != "mps" or mps_bf16_ok() else [False]
    ckpts = [True] if given.checkpointing else [False, True]
    combos = []
    for optim in optims:
        for amp in amps:
            if amp and OPTIMIZERS[optim].bf16_weights and "use_amp" not in fixed:
                continue  # bf16 weights compute in bf16 already
            for ckpt in ckpts:
                combos.append(replace(given, optim=optim, use_amp=amp, checkpointing=ckpt))
    return combos, unavailable


def plan_memory(preset: str, batch_size: int, seq_len: int, device: str, budget: int, given: Levers,
                fixed: set[str], accumulation: int = 1, config: BashGPTConfig | None = None) -> Plan:
    combos, unavailable = candidate_levers(device, given, fixed)
    candidates = [(lv, estimate(preset, batch_size, seq_len, lv, accumulation, device=device, config=config,
                                budgeted=True)) for lv in combos]
    fastest = min(e.seconds_per_step for _, e in candidates)
    fitting = [(lv, e) for lv, e in candidates if e.total <= budget]
    if not fitting:
        raise UserError(nothing_fits(preset, batch_size, seq_len, device, budget, candidates, config))
    own = next(((lv, e) for lv, e in fitting if lv == given), None)  # the settings asked for fit: nothing changes
    levers, chosen = own or min(fitting, key=lambda c: (c[1].seconds_per_step, c[1].total))
    return Plan(levers, chosen, budget, fastest, candidates, unavailable, kept=own is not None)


def nothing_fits(preset, batch_size, seq_len, device, budget, candidates, config) -> str:
    leanest = min(e.total for _, e in candidates)
    combos = [lv for lv, _ in candidates]

    def fits(size: str, batch: int) -> bool:
        cfg = config if size == preset else None
        return any(estimate(size, batch, seq_len, lv, device=device, config=cfg, measure=False,
                            budgeted=True).total <= budget for lv in combos)

    offers = []
    batch = next((b for b in range(batch_size - 1, 0, -1) if fits(preset, b)), None)
    if batch:
        offers.append(f"--batch-size {batch}")
    names = list(PRESETS)
    smaller = next((n for n in reversed(names[: names.index(preset)]) if fits(n, batch_size)), None)
    if smaller:
        offers.append(f"--model-size {smaller}")
    fix = " or ".join(offers) if offers else "a larger --memory-budget"
    return (f"nothing fits the {gib(budget)} memory budget for {preset} at batch {batch_size} x {seq_len}: the leanest "
            f"settings need {gib(leanest)}; use {fix}")


def describe(levers: Levers) -> list[tuple[str | None, str, str]]:
    """(Levers field or None, what it is, its setting) for each lever."""
    return [("optim", "optimizer", f"{levers.optim} ({levers.kind.summary})"),
            ("checkpointing", "activation checkpointing", "on" if levers.checkpointing else "off"),
            ("use_amp", "bf16 autocast",
             "on" if levers.use_amp else "off (bf16 weights)" if levers.kind.bf16_weights else "off"),
            ("attention", "attention", {"sdpa": "sdpa", "chunked": "query-chunked (no T x T matrix)",
                                        "eager": "eager"}[levers.attention]),
            (None, "fused LM loss", "on (always)")]


def format_plan(plan: Plan, fixed: set[str], device: str) -> str:
    e = plan.estimate
    lines = [f"memory budget {gib(plan.budget)}: " + ("the settings asked for fit; kept" if plan.kept else
                                                  "chose the fastest settings whose predicted peak fits")]
    for field, name, value in describe(plan.levers):
        how = "your flag" if field in fixed else "chosen" if field else ""
        lines.append(f"  {name:<25} {value:<62} {how}")
    where = "" if bf16_is_fast(device) or device != "cpu" else " (this CPU has no native bf16)"
    lines.append(f"  predicted peak {gib(e.total)} of {gib(plan.budget)}; about {e.seconds_per_step:.2f} s per step, "
                 f"{plan.slowdown:.2f}x the fastest setting's time{where}")
    lines += [f"  not available here: {u}" for u in plan.unavailable]
    return "\n".join(lines)


def format_candidates(plan: Plan) -> str:
    """Every combination considered: predicted peak, fit, time per step, cost against the fastest."""
    lines = ["  optimizer    checkpointing  autocast  peak        fits  s/step  cost"]
    for lv, e in sorted(plan.candidates, key=lambda c: c[1].seconds_per_step):
        mark = "  <- chosen" if lv == plan.levers else ""
        lines.append(f"  {lv.optim:<12} {'on' if lv.checkpointing else 'off':<14} {'bf16' if lv.use_amp else '-':<9} "
                     f"{gib(e.total):>10}  {'yes' if e.total <= plan.budget else 'no':<4}  {e.seconds_per_step:6.2f}  "
                     f"{e.seconds_per_step / plan.fastest_seconds:4.2f}x{mark}")
    return "\n".join(lines)


LEVER_OPTIONS = {"optim": "optim", "use_amp": "use_amp", "checkpointing": "use_gradient_checkpointing",
                 "attention": "attention"}  # Levers field -> TrainOptions field


def given_levers(opts, device: str) -> tuple[Levers, set[str]]:
    """The levers the training options ask for, and which of them the user set."""
    fixed = {name for name, field in LEVER_OPTIONS.items()
             if getattr(opts, field) not in (None, False, "auto")}
    levers = Levers(optim=opts.optim or "adamw", use_amp=opts.use_amp, checkpointing=opts.use_gradient_checkpointing,
                    attention=resolve_attention(opts.attention, device))
    return levers, fixed


def levers_for_run(opts, preset: str, config: BashGPTConfig, device: str, recorded: dict | None = None):
    """(levers, plan text or None, the options with those levers) for a training run, ``opts`` left as it is (the
    returned options are what run.json records). ``recorded``: a resumed run's run.json, whose levers it keeps
    where no flag is given."""
    given, fixed = given_levers(opts, device)
    if "optim" in fixed:
        require_optimizer(given.optim, device)
    budget = parse_budget(opts.memory_budget) if opts.memory_budget else default_budget(device)
    text = None
    if recorded is not None:
        opts = dataclasses.replace(opts, **{field: recorded[field] for name, field in LEVER_OPTIONS.items()
                                            if name not in fixed and field in recorded})
        levers = given_levers(opts, device)[0]
    elif budget is not None:
        plan = plan_memory(preset, opts.batch_size, opts.seq_len, device, budget, given, fixed,
                           opts.gradient_accumulation_steps, config)
        levers, text = plan.levers, format_plan(plan, fixed, device)
    else:
        levers = given
    opts = dataclasses.replace(opts, optim=levers.optim, use_amp=levers.use_amp,
                               use_gradient_checkpointing=levers.checkpointing)
    return levers, text, opts
