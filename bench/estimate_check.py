"""Check `bashgpt estimate` against measured peak memory and step time (CPU, nano and tiny).

    python bench/estimate_check.py        # writes bench/estimate_check.md

Each configuration runs in a fresh process: 4 training steps (forward, backward, fused AdamW)
the way bashgpt's training runs them; the median of the last three step times and the
process's own peak RSS (VmHWM: ru_maxrss would carry the parent's peak over fork+exec) are
compared with the estimate.
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CONFIGS = [("nano", 8, 256, False, False), ("nano", 8, 256, True, False), ("tiny", 4, 512, False, False),
           ("tiny", 4, 512, True, False), ("tiny", 4, 512, True, True), ("tiny", 2, 512, False, False)]

PROBE = r"""
import json, sys, time, torch
from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.devices import peak_rss_bytes
from bashgpt.training.cpu_memory import keep_large_allocations_on_heap
keep_large_allocations_on_heap()
size, B, T, amp, gc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
cfg = BashGPTConfig.from_preset(size)
cfg.fused_lm_loss = True
model = BashGPTForCausalLM(cfg).train()
if gc:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, cfg.vocab_size, (B, T))
times = []
for _ in range(4):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({"peak": peak_rss_bytes(), "step": sorted(times[1:])[1]}))
"""


def main():
    from bashgpt.training.estimate import estimate
    from bashgpt.training.levers import Levers

    rows = ["| preset | batch | amp | checkpointing | memory est / measured | time est / measured |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for size, b, t, amp, gc in CONFIGS:
        out = subprocess.run([sys.executable, "-c", PROBE, size, str(b), str(t), str(int(amp)), str(int(gc))],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        measured = json.loads(out)
        e = estimate(size, b, t, Levers(use_amp=amp, checkpointing=gc), device="cpu")
        dm, dt = e.total / measured["peak"] - 1, e.seconds_per_step / measured["step"] - 1
        worst = max(worst, abs(dm), abs(dt))
        rows.append(f"| {size} | {b}x{t} | {amp} | {gc} | {e.total / 2**30:.2f} / {measured['peak'] / 2**30:.2f} GB "
                    f"({dm:+.0%}) | {e.seconds_per_step:.2f} / {measured['step']:.2f} s ({dt:+.0%}) |")
        print(rows[-1], flush=True)
    text = "# `bashgpt estimate` against measurements (CPU)\n\n" + __doc__.split("\n\n")[2] + "\n\n" + "\n".join(rows)
    text += f"\n\nLargest deviation: {worst:.0%}.\n"
    (HERE / "estimate_check.md").write_text(text)


if __name__ == "__main__":
    main()
