"""Shared machinery for the small-scale reproductions of the ALIGN paper's ablations.

Every experiment is a list of ``Job``s (corpus + TrainConfig overrides + seed). A job trains the
``tiny`` preset with the demo's validated CPU recipe (shortened), evaluates text/image retrieval on
the clean held-out split (unseen colour+shape combinations) and writes ``runs/<key>/result.json``.
Results are cached by key, so an interrupted experiment resumes and experiments share runs (the
baseline - learnable temperature, native 160-d, 100% negatives, 8k corpus at 20% noise - is one
set of runs used by four experiments). Jobs run as subprocesses, ``parallel`` at a time (2 cores:
each training uses one torch thread plus one decoding worker).

    python experiments/common.py run SPEC.json     # one job (used internally)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "out"
DOCS = ROOT / "docs" / "results"
PYTHON = sys.executable

# The world every experiment is evaluated on: the demo's corpus (8k noisy pairs, 20% noise) and its
# 300 clean held-out images x 5 captions. One WordPiece tokenizer trained on that corpus is shared
# by all runs, so no comparison is confounded by a different vocabulary.
BASE_NUM_TRAIN = 8000
BASE_NOISE = 0.2
NUM_HELDOUT = 300
CORPUS_SEED = 0
VOCAB_SIZE = 2000
DEFAULT_STEPS = 250
DEFAULT_SEEDS = 3


@dataclass(frozen=True, eq=False)
class Job:
    """One training run: which corpus, which TrainConfig overrides, which seed."""

    label: str  # the configuration's label in tables and plots (seeds share it)
    seed: int
    steps: int = DEFAULT_STEPS
    num_train: int = BASE_NUM_TRAIN
    noise_rate: float = BASE_NOISE
    overrides: dict = field(default_factory=dict)  # TrainConfig fields
    keep_model: bool = False
    world: str = "toy"  # the testbed: "toy" (synth.py) or "long-tail" (synth_longtail.py)
    corpus: str = ""  # train on out/corpora/<corpus> (prepared by the experiment, e.g. score-filtered) instead


    def key(self) -> str:
        ident = {"seed": self.seed, "steps": self.steps, "num_train": self.num_train,
                 "noise_rate": self.noise_rate, "overrides": self.overrides}
        if self.world != "toy":  # toy keys carry no world name
            ident["world"] = self.world
        if self.corpus:
            ident["corpus"] = self.corpus
        ident["recipe"] = recipe_hash()
        h = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        return f"{'' if self.world == 'toy' else self.world + '-'}n{self.num_train}-p{self.noise_rate:g}-s{self.seed}-{h}"


WORLDS = ("toy", "long-tail", "icons", "demo")


def demo_scene() -> dict:
    """The toy world as `make demo` draws it (one large centred object on grey, the colour named in
    half the training captions): the scene settings of DemoConfig's defaults."""
    from openalign.apps.demo import DemoConfig

    d = DemoConfig()
    return {"fix": d.fix, "object_scale": d.object_scale, "colour_mention": d.colour_mention}
# The icon world is a corpus built once by `openalign data icons` (it fetches npm packages, so
# experiments never build it): --icons DIR, or this variable, names it.
ICONS_ENV = "OPENALIGN_ICONS_CORPUS"


@functools.lru_cache(maxsize=1)
def recipe_hash() -> str:
    """A hash of the shared recipe every job starts from (the demo's TrainConfig and the ``tiny``
    preset), so a changed recipe or model default never reuses a run trained with the old one."""
    from openalign.models.presets import get_preset

    recipe = {"train": asdict(replace(base_train_config(0), steps=0)), "preset": asdict(get_preset("tiny"))}
    return hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


# TrainConfig overrides given on an experiment's command line (e.g. --text-init-std 0.1): added to
# every job, so they are part of every run's cache key and of the outputs' names.
RECIPE_OVERRIDES: dict[str, Any] = {}


def with_world(jobs: Iterable[Job], world: str) -> list[Job]:
    return [replace(j, world=world, overrides={**j.overrides, **RECIPE_OVERRIDES}) for j in jobs]


# The step budgets the earlier tables were run at keep their plain output names; any other budget is
# part of the name (``-1200steps``), so a longer run never overwrites a shorter one's table.
UNNAMED_STEPS = (DEFAULT_STEPS, 400)


