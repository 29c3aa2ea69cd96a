"""Stage 2: code fine-tuning on bash scripts, starting from a stage-1 checkpoint.

    bashgpt collect debian: --out data/bash
    python recipes/stage2.py --dataset data/bash --checkpoint runs/language-tiny --batch-size 4 \\
        --num-epochs 5 --steps-per-epoch 200 --learning-rate 3e-5 --warmup-steps 50
"""

import sys

from bashgpt.cli import main

if __name__ == "__main__":  # `bashgpt train --stage code` with the flags given here
    sys.exit(main(["train", "--stage", "code", *sys.argv[1:]]))
