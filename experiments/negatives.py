"""Paper Table 8, in-batch negatives: 100% / 50% / 25% of the (global) batch as negatives.

    python experiments/negatives.py [--seeds 3] [--steps 250] [--out experiments/out]

The batch (and so the gradient step) stays 128; only the softmax candidates shrink (the loss
splits the batch into 1/fraction groups). Writes docs/results/negatives.png and .md.
"""

from common import single_factor

# MSCOCO zero-shot I2T R@1 / T2I R@1 (B5 + BERT-base), as transcribed; check against the PDF before quoting
PAPER = {"100% (128)": "51.7 / 37.5", "50% (64)": "50.2 / 37.0", "25% (32)": "48.7 / 35.8"}

if __name__ == "__main__":
    single_factor("negatives", "In-batch negatives (paper Table 8)",
                  [("50% (64)", {"negatives_fraction": 0.5}), ("25% (32)", {"negatives_fraction": 0.25})],
                  PAPER, "paper Table 8: MSCOCO I2T / T2I R@1", __doc__, "100% (128)")
