"""--fsdp's sharding and its full-state-dict save, on 2 CPU processes that really shard (FSDP2 fully_shard, gloo).

Trainer itself cannot be used for this on CPU: asked for FSDP there, it quietly runs DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_processes_shard_train_and_save_one_loadable_model(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "fsdp_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "shards.json").read_text())
    assert info["sharded"] and info["world"] == 2
    big = {n: s for n, s in info["shards"].items() if s[1] >= 64}
    assert big and all(local <= (full + 1) // 2 for local, full in big.values())  # each process holds half
    best = tmp_path / "best"
    assert (best / "model.safetensors").is_file() and not list(best.glob("*.bin"))
    config = json.loads((best / "config.json").read_text())
    assert config["architectures"] == ["BashGPTForCausalLM"]
    loaded = AutoModelForCausalLM.from_pretrained(best)
    reference = load_file(tmp_path / "reference.safetensors")
    assert set(loaded.state_dict()) == set(reference)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(reference["transformer.h.0.attn.c_attn.weight"],
                           AutoModelForCausalLM.from_config(loaded.config).state_dict()["transformer.h.0.attn.c_attn.weight"])
