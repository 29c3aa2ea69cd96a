"""Evaluate a model: held-out loss on both corpora, and the quality of the bash it writes.

Quality is judged without running anything: ``bash -n`` parse rate, ShellCheck error-free
and warning-free rates, the share of samples that end with end-of-text, distinct n-grams
(repetition), and task relevance (tasks.py). The same measures on real validation scripts are
printed beside the model's.
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.nl2sh import Nl2shTask, nl2sh_scores
from ..data.packing import TokenBlocks, first_documents, split_bytes, token_stream
from ..data.tasks import Task, chance_level, has_command, on_task, reference_scores, relevance_rates
from ..data.tokenization import encode_batch
from ..errors import UserError
from ..sampling import SamplingOptions
from ..shellcheck import bash_parse, shellcheck, shellcheck_binary
from .generate import generate


def load_prompts(path: Path) -> list[str]:
    """Plain prompts separated by lines '===' (``bashgpt eval --prompts``; tasks.txt is the default set)."""
    prompts = [p.strip("\n") + "\n" for p in path.read_text().split("\n===\n") if p.strip()]
    if not prompts:
        raise UserError(f"no prompts in {path}; separate prompts with a line '==='")
    return prompts


@torch.inference_mode()
def heldout_metrics(model, tokens: np.ndarray, n_bytes: int, pad_id: int, seq_len: int, max_blocks: int,
                    batch_size: int = 8) -> dict:
    """Loss (nats/token), perplexity and bits per byte over the first ``max_blocks`` blocks of a split's token
    stream (``n_bytes``: the split's UTF-8 bytes, for the tokens per byte of the whole split)."""
    from transformers import default_data_collator

    blocks = TokenBlocks(tokens, seq_len, pad_id).first(max_blocks)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    model.eval()
    for start in range(0, len(blocks), batch_size):
        batch = default_data_collator([blocks[i] for i in range(start, min(start + batch_size, len(blocks)))])
        ids, labels, mask = (batch[k].to(device) for k in ("input_ids", "labels", "attention_mask"))
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((shift_labels != -100).sum())
    loss = total_nll / max(total_tokens, 1)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2),
            "bits_per_byte": round(loss / math.log(2) * len(tokens) / max(n_bytes, 1), 4),  # end of text: no bytes
            "tokens": total_tokens}


def held_out_measures(model, tokenizer, splits: dict, seq_len: int, max_blocks: int,
                      cache_dir: str | Path | None) -> tuple[dict, dict]:
    """``heldout_metrics`` of each split given (name -> Dataset or None), and their token streams (from
    ``cache_dir``, where the job's training already tokenised them)."""
    measures, streams = {}, {}
    for name, split in splits.items():
        if split is None:
            continue
        if len(split) == 0:
            raise UserError(f"the {name} validation split is empty; nothing to evaluate on")
        streams[name] = token_stream(split, tokenizer, cache_dir)
        measures[name] = heldout_metrics(model, streams[name], split_bytes(split), tokenizer.pad_token_id, seq_len,
                                         max_blocks)
    return measures, streams


