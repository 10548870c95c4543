"""Noise against scale (the paper's thesis, Tables 9-10), at the SAME training compute (steps x batch).

    python experiments/noise_scale.py [--seeds 3] [--steps 250] [--out experiments/out] [--part sweep|scale|all]

sweep: the caption-noise rate at a fixed corpus size (8k pairs): 0 / 20% / 80% noisy captions
       (swapped with another image's, junk alt-text, or one attribute wrong; synth.py's mix).
scale: a small clean corpus (1k pairs, 0% noise) against larger noisy ones (8k pairs at 20% noise,
       32k pairs at 50% noise) and the clean 8k, all trained for the same steps (at the default 250: 250 x 128 =
       32k samples: 32 epochs of 1k, 4 of 8k, 1 of 32k). Every corpus uses the same images per index and the same
       held-out split (the base corpus's), so only size and caption noise change.
"""

from __future__ import annotations

import argparse
import time

from common import (
    DOCS,
    Job,
    bar_plot,
    baseline,
    common_args,
    markdown_table,
    named,
    run_jobs,
    save_results,
    summarise,
    with_world,
    write_table,
)

NAME = "noise_scale"
SWEEP = [("8k, 0% noise", 8000, 0.0), ("8k, 20% noise", 8000, 0.2), ("8k, 80% noise", 8000, 0.8)]
SCALE = [("1k, 0% noise", 1000, 0.0), ("8k, 0% noise", 8000, 0.0), ("8k, 20% noise", 8000, 0.2),
         ("32k, 50% noise", 32000, 0.5)]
PAPER_SWEEP = {}
PAPER_SCALE = {}


def _job(label: str, n: int, p: float, seed: int, steps: int) -> Job:
    if (n, p) == (8000, 0.2):
        return Job(baseline(seed, steps).label, seed, steps, keep_model=True)  # the shared baseline run
    return Job(label, seed, steps, num_train=n, noise_rate=p)


def jobs(part: str, seeds: int, steps: int, scale_seeds: int | None = None) -> list[Job]:
    out = []
    if part in ("sweep", "all"):
        out += [_job(lab, n, p, s, steps) for s in range(seeds) for lab, n, p in SWEEP]
    if part in ("scale", "all"):
        # the 8k corpora are the sweep's runs: ``--part scale`` runs only its own corpora (so the two
        # parts can run side by side without racing for a run) and reads the 8k ones from the cache
        own = SCALE if part == "all" else [c for c in SCALE if c[1] != 8000]
        out += [_job(lab, n, p, s, steps) for s in range(scale_seeds or seeds) for lab, n, p in own]
    return out


def _relabel(recs: list[dict], table: list[tuple[str, int, float]]) -> list[dict]:
    by = {(n, p): lab for lab, n, p in table}
    out = []
    for r in recs:
        key = (r["job"]["num_train"], r["job"]["noise_rate"])
        if key in by:
            out.append({**r, "job": {**r["job"], "label": by[key]}})
    return out


def main() -> None:
    ap = common_args(argparse.ArgumentParser(description=__doc__))
    ap.add_argument("--part", default="all", choices=("sweep", "scale", "all"))
    ap.add_argument("--scale-seeds", type=int, default=None, help="seeds for the scale part (default --seeds)")
    args = ap.parse_args()
    t0 = time.monotonic()
    name = named(NAME, args.world, args.steps)
    recs = run_jobs(args.out, with_world(jobs(args.part, args.seeds, args.steps, args.scale_seeds), args.world),
                    args.parallel, run=not args.report_only)
    # also pick up any cached runs of the other part
    recs_all = run_jobs(args.out, with_world(jobs("all", max(args.seeds, 3), args.steps,
                                                  args.scale_seeds or max(args.seeds, 3)), args.world), run=False)
    save_results(args.out, name, recs_all)
    texts = []
    for part, table, title in (("sweep", SWEEP, "Caption-noise rate at fixed size (8k pairs), same compute"),
                               ("scale", SCALE, f"Corpus size x noise at the same compute ({args.steps} x 128 samples)")):
        rows = summarise(_relabel(recs_all, table), [lab for lab, _, _ in table])
        if not rows:
            continue
        bar_plot(rows, DOCS / f"{name}_{part}.png", f"{title}, {args.world} world")
        texts.append(f"**{part}**\n\n" + markdown_table(rows))
    text = "\n\n".join(texts) + (f"\n\ncompute: {sum(r['seconds'] for r in recs_all) / 60:.1f} run-minutes in all"
                                 + ("" if args.report_only else f"; {(time.monotonic() - t0) / 60:.1f} min wall-clock this invocation"))
    write_table(name, text)
    print(text)


if __name__ == "__main__":
    main()
