"""Generate bash with a trained model, and check it without running it.

By default each line is checked as it is written and a line that breaks the script is sampled
again (syntax_guard.py). Either way the tokens come from ``model.generate`` decoded by bashgpt's engine
(engine.py), on oneDNN-packed weights (packed_linear.py) held for all of a prompt's samples. Several
samples are ranked: those that parse first, then by
ShellCheck findings (errors, then warnings, then notes), then by the model's mean log-likelihood.
"""

from dataclasses import dataclass

import torch
from transformers import TextStreamer

from ..data.tasks import has_command
from ..errors import UserError
from ..sampling import SamplingOptions
from ..shellcheck import bash_parse, shellcheck
from . import engine
from .packed_linear import linears_packed
from .syntax_guard import guarded_generate


@dataclass
class Sample:
    prompt: str
    completion: str
    ended: bool  # stopped at end of text (not at the token limit)
    guarded: bool = False
    rollbacks: int = 0  # lines the guard took back
    mean_logprob: float | None = None  # the model's mean log-likelihood of the completion (set by rank())

    @property
    def script(self) -> str:
        return self.prompt + self.completion

    @property
    def parses(self) -> bool:
        return bash_parse(self.script).ok

    @property
    def does_something(self) -> bool:
        """The model wrote a command (not nothing, or only comments, ``exit`` or ``:``; tasks.has_command)."""
        return has_command(self.completion)

    @property
    def good(self) -> bool:
        """It parses and the model wrote a command (a guarded sample may be cut back to its prompt)."""
        return self.does_something and self.parses


def generate(model, tokenizer, prompt: str, sampling: SamplingOptions, num_samples: int = 1, seed: int | None = None,
             stream=None, guard: bool = False) -> list[Sample]:
    """``num_samples`` completions of ``prompt``. With ``guard``, each line is checked as it is written
    (syntax_guard.py); without, with ``stream`` (a file), tokens are written as they come."""
    if not prompt:
        raise UserError("the prompt is empty; pass --prompt TEXT or a non-empty --prompt-file")
    if seed is not None:
        torch.manual_seed(seed)
    config = sampling.generation_config(model, tokenizer)
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    room = getattr(model.config, "max_position_embeddings", 10**9) - enc["input_ids"].shape[1]
    learned = getattr(model.config, "position_embedding_type", "learned") == "learned"
    if learned and room <= 0:
        raise UserError(f"the prompt is {enc['input_ids'].shape[1]} tokens, the model's limit is "
                        f"{model.config.max_position_embeddings}; shorten the prompt")
    if learned:
        config.max_new_tokens = min(config.max_new_tokens, room)
    model.eval()
    with torch.inference_mode(), linears_packed(model):
        if guard:
            n = enc["input_ids"].shape[1]
            results = guarded_generate(model, tokenizer, enc["input_ids"], config, num_samples)
            return [Sample(prompt, tokenizer.decode(r.ids[n:], skip_special_tokens=True), r.ended, True, r.rollbacks)
                    for r in results]
        return [_sample(model, tokenizer, prompt, enc, config, stream) for _ in range(num_samples)]


def _sample(model, tokenizer, prompt, enc, config, stream) -> "Sample":
    """One completion from the engine, streamed to ``stream`` if given."""
    streamer = _Streamer(tokenizer, stream) if stream is not None else None
    out = engine.generate(model, enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config,
                          streamer=streamer)
    return to_sample(prompt, out[0, enc["input_ids"].shape[1]:].tolist(), tokenizer)


def to_sample(prompt: str, new_ids: list[int], tokenizer) -> "Sample":
    """The completion up to (not including) end of text, and whether it got there."""
    ended = tokenizer.eos_token_id in new_ids
    if ended:
        new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id)]
    return Sample(prompt, tokenizer.decode(new_ids, skip_special_tokens=True), ended)


class _Streamer(TextStreamer):
    """Write decoded text to a file as it arrives (not only stdout)."""

    def __init__(self, tokenizer, file):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.file = file

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.file.write(text + ("\n" if stream_end else ""))
        self.file.flush()


def check_report(text: str) -> list[str]:
    """What ``bash -O extglob -n`` and ShellCheck say about ``text`` (never executed)."""
    parsed = bash_parse(text)
    lines = ["  bash -n: ok" if parsed.ok else f"  bash -n: FAILS: {parsed.error}"]
    sc = shellcheck(text)
    if not sc.available:
        lines.append("  shellcheck: not installed (pip install 'bashgpt[shellcheck]' or your system's shellcheck)")
    elif not sc.findings:
        lines.append("  shellcheck: no findings")
    else:
        lines.append(f"  shellcheck: {sc.count('error')} errors, {sc.count('warning')} warnings, "
                     f"{sc.count('info') + sc.count('style')} notes")
        for f in sc.findings[:8]:
            lines.append(f"    line {f['line']}: {f['level']} SC{f['code']}: {f['message']}")
    return lines


LEVELS = ("error", "warning", "info", "style")


@torch.no_grad()
def mean_logprob(model, tokenizer, sample: Sample) -> float | None:
    """The model's mean log-likelihood per token of the completion given the prompt (None when empty)."""
    prompt_ids = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(sample.script, add_special_tokens=False)["input_ids"]
    if len(ids) <= len(prompt_ids):
        return None
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:], device=device)[:, None])
    return round(float(logp[len(prompt_ids) - 1:].mean()), 4)


def rank(model, tokenizer, samples: list[Sample]) -> list[Sample]:
    """Best first: good scripts (they parse, and say something), then fewer ShellCheck errors, warnings and
    notes, then the model's higher mean log-likelihood. Nothing is executed."""
    def key(sample: Sample):
        sc = shellcheck(sample.script)
        counts = [sc.count(level) for level in ("error", "warning")] + [sc.count("info") + sc.count("style")]
        sample.mean_logprob = mean_logprob(model, tokenizer, sample)
        return (not sample.good, *counts, -(sample.mean_logprob if sample.mean_logprob is not None else -1e9))
    return sorted(samples, key=key)


def sample_record(sample: Sample) -> dict:
    """One sample as a JSON-ready dict: the whole script, whether it ended by itself, whether it parses, and
    ShellCheck's counts by level (``null`` without ShellCheck). Nothing is executed."""
    sc = shellcheck(sample.script)
    return {"text": sample.script, "ended": sample.ended, "parses": sample.parses, "good": sample.good,
            "guarded": sample.guarded, "rollbacks": sample.rollbacks, "mean_logprob": sample.mean_logprob,
            "shellcheck": {level: sc.count(level) for level in LEVELS} if sc.available else None}
