"""The ``bashgpt`` command: one sub-command per job, each a thin layer over library code."""

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


def cmd_collect(args):
    from .collect import collect, format_summary
    from .tokenization import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    manifest = collect(args.sources, args.out, validation_fraction=args.validation_fraction, seed=args.seed,
                       max_bytes=args.max_bytes, near_threshold=args.near_threshold, cache=args.cache,
                       tokenizer=tokenizer)
    print(format_summary(manifest, args.out, block_size=args.block_size))


def cmd_tokenizer_train(args):
    from .tokenization import train_on_corpora

    report = train_on_corpora(args.english, args.bash, args.out, vocab_size=args.vocab_size, seed=args.seed)
    print(json.dumps(report, indent=2))
    print(f"tokenizer written to {args.out}")


def cmd_data_stats(args):
    from .corpus import load_corpus
    from .packing import format_stats, packed_splits, split_stats
    from .tokenization import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    packed = packed_splits(load_corpus(args.dataset), tokenizer, args.seq_len, cache_dir=args.cache)
    print(format_stats(args.dataset, {s: split_stats(ds) for s, ds in packed.items()}, args.seq_len))


def cmd_train(args):
    from .train import run_training
    from .train_options import options_from_args

    run_training(options_from_args(args))


def default_cache() -> str:
    return str(Path.home() / ".cache" / "bashgpt")


def build_parser() -> argparse.ArgumentParser:
    from .tokenization import default_tokenizer_dir

    parser = argparse.ArgumentParser(prog="bashgpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="build the stage-2 bash corpus from folders, Debian packages, this machine or the Hub",
                       description="Find shell scripts, clean and deduplicate them, split by file, write "
                                   "train.jsonl, validation.jsonl and manifest.json. Scripts are never executed.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a folder (e.g. git clones), 'system' (this machine's scripts), 'debian:PKG,PKG' "
                        "('debian:' alone = the default 42 packages), or 'hub:NAME[:COLUMN]'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--validation-fraction", type=float, default=0.05, help="share of files held out (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="skip files larger than this (default 1 MB)")
    p.add_argument("--near-threshold", type=float, default=0.7, help="MinHash Jaccard threshold for near-duplicates")
    p.add_argument("--cache", default=default_cache(), help="where Debian packages are downloaded and unpacked")
    p.add_argument("--tokenizer", default=str(default_tokenizer_dir()), help="tokenizer for the token counts")
    p.add_argument("--block-size", type=int, default=1024, help="sequence length for the summary's sequence count")
    p.set_defaults(func=cmd_collect)

    from .train_options import add_train_arguments

    p = sub.add_parser("train", help="train a stage: --stage language (TinyStories) or --stage code (bash)",
                       description="Train on HF Trainer with NaN-skipping, loss clamping, best-model saving and resume. "
                                   "Numeric defaults follow the reference guide's command for the stage and size.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train on English text plus a bash corpus",
                        description="Train a byte-level BPE on an English corpus and a bash corpus; reports "
                                    "bytes per token on both held-out splits.")
    t.add_argument("--english", default="stdlib", help="English corpus: 'stdlib' (offline), a path, or a Hub name")
    t.add_argument("--bash", required=True, help="a bashgpt collect output folder")
    t.add_argument("--out", default="tokenizer", help="output folder (default tokenizer/)")
    t.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size (default 32000; keep < 32767)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="dataset information")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("stats", help="sequences and tokens per split, after packing")
    d.add_argument("--dataset", required=True, help="'stdlib', a path, a bashgpt collect folder, or a Hub name")
    d.add_argument("--seq-len", type=int, default=1024)
    d.add_argument("--tokenizer", default=str(default_tokenizer_dir()))
    d.add_argument("--cache", default=str(Path(default_cache()) / "packed"))
    d.set_defaults(func=cmd_data_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"bashgpt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bashgpt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
