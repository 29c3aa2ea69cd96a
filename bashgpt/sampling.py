"""How samples are drawn: bashgpt's sampling defaults, in one place, and the options that override them.

A model bashgpt trains saves these defaults as its ``generation_config.json`` (with the tokenizer's end and padding
ids), so ``pipeline``, ``model.generate`` and ``bashgpt generate`` sample the same way. ``bashgpt generate`` and
``bashgpt eval`` take each setting from, in order: the command's flag, the model's ``generation_config.json`` (edit
it to change a model's defaults), then ``DEFAULTS``.
"""

from dataclasses import dataclass, fields

from transformers import GenerationConfig

from .errors import UserError

DEFAULTS = {"max_new_tokens": 256, "temperature": 0.8, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1}


def default_generation_config(tokenizer) -> GenerationConfig:
    """What a model bashgpt trains carries as ``generation_config.json``."""
    return GenerationConfig(do_sample=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id,
                            **DEFAULTS)


@dataclass
class SamplingOptions:
    """Settings given for this command; None takes the model's, then ``DEFAULTS``."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    greedy: bool = False

    def generation_config(self, model, tokenizer) -> GenerationConfig:
        saved = model.generation_config
        chosen = {}
        for name in DEFAULTS:
            given = getattr(self, name)
            chosen[name] = next(v for v in (given, getattr(saved, name, None), DEFAULTS[name]) if v is not None)
        if chosen["max_new_tokens"] <= 0:
            raise UserError(f"--max-new-tokens must be positive, got {chosen['max_new_tokens']}")
        sample = not self.greedy and (saved.do_sample is not False or self.temperature is not None)
        if sample and chosen["temperature"] <= 0:
            raise UserError(f"--temperature must be positive (or use --greedy), got {chosen['temperature']}")
        common = dict(max_new_tokens=chosen["max_new_tokens"], repetition_penalty=chosen["repetition_penalty"],
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        if not sample:  # the warpers' neutral values, or generate fills in the model's and warns they go unused
            return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, **common)
        return GenerationConfig(do_sample=True, temperature=chosen["temperature"], top_p=chosen["top_p"],
                                top_k=chosen["top_k"], **common)

    @classmethod
    def from_args(cls, args) -> "SamplingOptions":
        """From a command's parsed flags of the same names (``--greedy`` where the command has it)."""
        return cls(**{f.name: getattr(args, f.name, None) for f in fields(cls) if f.name != "greedy"},
                   greedy=bool(getattr(args, "greedy", False)))
