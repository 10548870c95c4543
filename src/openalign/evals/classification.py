"""Classification evaluations on frozen embeddings: zero-shot (prompt ensembling), linear probe, kNN.

Zero-shot: each class's classifier is the mean of its L2-normalised template embeddings,
renormalised (CLIP's ensembling); ``templates="none"`` is the single-prompt baseline.
Linear probe: multinomial logistic regression (full-batch L-BFGS in torch) with an L2 sweep
scored on a validation split, then refit on train + val. kNN: cosine similarity, majority of
the ``k`` nearest train images (k=1: the nearest one). Unreadable images are skipped and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from openalign.errors import UserError
from openalign.evals.base import EvalContext, EvalResult, register_evaluator
from openalign.evals.datasets import BUILTIN, assign_classnames, load_classnames, load_templates
from openalign.media.labeled import LabeledImages, read_labeled
from openalign.models.embed import embed_image_files


@dataclass(frozen=True)
class ZeroShotConfig:
    data: str  # ImageFolder dir or path,label CSV
    classnames: str | None = None  # JSON (CLIP_benchmark layout) or "imagenet1k"; None = folder/label names
    templates: str | None = BUILTIN  # JSON, "imagenet1k" (CLIP's 80) or "none" (one prompt)
    dataset_name: str = BUILTIN  # key in the JSON files
    image_root: str | None = None  # CSV paths are relative to this (default: the CSV's folder)
    name: str = "zeroshot"


@dataclass(frozen=True)
class LinearProbeConfig:
    train: str
    test: str
    val: str | None = None  # None: hold out val_fraction of train (stratified)
    val_fraction: float = 0.2
    weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    max_iter: int = 300
    image_root: str | None = None
    seed: int = 0
    name: str = "linear_probe"


@dataclass(frozen=True)
class KnnConfig:
    train: str
    test: str
    k: int = 1
    image_root: str | None = None
    name: str = "knn"


# -- shared helpers -------------------------------------------------------------------------------
@dataclass
class Embedded:
    x: torch.Tensor  # (N, D) embeddings of the readable images
    y: torch.Tensor  # (N,) labels
    classes: list[str]
    skipped: list[str]


def embed_labeled(bundle: Any, source: str, image_root: str | None, ctx: EvalContext, desc: str) -> Embedded:
    data: LabeledImages = read_labeled(source, image_root)
    res = embed_image_files(bundle, data.paths, ctx.batch_size, ctx.workers, ctx.progress, ctx.cache_dir, desc)
    if not res.ok.any():
        raise UserError(f"{source}: none of the {len(data.paths)} images could be read")
    y = torch.tensor(data.labels)[res.ok]
    return Embedded(res.embeddings[res.ok], y, data.classes, res.failed)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """Top-1, top-5 (top-min(5, C)) accuracy and mean per-class recall, in percent."""
    k5 = min(5, n_classes)
    top = logits.topk(k5, dim=1).indices  # (N, k5)
    correct = top == labels[:, None]
    pred = top[:, 0]
    recalls = [float((pred[labels == c] == c).float().mean()) for c in range(n_classes) if (labels == c).any()]
    return {"top1": 100.0 * float(correct[:, 0].float().mean()), "top5": 100.0 * float(correct.any(1).float().mean()),
            "mean_per_class_recall": 100.0 * sum(recalls) / len(recalls)}


def _confusion_plot(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt  # lazy: called by evals.base._draw after it selects Agg

        n = len(classes)
        pred = logits.argmax(1)
        if n <= 40:
            cm = torch.zeros(n, n)
            cm.index_put_((labels, pred), torch.ones(len(labels)), accumulate=True)
            cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
            fig, ax = plt.subplots(figsize=(2 + 0.3 * n, 1.5 + 0.3 * n))
            im = ax.imshow(cm.numpy(), vmin=0, vmax=1, cmap="Blues")
            ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), classes, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            fig.colorbar(im, ax=ax, fraction=0.04)
        else:
            rec = [float((pred[labels == c] == c).float().mean()) * 100 for c in range(n) if (labels == c).any()]
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.hist(rec, bins=20, range=(0, 100))
            ax.set_xlabel("per-class recall (%)")
            ax.set_ylabel("classes")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    return draw


def _info(cfg: Any, skipped: list[str], **extra: Any) -> dict[str, Any]:
    return {"config": asdict(cfg), "skipped_images": len(skipped), "skipped_files": skipped, **extra}


# -- zero-shot ------------------------------------------------------------------------------------
def class_embeddings(bundle: Any, names: list[str], templates: list[str], batch_size: int = 256) -> torch.Tensor:
    """(C, D): per class, the mean of its L2-normalised template embeddings, renormalised."""
    texts = [t.replace("{c}", name) for name in names for t in templates]
    emb = F.normalize(bundle.encode_texts(texts, batch_size=batch_size).float(), dim=-1)  # (C*T, D)
    emb = emb.view(len(names), len(templates), -1).mean(1)  # (C, D)
    return F.normalize(emb, dim=-1)


@register_evaluator("zeroshot", ZeroShotConfig)
def run_zeroshot(bundle: Any, cfg: ZeroShotConfig, ctx: EvalContext) -> EvalResult:
    data = embed_labeled(bundle, cfg.data, cfg.image_root, ctx, f"{cfg.name}: images")
    names = assign_classnames(
        LabeledImages([], [], data.classes), load_classnames(cfg.classnames, cfg.dataset_name, data.classes),
        cfg.classnames or cfg.data)
    templates = load_templates(cfg.templates, cfg.dataset_name)
    weights = class_embeddings(bundle, names, templates)  # (C, D)
    logits = data.x @ weights.t()  # (N, C)
    metrics = classification_metrics(logits, data.y, len(names))
    metrics.update(num_images=len(data.y), num_classes=len(names), num_templates=len(templates),
                   skipped_images=len(data.skipped))
    plot = _confusion_plot(logits, data.y, names, f"{cfg.name}: zero-shot top-1 {metrics['top1']:.1f}%")
    return EvalResult(cfg.name, "zeroshot", metrics, _info(cfg, data.skipped), plot=plot)


# -- linear probe ---------------------------------------------------------------------------------
def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                 max_iter: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression: mean cross-entropy + weight_decay/2 * |W|^2, full-batch L-BFGS."""
    torch.manual_seed(0)
    clf = torch.nn.Linear(x.shape[1], n_classes).double()
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    xd = x.double()
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(clf(xd), y) + 0.5 * weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return clf


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): ``fraction`` of each class (at least one if it has two or more) to val."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train), torch.cat(val)


