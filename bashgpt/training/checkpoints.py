"""Read stage-1 checkpoints for stage 2: a bashgpt model folder, a legacy ``.pth`` state dict, or ``.npz``.

Legacy files are read without pickle (``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``).
Names from nanoGPT-style and Hugging Face GPT-2 checkpoints are mapped onto ours; GPT-2's
Conv1D weights (stored transposed) are transposed back.
"""

import re
from pathlib import Path

import torch

from ..configuration_bashgpt import PRESETS, BashGPTConfig
from ..errors import UserError
from ..modeling_bashgpt import BashGPTForCausalLM

STRIP_PREFIXES = ("_orig_mod.", "module.", "model.")
DROP_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers


def resolve_checkpoint(path: str | Path) -> Path:
    """The file or model folder a ``--checkpoint`` names (a stage-1 output folder means its best/)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if (path / "best" / "config.json").is_file():
            return path / "best"
        raise UserError(f"--checkpoint {path} holds no model (no config.json, no best/); pass a stage-1 output folder")
    if path.is_file() and path.suffix in (".pth", ".pt", ".npz"):
        return path
    if not path.exists():
        raise UserError(f"--checkpoint {path} does not exist; pass a stage-1 output folder, a .pth or a .npz")
    raise UserError(f"--checkpoint {path} is not a model folder, .pth or .npz file")


def read_folder_config(folder: Path) -> BashGPTConfig:
    """The config of a bashgpt model folder; every way the folder can be wrong is checked first."""
    from ..model_folder import check_model_folder

    return BashGPTConfig.from_pretrained(str(check_model_folder(folder)))


def load_legacy_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .pth (weights only, no pickled code) or .npz (no pickle)."""
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                state = {k: torch.from_numpy(np.array(arrays[k], dtype=np.float32)) for k in arrays.files}
        except (ValueError, OSError) as err:
            raise UserError(f"cannot read {path} as a .npz of arrays ({err})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for pickled code, RuntimeError for corrupt files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"refusing to load {path}: it is not a plain weights file ({first[:160]})") from None
        for key in ("model", "model_state_dict", "state_dict"):  # training scripts often wrap the weights
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a flat dictionary of tensors")
    return normalise_names(state)


def normalise_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        name = name.replace("/", ".")
        for prefix in STRIP_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.endswith(DROP_SUFFIXES):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        out[name] = tensor
    return out


def infer_config(state: dict[str, torch.Tensor]) -> BashGPTConfig:
    """The architecture a state dict implies (sizes, norm type, position type)."""
    try:
        vocab, hidden = state["transformer.wte.weight"].shape
    except KeyError:
        raise UserError("the checkpoint has no token embedding (transformer.wte.weight); is it a GPT-2-style model?") from None
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.h\.(\d+)\.", k)))
    fc = state.get("transformer.h.0.mlp.c_fc.weight")
    intermediate = max(fc.shape) if fc is not None else 4 * hidden
    learned = "transformer.wpe.weight" in state
    return BashGPTConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
        intermediate_size=intermediate,
        max_position_embeddings=state["transformer.wpe.weight"].shape[0] if learned else 4096,
        norm_type="layernorm" if "transformer.ln_f.bias" in state else "rmsnorm",
        position_embedding_type="learned" if learned else "rope",
    )


def checkpoint_config(path: Path) -> tuple[BashGPTConfig, dict | None]:
    """(config, state dict or None): a folder's config.json, or what a legacy file implies."""
    if path.is_dir():
        return read_folder_config(path), None
    state = load_legacy_state_dict(path)
    return infer_config(state), state


def preset_of(config: BashGPTConfig) -> str | None:
    for name, (layers, hidden, _) in PRESETS.items():
        if (config.num_hidden_layers, config.hidden_size) == (layers, hidden):
            return name
    return None


def check_architecture(config: BashGPTConfig, model_size: str | None, use_rmsnorm: bool, use_rope: bool, where: str):
    """Refuse flags that contradict the checkpoint's architecture (it must match stage 1)."""
    if use_rmsnorm and config.norm_type != "rmsnorm":
        raise UserError(f"--use-rmsnorm contradicts {where}, which uses {config.norm_type}; drop the flag "
                        f"(the architecture must match stage 1)")
    if use_rope and config.position_embedding_type != "rope":
        raise UserError(f"--use-rope contradicts {where}, which uses {config.position_embedding_type} positions; "
                        f"drop the flag (the architecture must match stage 1)")
    found = preset_of(config)
    if model_size and found != model_size:
        shape = f"{config.num_hidden_layers} layers x {config.hidden_size}"
        raise UserError(f"--model-size {model_size} contradicts {where}, which is {found or 'a custom size'} "
                        f"({shape}); pass --model-size {found or 'matching the checkpoint'} or another checkpoint")


def fit_to_model(state: dict, model: BashGPTForCausalLM) -> dict:
    """Transpose GPT-2 Conv1D weights where that makes them fit; report missing and unexpected names."""
    own = model.state_dict()
    # GPT-2's Conv1D stores every block matrix as (in, out); nn.Linear (ours, nanoGPT's) as (out, in).
    # The MLP's first matrix is never square, so its shape tells the layout of all of them.
    fc = "transformer.h.0.mlp.c_fc.weight"
    conv1d = fc in state and fc in own and state[fc].shape == own[fc].t().shape != own[fc].shape
    fitted = {}
    for name, tensor in state.items():
        if conv1d and name.startswith("transformer.h.") and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        fitted[name] = tensor
    if "lm_head.weight" not in fitted and "transformer.wte.weight" in fitted:
        fitted["lm_head.weight"] = fitted["transformer.wte.weight"].clone()  # a tied GPT-2 head, untied here
    missing = sorted(set(own) - set(fitted))
    unexpected = sorted(set(fitted) - set(own))
    if missing or unexpected:
        raise UserError(f"checkpoint names do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [n for n in own if fitted[n].shape != own[n].shape]
    if wrong:
        raise UserError(f"checkpoint shapes do not match the model for {wrong[:3]}")
    return fitted


def load_checkpoint_model(path: Path, config: BashGPTConfig, state: dict | None) -> BashGPTForCausalLM:
    if path.is_dir():
        from ..model_folder import load_model

        return load_model(path)
    model = BashGPTForCausalLM(config)
    model.load_state_dict(fit_to_model(state, model))
    return model
