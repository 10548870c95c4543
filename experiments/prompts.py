"""Prompt ensembling for zero-shot classification (paper: +2.9 ImageNet top-1 from ensembling).

    python experiments/prompts.py [--seeds 3] [--steps 250] [--out experiments/out] [--world toy|demo|long-tail]

No training of its own: it reuses the baseline models of the temperature experiment (learnable
temperature, 160-d, 100% negatives; trained if missing). Zero-shot tasks built from the synthetic
world's attributes (``write_classification_split``: colour, shape, count, size, background; images of
every colour+shape combination; on ``--world demo`` only colour and shape, drawn as the demo draws
its scenes, the other attributes being fixed there; on ``--world long-tail`` the object concept and
its colour). Per task and model: the single prompt "a photo of a {c}." (the
evaluator's ``templates="none"``), each of the task's templates alone, and their ensemble (mean of
the L2-normalised prompt embeddings, renormalised).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import (
    DOCS,
    Job,
    baseline,
    common_args,
    demo_scene,
    named,
    run_jobs,
    save_results,
    temperature_arg,
    with_world,
    write_table,
)

NAME = "prompts"
TASKS = ("colour", "shape", "count", "size", "background")
WORLD_TASKS = {"toy": TASKS, "demo": ("colour", "shape"), "long-tail": ("object", "colour")}
N_PER_CLASS = 40


def write_splits(data_root: Path, world: str) -> tuple[str, ...]:
    """The zero-shot splits of ``world`` under ``data_root`` (written once); returns the task names."""
    from openalign.corpus.synth import write_classification_split

    if world not in WORLD_TASKS:
        raise SystemExit(f"--world {world}: prompts runs on {', '.join(WORLD_TASKS)} (the icon world's zero-shot "
                         "split is by category: evaluate it with `openalign eval zeroshot`)")
    scene = {k: v for k, v in demo_scene().items() if k in ("fix", "object_scale")} if world == "demo" else {}
    for task in WORLD_TASKS[world]:
        if not (data_root / task / "templates.json").is_file():
            write_classification_split(data_root / task, attribute=task, n_per_class=N_PER_CLASS, seed=0,
                                       world="long-tail" if world == "long-tail" else "toy", **scene)
    return WORLD_TASKS[world]


def evaluate(model_dir: str, data_root, tasks=TASKS) -> dict:
    import torch

    from openalign.evals.base import EvalContext, run_evaluation
    from openalign.evals.classification import ZeroShotConfig
    from openalign.models.bundle import load_bundle

    torch.set_num_threads(1)
    bundle = load_bundle(model_dir)
    ctx = EvalContext(batch_size=64, workers=0, progress=False, cache_dir=str(data_root / "emb-cache"))
    out = {}
    for task in tasks:
        root = data_root / task
        (dataset, tpl), = json.loads((root / "templates.json").read_text()).items()  # synth_<task>, ...
        res = {}
        run = lambda templates, name: run_evaluation(bundle, "zeroshot", ZeroShotConfig(  # noqa: E731
            data=str(root), classnames=str(root / "classnames.json"), templates=templates,
            dataset_name=dataset, name=name), ctx).metrics["top1"]
        res["single: 'a photo of a {c}.'"] = run("none", "single")
        for i, t in enumerate(tpl):
            p = root / f"template-{i}.json"
            p.write_text(json.dumps({dataset: [t]}))
            res[f"alone: {t!r}"] = run(str(p), f"t{i}")
        res[f"ensemble of {len(tpl)}"] = run(str(root / "templates.json"), "ensemble")
        out[task] = res
    return out


def main() -> None:
    import numpy as np

    ap = common_args(argparse.ArgumentParser(description=__doc__))
    ap.add_argument("--extra-model", action="append", default=[],
                    help="also evaluate this model directory (e.g. a longer-trained one); one row per task")
    ap.add_argument("--also-fixed-temperature", type=temperature_arg, default=None, metavar="T",
                    help="also train (seed 0, kept) and evaluate a model with this fixed temperature (e.g. 1/32); "
                         "--fixed-temperature instead makes every model's recipe a fixed one")
    args = ap.parse_args()
    t0 = time.monotonic()
    name = named(NAME, args.world, args.steps)
    data_root = args.out / ("zeroshot" if args.world == "toy" else f"zeroshot-{args.world}")
    tasks = write_splits(data_root, args.world)
    recs = run_jobs(args.out, with_world([baseline(s, args.steps) for s in range(args.seeds)], args.world),
                    args.parallel, run=not args.report_only)
    t1 = time.monotonic()
    results = [{"seed": r["job"]["seed"], "model_dir": r["model_dir"],
                "top1": evaluate(r["model_dir"], data_root, tasks)} for r in recs]
    extra_dirs = list(args.extra_model)
    if args.also_fixed_temperature:
        t = args.also_fixed_temperature
        job = Job(f"fixed 1/{1 / t:.0f}", 0, args.steps, overrides={"fixed_temperature": t}, keep_model=True)
        extra_dirs += [r["model_dir"] for r in run_jobs(args.out, with_world([job], args.world), 1,
                                                        run=not args.report_only)]
    extra = [{"model_dir": m, "top1": evaluate(m, data_root, tasks)} for m in extra_dirs]
    eval_s = time.monotonic() - t1
    save_results(args.out, name, results, {"eval_seconds": eval_s, "extra_models": extra})

    lines = ["| task (classes) | single prompt 'a photo of a {c}.' | best single template | mean single template "
             "| ensemble | ensemble − single prompt |", "|---|---|---|---|---|---|"]
    summary = {}
    for task in tasks:
        per = [r["top1"][task] for r in results]
        single = np.array([p["single: 'a photo of a {c}.'"] for p in per])
        ens_key = next(k for k in per[0] if k.startswith("ensemble"))
        ens = np.array([p[ens_key] for p in per])
        alone = np.array([[v for k, v in p.items() if k.startswith("alone")] for p in per])  # (seeds, T)
        best = alone.max(1)
        n_cls = len(next(iter(json.loads((data_root / task / "classnames.json").read_text()).values())))
        d = ens - single
        summary[task] = (single, best, alone.mean(1), ens)
        lines.append(f"| {task} ({n_cls}) | {single.mean():.1f} ± {single.std(ddof=1) if len(single) > 1 else 0:.1f} "
                     f"| {best.mean():.1f} | {alone.mean():.1f} | {ens.mean():.1f} ± "
                     f"{ens.std(ddof=1) if len(ens) > 1 else 0:.1f} | {d.mean():+.1f} (per seed: "
                     + ", ".join(f"{x:+.1f}" for x in d) + ") |")
    for e in extra:
        lines += ["", f"Extra model `{_relative(e['model_dir'])}`:", "",
                  "| task | single prompt | best single template | mean single template | ensemble | ensemble − single |",
                  "|---|---|---|---|---|---|"]
        for task, p in e["top1"].items():
            alone = [v for k, v in p.items() if k.startswith("alone")]
            ens = next(v for k, v in p.items() if k.startswith("ensemble"))
            single = p["single: 'a photo of a {c}.'"]
            lines.append(f"| {task} | {single:.1f} | {max(alone):.1f} | {sum(alone) / len(alone):.1f} | {ens:.1f} "
                         f"| {ens - single:+.1f} |")
    text = "\n".join(lines) + (f"\n\nTop-1 (%), mean ± std over {len(results)} baseline models (seeds); chance = "
                               "100/classes. Evaluation wall-clock: "
                               f"{eval_s / 60:.1f} min (training reused from the temperature experiment); "
                               f"{(time.monotonic() - t0) / 60:.1f} min this invocation.")
    write_table(name, text)
    _plot(summary, name)
    print(text)


def _plot(summary: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = ["single prompt", "mean single template", "best single template", "ensemble"]
    x = np.arange(len(summary))
    w = 0.2
    for i, nm in enumerate(names):
        vals = [summary[t][{0: 0, 1: 2, 2: 1, 3: 3}[i]] for t in summary]
        ax.bar(x + (i - 1.5) * w, [v.mean() for v in vals], w, yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
               capsize=3, label=nm)
    ax.set_xticks(x, list(summary))
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("Prompt ensembling on synthetic-attribute zero-shot tasks (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(DOCS / f"{name}.png", dpi=110)
    plt.close(fig)


def _relative(path: str) -> str:
    """A model path as the docs show it: relative to the repository, never a machine's absolute path."""
    p = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else p.name


if __name__ == "__main__":
    main()
