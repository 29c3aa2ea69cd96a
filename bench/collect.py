"""How big the default Debian corpus is and how long `bashgpt collect debian:` takes once downloaded.

    python bench/collect.py            # writes bench/collect.md

The first collect downloads and unpacks the packages (network-bound, not timed); the timed run reads
the unpacked cache: scan, shell detection, bash -n, dedup, licence lookup, tokenising, writing.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_description  # noqa: E402

from bashgpt.data.collect import DEFAULT_DEBIAN_PACKAGES, collect  # noqa: E402
from bashgpt.data.tokenization import default_tokenizer_dir  # noqa: E402
from bashgpt.model_folder import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "collect.md"))
    args = parser.parse_args()
    tokenizer = load_tokenizer(default_tokenizer_dir())
    with tempfile.TemporaryDirectory() as tmp:
        collect(["debian:"], Path(tmp) / "warm", tokenizer=tokenizer)  # download + unpack, untimed
        start = time.perf_counter()
        manifest = collect(["debian:"], Path(tmp) / "timed", tokenizer=tokenizer)
        seconds = time.perf_counter() - start
    splits = manifest["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    files = sum(s["files"] for s in splits.values())
    mb = sum(s["bytes"] for s in splits.values()) / 1e6
    projects = len(manifest["projects"])
    rows = [
        f"# `bashgpt collect debian:` (the default {len(DEFAULT_DEBIAN_PACKAGES)} packages)",
        "",
        f"CPU: {cpu_description()}. Command: `python bench/collect.py`.",
        "",
        "| scripts | projects | MB | tokens | reference guide | collect time after download |",
        "|---|---|---|---|---|---|",
        f"| {files:,} | {projects} | {mb:.1f} | {tokens / 1e6:.2f}M | 7.1M tokens, 1,767 scripts, 44 projects "
        f"| {seconds:.0f} s |",
        "",
        "Time covers scanning the unpacked packages, shell detection, `bash -O extglob -n` on every script, exact "
        "and near dedup, licences, tokenising and writing the JSONL splits.",
    ]
    Path(args.out).write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(json.dumps({"tokens": tokens, "files": files, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