def named(name: str, world: str, steps: int = DEFAULT_STEPS) -> str:
    """Output name of an experiment on a testbed (the toy world keeps the plain name), with the
    command line's recipe overrides and the step budget, e.g. ``temperature-icons-text_init_std0.1``,
    ``negatives-long-tail-fixed_T1_32-text_init_std0.1-1200steps``."""
    out = name if world == "toy" else f"{name}-{world}"
    for k, v in sorted(RECIPE_OVERRIDES.items()):
        out += f"-fixed_T1_{1 / v:g}" if k == "fixed_temperature" else f"-{k}{v:g}"
    return out + ("" if steps in UNNAMED_STEPS else f"-{steps}steps")


def base_train_config(steps: int):
    """The demo's validated tiny recipe (AdamW 2e-3, temperature lr 0.2, batch 128, warm-up 30),
    shortened to ``steps``; no intermediate checkpoints."""
    from openalign.apps.demo import DemoConfig

    # the text tower's start stays the preset's (BERT's 0.02), as every experiment below was run with;
    # the demo now starts at 0.1 (--text-init-std 0.1 gives the experiments that too)
    return replace(DemoConfig.train, steps=steps, ckpt_every=10**9, log_every=10, workers=1, threads=1,
                   text_init_std=None)


# ---------------------------------------------------------------------------------------------
# data (generated once, cached under the out dir)

def corpus_dir(out: Path, num_train: int, noise_rate: float, world: str = "toy") -> Path:
    if world == "icons":  # one built corpus: its own size and noise rate
        return Path(os.environ.get(ICONS_ENV) or out / "corpora" / "icons")
    return out / "corpora" / f"{'' if world == 'toy' else world + '-'}n{num_train}-p{noise_rate:g}"


def ensure_corpus(out: Path, num_train: int, noise_rate: float, world: str = "toy") -> dict:
    """Generate (once) a synthetic corpus of ``world``; returns its stats.json (with ``shards``).
    The long-tail world's held-out split has 300 images too (100 per frequency stratum)."""
    root = corpus_dir(out, num_train, noise_rate, world)
    stats = root / "stats.json"
    if world == "icons" and (num_train, noise_rate) != (BASE_NUM_TRAIN, BASE_NOISE):
        raise ValueError("the icon world is one built corpus: data-size and noise sweeps run on toy or long-tail")
    if not stats.is_file():
        if world == "icons":
            raise FileNotFoundError(f"{stats}: no icon corpus; build one with `openalign data icons --out DIR` "
                                    f"and pass --icons DIR (or set {ICONS_ENV})")
        if world == "long-tail":
            from openalign.corpus.synth_longtail import generate_longtail

            generate_longtail(root, num_train=num_train, num_heldout=NUM_HELDOUT, noise_rate=noise_rate,
                              seed=CORPUS_SEED, workers=1, zeroshot_per_class=0)
        elif world in ("toy", "demo"):
            from openalign.corpus.synth import generate_corpus

            generate_corpus(root, num_train=num_train, num_heldout=NUM_HELDOUT, noise_rate=noise_rate,
                            seed=CORPUS_SEED, workers=1, **(demo_scene() if world == "demo" else {}))
        else:
            raise ValueError(f"world {world!r}: expected one of {', '.join(WORLDS)}")
    return json.loads(stats.read_text())


def tokenizer_dir(out: Path, world: str = "toy") -> Path:
    return out / ("tokenizer" if world == "toy" else f"tokenizer-{world}")


def ensure_world(out: Path, world: str = "toy") -> dict:
    """Base corpus + shared tokenizer of ``world``; returns paths."""
    from openalign.media.texts import iter_shard_texts
    from openalign.models.tokenizer import train_wordpiece

    stats = ensure_corpus(out, BASE_NUM_TRAIN, BASE_NOISE, world)
    root = corpus_dir(out, BASE_NUM_TRAIN, BASE_NOISE, world)
    tok = tokenizer_dir(out, world)
    if not (tok / "done").is_file():
        train_wordpiece(iter_shard_texts(stats["shards"]), tok, vocab_size=VOCAB_SIZE)
        (tok / "done").write_text("ok\n")
    return {"tokenizer": str(tok), "heldout_json": str(_heldout_json(root)),
            "heldout_image_root": str(root / "heldout" / "images")}


def _heldout_json(root: Path) -> Path:
    found = sorted((root / "heldout").glob("*.json"))
    return found[0]


