"""Fine-tuning a pretrained dual encoder the paper's way (ALIGN, Tables 1 and 5).

Retrieval (Flickr30K / MSCOCO): the contrastive recipe again, from a pretrained directory, on the
captions of a Karpathy split's ``train`` images (the paper: batch 2048, lr 1e-5, 3k steps on
Flickr30K, 6k on MSCOCO). Each (image, caption) pair becomes one sample of WebDataset shards
written once under ``out/shards`` (images resized to the preset's train resize), and the ordinary
trainer runs on them, so checkpoints, ``--resume``, torchrun and every TrainConfig option work.

Classification (ImageNet): the image tower plus a linear head on a labelled set, in two stages as
the paper: first the head alone on frozen features (SGD momentum 0.9, lr 0.1), then all layers
(lr 0.01, the tower's 10x smaller). Both stages decay their learning rate on a cosine (the paper's
epoch-based step schedule is not reproduced). BatchNorm statistics stay frozen by default: the
small fine-tuning batches of a single machine would wreck the pretrained running averages.

Both write a model directory that loads as every other (plain ``AlignModel.from_pretrained``);
classification adds ``classifier.safetensors`` (the head) and ``classes.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from openalign.config import apply_overrides, write_json_atomic
from openalign.errors import UserError
from openalign.io import atomic_write_with
from openalign.media.images import DECODE_ERRORS, open_image, to_rgb
from openalign.media.karpathy import KarpathySplit, read_karpathy
from openalign.media.labeled import LabeledImages, read_labeled
from openalign.models.dual_encoder import DualEncoder
from openalign.models.preprocess import ImageTransform, normalize_pixels
from openalign.models.tokenizer import load_tokenizer
from openalign.train.config import TrainConfig
from openalign.train.loop import TrainResult, train

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.safetensors"
CLASSES_FILE = "classes.json"
SHARDS_MANIFEST = "finetune_shards.json"


def _load_init(init: str) -> DualEncoder:
    path = Path(init)
    if not (path / "config.json").is_file():
        raise UserError(f"--init {init}: no config.json there; pass a model directory written by `openalign train` "
                        "or a downloaded kakaobrain/align-base folder")
    return DualEncoder.from_pretrained(path)


# ---------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievalFinetuneConfig:
    init: str  # pretrained model directory (ours or the align-base layout); its tokenizer is used
    karpathy_json: str  # Karpathy-split JSON (dataset_flickr30k.json, dataset_coco.json)
    image_root: str  # folder the JSON's filepath/filename are relative to
    split: str = "train"  # the paper fine-tunes on the train split (MSCOCO: train + restval)
    out: str = "runs/finetune-retrieval"
    steps: int = 3000  # the paper: 3k on Flickr30K, 6k on MSCOCO
    batch_size: int = 2048  # the paper's fine-tuning batch (global, all processes)
    micro_batch_size: int | None = None
    lr: float = 1e-5  # the paper
    warmup_steps: int = 300  # not stated by the paper: 10% of the steps
    shard_size: int = 5000  # pairs per written shard
    workers: int = 2
    threads: int | None = None
    bf16: bool = False
    seed: int = 0
    train_set: tuple[str, ...] = ()  # more TrainConfig overrides as key=value (e.g. grad_clip=1.0)


def write_pair_shards(data: KarpathySplit, out_dir: Path, resize: int, shard_size: int,
                      progress: bool = True) -> tuple[str, dict[str, int]]:
    """One sample per (image, caption) pair; returns the brace pattern and counts. Written once:
    a manifest with the inputs' digest makes a second call (a resumed run) reuse the shards."""
    digest = hashlib.sha256(json.dumps([data.image_paths, data.texts, data.text_to_image, resize, shard_size])
                            .encode()).hexdigest()[:16]
    manifest = out_dir / SHARDS_MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("digest") == digest:
            return saved["pattern"], saved["counts"]
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[int, bytes | None] = {}
    counts = {"pairs": 0, "unreadable_image": 0}
    pairs = list(zip(data.texts, data.text_to_image))
    n_shards = max(1, math.ceil(len(pairs) / shard_size))
    with tqdm(total=len(pairs), desc="finetune shards", unit=" pair", disable=not progress) as bar:
        for s in range(n_shards):
            chunk = pairs[s * shard_size:(s + 1) * shard_size]
            samples = []
            for j, (text, img) in enumerate(chunk):
                if img not in images:
                    images[img] = _jpeg(data.image_paths[img], resize)
                if images[img] is None:
                    counts["unreadable_image"] += 1
                    continue
                samples.append({"__key__": f"{s:05d}{j:06d}", "jpg": images[img], "txt": text.encode("utf-8")})
            atomic_write_with(out_dir / f"{s:05d}.tar", lambda tmp, ss=samples: _write_samples(tmp, ss))
            counts["pairs"] += len(samples)
            bar.update(len(chunk))
    if counts["pairs"] == 0:
        raise UserError(f"{data.image_paths[0]}: no readable image in the split; check --image-root")
    pattern = str(out_dir / ("{00000..%05d}.tar" % (n_shards - 1)))
    write_json_atomic(manifest, {"digest": digest, "pattern": pattern, "counts": counts})
    return pattern, counts


