"""bashgpt on a CUDA GPU, proven in one short call: install, throughput and MFU, memory, the guide's tiny recipe,
decoding. Writes gpu-results.md and gpu-results.json to --out.

    bash bench/gpu_prepare.sh                       # on a CPU machine: wheels and the stage-2 corpus into .gpu/
    python3 bench/gpu_check.py --out "$OUT"         # on the GPU machine (carry .gpu): about 7 minutes
    python bench/gpu_check.py --smoke --out DIR     # any machine, CPU, tiny dimensions, under a minute: the same code

On the GPU the carried wheels (.gpu/wheels: bashgpt and the releases the machine lacks) are installed into a
folder of their own first. Then each part (gpu_parts.py) runs in a process of its own under its own time limit,
inside one overall limit: a part that fails, runs out of memory or of time is one line in the results, and the
parts after it still run. The results are rewritten after every part, so a cut-off run still leaves them.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CARRY = ROOT / ".gpu"
# Seconds each part may take on a GPU, in the order they run; the recipe takes what the overall limit leaves.
GPU_LIMITS = {"machine": 60, "train": 200, "decode": 60, "recipe": 600}
SMOKE_LIMIT = 60  # each part, on a CPU at tiny dimensions
RESERVE_S = 10  # kept back from the overall limit to write the results


def install(wheels: Path, site: Path) -> tuple[dict, list[str]]:
    """Install bashgpt's carried wheel into ``site`` with those of the packages this machine lacks or has out of
    range (gpu_wheels.choose_wheels; no index, no dependency resolution: the wheels are the dependencies).
    Returns (what was installed and what was kept, problems)."""
    from gpu_wheels import choose_wheels

    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {}, [f"missing wheels: none in {wheels}; run bash bench/gpu_prepare.sh on a CPU machine and carry .gpu "
                    f"(the parts run on the machine's own packages)"]
    chosen, kept, problems = choose_wheels(found)
    if not chosen:
        return {}, problems
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, chosen)],
                          capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {}, problems + [f"pip could not install the carried wheels from {wheels}: {last}"]
    return {"installed": [w.name for w in chosen], "kept_from_this_machine": kept, "into": str(site)}, problems


def part_command(name: str, args, limit: float) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(args.out),
               "--work", str(args.work), "--part-limit", f"{limit:.0f}"]
    return command + (["--corpus", str(args.corpus)] if args.corpus else []) + (["--smoke"] if args.smoke else [])


def run_part(name: str, args, limit: float, env: dict, log) -> dict:
    """Run one part in its own process group, killed at ``limit`` seconds; its status, seconds and rows."""
    rows_file = args.work / "parts" / f"{name}.jsonl"
    rows_file.unlink(missing_ok=True)
    log.write(f"\n===== part {name} (limit {limit:.0f} s) =====\n")
    log.flush()
    began = time.monotonic()
    proc = subprocess.Popen(part_command(name, args, limit), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=ROOT)
    try:
        code = proc.wait(timeout=limit)
        status = "ok" if code == 0 else None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, status = None, f"stopped at its time limit of {limit:.0f} s"
    from gpu_parts import read_rows

    rows = read_rows(rows_file)
    problems = [r["problem"] for r in rows if "problem" in r]
    if status is None:
        status = f"failed (exit {code}): {problems[-1] if problems else 'see gpu-check.log'}"
    return {"status": status, "seconds": round(time.monotonic() - began, 1),
            "rows": [r for r in rows if "problem" not in r]}


def run_all(args) -> dict:
    from gpu_parts import NO_CUDA
    from gpu_report import write_results

    deadline = time.monotonic() + args.minutes * 60 - RESERVE_S
    results = {"check": "bench/gpu_check.py", "argv": sys.argv[1:], "smoke": args.smoke,
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "install": {}, "problems": [], "parts": {}}
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # nothing to reach
    if args.wheels:  # on the GPU machine; a smoke run uses the packages it has unless given wheels to try
        site = args.work / "site"
        results["install"], problems = install(args.wheels, site)
        results["problems"] += problems
        if results["install"]:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
            env["PATH"] = os.pathsep.join([str(site / "bin"), env.get("PATH", "")])  # ShellCheck from its wheel
    limits = {**({name: SMOKE_LIMIT for name in GPU_LIMITS} if args.smoke else GPU_LIMITS), **args.limit}
    with (args.out / "gpu-check.log").open("a") as log:
        for name in args.only:
            left = deadline - time.monotonic()
            if NO_CUDA in " ".join(results["problems"]) or left < 5:
                why = "torch sees no CUDA GPU" if left >= 5 else "the overall time limit was reached"
                results["parts"][name] = {"status": f"not run: {why}", "seconds": 0, "rows": []}
            else:
                print(f"[gpu_check] {name}: up to {min(limits[name], left):.0f} s", flush=True)
                results["parts"][name] = part = run_part(name, args, min(limits[name], left), env, log)
                print(f"[gpu_check] {name}: {part['status']} in {part['seconds']:.0f} s", flush=True)
                if part["status"] != "ok":
                    results["problems"].append(f"{name}: {part['status']}")
            write_results(results, args.out)
    return results


def run_one_part(args) -> int:
    """Inside a part's own process: run it, writing its rows; a problem is one row and a non-zero exit."""
    import traceback

    from gpu_parts import GPU, PARTS, SMOKE, CheckProblem, Context, one_line

    rows_file = args.work / "parts" / f"{args.part}.jsonl"
    ctx = Context(scale=SMOKE if args.smoke else GPU, work=args.work, deadline=time.monotonic() + args.part_limit - 5,
                  corpus=args.corpus,
                  tokenizer=ROOT / "tokenizer", rows_file=rows_file)
    try:
        PARTS[args.part](ctx)
    except CheckProblem as err:
        ctx.emit({"problem": str(err)})
        return 1
    except Exception as err:  # noqa: BLE001  (any failure is this part's one line; the next part still runs)
        traceback.print_exc()
        ctx.emit({"problem": one_line(err)})
        return 1
    return 0