# ---------------------------------------------------------------------------------------------
# one job (runs in its own process)

def run_one(spec: dict) -> dict:
    """Train, evaluate retrieval on the base held-out split, write result.json."""
    import torch

    from openalign.evals.retrieval import evaluate_retrieval
    from openalign.train.config import TrainConfig
    from openalign.train.loop import train

    torch.set_num_threads(1)
    out, job = Path(spec["out"]), Job(**spec["job"])
    run_dir = out / "runs" / job.key()
    stats = ensure_corpus(out, job.num_train, job.noise_rate, job.world)
    if job.corpus:
        stats = json.loads((out / "corpora" / job.corpus / "stats.json").read_text())
    base_root = corpus_dir(out, BASE_NUM_TRAIN, BASE_NOISE, job.world)
    t0 = time.monotonic()
    if run_dir.exists() and not (run_dir / "model" / "config.json").is_file():
        shutil.rmtree(run_dir / "train", ignore_errors=True)  # an interrupted run starts over
    cfg = replace(base_train_config(job.steps), shards=stats["shards"], tokenizer=str(tokenizer_dir(out, job.world)),
                  out=str(run_dir / "train"), seed=job.seed, **job.overrides)
    assert isinstance(cfg, TrainConfig)
    result = train(cfg)
    t_train = time.monotonic() - t0
    metrics = evaluate_retrieval(result.model_dir, _heldout_json(base_root), base_root / "heldout" / "images",
                                 progress=False)
    strata = {}
    if (base_root / "heldout" / "karpathy_strata.json").is_file():  # long-tail: head / torso / tail apart
        for b in ("head", "torso", "tail"):
            strata[b] = evaluate_retrieval(result.model_dir, base_root / "heldout" / "karpathy_strata.json",
                                           base_root / "heldout" / "images", split=b, progress=False)
    curve = [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    record = {"key": job.key(), "job": asdict(job), "retrieval": metrics, "strata": strata,
              "curve": [{k: r[k] for k in ("step", "loss", "temperature") if k in r} for r in curve],
              "final_temperature": curve[-1]["temperature"] if curve else None,
              "train_seconds": t_train, "seconds": time.monotonic() - t0,
              "model_dir": str(result.model_dir) if job.keep_model else None}
    if not job.keep_model:
        shutil.rmtree(result.model_dir, ignore_errors=True)
    for ckpt in (result.run_dir / "checkpoints",):
        shutil.rmtree(ckpt, ignore_errors=True)
    (run_dir / "result.json").write_text(json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------------------------------------
# many jobs

def cached(out: Path, job: Job) -> dict | None:
    p = out / "runs" / job.key() / "result.json"
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if job.keep_model and not (rec.get("model_dir") and Path(rec["model_dir"], "config.json").is_file()):
        return None
    return rec


def _launch(out: Path, job: Job) -> dict:
    run_dir = out / "runs" / job.key()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "job": asdict(job)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(run_dir / "log.txt", "w") as log:
        rc = subprocess.call([PYTHON, str(Path(__file__).resolve()), "run", str(spec)], stdout=log,
                             stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0:
        raise RuntimeError(f"job {job.label} seed {job.seed} failed (rc {rc}); see {run_dir / 'log.txt'}")
    return json.loads((run_dir / "result.json").read_text())


def run_jobs(out: Path, jobs: Iterable[Job], parallel: int = 2,
             on_result: Callable[[dict], None] | None = None, run: bool = True) -> list[dict]:
    """Run the jobs not yet cached, ``parallel`` at a time; returns every job's record (job order).
    ``run=False``: only collect the cached ones."""
    out = Path(out)
    jobs = list({j.key(): j for j in jobs}.values())  # drop duplicates, keep order
    for w in sorted({j.world for j in jobs}):
        ensure_world(out, w)
    for nt, nr, w in sorted({(j.num_train, j.noise_rate, j.world) for j in jobs}):
        ensure_corpus(out, nt, nr, w)  # generate corpora up front, not inside two racing jobs
    records: dict[str, dict] = {}
    todo = []
    for j in jobs:
        rec = cached(out, j)
        if rec is None:
            todo.append(j)
        else:
            records[j.key()] = rec
    todo = todo if run else []
    print(f"{len(jobs) - len(todo)} runs cached, {len(todo)} to run ({parallel} at a time)", flush=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(_launch, out, j): j for j in todo}
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                rec = fut.result()
            except Exception as e:  # keep the other runs going; report at the end
                print(f"FAILED {j.label} seed {j.seed}: {e}", flush=True)
                continue
            records[j.key()] = rec
            r = rec["retrieval"]
            print(f"[{time.monotonic() - t0:6.0f}s] {j.label:28} seed {j.seed}: mean recall {r['mean_recall']:.2f} "
                  f"t2i R@1 {r['text_to_image_R@1']:.2f} R@10 {r['text_to_image_R@10']:.2f} "
                  f"T {rec['final_temperature']:.4f} ({rec['seconds']:.0f}s)", flush=True)
            if on_result:
                on_result(rec)
    # a shared run (e.g. the baseline) carries the label this experiment gives it
    return [{**records[j.key()], "job": {**records[j.key()]["job"], "label": j.label}}
            for j in jobs if j.key() in records]


def save_results(out: Path, name: str, records: list[dict], extra: dict | None = None) -> Path:
    """``out/<name>/results.json``: every run's record (rewritten after each run, so it resumes)."""
    path = Path(out) / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"experiment": name, "runs": records, **(extra or {})}, indent=1))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# summaries and plots

