"""Stage 1: language pretraining (TinyStories by default).

    python recipes/stage1.py --model-size tiny --batch-size 4 --num-epochs 3 --steps-per-epoch 500 \\
        --learning-rate 6e-5 --warmup-steps 100
    accelerate launch recipes/stage1.py --model-size tiny ...
"""

import sys

from bashgpt.training.recipe import main

if __name__ == "__main__":
    sys.exit(main("language", __doc__))