def sweep_weight_decay(tr: Embedded, va_x: torch.Tensor, va_y: torch.Tensor, n_classes: int,
                       cfg: LinearProbeConfig) -> dict[float, float]:
    """Validation top-1 for each weight decay."""
    scores = {}
    for wd in cfg.weight_decays:
        clf = fit_logistic(tr.x, tr.y, n_classes, wd, cfg.max_iter)
        with torch.no_grad():
            scores[wd] = 100.0 * float((clf(va_x.double()).argmax(1) == va_y).float().mean())
    return scores


def _sweep_plot(scores: dict[float, float], best: float, title: str):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt  # lazy: called by evals.base._draw after it selects Agg

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(list(scores), list(scores.values()), marker="o")
        ax.axvline(best, color="grey", linestyle="--", label=f"chosen {best:g}")
        ax.set_xscale("log")
        ax.set_xlabel("L2 weight decay")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    return draw


@register_evaluator("linear_probe", LinearProbeConfig)
def run_linear_probe(bundle: Any, cfg: LinearProbeConfig, ctx: EvalContext) -> EvalResult:
    train = embed_labeled(bundle, cfg.train, cfg.image_root, ctx, f"{cfg.name}: train")
    test = embed_labeled(bundle, cfg.test, cfg.image_root, ctx, f"{cfg.name}: test")
    _check_same_classes(train, test, cfg.train, cfg.test)
    n_classes = len(train.classes)
    if cfg.val:
        val = embed_labeled(bundle, cfg.val, cfg.image_root, ctx, f"{cfg.name}: val")
        _check_same_classes(train, val, cfg.train, cfg.val)
        fit, va_x, va_y = train, val.x, val.y
    else:
        tr_idx, va_idx = stratified_split(train.y, cfg.val_fraction, cfg.seed)
        fit = Embedded(train.x[tr_idx], train.y[tr_idx], train.classes, [])
        va_x, va_y = train.x[va_idx], train.y[va_idx]
    scores = sweep_weight_decay(fit, va_x, va_y, n_classes, cfg)
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties: the stronger regulariser
    clf = fit_logistic(torch.cat([fit.x, va_x]), torch.cat([fit.y, va_y]), n_classes, best, cfg.max_iter)
    with torch.no_grad():
        logits = clf(test.x.double()).float()
    metrics = classification_metrics(logits, test.y, n_classes)
    metrics.update(best_weight_decay=best, val_top1=scores[best], num_train=len(fit.y) + len(va_y),
                   num_test=len(test.y), num_classes=n_classes,
                   skipped_images=len(train.skipped) + len(test.skipped))
    info = _info(cfg, train.skipped + test.skipped, sweep={str(k): v for k, v in scores.items()})
    plot = _sweep_plot(scores, best, f"{cfg.name}: test top-1 {metrics['top1']:.1f}%")
    return EvalResult(cfg.name, "linear_probe", metrics, info, plot=plot)