def distinct_n(token_lists: list[list[int]], n: int) -> float:
    """Distinct n-grams over all n-grams in the samples (1.0 = no repetition)."""
    grams = [tuple(toks[i:i + n]) for toks in token_lists for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class QualityReport:
    samples: int
    parse_rate: float
    shellcheck_error_free: float | None
    shellcheck_warning_free: float | None
    eos_rate: float | None
    distinct_2: float
    distinct_4: float

    def as_dict(self):
        return dict(self.__dict__)


def script_quality(scripts: list[str], tokens: list[list[int]], ended: list[bool] | None,
                   wrote: list[bool] | None = None) -> QualityReport:
    """Rates over ``scripts`` (``tokens``: their token ids, for repetition); a script whose model wrote no command
    (``wrote`` False: nothing, or only comments, ``exit`` or ``:``, as ``Sample.does_something`` says) does not count
    as parsing."""
    parsed, sc_error_free, sc_warning_free = 0, 0, 0
    have_sc = shellcheck_binary() is not None
    wrote = wrote or [True] * len(scripts)
    for text, something in zip(scripts, wrote, strict=True):
        parsed += something and bash_parse(text).ok
        if have_sc:
            sc = shellcheck(text)
            sc_error_free += sc.error_free
            sc_warning_free += sc.warning_free
    n = max(len(scripts), 1)
    return QualityReport(
        samples=len(scripts), parse_rate=round(parsed / n, 3),
        shellcheck_error_free=round(sc_error_free / n, 3) if have_sc else None,
        shellcheck_warning_free=round(sc_warning_free / n, 3) if have_sc else None,
        eos_rate=round(sum(ended) / n, 3) if ended is not None else None,
        distinct_2=round(distinct_n(tokens, 2), 3), distinct_4=round(distinct_n(tokens, 4), 3),
    )


def evaluate(model, tokenizer, language: datasets.Dataset | None, code: datasets.Dataset | None,
             prompts: list[str] | list[Task], samples_per_prompt: int = 3, sampling: SamplingOptions | None = None,
             seq_len: int = 256, max_blocks: int = 100, real_scripts: int = 50, seed: int = 0,
             progress: bool = True, deadline: float | None = None, cache_dir: str | Path | None = None) -> dict:
    """Every measure in one dictionary (what ``bashgpt eval`` prints and saves), on the held-out splits ``language``
    and ``code`` (their token streams from ``cache_dir``, where given). ``prompts`` given as tasks (tasks.py) add
    task relevance. With ``deadline`` (a ``time.monotonic()`` value), no new prompt is started that the slowest one
    so far says would end after it; the result says how many were done."""
    tasks = [p for p in prompts if isinstance(p, Task)]
    tasks = tasks if len(tasks) == len(prompts) else None
    prompts = [t.prompt for t in tasks] if tasks else prompts
    sampling = sampling or SamplingOptions(max_new_tokens=200)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    heldout, streams = held_out_measures(model, tokenizer, {"language": language, "code": code}, seq_len,
                                         max_blocks, cache_dir)
    result = {"heldout": heldout}
    code_texts = list(code["text"]) if code is not None else None
    samples = {"raw": [], "guarded": []}
    slowest = 0.0  # seconds, of one prompt so far
    for i, prompt in enumerate(tqdm(prompts, desc="generating raw and guarded", unit="prompt", disable=not progress)):
        began = time.monotonic()
        if deadline is not None and i > 0 and began + slowest > deadline:
            result["prompts_done"] = f"{i} of {len(prompts)} (the time budget ran out)"
            break
        for kind in samples:
            samples[kind] += generate(model, tokenizer, prompt, sampling, num_samples=samples_per_prompt,
                                      seed=seed + i, guard=kind == "guarded")
        slowest = max(slowest, time.monotonic() - began)
    for kind, made in samples.items():
        scripts = [s.script for s in made]
        result[kind] = script_quality(scripts, encode_batch(tokenizer, scripts), [s.ended for s in made],
                                      wrote=[s.does_something for s in made]).as_dict()
    if code_texts:
        real = first_documents(streams["code"], tokenizer.eos_token_id, real_scripts)
        result["real"] = script_quality(code_texts[:len(real)], real, None).as_dict()
    if tasks:
        result["relevance"] = task_relevance(samples, tasks, samples_per_prompt, code_texts)
    result["shellcheck"] = "available" if shellcheck_binary() else (
        "not installed: pip install 'bashgpt[shellcheck]' (or apt/brew install shellcheck) for ShellCheck rates")
    # one guarded sample of each first prompt, the first of its samples that does something
    result["examples"] = [example(s, tasks) for s in shown_samples(samples["guarded"])][:3]
    return result


def example(sample, tasks: list[Task] | None) -> dict:
    """A sample to show, with its task's verdict when it was written for one."""
    shown = {"prompt": sample.prompt, "completion": sample.completion}
    task = next((t for t in tasks or () if t.prompt == sample.prompt), None)
    if task:
        shown.update(task=task.name, needs=list(task.commands), on_task=on_task(sample.completion, task.commands))
    return shown


def task_verdict(shown: dict) -> str | None:
    """'task: on task (uses one of tar)' or 'task: OFF TASK (uses none of find, rm)', for a shown sample."""
    if "on_task" not in shown:
        return None
    needs = ", ".join(shown["needs"])
    return f"task: on task (uses one of {needs})" if shown["on_task"] else f"task: OFF TASK (uses none of {needs})"


def shown_samples(samples: list) -> list:
    """One sample per prompt to show: its first with a command in it (a script that does nothing is never shown)."""
    chosen = {}
    for s in samples:
        if s.prompt not in chosen and has_command(s.completion):
            chosen[s.prompt] = s
    return list(chosen.values())


def task_relevance(samples: dict, tasks: list[Task], samples_per_prompt: int, code_texts: list[str] | None,
                   chance_scripts: int = 200) -> dict:
    """On-task and no-command shares of raw and guarded samples, beside the set's own scripts (the ceiling) and the
    chance level: real validation scripts paired with every task, else the set's scripts with the others' tasks."""
    out = {}
    for kind, made in samples.items():
        out[kind] = relevance_rates([s.completion for s in made],
                                    [tasks[i // samples_per_prompt] for i in range(len(made))])
    done = tasks[:len(samples["guarded"]) // samples_per_prompt]
    ref = reference_scores(done)
    out["reference"] = {"scripts": ref["scripts"], "on_task": ref["on_task"]}
    if code_texts:
        out["chance"] = {"on_task": chance_level(code_texts[:chance_scripts], done),
                         "from": f"{min(len(code_texts), chance_scripts)} real validation scripts x every task"}
    else:
        out["chance"] = {"on_task": ref["chance"], "from": "the set's scripts x the other tasks"}
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(result: dict) -> str:
    lines = ["Held-out data         loss    perplexity  bits/byte"]
    for name, m in result["heldout"].items():
        lines.append(f"  {name:<18} {m['loss']:>7.3f} {m['perplexity']:>12.1f} {m['bits_per_byte']:>10.3f}")
    lines.append("")
    lines.append("Bash quality               raw model  guarded  real scripts")
    real = result.get("real", {})
    for key, label in (("samples", "scripts"), ("parse_rate", "bash -n parses"),
                       ("shellcheck_error_free", "ShellCheck error-free"),
                       ("shellcheck_warning_free", "ShellCheck warning-free"), ("eos_rate", "ends with end-of-text"),
                       ("distinct_2", "distinct 2-grams"), ("distinct_4", "distinct 4-grams")):
        lines.append(f"  {label:<24} {_fmt(result['raw'].get(key)):>8} {_fmt(result['guarded'].get(key)):>8}"
                     f"    {_fmt(real.get(key)):>8}")
    lines.append("  (guarded: each line checked as it is written, see `bashgpt generate --help`; a guarded script cut "
                 "back to its prompt counts as not parsing)")
    if "relevance" in result:
        lines += relevance_lines(result["relevance"])
        if result.get("data", {}).get("examples_in_prompt"):
            lines.append(f"  (each prompt had the {result['data']['examples_in_prompt']} closest pairs written above "
                         f"its task, --examples: not comparable with relevance without them)")
    if "nl2sh" in result:
        n = result["nl2sh"]
        lines += ["", f"NL2SH-ALFA ({n['tasks']} tasks, one guarded sample each; never run)",
                  f"  uses a utility of the reference command   {_fmt(n['any_utility']):>8}   (chance "
                  f"{_fmt(n['chance_any'])}: the same samples against the other tasks)",
                  f"  uses all of them                          {_fmt(n['all_utilities']):>8}"]
    if result["shellcheck"] != "available":
        lines.append(f"  (ShellCheck {result['shellcheck']})")
    return "\n".join(lines)


def interval(rates: dict) -> str:
    lo, hi = rates.get("on_task_interval_95", (None, None))
    return "" if lo is None else f"[{lo:.2f}-{hi:.2f}]"


def relevance_lines(rel: dict) -> list[str]:
    raw, guarded = rel["raw"], rel["guarded"]
    lines = ["", f"Task relevance ({guarded['samples']} guarded samples)  raw model  guarded  scripts for the tasks  "
                 f"chance",
             f"  {'uses a command the task needs':<30} {_fmt(raw['on_task']):>8} {_fmt(guarded['on_task']):>8} "
             f"{_fmt(rel['reference']['on_task']):>14} {_fmt(rel['chance']['on_task']):>13}",
             f"  {'  95% interval':<30} {interval(raw):>11} {interval(guarded):>11}"]
    if "own_chance" in guarded:
        lines += [f"  {'  same samples, other tasks':<30} {_fmt(raw['own_chance']):>8} "
                  f"{_fmt(guarded['own_chance']):>8}   ({task_dependence(guarded)})"]
        for key, label in (("named_in_task", "  task names the command"), ("not_named_in_task", "  task does not")):
            lines.append(f"  {label:<30} {_fmt(raw[key]['share']):>8} {_fmt(guarded[key]['share']):>8}   "
                         f"({guarded[key]['samples']} samples)")
    lines += [f"  {'writes no command at all':<30} {_fmt(raw['no_command']):>8} {_fmt(guarded['no_command']):>8}",
              f"  (chance: {rel['chance']['from']}; tasks and their commands: bashgpt/data/tasks.txt)"]
    return lines


def task_dependence(rates: dict) -> str:
    """Whether the samples' relevance to their own tasks stands above what they score against the others."""
    low, chance = rates["on_task_interval_95"][0], rates["own_chance"]
    if low > chance:
        return f"the line above is {rates['on_task'] / max(chance, 1e-9):.1f}x this: what it writes depends on the task"
    return "the line above is no higher, within its interval: what it writes may not depend on the task"


def card_section(result: dict) -> str:
    return "```\n" + format_table(result) + "\n```\nFrom `bashgpt eval` (never executes generated scripts)."


def add_to_model_card(model_dir: Path, result: dict) -> None:
    card = model_dir / "README.md"
    text = card.read_text() if card.is_file() else "# bashgpt model\n"
    text = text.split("\n## Evaluation\n")[0].rstrip("\n") + "\n\n## Evaluation\n\n" + card_section(result) + "\n"
    tmp = card.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(card)


def save_json(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def evaluate_nl2sh(model, tokenizer, tasks: list[Nl2shTask], sampling, seed: int = 0, progress: bool = True) -> dict:
    """One guarded sample per task (the prompt's shape is bashgpt's), scored by ``nl2sh_scores``."""
    completions = []
    for i, task in enumerate(tqdm(tasks, desc="NL2SH-ALFA", unit="task", disable=not progress)):
        completions.append(generate(model, tokenizer, task.prompt, sampling, num_samples=1, seed=seed + i,
                                    guard=True)[0].completion)
    return nl2sh_scores(completions, tasks)
