"""One of two CPU processes (gloo) that shard a small bashgpt model with FSDP2 ``fully_shard`` the way --fsdp
does (one unit per block, then the root), train two steps, and save best/-style folders with bashgpt's
gathering code (training/sharding.py). Started by tests/test_fsdp.py through torch.distributed.run."""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.model_folder import save_model_folder
from bashgpt.training.sharding import full_state_dict, is_sharded


def main(out: Path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = BashGPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           max_position_embeddings=64)
    model = BashGPTForCausalLM(config)
    reference = copy.deepcopy(model)  # the same training on one process, unsharded
    for block in model.transformer.h:  # the unit --fsdp wraps: _no_split_modules
        fully_shard(block)
    fully_shard(model)
    shards = {n: [p.to_local().numel(), p.numel()] for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    ids = torch.randint(0, 96, (2 * world, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        mine = ids[2 * rank: 2 * rank + 2]
        model(input_ids=mine, labels=mine).loss.backward()  # FSDP averages the gradients over processes
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        loss = sum(reference(input_ids=ids[2 * r: 2 * r + 2], labels=ids[2 * r: 2 * r + 2]).loss for r in range(world))
        (loss / world).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        ref_opt.step()
        ref_opt.zero_grad()
    state = full_state_dict(model)  # every process takes part; the main one gets the weights
    if rank == 0:
        save_model_folder(model, None, out / "best", state_dict=state)
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(out / "reference.safetensors"))
        (out / "shards.json").write_text(json.dumps({"sharded": is_sharded(model), "world": world, "shards": shards}))
    else:
        assert state is None
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