def _jpeg(path: str, resize: int) -> bytes | None:
    """The image with its shorter side at ``resize`` (the trainer squash-resizes and crops it)."""
    try:
        img = to_rgb(open_image(path))
    except DECODE_ERRORS:
        return None
    scale = resize / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_samples(path: str, samples: list[dict[str, Any]]) -> None:
    with wds.TarWriter(path) as sink:
        for s in samples:
            sink.write(s)


def finetune_retrieval(cfg: RetrievalFinetuneConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Contrastive fine-tuning on a Karpathy split's captions; the model lands in ``out/model``."""
    model = _load_init(cfg.init)
    preset = model.preset
    data = read_karpathy(cfg.karpathy_json, cfg.image_root, cfg.split)
    resize = preset.resize_size if preset is not None else 346  # align-base: 346 -> 289
    pattern, counts = write_pair_shards(data, Path(cfg.out) / "shards", resize, cfg.shard_size, progress)
    log.info("fine-tuning on %d pairs of %d images", counts["pairs"], len(data.image_paths))
    tcfg = TrainConfig(shards=pattern, tokenizer=cfg.init, out=cfg.out, init=cfg.init,
                       preset=preset.name if preset is not None else "b7-base", steps=cfg.steps,
                       batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, lr=cfg.lr,
                       warmup_steps=cfg.warmup_steps, workers=cfg.workers, threads=cfg.threads, bf16=cfg.bf16,
                       seed=cfg.seed, shuffle_buffer=min(1000, counts["pairs"]))
    try:
        tcfg = apply_overrides(tcfg, list(cfg.train_set))
    except ValueError as exc:
        raise UserError(f"--train-set: {exc}") from None
    return train(tcfg, resume=resume)


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassifyFinetuneConfig:
    init: str  # pretrained model directory
    train: str  # ImageFolder tree (root/<class>/<image>) or CSV path,label
    image_root: str | None = None  # CSV paths are relative to this (default: the CSV's folder)
    out: str = "runs/finetune-classify"
    head_steps: int = 500  # stage 1: the linear head on frozen features
    steps: int = 1000  # stage 2: all layers
    batch_size: int = 1024  # the paper's
    head_lr: float = 0.1  # the paper, frozen features
    lr: float = 0.01  # the paper, all layers (the head's rate)
    backbone_lr_scale: float = 0.1  # the paper: a 10x smaller rate on the image tower
    momentum: float = 0.9
    weight_decay: float = 0.0  # the paper: none
    label_smoothing: float = 0.0
    freeze_bn: bool = True  # keep the pretrained BatchNorm running statistics
    workers: int = 2
    threads: int | None = None
    seed: int = 0
    log_every: int = 10


class _LabeledDataset(torch.utils.data.Dataset):
    def __init__(self, data: LabeledImages, transform: ImageTransform, seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{i}")  # augmentation replays for a given seed
        try:
            return self.transform(open_image(self.data.paths[i]), rng), self.data.labels[i]
        except DECODE_ERRORS:
            return torch.zeros(3, self.transform.size, self.transform.size, dtype=torch.uint8), -1


class ImageClassifier(nn.Module):
    """The dual encoder's image tower (pooled features, as the paper) + one linear layer."""

    def __init__(self, encoder: DualEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.image_features(normalize_pixels(pixel_values)).float())  # (B, classes)

    def tower_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.align.vision_model.parameters()] + (
            list(self.encoder.image_projection.parameters()) if self.encoder.image_projection is not None else [])


def _batches(ds: _LabeledDataset, batch_size: int, workers: int, seed: int) -> Any:
    """Endless shuffled batches, epoch after epoch (each epoch reseeds its order and augmentation)."""
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + ds.epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=False,
                                             num_workers=workers, generator=gen)
        yield from loader
        ds.epoch += 1


