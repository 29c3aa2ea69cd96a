"""Save and load complete model folders (weights, config, modeling code, tokenizer), safely.

Saving is atomic: the folder is written beside its destination and renamed into place, so a
crash mid-save leaves the previous folder loadable. Loading reads safetensors only and turns
every way a folder can be wrong into one clear error.
"""

import json
import os
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from .errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def recover_dir(dest: Path) -> None:
    """Finish an interrupted ``atomic_replace_dir``: bring back the old folder if the new one never arrived."""
    old = dest.with_name(dest.name + ".old")
    if old.is_dir() and not dest.exists():
        os.replace(old, dest)


def atomic_replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing any old one with no moment without a folder."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def save_model_folder(model, tokenizer, dest: str | Path, card: str | None = None, state_dict: dict | None = None,
                      records: dict[str, str] | None = None) -> Path:
    """Write a loadable model folder at ``dest`` atomically, with ``records`` (file name -> text) inside it: the
    folder appears whole, with them, or not at all. ``state_dict``: the weights to write, when the model's own are
    shards (training/sharding.py)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), **({"state_dict": state_dict} if state_dict is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if card is not None:
        (tmp / "README.md").write_text(card)
    for name, text in (records or {}).items():
        (tmp / name).write_text(text)
    for f in tmp.iterdir():  # make the data durable before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    atomic_replace_dir(tmp, dest)
    return dest


def load_tokenizer(path: str | Path):
    """Load a tokenizer folder, or raise a one-line error that says what to do."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise UserError(
            f"no tokenizer in {path} (tokenizer.json missing); copy one there, e.g. from the repository's tokenizer/ folder"
        )
    return AutoTokenizer.from_pretrained(str(path))


def read_model_type(path: Path):
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def load_foreign_model(path: str | Path, trust_remote_code: bool):
    """Another model type through the Auto classes; its custom code runs only when the user allowed it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot load {path}: {first}") from None
    return model, tokenizer


def check_model_folder(path: str | Path) -> Path:
    """Raise a clear error unless ``path`` is a bashgpt model folder with safetensors weights."""
    path = Path(path).expanduser()
    recover_dir(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; pass a model folder (e.g. OUTPUT/best)")
    if not (path / "config.json").is_file():
        if (path / "best" / "config.json").is_file():
            return check_model_folder(path / "best")
        raise UserError(f"{path} is not a model folder (no config.json); pass e.g. OUTPUT/best")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError:
        raise UserError(f"{path / 'config.json'} is not valid JSON; the folder is damaged") from None
    if model_type is None:
        raise UserError(f"{path / 'config.json'} has no model_type; this is not a bashgpt model folder")
    if model_type != "bashgpt":
        raise UserError(f"{path} holds a {model_type!r} model, not bashgpt; bashgpt never runs custom code from a "
                        f"model folder unless you pass --trust-remote-code (generate, eval), and only for folders you trust")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        found = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        hint = f" (found {found[0]}: bashgpt loads only safetensors)" if found else ""
        raise UserError(f"{path} has no model.safetensors{hint}")
    return path


def load_model(path: str | Path, dtype=None):
    """Load a bashgpt model folder (safetensors only); damaged weights are a clear error."""
    from safetensors import SafetensorError

    from . import BashGPTForCausalLM

    path = check_model_folder(path)
    try:
        return BashGPTForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot load the weights in {path}: {first}; the file is truncated or corrupt, "
                        f"use an earlier checkpoint") from None


def load_model_and_tokenizer(path: str | Path, dtype=None):
    """A model folder and the tokenizer saved beside it; checks they belong together."""
    path = check_model_folder(path)
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer (tokenizer.json); copy the tokenizer the model was trained with "
                        f"into it, e.g. cp tokenizer/tokenizer*.json {path}/")
    tokenizer = load_tokenizer(path)
    vocab = json.loads((path / "config.json").read_text()).get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise UserError(f"the tokenizer in {path} has {len(tokenizer)} tokens but the model only {vocab}; "
                        f"they do not belong together: use the tokenizer the model was trained with")
    return load_model(path, dtype=dtype), tokenizer


def trained_on(model_dir: str | Path, stage: str) -> str | None:
    """The dataset a model (or the model it was trained from) was trained on at ``stage`` ("language" or "code"),
    from the lineage training writes into its folders; None when the folder does not say."""
    lineage_file = Path(model_dir) / "bashgpt_training.json"
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else None
    while lineage:
        if lineage.get("stage") == stage:
            return lineage.get("dataset")
        lineage = lineage.get("parent")
    return None