METRICS = ("mean_recall", "text_to_image_R@1", "text_to_image_R@10", "image_to_text_R@1")


def summarise(records: list[dict], labels: list[str]) -> list[dict]:
    """Per label: n seeds, mean and std of the retrieval metrics and of the final temperature."""
    import numpy as np

    rows = []
    for lab in labels:
        rs = [r for r in records if r["job"]["label"] == lab]
        if not rs:
            continue
        row: dict[str, Any] = {"label": lab, "n": len(rs), "seconds": sum(r["seconds"] for r in rs)}
        for m in METRICS:
            v = np.array([r["retrieval"][m] for r in rs])
            row[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, v.tolist())
        row["seeds"] = [r["job"]["seed"] for r in rs]
        if all(r.get("strata") for r in rs):  # long-tail: the rarest concepts' retrieval apart
            v = np.array([r["strata"]["tail"]["text_to_image_R@10"] for r in rs])
            row["tail_R@10"] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, v.tolist())
        t = np.array([r["final_temperature"] for r in rs])
        row["temperature"] = (float(t.mean()), float(t.std(ddof=1)) if len(t) > 1 else 0.0, t.tolist())
        rows.append(row)
    return rows


def temperature_arg(text: str) -> float:
    """A temperature given as a number (0.03125) or a fraction (1/32)."""
    try:
        num, _, den = text.partition("/")
        t = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a temperature such as 0.03125 or 1/32") from None
    if not t > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the temperature must be positive")
    return t


def fmt(ms: tuple[float, float, list]) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def paired_delta(row: dict, base: dict, metric: str = "mean_recall") -> str:
    """``row`` minus ``base`` on the same seeds (same init and data order): mean ± std of the differences."""
    import numpy as np

    b = dict(zip(base["seeds"], base[metric][2]))
    d = np.array([v - b[s] for s, v in zip(row["seeds"], row[metric][2]) if s in b])
    if len(d) == 0:
        return ""
    return f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}" if len(d) > 1 else f"{d.mean():+.1f}"