def part_limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        if name in GPU_LIMITS and float(seconds) > 0:
            return name, float(seconds)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: write PART=SECONDS with PART one of {', '.join(GPU_LIMITS)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where gpu-results.md/.json and gpu-check.log go")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny dimensions, under a minute")
    parser.add_argument("--minutes", type=float, help="overall limit (default 7.5 on a GPU, 3 for --smoke)")
    parser.add_argument("--wheels", type=Path, help=f"wheels to install first (default on a GPU: {CARRY / 'wheels'})")
    parser.add_argument("--corpus", type=Path,
                        help=f"the stage-2 corpus, a `bashgpt collect` folder (default on a GPU: {CARRY / 'corpus'}; "
                             f"--smoke makes a small one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bashgpt-gpu-check"), help="scratch folder")
    parser.add_argument("--only", nargs="+", choices=list(GPU_LIMITS), default=list(GPU_LIMITS),
                        help="these parts only (in the usual order)")
    parser.add_argument("--limit", type=part_limit, action="append", default=[], metavar="PART=SECONDS",
                        help="another time limit for a part (default: " + ", ".join(
                            f"{k} {v} s" for k, v in GPU_LIMITS.items()) + f"; {SMOKE_LIMIT} s each with --smoke)")
    parser.add_argument("--part", choices=list(GPU_LIMITS), help=argparse.SUPPRESS)
    parser.add_argument("--part-limit", type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    args.work = args.work.resolve()
    (args.work / "parts").mkdir(parents=True, exist_ok=True)
    if args.part:
        return run_one_part(args)
    args.out.mkdir(parents=True, exist_ok=True)
    args.minutes = args.minutes or (3.0 if args.smoke else 7.5)
    if not args.smoke:
        args.wheels = args.wheels or CARRY / "wheels"
        args.corpus = args.corpus or CARRY / "corpus"
    args.corpus = args.corpus.resolve() if args.corpus else None
    args.only = [name for name in GPU_LIMITS if name in args.only]
    args.limit = dict(args.limit)
    results = run_all(args)
    print((args.out / "gpu-results.md").read_text())
    return 0 if not results["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
