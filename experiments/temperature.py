"""Paper Table 8, temperature: learnable (init 1.0) against fixed 1/128, 1/64, 1/32.

    python experiments/temperature.py [--seeds 3] [--steps 250] [--out experiments/out]

Writes experiments/out/temperature/results.json, docs/results/temperature.png and .md.
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

NAME = "temperature"
FIXED = {"fixed 1/128": 1 / 128, "fixed 1/64": 1 / 64, "fixed 1/32": 1 / 32}
LABELS = ["learnable (init 1.0)", *FIXED]
# Table 8 (ablation model: EfficientNet-B5 + BERT-base, 640-d), MSCOCO zero-shot I2T R@1 / T2I R@1, as
# transcribed from the paper (check against the PDF before quoting; the ImageNet KNN column is omitted)
PAPER = {"learnable (init 1.0)": "51.7 / 37.5 (baseline)", "fixed 1/128": "52.2 / 36.5",
         "fixed 1/64": "52.2 / 37.3", "fixed 1/32": "39.6 / 26.9"}


def jobs(seeds: int, steps: int) -> list[Job]:
    out = []
    for s in range(seeds):
        out.append(baseline(s, steps))
        out += [Job(lab, s, steps, overrides={"fixed_temperature": t}) for lab, t in FIXED.items()]
    return out


def report(records: list[dict], wall: float | None = None, world: str = "toy", steps: int = 250) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = summarise(records, LABELS)
    name = named(NAME, world, steps)
    png = DOCS / f"{name}.png"
    bar_plot(rows, png, f"Temperature (paper Table 8), {world} world")
    # second figure: learned temperature and losses over training
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in records:
        c = r["curve"]
        steps = [p["step"] for p in c]
        if r["job"]["label"].startswith("learnable"):
            a.plot(steps, [p["temperature"] for p in c], color="C0", alpha=0.8)
        b.plot(steps, [p["loss"] for p in c], color=f"C{LABELS.index(r['job']['label'])}", alpha=0.6,
               label=r["job"]["label"] if r["job"]["seed"] == 0 else None)
    for t, ls in ((1 / 32, ":"), (1 / 64, "--"), (1 / 128, "-.")):
        a.axhline(t, color="grey", ls=ls, lw=0.8, label=f"1/{round(1 / t)}")
    a.set_yscale("log")
    a.set_title("learned temperature (each seed)", fontsize=10)
    a.set_xlabel("step")
    a.legend(fontsize=8)
    b.set_title("training loss (sum of both directions)", fontsize=10)
    b.set_xlabel("step")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}_curves.png", dpi=110)
    plt.close(fig)
    t_learned = [r["final_temperature"] for r in records if r["job"]["label"].startswith("learnable")]
    text = markdown_table(rows, PAPER, "paper Table 8: MSCOCO I2T / T2I R@1")
    text += (f"\n\nLearned temperature after training: {np.mean(t_learned):.4f} (1/{1 / np.mean(t_learned):.0f}) "
             f"mean over {len(t_learned)} seeds; compute: {sum(r['seconds'] for r in records) / 60:.1f} run-minutes"
             + (f", {wall / 60:.1f} min wall-clock this invocation" if wall else ""))
    write_table(name, text)
    return text


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args()
    if args.fixed_temperature is not None:
        parser.error("--fixed-temperature: this experiment varies the temperature itself; give it to the others")
    t0 = time.monotonic()
    js = with_world(jobs(args.seeds, args.steps), args.world)
    recs = run_jobs(args.out, js, args.parallel, run=not args.report_only)
    save_results(args.out, named(NAME, args.world, args.steps), recs)
    print(report(recs, None if args.report_only else time.monotonic() - t0, args.world, args.steps))


if __name__ == "__main__":
    main()