def markdown_table(rows: list[dict], paper: dict[str, str] | None = None, paper_header: str = "paper") -> str:
    """One row per config; the first row is the reference for the paired Δ column."""
    head = ["config", "seeds", "mean recall", "Δ mean recall vs first row, same seeds", "t→i R@1", "t→i R@10",
            "i→t R@1", "final T"]
    tail = bool(rows) and all("tail_R@10" in r for r in rows)
    if tail:
        head.insert(6, "tail t→i R@10")
    if paper:
        head.append(paper_header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(r["n"]), fmt(r["mean_recall"]),
                 "—" if r is rows[0] else paired_delta(r, rows[0]), fmt(r["text_to_image_R@1"]),
                 fmt(r["text_to_image_R@10"]), fmt(r["image_to_text_R@1"]),
                 f"{r['temperature'][0]:.4f}"]
        if tail:
            cells.insert(6, fmt(r["tail_R@10"]))
        if paper:
            cells.append(paper.get(r["label"], ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(rows: list[dict], path: Path, title: str, metrics=("mean_recall", "text_to_image_R@10", "text_to_image_R@1"),
             xlabel: str = "") -> None:
    """One panel per metric: mean ± std over seeds (bars + error bars), each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    x = np.arange(len(rows))
    for ax, m in zip(np.atleast_1d(axes), metrics):
        means = [r[m][0] for r in rows]
        stds = [r[m][1] for r in rows]
        ax.bar(x, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#335")
        for i, r in enumerate(rows):
            ax.scatter([i] * len(r[m][2]), r[m][2], color="k", s=10, zorder=3)
        ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_title(m.replace("_", " ").replace("text to image", "t→i") + " (%)", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(name: str, text: str) -> Path:
    DOCS.mkdir(parents=True, exist_ok=True)
    p = DOCS / f"{name}.md"
    p.write_text(text + "\n")
    return p


def common_args(parser, default_seeds: int = DEFAULT_SEEDS):
    parser.add_argument("--seeds", type=int, default=default_seeds)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="tables and plots from cached runs only")
    parser.add_argument("--world", default="toy", choices=WORLDS,
                        help="testbed: toy (8 colours x 8 shapes), demo (the toy world as make demo draws it), long-tail (384 Zipf-distributed concepts) or icons (a built icon corpus, --icons); "
                             "outputs of another world than toy are named <experiment>-<world>")
    parser.add_argument("--icons", type=Path, action=_IconsDir, metavar="DIR",
                        help="with --world icons: a corpus built by `openalign data icons --out DIR`")
    parser.add_argument("--text-init-std", type=float, action=_RecipeOverride, metavar="STD",
                        help="every run's text tower starts with this weight std (the tiny preset: 0.02); "
                             "outputs are named ...-text_init_std<STD>")
    parser.add_argument("--fixed-temperature", type=temperature_arg, action=_RecipeOverride, metavar="T",
                        help="base recipe with this fixed softmax temperature (e.g. 1/32) instead of the learnable "
                             "one, for a world where the learnable one stays at chance; outputs are named ...-fixed_T1_<1/T>")
    return parser


class _RecipeOverride(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        RECIPE_OVERRIDES[self.dest] = values


class _IconsDir(argparse.Action):
    """Sets the icon corpus for this process and the job subprocesses it starts (they inherit it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        os.environ[ICONS_ENV] = str(Path(values).resolve())


def baseline(seed: int, steps: int, keep_model: bool = True) -> Job:
    """Learnable temperature (init 1.0), native 160-d, 100% negatives, 8k corpus at 20% noise.
    The model is kept: the prompt-ensembling experiment reuses it."""
    return Job("learnable (init 1.0)", seed, steps, keep_model=keep_model)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run_one(json.loads(Path(sys.argv[2]).read_text()))
    else:
        sys.exit(__doc__)


def single_factor(name: str, title: str, configs: list[tuple[str, dict]], paper: dict[str, str], paper_header: str,
                  doc: str, base_label: str) -> None:
    """The command line of a one-knob experiment: the baseline (labelled ``base_label``) plus one run per
    (label, TrainConfig overrides) per seed; table + plot under docs/results/."""

    args = common_args(argparse.ArgumentParser(description=doc)).parse_args()
    name = named(name, args.world, args.steps)
    t0 = time.monotonic()
    js = []
    for s in range(args.seeds):
        # the base run's model is not needed here, so a base trained by another experiment (e.g. the
        # temperature experiment's fixed 1/32 arm under --fixed-temperature 1/32) is reused
        js.append(replace(baseline(s, args.steps, keep_model=False), label=base_label))
        js += [Job(lab, s, args.steps, overrides=ov) for lab, ov in configs]
    recs = run_jobs(args.out, with_world(js, args.world), args.parallel, run=not args.report_only)
    save_results(args.out, name, recs)
    rows = summarise(recs, [base_label, *(lab for lab, _ in configs)])
    recipe = f", fixed T 1/{1 / RECIPE_OVERRIDES['fixed_temperature']:g}" if "fixed_temperature" in RECIPE_OVERRIDES else ""
    bar_plot(rows, DOCS / f"{name}.png", f"{title}, {args.world} world{recipe}, {args.steps} steps")
    text = markdown_table(rows, paper, paper_header)
    text += (f"\n\ncompute: {sum(r['seconds'] for r in recs) / 60:.1f} run-minutes (all seeds, shared baseline "
             "included)" + ("" if args.report_only else f"; {(time.monotonic() - t0) / 60:.1f} min wall-clock this invocation"))
    write_table(name, text)
    print(text)
