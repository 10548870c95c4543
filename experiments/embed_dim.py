"""Paper Table 8, embedding dimension. The paper: 640 / 320 / 160 / 80 (B3 + BERT-mini). The tiny
preset's native width is 160 (a plain AlignModel, no image projection), so we run 160 / 80 / 40 / 20:
the same factors of 2, 4 and 8 below native, each with an added linear image projection.

    python experiments/embed_dim.py [--seeds 3] [--steps 250] [--out experiments/out]
"""

from common import single_factor

PAPER = {"160 (native)": "640: 50.2 / 37.6 / 38.1", "80": "320: 50.3 / 34.1 / 30.9",
         "40": "160: 47.0 / 34.4 / 31.0", "20": "80: 42.0 / 29.3 / 25.7"}

if __name__ == "__main__":
    single_factor("embed_dim", "Embedding dimension (paper Table 8; tiny preset: native 160)",
                  [("80", {"embed_dim": 80}), ("40", {"embed_dim": 40}), ("20", {"embed_dim": 20})],
                  PAPER, "paper (dim: MSCOCO I2T R@1 / T2I R@1 / ImageNet KNN R@1)", __doc__, "160 (native)")
