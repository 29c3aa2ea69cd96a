"""Stage 1: language pretraining (TinyStories by default).

    python recipes/stage1.py --model-size tiny --batch-size 4 --num-epochs 3 --steps-per-epoch 500 \\
        --learning-rate 6e-5 --warmup-steps 100
    accelerate launch recipes/stage1.py --model-size tiny ...
"""

import sys

from bashgpt.cli import main

if __name__ == "__main__":  # `bashgpt train --stage language` with the flags given here
    sys.exit(main(["train", "--stage", "language", *sys.argv[1:]]))
