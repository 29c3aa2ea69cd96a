"""Syntax-guarded generation: bash that parses, written the Hugging Face way.

While a script is sampled, each completed line is checked with ``bash -O extglob -n`` (it parses,
it never runs). bash's parser stops at the first token no script could continue with, so every
prefix of a script is one of three things:

- complete: it parses as it stands;
- unfinished: only its end is missing (an open ``if``, quote or here-document);
- broken: the line just written can never be part of a valid script (a stray ``fi``, ``done``, ``)``).

One kind of unfinished line counts as broken: a line that ends inside a double quote, a backquote
or a ``${...}`` it opened. Real scripts almost never continue those across lines (5 of 300 sampled
Debian scripts do for a double quote, none for the others), while a small model that leaves one
open rarely closes it: that was most of the guarded samples that never ended. ``$(...)`` may span
lines, and so may a single-quoted string (multi-line awk programs, ``compgen -W`` word lists) for up
to ``max_open_lines`` (6) line ends, which 82% of the 57 such strings in 400 sampled Debian scripts
keep to; at the next one the line that opened it is taken back.

A broken line is taken back and sampled again, each retry starting with a token no failed try at
that place started with; after ``max_retries`` failed tries the line before it is taken back too
(backtracking). End of text is allowed only where the script is complete, and a script that runs
out of tokens is cut back to its last complete line. Why bash itself and not tree-sitter-bash:
on 270 corrupted scripts tree-sitter flagged only 168 that bash rejects, and it flags most
unfinished prefixes as errors (169 of 299), so it cannot tell "not yet" from "never"; bash's
verdict is the one the final check uses anyway.

- ``guarded_generate`` runs ``model.generate`` decoded by bashgpt's engine (engine.py) under the guard:
  the engine's ``take_back`` hook hands each line end to the guard, which may cut the line off; the engine
  crops the KV cache to match and samples on, in the same loop. A prompt's samples share one prefill.
- ``EndOnlyWhenParses`` is a ``LogitsProcessor`` for ``model.generate`` and ``pipeline``: end of
  text only where the script parses.
"""

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..data.tasks import has_command
from ..shellcheck import bash_parse
from .engine import cropped, decode

COMPLETE, UNFINISHED, BROKEN = "complete", "unfinished", "broken"
OPEN_STRING = "open string"  # unfinished inside "...", `...` or ${...}: broken unless it was already open
OPEN_QUOTE = "open quote"  # unfinished inside '...': may span up to max_open_lines line ends
_ONE_LINE = ("matching `\"'", "matching ``'", "matching `}'")  # bash: "unexpected EOF while looking for matching `X'"
_SINGLE_QUOTE = "matching `''"


class LineChecker:
    """What bash says of a script's text up to its last completed line; one per tokenizer (repeated texts,
    as retries make, are answered from ``bash_parse``'s own cache)."""

    _made: dict = {}  # id(tokenizer) -> (tokenizer, checker): finding the line-ending tokens takes ~0.3 s

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "LineChecker":
        if id(tokenizer) not in cls._made:
            cls._made[id(tokenizer)] = (tokenizer, cls(tokenizer))
        return cls._made[id(tokenizer)][1]

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.line_ends = {i for i, text in enumerate(vocab) if "\n" in text}  # tokens that finish a line

    def text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def verdict(self, ids) -> str:
        text = self.text(ids)
        r = bash_parse(text[: text.rfind("\n") + 1])  # whole lines only
        if r.ok:
            return COMPLETE
        if r.unfinished:
            if any(words in r.error for words in _ONE_LINE):
                return OPEN_STRING
            return OPEN_QUOTE if _SINGLE_QUOTE in r.error else UNFINISHED
        return BROKEN


