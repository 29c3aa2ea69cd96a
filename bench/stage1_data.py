"""Stage 1 at TinyStories' size: how long until the first training step, from nothing and from the cache, how large the
token cache is, and how much memory the preparation takes.

    python bench/stage1_data.py                      # 2.12M stories, about 1.9 GB of text, as TinyStories
    python bench/stage1_data.py --stories 200000     # a tenth

The corpus is made here, never downloaded: stories of TinyStories' shape (about 900 characters, a few paragraphs)
built from real English sentences, those of this Python's own documentation (bashgpt's `stdlib` corpus), drawn with
a fixed seed, in parquet shards as the Hub serves TinyStories. Each timed run is `bashgpt train --stage language` of
one nano step in a fresh process (tokenising, model, one step, a 2-block validation, a checkpoint), so its wall time
bounds the time to the first step; the process's peak resident memory bounds the preparation's. Writes
bench/stage1-data.md (and .json) with the CPU named.
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_description  # noqa: E402

STORY_CHARS = 900  # TinyStories: 1.9 GB over 2.12M stories
SHARD_STORIES = 250_000


def sentences(texts: list[str] | None = None) -> list[str]:
    """Whole sentences of English from ``texts`` (default: bashgpt's `stdlib` corpus)."""
    from bashgpt.data.corpus import stdlib_texts

    found = []
    for text in stdlib_texts() if texts is None else texts:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 30 <= len(sentence) <= 200 and sentence[0].isupper() and not any(c in sentence for c in "`{}[]<>=_"):
                found.append(sentence)
    return found


def write_corpus(folder: Path, stories: int, seed: int = 0, pool: list[str] | None = None) -> int:
    """Parquet shards of ``stories`` stories drawn from ``pool`` (default: ``sentences()``); returns the bytes of
    text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool, rng, total = pool or sentences(), random.Random(seed), 0
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, stories, SHARD_STORIES)):
        texts = []
        for _ in range(start, min(start + SHARD_STORIES, stories)):
            story, length = [], 0
            while length < STORY_CHARS * rng.uniform(0.6, 1.4):
                story.append(rng.choice(pool))
                length += len(story[-1]) + 1
            texts.append("\n\n".join(" ".join(story[i:i + 3]) for i in range(0, len(story), 3)))
        total += sum(len(t.encode()) for t in texts)
        pq.write_table(pa.table({"text": texts}), folder / f"train-{shard:05d}.parquet")
    return total


def timed_run(corpus: Path, out: Path, cache: Path, *extra: str) -> dict:
    """One nano step in a fresh process: wall seconds and the process's peak resident memory."""
    argv = ["train", "--stage", "language", "--model-size", "nano", "--dataset", str(corpus), "--output-dir", str(out),
            "--num-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--eval-blocks", "2", "--device", "cpu",
            "--cache-dir", str(cache), "--overwrite", "--report-to", "none", *extra]
    code = ("import resource, sys; from bashgpt.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}  # as a user runs it: all cores
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"the run failed:\n{proc.stderr[-3000:]}")
    peak_kb = int(re.search(r"PEAK_KB (\d+)", proc.stdout).group(1))
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_kb / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=2_120_000)
    parser.add_argument("--work", default="/tmp/bashgpt-stage1-bench", help="where the corpus, cache and runs go")
    parser.add_argument("--out", default=str(HERE / "stage1-data"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    began = time.perf_counter()
    text_bytes = write_corpus(work / "stories", args.stories)
    print(f"corpus: {args.stories:,} stories, {text_bytes / 1e9:.2f} GB of text, made in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    cold = timed_run(work / "stories", work / "run-cold", work / "cache")
    print(f"first run (tokenising included): {cold}", flush=True)
    warm = timed_run(work / "stories", work / "run-warm", work / "cache")
    print(f"second run (from the cache): {warm}", flush=True)
    streamed = timed_run(work / "stories", work / "run-streaming", work / "cache-streaming", "--streaming")
    print(f"--streaming (nothing tokenised ahead, nothing cached): {streamed}", flush=True)
    cache_bytes = sum(f.stat().st_size for f in (work / "cache").glob("*.tokens"))
    said = (work / "run-cold" / "train.log").read_text()
    millions = [float(m) for m in re.findall(r"/ ([\d.]+)M tokens|, validation [\d,]+ / ([\d.]+)M", said) for m in m if m]
    tokens = sum(millions) * 1e6
    result = {"cpu": cpu_description(), "cores": os.cpu_count(), "stories": args.stories,
              "text_gb": round(text_bytes / 1e9, 3), "first_run": cold, "second_run": warm, "streaming_run": streamed,
              "cache_gb": round(cache_bytes / 1e9, 3), "tokens_millions": round(sum(millions), 2),
              "cache_bytes_per_token": round(cache_bytes / tokens, 2) if tokens else None}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text("\n".join([
        "# Stage 1 at TinyStories' size", "",
        f"`python bench/stage1_data.py --stories {args.stories}` on {result['cpu']}, {result['cores']} cores.", "",
        "| stories | text | first run (to its first step and past it) | second run (from the cache) | cache | peak memory "
        "| --streaming run (peak memory) |",
        "|---|---|---|---|---|---|---|",
        f"| {args.stories:,} | {result['text_gb']:.2f} GB | {cold['seconds'] / 60:.1f} min | {warm['seconds']:.0f} s | "
        f"{result['cache_gb']:.2f} GB, {result['tokens_millions']:.0f}M tokens "
        f"({result['cache_bytes_per_token']} bytes/token) | "
        f"{max(cold['peak_rss_gb'], warm['peak_rss_gb']):.2f} GB | {streamed['seconds']:.0f} s "
        f"({streamed['peak_rss_gb']:.2f} GB) |", ""]) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
