"""Zero-shot image-text retrieval on a Karpathy-split JSON (Flickr30K 1K test, MSCOCO 5K test).

I2T and T2I R@1/5/10 and their mean with CLIP_benchmark's definitions, computed by
:mod:`openalign.evals.metrics` (the one R@K module). Unreadable images are skipped with their
captions and counted in the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openalign.errors import UserError
from openalign.evals.base import (
    EvalContext,
    EvalResult,
    register_evaluator,
    run_evaluation,
)
from openalign.evals.metrics import retrieval_metrics
from openalign.media.karpathy import KarpathySplit, read_karpathy
from openalign.models.bundle import load_bundle
from openalign.models.embed import embed_image_files

KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalConfig:
    karpathy_json: str
    image_root: str
    split: str = "test"
    name: str = "retrieval"


def _drop_failed(data: KarpathySplit, ok: list[bool]) -> KarpathySplit:
    """Remove unreadable images and their captions, renumbering the rest."""
    new_index, kept = {}, []
    for i, good in enumerate(ok):
        if good:
            new_index[i] = len(kept)
            kept.append(data.image_paths[i])
    texts, t2i = [], []
    for text, img in zip(data.texts, data.text_to_image):
        if img in new_index:
            texts.append(text)
            t2i.append(new_index[img])
    return KarpathySplit(kept, texts, t2i)


def retrieval_markdown(m: dict[str, float]) -> str:
    rows = ["| direction | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|"]
    for label, key in (("image → text", "image_to_text"), ("text → image", "text_to_image")):
        rows.append(f"| {label} | " + " | ".join(f"{m[f'{key}_R@{k}']:.2f}" for k in KS) + " |")
    return "\n".join(rows) + f"\n\nMean recall: **{m['mean_recall']:.2f}** " \
        f"({int(m['num_images'])} images, {int(m['num_texts'])} captions)\n"


def _plot(metrics: dict[str, float]):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt  # lazy: called by evals.base._draw after it selects Agg

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for offset, (label, key) in zip((-0.2, 0.2), (("image → text", "image_to_text"),
                                                      ("text → image", "text_to_image"))):
            vals = [metrics[f"{key}_R@{k}"] for k in KS]
            bars = ax.bar([i + offset for i in range(len(KS))], vals, width=0.4, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(KS)), [f"R@{k}" for k in KS])
        ax.set_ylim(0, 105)
        ax.set_ylabel("recall (%)")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    return draw


@register_evaluator("retrieval", RetrievalConfig)
def run_retrieval(bundle: Any, cfg: RetrievalConfig, ctx: EvalContext) -> EvalResult:
    data = read_karpathy(cfg.karpathy_json, cfg.image_root, cfg.split)
    images = embed_image_files(bundle, data.image_paths, ctx.batch_size, ctx.workers, ctx.progress,
                               ctx.cache_dir, desc=f"{cfg.name}: images")
    kept = _drop_failed(data, images.ok.tolist())
    if not kept.image_paths:
        raise UserError(f"{cfg.karpathy_json}: none of the {len(data.image_paths)} images could be read")
    text_emb = bundle.encode_texts(kept.texts, batch_size=max(ctx.batch_size, 256))
    metrics = retrieval_metrics(images.embeddings[images.ok], text_emb, kept.text_to_image, KS)
    metrics.update(num_images=len(kept.image_paths), num_texts=len(kept.texts),
                   skipped_images=images.num_failed)
    info = {"config": asdict(cfg), "skipped_images": images.num_failed, "skipped_files": images.failed,
            "embeddings_from_cache": images.from_cache}
    return EvalResult(cfg.name, "retrieval", metrics, info, retrieval_markdown(metrics), _plot(metrics))


def resolve_bundle(bundle_or_model_dir: Any, device: str = "cpu") -> Any:
    """A ModelBundle as is, or load one from a model directory (ours or the align-base layout)."""
    if not isinstance(bundle_or_model_dir, (str, Path)):
        return bundle_or_model_dir

    path = Path(bundle_or_model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; pass --model with a directory written by `openalign train` "
                        "or a downloaded kakaobrain/align-base folder")
    return load_bundle(path, device=device)


def evaluate_retrieval(
    bundle_or_model_dir: Any,
    karpathy_json: str | Path,
    image_root: str | Path,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """R@1/5/10 both ways + ``mean_recall``, ``num_images``, ``num_texts``, ``skipped_images``."""
    bundle = resolve_bundle(bundle_or_model_dir)
    cfg = RetrievalConfig(karpathy_json=str(karpathy_json), image_root=str(image_root), split=split)
    ctx = EvalContext(batch_size=batch_size, workers=workers, cache_dir=str(cache_dir) if cache_dir else None,
                      progress=progress)
    return run_evaluation(bundle, "retrieval", cfg, ctx).metrics
