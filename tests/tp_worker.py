"""One of two CPU processes (gloo) that load a saved bashgpt model with ``from_pretrained(..., tp_plan="auto")``
and report what each holds and computes: the logits against the whole model's, and the local shapes of the
embedding, the head and a fused q/k/v weight. Started by tests/test_hf_conventions.py through torch.distributed.run."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

import bashgpt  # noqa: F401  (registers the model type)


def local_shape(weight) -> list[int]:
    return list(weight.to_local().shape if hasattr(weight, "to_local") else weight.shape)


def main(folder: Path, out: Path):
    ids = torch.tensor([[3, 17, 29, 41, 5, 60, 7, 8, 90, 11]])
    whole = AutoModelForCausalLM.from_pretrained(folder).eval()
    split = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto").eval()
    with torch.no_grad():
        expected, got = whole(input_ids=ids).logits, split(input_ids=ids).logits
        generated = split.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        reference = whole.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    embedding = split.get_input_embeddings().weight
    report = {"world": dist.get_world_size(), "max_diff": float((got - expected).abs().max()),
              "same_greedy": bool(torch.equal(generated, reference)),
              "wte": local_shape(embedding), "lm_head": local_shape(split.lm_head.weight),
              "tied": split.lm_head.weight is embedding,
              "c_attn": local_shape(split.transformer.h[0].attn.c_attn.weight)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
