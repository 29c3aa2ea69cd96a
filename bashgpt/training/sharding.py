"""Sharded models (FSDP2): gather the full weights for saving a model folder.

Under ``--fsdp`` every parameter is a DTensor holding this process's shard. Gathering is a
collective: every process calls ``full_state_dict``; the main one gets the whole model on the CPU,
the others None. An unsharded model gives None too: it saves its own weights.
"""

import torch
import torch.distributed as dist


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict | None:
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None
