"""The body of ``recipes/stage1.py`` and ``recipes/stage2.py``: parse the guide's flags and train."""

import argparse
import sys

from ..errors import UserError


def main(stage: str, doc: str | None = None, argv: list[str] | None = None) -> int:
    from .options import add_train_arguments, options_from_args
    from .train import run_training

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_train_arguments(parser, stage=stage).parse_args(argv)
    try:
        run_training(options_from_args(args))
    except UserError as err:
        print(f"bashgpt: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    return 0
