"""``openalign data synth``: the synthetic noisy corpus (demo and test data)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic noisy image/alt-text corpus (shards + clean held-out)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=10000, help="training images")
    p.add_argument("--num-heldout", type=int, default=500, help="clean held-out images (unseen colour/shape combos)")
    p.add_argument("--noise-rate", type=float, default=0.2, help="fraction of noisy training captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=80, help="image side in pixels")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--heldout-fraction", type=float, default=0.15, help="fraction of colour/shape combos held out")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from openalign.corpus.synth import generate_corpus
    from openalign.errors import UserError

    if not 0.0 <= args.noise_rate <= 1.0:
        raise UserError(f"--noise-rate {args.noise_rate}: must be between 0 and 1")
    if not 0.0 <= args.heldout_fraction < 1.0:
        raise UserError(f"--heldout-fraction {args.heldout_fraction}: must be in [0, 1)")
    if args.num_train < 1 or args.num_heldout < 0 or args.shard_size < 1 or args.image_size < 16:
        raise UserError("--num-train and --shard-size must be >= 1, --num-heldout >= 0, --image-size >= 16")
    with tqdm(total=args.num_train, desc="synth", unit=" img") as bar:
        info = generate_corpus(args.out, num_train=args.num_train, num_heldout=args.num_heldout,
                               noise_rate=args.noise_rate, seed=args.seed, image_size=args.image_size,
                               shard_size=args.shard_size, heldout_fraction_of_combos=args.heldout_fraction,
                               workers=args.workers, progress=bar.update)
    noise = ", ".join(f"{k} {v}" for k, v in info.noise_counts.items())
    print(f"train:   {info.num_train} images ({noise}) -> {info.shards}")
    print(f"heldout: {info.num_heldout} images, 5 captions each -> {info.heldout_json}")
    print(f"         images under {info.heldout_image_root}")
    print(f"stats:   {info.root / 'stats.json'}")
    return 0
