"""bashgpt benchmarks: side by side in one process, interleaved, medians and ratios.

    python bench/run.py                      # everything; writes bench/results.md and bench/results.json
    python bench/run.py --only train --sizes tiny --dtypes bf16 --reps 3

Sections:
  peak    matmul GFLOP/s (fp32, bf16) and memory read bandwidth, measured in this run
  train   tokens/s of forward + backward + fused AdamW: bashgpt vs transformers' GPT2LMHeadModel
          built with the same dimensions; model FLOPs utilisation against the measured peak
  decode  batch-1 greedy decode tokens/s vs GPT2LMHeadModel.generate, and vs the bandwidth bound
  data    collect + dedup throughput (this machine's scripts) and tokenising MB/s
Machines are shared: compare ratios from one run, never absolute times from different runs.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bashgpt import BashGPTConfig, BashGPTForCausalLM  # noqa: E402
from bashgpt.inference.decoding import fast_greedy_decode  # noqa: E402
from bashgpt.training.estimate import matmul_rate  # noqa: E402
from bashgpt.training.flops import training_flops_per_token  # noqa: E402

HERE = Path(__file__).resolve().parent


def median_minmax(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def matmul_peak(dtype, reps=10):
    """GFLOP/s of a 2048 x 2048 matrix product on this CPU (the estimator's own measurement)."""
    return matmul_rate("cpu", dtype, reps=reps) / 1e9


def read_bandwidth(gb=1.0, reps=7):
    x = torch.ones(int(gb * 2**30 / 4), dtype=torch.float32)
    x.sum()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    del x
    return [gb * 2**30 / s / 1e9 for s in times]


def gpt2_twin(cfg: BashGPTConfig):
    """transformers' GPT2LMHeadModel with bashgpt's dimensions (untied head, same vocab and positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size,
        n_layer=cfg.num_hidden_layers, n_head=cfg.num_attention_heads, activation_function="gelu_pytorch_tanh",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id))  # not GPT-2's 50256
    model.loss_type = "ForCausalLM"  # the class name does not say it, and Transformers warns when it must guess
    return model


def train_step_fn(model, dtype, batch, seq):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    amp = dtype == "bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_train(sizes, dtypes, reps, peaks):
    rows = []
    for size in sizes:
        batch, seq = (4, 512) if size == "tiny" else (8, 256)
        cfg = BashGPTConfig.from_preset(size)
        for dtype in dtypes:
            torch.manual_seed(0)
            ours = BashGPTForCausalLM(cfg)
            ours.config.fused_lm_loss = True  # as bashgpt's training runs it
            models = {"bashgpt": ours, "GPT2LMHeadModel": gpt2_twin(cfg)}
            steps = {name: train_step_fn(m.train(), dtype, batch, seq) for name, m in models.items()}
            for fn in steps.values():  # warm-up
                fn()
                fn()
            times = {name: [] for name in steps}
            for _ in range(reps):  # interleaved
                for name, fn in steps.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            flops_token = training_flops_per_token(cfg, seq)
            result = {"size": size, "dtype": dtype, "batch": batch, "seq": seq}
            for name, ts in times.items():
                tps = [batch * seq / t for t in ts]
                result[name] = {"tokens_per_s": median_minmax(tps),
                                "mfu": statistics.median(tps) * flops_token / (peaks[dtype] * 1e9)}
            result["ratio"] = (result["bashgpt"]["tokens_per_s"]["median"]
                               / result["GPT2LMHeadModel"]["tokens_per_s"]["median"])
            rows.append(result)
            print(f"train {size} {dtype} B{batch}xT{seq}: bashgpt {result['bashgpt']['tokens_per_s']['median']:.0f} "
                  f"tok/s (MFU {result['bashgpt']['mfu']:.0%}), GPT2 {result['GPT2LMHeadModel']['tokens_per_s']['median']:.0f}"
                  f" tok/s (MFU {result['GPT2LMHeadModel']['mfu']:.0%}), ratio {result['ratio']:.2f}x", flush=True)
            del models, steps
            gc.collect()
    return rows


def decode_runners(ours, twin, prompt, new_tokens, kwargs):
    return {
        "bashgpt": lambda: fast_greedy_decode(ours, prompt, new_tokens),  # what `bashgpt generate` runs
        "bashgpt generate()": lambda: ours.generate(prompt, **kwargs),
        "GPT2LMHeadModel.generate": lambda: twin.generate(prompt, **kwargs),
    }


def bench_decode(sizes, reps, new_tokens=128, prompt_len=32):
    rows = []
    for size in sizes:
        cfg = BashGPTConfig.from_preset(size)
        torch.manual_seed(0)
        ours = BashGPTForCausalLM(cfg).eval().to(torch.bfloat16)
        twin = gpt2_twin(cfg).eval().to(torch.bfloat16)
        prompt = torch.randint(2, cfg.vocab_size, (1, prompt_len))
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        runners = decode_runners(ours, twin, prompt, new_tokens, kwargs)
        with torch.inference_mode():
            short = dict(kwargs, max_new_tokens=16, min_new_tokens=16)
            same = torch.equal(fast_greedy_decode(ours, prompt, 16), ours.generate(prompt, **short))
            for fn in runners.values():
                fn()
            times = {name: [] for name in runners}
            for _ in range(reps):
                for name, fn in runners.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        model_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        bw = statistics.median(read_bandwidth())
        bound = bw * 1e9 / model_bytes
        result = {"size": size, "dtype": "bf16", "new_tokens": new_tokens, "bandwidth_GBps": bw,
                  "bound_tokens_per_s": bound, "fast_path_matches_generate": same}
        for name, ts in times.items():
            tps = [new_tokens / t for t in ts]
            result[name] = {"tokens_per_s": median_minmax(tps), "share_of_bound": statistics.median(tps) / bound}
        result["ratio"] = (result["bashgpt"]["tokens_per_s"]["median"]
                           / result["GPT2LMHeadModel.generate"]["tokens_per_s"]["median"])
        rows.append(result)
        print(f"decode {size} bf16: bashgpt {result['bashgpt']['tokens_per_s']['median']:.0f} tok/s "
              f"({result['bashgpt']['share_of_bound']:.0%} of the {bound:.0f} tok/s bandwidth bound), generate() "
              f"{result['bashgpt generate()']['tokens_per_s']['median']:.0f}, GPT2.generate "
              f"{result['GPT2LMHeadModel.generate']['tokens_per_s']['median']:.0f}, ratio {result['ratio']:.2f}x",
              flush=True)
    return rows


def bench_data(reps):
    from bashgpt.data.collect import collect
    from bashgpt.data.tokenization import default_tokenizer_dir, encode_batch, load_tokenizer

    sources = [s for s in (os.environ.get("BASHGPT_BENCH_DEBIAN"),) if s] or ["system"]
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(max(1, reps // 2)):
            t = time.perf_counter()
            manifest = collect(sources, out, progress=False)
            times.append(time.perf_counter() - t)
        texts = [json.loads(line)["text"] for line in (Path(out) / "train.jsonl").read_text().splitlines()]
    tok = load_tokenizer(default_tokenizer_dir())
    n_bytes = sum(len(t.encode()) for t in texts)
    tok_times = []
    for _ in range(reps):
        t = time.perf_counter()
        encode_batch(tok, texts)
        tok_times.append(time.perf_counter() - t)
    mbps = [n_bytes / t / 1e6 for t in tok_times]
    result = {"sources": sources, "files_seen": manifest["files_seen"], "kept": manifest["kept"],
              "collect_seconds": median_minmax(times), "tokenise_MBps": median_minmax(mbps),
              "tokenise_MBps_per_core": statistics.median(mbps) / (os.cpu_count() or 1), "bytes": n_bytes}
    print(f"data: collect+dedup {sources} {statistics.median(times):.1f} s ({manifest['files_seen']} files seen, "
          f"{manifest['kept']} kept); tokenise {statistics.median(mbps):.2f} MB/s "
          f"({result['tokenise_MBps_per_core']:.2f} MB/s per core)", flush=True)
    return result


def write_markdown(results, path):
    lines = ["# bashgpt benchmark results", "",
             f"`python bench/run.py {' '.join(results['argv'])}` on {results['machine']}, torch {results['torch']}, "
             f"{results['threads']} threads. Medians of {results['reps']} interleaved repetitions after warm-up "
             "(min-max in brackets).", ""]
    if "peak" in results:
        p = results["peak"]
        lines += ["Large-buffer heap reuse (bashgpt/training/cpu_memory.py, what bashgpt's training sets): "
                  + ("off (--no-heap): both models as plain PyTorch runs them." if results.get("no_heap")
                     else "on for the whole process, so GPT2LMHeadModel benefits from it too."), ""]
        lines += [f"Measured peaks: matmul fp32 {p['fp32']:.0f} GFLOP/s, bf16 {p['bf16']:.0f} GFLOP/s; "
                  f"read bandwidth {p['bandwidth_GBps']['median']:.1f} GB/s.", ""]
    if results.get("train"):
        lines += ["## Training (forward + backward + fused AdamW)", "",
                  "| size | dtype | batch | bashgpt tok/s | MFU | GPT2LMHeadModel tok/s | MFU | ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in results["train"]:
            a, b = r["bashgpt"], r["GPT2LMHeadModel"]
            lines.append(f"| {r['size']} | {r['dtype']} | {r['batch']}x{r['seq']} | {a['tokens_per_s']['median']:.0f} "
                         f"[{a['tokens_per_s']['min']:.0f}-{a['tokens_per_s']['max']:.0f}] | {a['mfu']:.0%} | "
                         f"{b['tokens_per_s']['median']:.0f} [{b['tokens_per_s']['min']:.0f}-{b['tokens_per_s']['max']:.0f}]"
                         f" | {b['mfu']:.0%} | {r['ratio']:.2f}x |")
        lines.append("")
    if results.get("decode"):
        lines += ["## Decoding (batch 1, greedy, 128 new tokens, bf16 weights)", "",
                  "| size | bashgpt tok/s | share of bound | bashgpt generate() | GPT2LMHeadModel.generate | ratio | bound |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["decode"]:
            lines.append(f"| {r['size']} | {r['bashgpt']['tokens_per_s']['median']:.0f} | "
                         f"{r['bashgpt']['share_of_bound']:.0%} | {r['bashgpt generate()']['tokens_per_s']['median']:.0f} | "
                         f"{r['GPT2LMHeadModel.generate']['tokens_per_s']['median']:.0f} | {r['ratio']:.2f}x | "
                         f"{r['bound_tokens_per_s']:.0f} tok/s at {r['bandwidth_GBps']:.0f} GB/s |")
        lines.append("")
    if results.get("data"):
        d = results["data"]
        lines += ["## Data", "", f"- collect + dedup of {d['sources']} ({d['files_seen']} files seen, {d['kept']} kept): "
                  f"{d['collect_seconds']['median']:.1f} s", f"- tokenising: {d['tokenise_MBps']['median']:.2f} MB/s "
                  f"({d['tokenise_MBps_per_core']:.2f} MB/s per core)", ""]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=("peak", "train", "decode", "data"),
                        default=["peak", "train", "decode", "data"])
    parser.add_argument("--sizes", nargs="*", default=["nano", "tiny"])
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--no-heap", action="store_true",
                        help="leave glibc's malloc settings alone (both models then run as plain PyTorch runs)")
    args = parser.parse_args()
    if not args.no_heap:
        from bashgpt.training.cpu_memory import keep_large_allocations_on_heap

        keep_large_allocations_on_heap()  # what bashgpt's training does; both models benefit
    results = {"no_heap": args.no_heap, "argv": sys.argv[1:], "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "reps": args.reps}
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results["peak"] = dict(peaks, bandwidth_GBps=median_minmax(read_bandwidth()))
    print(f"peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s, "
          f"read {results['peak']['bandwidth_GBps']['median']:.1f} GB/s", flush=True)
    if "train" in args.only:
        results["train"] = bench_train(args.sizes, args.dtypes, args.reps, peaks)
    if "decode" in args.only:
        results["decode"] = bench_decode(args.sizes, args.reps)
    if "data" in args.only:
        results["data"] = bench_data(args.reps)
    Path(args.out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, Path(args.out + ".md"))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
