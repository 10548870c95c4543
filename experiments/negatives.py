"""Paper Table 8, in-batch negatives: 100% / 50% / 25% of the (global) batch as negatives.

    python experiments/negatives.py [--seeds 3] [--steps 250] [--out experiments/out]

The batch (and so the gradient step) stays 128; only the softmax candidates shrink (the loss
splits the batch into 1/fraction groups). Writes docs/results/negatives.png and .md.
"""

from common import single_factor

PAPER = {"100% (128)": "50.2 / 37.6 / 38.1", "50% (64)": "48.1 / 34.3 / 33.3", "25% (32)": "45.3 / 33.6 / 31.9"}

if __name__ == "__main__":
    single_factor("negatives", "In-batch negatives (paper Table 8)",
                  [("50% (64)", {"negatives_fraction": 0.5}), ("25% (32)", {"negatives_fraction": 0.25})],
                  PAPER, "paper: MSCOCO I2T R@1 / T2I R@1 / ImageNet KNN R@1", __doc__, "100% (128)")