@dataclass
class ScriptGuard:
    """The guard's state for one sequence: the line ends accepted so far and the tokens banned for retries."""

    checker: LineChecker
    start: int  # prompt length in tokens
    max_retries: int = 3
    max_rollbacks: int = 32
    max_open_lines: int = 6  # a single-quoted string open over more line ends: its first line is redone
    marks: list = field(default_factory=list)  # (length, verdict) of each accepted line end, the prompt's first
    written: list = field(default_factory=list)  # per mark: has the model written a command by then (tasks.py)
    banned: dict = field(default_factory=dict)  # length -> first tokens of failed tries there
    retries: int = 0
    rollbacks: int = 0
    can_take_back: bool = True  # False where nothing can undo a token (plain model.generate / pipeline)
    active: bool = True  # False once the script is broken for good (the prompt itself, or an untakeable line)
    gave_up: bool = False

    @classmethod
    def for_prompt(cls, checker: LineChecker, prompt_ids: list[int], **limits) -> "ScriptGuard":
        guard = cls(checker, len(prompt_ids), **limits)
        verdict = checker.verdict(prompt_ids)
        guard.marks.append((len(prompt_ids), verdict))
        guard.written.append(False)
        guard.active = verdict != BROKEN
        return guard

    def after_token(self, ids: list[int]) -> int | None:
        """Called with the sequence after each new token: the length to take it back to, or None to go on."""
        if not self.active or self.gave_up or ids[-1] not in self.checker.line_ends:
            return None
        verdict = self.checker.verdict(ids)
        if self.can_take_back:
            if verdict == OPEN_STRING and self.marks[-1][1] != OPEN_STRING:
                verdict = BROKEN  # this line opened it (one open in the prompt may go on)
            elif verdict == OPEN_QUOTE and (open_lines := self.open_quote_lines()) >= self.max_open_lines:
                return self.take_back(ids, lines=open_lines)  # redo the line that opened the quote
        if verdict != BROKEN:
            self.marks.append((len(ids), verdict))
            self.written.append(self.written[-1] or has_command(self.checker.text(ids[self.start:])))
            self.retries = 0
            return None
        if not self.can_take_back:
            self.active = False  # let it end: nothing after this line can make it parse
            return None
        self.retries += 1
        if self.retries > self.max_retries and len(self.marks) > 1:  # this line cannot be written: redo the one before
            return self.take_back(ids, lines=1)
        return self.take_back(ids, lines=0)

    def after_row(self, row: torch.Tensor) -> int | None:
        """``after_token`` for the decode engine's ``take_back`` hook, which passes the row as a tensor."""
        if int(row[-1]) not in self.checker.line_ends:
            return None
        return self.after_token(row.tolist())

    def open_quote_lines(self) -> int:
        """How many accepted line ends in a row fell inside a single-quoted string."""
        n = 0
        while n < len(self.marks) - 1 and self.marks[-1 - n][1] == OPEN_QUOTE:
            n += 1
        return n

    def take_back(self, ids: list[int], lines: int) -> int:
        """Undo the line being written and ``lines`` accepted ones before it; the length to go back to, where
        the first token that was written there is banned. Going back over accepted lines starts a new line's
        count of retries."""
        self.rollbacks += 1
        if self.rollbacks > self.max_rollbacks:
            self.gave_up = True
            return self.last_complete()
        if lines:
            del self.marks[-lines:]
            del self.written[-lines:]
            self.retries = 0
        back = self.marks[-1][0]
        self.banned.setdefault(back, set()).add(ids[back])
        return back

    def may_end(self, length: int) -> bool:
        """End of text only right after a line where the script parses, and only once the model has written a
        command of its own (ending after the prompt, or after only comments, ``exit`` or ``:``, is not a script)."""
        if not self.active:
            return True
        return self.marks[-1] == (length, COMPLETE) and self.written[-1]

    def last_complete(self) -> int:
        """Length of the longest accepted prefix that parses (the prompt when none does)."""
        return next((n for n, v in reversed(self.marks) if v == COMPLETE), self.start)

    def restrict(self, length: int, scores: torch.Tensor, eos_token_id: int | None) -> None:
        """Ban, in place, the tokens this sequence may not take at ``length``."""
        banned = list(self.banned.get(length, ()))
        if eos_token_id is not None and not self.may_end(length):
            banned.append(eos_token_id)
        if banned:
            scores[banned] = -float("inf")


