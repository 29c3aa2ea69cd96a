"""Stage 2: code fine-tuning on bash scripts, starting from a stage-1 checkpoint.

    bashgpt collect debian: --out data/bash
    python recipes/stage2.py --dataset data/bash --checkpoint runs/language-tiny --batch-size 4 \\
        --num-epochs 5 --steps-per-epoch 200 --learning-rate 3e-5 --warmup-steps 50
"""

import sys

from bashgpt.training.recipe import main

if __name__ == "__main__":
    sys.exit(main("code", __doc__))
