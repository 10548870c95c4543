"""Beyond the paper: minimal filtering alone vs minimal filtering + score filtering, same training compute.

    python experiments/score_filter.py [--seeds 3] [--steps 250] [--keep 0.8] [--world toy|long-tail]

ALIGN keeps every pair that passes its frequency rules; LAION-style corpora also drop pairs whose
image-text cosine under a model is low. Here the scorer is a model trained on the same noisy
corpus (the baseline run of the same seed: 8k pairs, 20% noisy captions, 250 steps), so no outside
data enters. Per seed: ``openalign.corpus.score`` scores every training pair with that model and
keeps the top ``--keep`` fraction; a new model (same seed, same recipe, same steps x batch) trains
on the kept pairs. Both are evaluated on the same clean held-out split. The scorer's own training
and the scoring pass are extra compute, reported apart. Because the synthetic shards record which
captions are noisy, the table also gives the filter's precision (share of removed pairs that were
noisy) and recall (share of noisy pairs removed).

Writes experiments/out/score_filter[-world]/results.json and docs/results/score_filter[-world].md/.png.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from common import (
    BASE_NOISE,
    BASE_NUM_TRAIN,
    DOCS,
    Job,
    bar_plot,
    baseline,
    common_args,
    corpus_dir,
    markdown_table,
    named,
    run_jobs,
    save_results,
    summarise,
    with_world,
    write_table,
)

NAME = "score_filter"


def sample_meta(shards: list[str]) -> dict[tuple[str, str], dict]:
    """(shard file name, sample key) -> the sample's JSON metadata (the synthetic shards record whether
    its caption is noisy), read with the project's shard reader."""
    from openalign.media.shards import iter_samples

    return {(Path(x["__url__"]).name, x["__key__"]): json.loads(x["json"])
            for x in iter_samples(shards, Counter()) if "json" in x}


def prepare(out: Path, world: str, seed: int, scorer_dir: str, keep: float) -> tuple[str, dict]:
    """Score the base corpus with ``scorer_dir``, keep the top ``keep``; returns (corpus name, filter stats)."""
    from openalign.corpus.score import ScoreConfig, score_shards
    from openalign.media.shards import expand_urls

    name = f"{'' if world == 'toy' else world + '-'}scored-s{seed}-k{keep:g}"
    root = out / "corpora" / name
    stats_file = root / "stats.json"
    if stats_file.is_file():
        st = json.loads(stats_file.read_text())
        return name, st["filter"]
    base = json.loads((corpus_dir(out, BASE_NUM_TRAIN, BASE_NOISE, world) / "stats.json").read_text())
    t0 = time.monotonic()
    res = score_shards(base["shards"], root / "shards", ScoreConfig(model_dir=scorer_dir, keep_fraction=keep,
                                                                     num_workers=0, device="cpu"), progress=False)
    seconds = time.monotonic() - t0
    src = expand_urls(base["shards"])
    kept_urls = [str(root / "shards" / Path(u).name) for u in src]
    flags = {k: bool(m.get("noisy", False)) for k, m in sample_meta(src).items()}
    kept = set(sample_meta(kept_urls))
    removed = [k for k in flags if k not in kept]
    noisy = sum(flags.values())
    filt = {"kept": len(kept), "removed": len(removed), "noisy_in_corpus": noisy,
            "precision": sum(flags[k] for k in removed) / max(len(removed), 1),
            "recall": sum(flags[k] for k in removed) / max(noisy, 1),
            "noise_after": sum(flags[k] for k in kept) / max(len(kept), 1),
            "threshold": res["threshold"], "score_seconds": seconds}
    pattern = str(root / "shards" / f"{{{Path(src[0]).stem}..{Path(src[-1]).stem}}}.tar")
    stats_file.write_text(json.dumps({"shards": pattern, "num_train": len(kept), "filter": filt}, indent=1))
    return name, filt


def main() -> None:
    ap = common_args(argparse.ArgumentParser(description=__doc__))
    ap.add_argument("--keep", type=float, default=0.8, help="fraction of pairs kept by the score filter")
    args = ap.parse_args()
    name = named(NAME, args.world, args.steps)
    t0 = time.monotonic()
    base_label, filt_label = "minimal filtering (all 8k)", f"+ score filter (top {args.keep:.0%})"
    bases = run_jobs(args.out, with_world([baseline(s, args.steps) for s in range(args.seeds)], args.world),
                     args.parallel, run=not args.report_only)
    filters, jobs = {}, []
    for rec in bases:
        s = rec["job"]["seed"]
        if not rec.get("model_dir"):
            continue
        cname, filters[s] = prepare(args.out, args.world, s, rec["model_dir"], args.keep)
        jobs.append(Job(filt_label, s, args.steps, world=args.world, corpus=cname))
    recs = run_jobs(args.out, jobs, args.parallel, run=not args.report_only)
    allr = [{**r, "job": {**r["job"], "label": base_label}} for r in bases] + recs
    save_results(args.out, name, allr, {"filters": filters})
    rows = summarise(allr, [base_label, filt_label])
    bar_plot(rows, DOCS / f"{name}.png", f"Score filtering at equal training compute, {args.world} world")
    text = markdown_table(rows)
    text += "\n\n| seed | pairs kept | removed | precision (removed that were noisy) | recall (noisy removed) " \
            "| noise after (was 20%) | scoring seconds |\n|---|---|---|---|---|---|---|\n"
    for s, f in sorted(filters.items()):
        text += (f"| {s} | {f['kept']} | {f['removed']} | {f['precision']:.1%} | {f['recall']:.1%} | "
                 f"{f['noise_after']:.1%} | {f['score_seconds']:.0f} |\n")
    text += (f"\ncompute: {sum(r['seconds'] for r in allr) / 60:.1f} run-minutes of training in all (the scorer is the "
             "baseline run itself)" + ("" if args.report_only else
                                       f"; {(time.monotonic() - t0) / 60:.1f} min wall-clock this invocation"))
    write_table(name, text)
    print(text)


if __name__ == "__main__":
    main()