class EndOnlyWhenParses(LogitsProcessor):
    """End of text only where the script so far parses. For ``model.generate(logits_processor=...)`` and
    ``pipeline``: each row of a batch gets its own guard, made from the row as first seen (its prompt), which
    watches the lines as they end. Under ``guarded_generate`` it is given the guard (which the engine's
    ``take_back`` hook feeds) and also keeps each retry from repeating a failed line's first token.

    Create one per ``generate`` call: it keeps the state of the sequences it has seen."""

    def __init__(self, tokenizer, checker: LineChecker | None = None, guards: list[ScriptGuard] | None = None):
        self.checker = checker or LineChecker.for_tokenizer(tokenizer)
        self.eos_token_id = tokenizer.eos_token_id
        self.guards = guards
        self.watch = guards is None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guards is None:
            self.guards = [ScriptGuard.for_prompt(self.checker, row.tolist(), can_take_back=False) for row in input_ids]
        length = input_ids.shape[1]
        if self.watch and length > self.guards[0].start:
            for row, guard in zip(input_ids, self.guards, strict=True):
                if int(row[-1]) in self.checker.line_ends:
                    guard.after_token(row.tolist())  # records the line the last token ended
        for i, guard in enumerate(self.guards):
            guard.restrict(length, scores[i], self.eos_token_id)
        return scores


class GuardStop(StoppingCriteria):
    """Ends a guarded sample once its guard gave up, or when all its tries together have written ``budget`` tokens."""

    def __init__(self, guard: ScriptGuard, budget: int):
        self.guard, self.budget = guard, budget

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.budget -= 1  # called once per token written
        stop = self.guard.gave_up or self.budget <= 0
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass
class GuardedResult:
    ids: list[int]  # prompt and completion, without end of text
    ended: bool  # end of text was generated
    rollbacks: int


@torch.no_grad()
def guarded_generate(model, tokenizer, input_ids: torch.Tensor, generation_config, num_samples: int = 1,
                     checker: LineChecker | None = None, max_retries: int = 3,
                     max_rollbacks: int = 32) -> list[GuardedResult]:
    """``num_samples`` guarded samples of one prompt (``input_ids``, one row), each from one ``model.generate``
    call decoded by bashgpt's engine, whose ``take_back`` hook lets the guard cut a broken line off in the loop.
    The prompt is prefilled once for all of them (but its last token, which each sample feeds first).
    ``generation_config.max_new_tokens`` (256 when unset) bounds a completion, and all tries of one sample
    together write at most three times that."""
    checker = checker or LineChecker.for_tokenizer(tokenizer)
    cache = DynamicCache(config=model.config)
    if input_ids.shape[1] > 1:
        model(input_ids=input_ids[:, :-1], cache=cache, use_cache=True, logits_to_keep=1)
    limits = dict(max_retries=max_retries, max_rollbacks=max_rollbacks)
    return [guarded_sample(model, tokenizer, input_ids, cache, generation_config, checker, **limits)
            for _ in range(num_samples)]


def guarded_sample(model, tokenizer, input_ids: torch.Tensor, cache, generation_config, checker: LineChecker,
                   **limits) -> GuardedResult:
    """One guarded sample, decoding on from ``cache`` cut back to the prompt but its last token."""
    prompt = input_ids[0].tolist()
    cache = cropped(cache, len(prompt) - 1)
    guard = ScriptGuard.for_prompt(checker, prompt, **limits)
    budget = 3 * (generation_config.max_new_tokens or 256)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), cache=cache,
                         custom_generate=decode, take_back=guard.after_row, generation_config=generation_config,
                         logits_processor=LogitsProcessorList([EndOnlyWhenParses(tokenizer, checker, [guard])]),
                         stopping_criteria=StoppingCriteriaList([GuardStop(guard, budget)]))
    ids = out[0].tolist()
    ended = len(ids) > len(prompt) and ids[-1] == tokenizer.eos_token_id
    return GuardedResult(ids[:-1] if ended else ids[:guard.last_complete()], ended, guard.rollbacks)