def _check_same_classes(a: Embedded, b: Embedded, src_a: str, src_b: str) -> None:
    if a.classes != b.classes:
        raise UserError(f"{src_b}: classes differ from {src_a} ({len(b.classes)} vs {len(a.classes)}); "
                        "both splits need the same class folders/labels")


# -- kNN ------------------------------------------------------------------------------------------
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 1,
                n_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """(N,) predictions: majority label of the k most cosine-similar train rows (ties: the nearer)."""
    n_classes = n_classes or int(train_y.max()) + 1
    tr = F.normalize(train_x.float(), dim=-1)
    preds = []
    for i in range(0, len(test_x), chunk):
        sims = F.normalize(test_x[i : i + chunk].float(), dim=-1) @ tr.t()  # (B, N_train)
        top = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k] if k > 1 else sims.argmax(1)[:, None]
        labels = train_y[top]  # (B, k)
        # votes, with a small bonus for rank so that ties go to the nearer neighbour
        bonus = torch.linspace(1e-3, 0, k)[None, :].expand_as(labels)
        votes = torch.zeros(len(labels), n_classes).scatter_add_(1, labels, 1 + bonus)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


@register_evaluator("knn", KnnConfig)
def run_knn(bundle: Any, cfg: KnnConfig, ctx: EvalContext) -> EvalResult:
    if cfg.k < 1:
        raise UserError(f"knn config: k={cfg.k}; k must be at least 1")
    train = embed_labeled(bundle, cfg.train, cfg.image_root, ctx, f"{cfg.name}: train")
    test = embed_labeled(bundle, cfg.test, cfg.image_root, ctx, f"{cfg.name}: test")
    _check_same_classes(train, test, cfg.train, cfg.test)
    n = len(train.classes)
    pred = knn_predict(train.x, train.y, test.x, cfg.k, n)
    recalls = [float((pred[test.y == c] == c).float().mean()) for c in range(n) if (test.y == c).any()]
    metrics = {"top1": 100.0 * float((pred == test.y).float().mean()),
               "mean_per_class_recall": 100.0 * sum(recalls) / len(recalls), "k": cfg.k,
               "num_train": len(train.y), "num_test": len(test.y), "num_classes": n,
               "skipped_images": len(train.skipped) + len(test.skipped)}
    plot = _confusion_plot(F.one_hot(pred, n).float(), test.y, train.classes, f"{cfg.name}: kNN top-1 "
                           f"{metrics['top1']:.1f}%")
    return EvalResult(cfg.name, "knn", metrics, _info(cfg, train.skipped + test.skipped), plot=plot)