def _set_train_mode(clf: ImageClassifier, tower: bool, freeze_bn: bool) -> None:
    clf.train()
    if not tower:
        clf.encoder.eval()  # frozen features: eval-mode BatchNorm and no dropout
    elif freeze_bn:
        for m in clf.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _stage(clf: ImageClassifier, batches: Any, steps: int, groups: list[dict], cfg: ClassifyFinetuneConfig,
           tower: bool, name: str, log_row: Callable[[dict], None]) -> None:
    if steps <= 0:
        return
    for p in clf.tower_parameters():
        p.requires_grad_(tower)
    opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, ignore_index=-1)
    _set_train_mode(clf, tower, cfg.freeze_bn)
    with tqdm(total=steps, desc=name, disable=False) as bar:
        for step in range(steps):
            pixels, labels = next(batches)  # (B, 3, H, W) uint8, (B,)
            loss = loss_fn(clf(pixels), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                log_row({"stage": name, "step": step + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0]})


def finetune_classify(cfg: ClassifyFinetuneConfig) -> Path:
    """Two-stage fine-tuning; returns the output directory (``model/``, head, classes)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    encoder = _load_init(cfg.init)
    data = read_labeled(cfg.train, cfg.image_root)
    preset = encoder.preset
    size, resize = (preset.image_size, preset.resize_size) if preset is not None else (289, 346)
    ds = _LabeledDataset(data, ImageTransform(size=size, resize=resize, train=True, uint8=True), cfg.seed)
    clf = ImageClassifier(encoder, len(data.classes))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)

    def log_row(row: dict) -> None:
        with open(metrics, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    batches = _batches(ds, cfg.batch_size, cfg.workers, cfg.seed)
    head = list(clf.head.parameters())
    _stage(clf, batches, cfg.head_steps, [{"params": head, "lr": cfg.head_lr}], cfg, False, "head", log_row)
    _stage(clf, batches, cfg.steps, [{"params": head, "lr": cfg.lr},
                                     {"params": clf.tower_parameters(), "lr": cfg.lr * cfg.backbone_lr_scale}],
           cfg, True, "all layers", log_row)
    clf.eval()
    tokenizer = load_tokenizer(cfg.init)
    encoder.save_pretrained(out / "model", tokenizer=tokenizer,
                            summary={"finetune": "classify", "config": asdict(cfg), "classes": len(data.classes)})
    head_state = {k: v.detach().contiguous() for k, v in clf.head.state_dict().items()}
    atomic_write_with(out / CLASSIFIER_FILE, lambda tmp: save_file(head_state, tmp))
    write_json_atomic(out / CLASSES_FILE, data.classes)
    return out


def load_classifier(out_dir: str | Path) -> tuple[ImageClassifier, list[str]]:
    """A fine-tuned classifier back from its folder (safetensors only, no pickle)."""
    out = Path(out_dir)
    classes = json.loads((out / CLASSES_FILE).read_text())
    clf = ImageClassifier(DualEncoder.from_pretrained(out / "model"), len(classes))
    clf.head.load_state_dict(load_file(str(out / CLASSIFIER_FILE)))
    return clf.eval(), classes


@torch.inference_mode()
def classify_accuracy(clf: ImageClassifier, data: LabeledImages, batch_size: int = 64) -> float:
    """Top-1 accuracy in percent of a fine-tuned classifier on a labelled set (eval transform)."""
    preset = clf.encoder.preset
    size, resize = (preset.image_size, preset.resize_size) if preset is not None else (289, 346)
    ds = _LabeledDataset(data, ImageTransform(size=size, resize=resize, train=False, uint8=True), 0)
    correct = total = 0
    for pixels, labels in torch.utils.data.DataLoader(ds, batch_size=batch_size):
        keep = labels >= 0
        pred = clf(pixels[keep]).argmax(1)
        correct += int((pred == labels[keep]).sum())
        total += int(keep.sum())
    return 100.0 * correct / max(1, total)


__all__ = ["RetrievalFinetuneConfig", "ClassifyFinetuneConfig", "finetune_retrieval", "finetune_classify",
           "load_classifier", "classify_accuracy", "write_pair_shards"]
