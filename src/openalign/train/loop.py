"""The training driver: data -> steps -> logs -> checkpoints -> final model.

Works for one process and under torchrun (each process reads its own part of the shards and
computes its rows of the global-batch loss). ``--resume`` continues exactly from the newest
valid checkpoint. The optimizer step itself lives in ``openalign.train.step``.

A :class:`Trainer` is assembled from parts -- model, optimizer, schedule, step spec, process
info, tokenizer -- each built from the ``TrainConfig`` unless given::

    Trainer(cfg)                                             # what ``train(cfg)`` runs
    Trainer(cfg, DistInfo(), model=build_model(cfg, 4096))   # no tokenizer or shards: one_step only
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from openalign.config import to_dict, write_json_atomic
from openalign.errors import UserError
from openalign.io import atomic_write_text
from openalign.media.shards import resolve_shards
from openalign.models.dual_encoder import DualEncoder
from openalign.models.preprocess import transform_for
from openalign.models.presets import get_preset
from openalign.models.tokenizer import load_tokenizer
from openalign.train import checkpoint as ckpt
from openalign.train.config import TrainConfig
from openalign.train.data import ShardStream, make_loader
from openalign.train.distributed import DistInfo, barrier, init_distributed
from openalign.train.optim import build_optimizer, build_schedule
from openalign.train.step import StepSpec, train_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    samples_per_s: float = 0.0

    @property
    def bad_samples(self) -> dict[str, int]:
        """Skip counts by reason (corrupt image, empty caption, broken shard...), without the read count."""
        return _bad_samples(self.skipped)


def _bad_samples(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k != "samples_read" and v}


def build_model(cfg: TrainConfig, vocab_size: int) -> DualEncoder:
    if cfg.init:
        model = DualEncoder.from_pretrained(cfg.init)
    else:
        preset = get_preset(cfg.preset).with_towers(cfg.image_tower, cfg.text_tower, cfg.image_size)
        preset = preset.with_(embed_dim=cfg.embed_dim, temperature_init=cfg.temperature_init)
        if cfg.text_init_std is not None:
            preset = preset.with_(text_init_std=cfg.text_init_std)
        model = DualEncoder.from_preset(preset, vocab_size=vocab_size, seed=cfg.seed)
    if cfg.fixed_temperature is not None:
        model.temperature.data.fill_(cfg.fixed_temperature)
        model.temperature.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.align.text_model.gradient_checkpointing_enable()
        _checkpoint_vision_blocks(model)
    if cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model.align.vision_model.to(memory_format=torch.channels_last)
    return model


def _checkpoint_vision_blocks(model: DualEncoder) -> None:
    """Recompute each EfficientNet block in backward (transformers supports it only for BERT)."""
    for block in model.align.vision_model.encoder.blocks:
        fwd = block.forward
        block.forward = lambda h, _f=fwd: checkpoint(_f, h, use_reentrant=False) if torch.is_grad_enabled() else _f(h)


def _check_data(cfg: TrainConfig, need_tokenizer: bool) -> None:
    if not cfg.shards:
        raise UserError("train: no shards given; pass --shards 'DIR/{00000..00009}.tar' (img2dataset layout)")
    resolve_shards(cfg.shards)  # a pattern that names missing files fails here, naming the first
    if need_tokenizer and not cfg.tokenizer:
        raise UserError("train: no tokenizer given; pass --tokenizer DIR (from `openalign tokenizer train`)")
    if need_tokenizer and not (Path(cfg.tokenizer) / "tokenizer_config.json").is_file() \
            and not (Path(cfg.tokenizer) / "vocab.txt").is_file():
        raise UserError(f"--tokenizer {cfg.tokenizer}: no tokenizer_config.json or vocab.txt there; "
                        "pass the folder written by `openalign tokenizer train` (or a model directory)")


def default_threads() -> int:
    """This process's share of the usable cores, minus one for data workers and neighbours (>= 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, local) - 1)


# Fields that decide which sample each reader reads at which position: a checkpoint's data
# positions only mean something with the same values (they are checked on --resume).
DATA_FIELDS = ("shards", "seed", "workers", "shuffle_buffer", "batch_size")


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    """Refuse to resume with data settings that would silently misalign the saved positions."""
    for name in DATA_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{where}: this run was started with {name}={saved[name]!r}, resumed with "
                            f"{getattr(cfg, name)!r}; the saved data positions only hold for the same value: "
                            f"resume with {flag} {saved[name]} or start a new run in another --out")


def _local_batch(cfg: TrainConfig, info: DistInfo) -> int:
    """The per-process batch, after checking that the global batch splits into processes and micro-batches."""
    if cfg.batch_size % info.world_size:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by {info.world_size} processes")
    local = cfg.batch_size // info.world_size
    micro = cfg.micro_batch_size or local
    if local % micro:
        raise UserError(f"per-process batch {local} is not a multiple of micro_batch_size={micro}")
    return local


class Trainer:
    """Steps, logs, checkpoints and the final model of one run, assembled from parts.

    Every part not given is built from ``cfg`` exactly as ``train(cfg)`` builds it:

    * ``info``: from the torchrun environment (``init_distributed``);
    * ``model`` and ``tokenizer``: without a model, the tokenizer is loaded from ``cfg.tokenizer``
      (shards and tokenizer are then required) and the model built with its vocabulary; with a
      model, the tokenizer is optional (only ``loader``/``run`` and the saved model need it);
    * ``optimizer`` (over the model's parameters), ``scheduler`` (over the optimizer), ``spec``.

    The model is moved to ``info.device`` and put in train mode before an optimizer is built
    (a given optimizer must already hold the model's parameters on that device).
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo | None = None, *, model: DualEncoder | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, spec: StepSpec | None = None,
                 tokenizer: Any = None):
        self.cfg = cfg
        self.info = info or init_distributed()
        if self.info.device == "cpu" or cfg.threads:
            torch.set_num_threads(cfg.threads or default_threads())
        if model is None:
            _check_data(cfg, need_tokenizer=tokenizer is None)
        self.local_batch = _local_batch(cfg, self.info)
        self.run_dir = Path(cfg.out)
        if model is None:
            if tokenizer is None:
                tokenizer = load_tokenizer(cfg.tokenizer, max_length=get_preset(cfg.preset).max_text_len)
            model = build_model(cfg, vocab_size=len(tokenizer))
        self.tokenizer = tokenizer
        self.model = model.to(self.info.device)
        self.model.train()
        if optimizer is None:
            optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.temperature_lr,
                                        cfg.text_lr_scale)
        self.optimizer = optimizer
        self.scheduler = build_schedule(optimizer, cfg.warmup_steps, cfg.steps) if scheduler is None else scheduler
        self.spec = StepSpec.from_config(cfg, self.info) if spec is None else spec
        self.step = 0
        self.elapsed = 0.0
        self.positions: dict[int, int] = {}  # data reader -> raw position consumed
        self.batches_seen = 0
        self.skipped: Counter = Counter()
        self._fwd = torch.compile(self.model) if cfg.compile else self.model
        self._writer: SummaryWriter | None = None

    # -- state ---------------------------------------------------------------------------------
    def resume(self) -> bool:
        path = ckpt.find_latest_valid(self.run_dir / "checkpoints")
        if path is None:
            log.info("no valid checkpoint in %s: starting from scratch", self.run_dir / "checkpoints")
            return False
        saved_cfg = self.run_dir / "config.json"
        if saved_cfg.is_file():
            check_resume_config(json.loads(saved_cfg.read_text()).get("train", {}), self.cfg, saved_cfg)
        state = ckpt.load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        tr = state["trainer"]
        self.elapsed, self.batches_seen = tr["elapsed"], tr["batches_seen"]
        self.skipped = Counter(tr["skipped"])
        if len(state["ranks"]) != self.info.world_size:
            raise UserError(f"{path}: saved by {len(state['ranks'])} processes, resumed with "
                            f"{self.info.world_size}; resume with the same number of processes")
        mine = state["ranks"][self.info.rank]
        self.positions = {int(k): v for k, v in mine["data"]["positions"].items()}
        ckpt.set_rng_state(mine["rng_tensors"], mine["rng"])
        if self.info.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def save(self) -> None:
        rng_t, rng_m = ckpt.rng_state()
        mine = {"rng_tensors": rng_t, "rng_meta": rng_m,
                "data": {"positions": {str(k): v for k, v in self.positions.items()}}}
        ranks = _gather_objects(mine, self.info)
        if self.info.is_main:
            trainer_state = {"elapsed": self.elapsed, "batches_seen": self.batches_seen, "skipped": dict(self.skipped)}
            ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.optimizer, self.scheduler,
                                 trainer_state, ranks, keep=self.cfg.keep_checkpoints)
        barrier(self.info)

    # -- data ----------------------------------------------------------------------------------
    def loader(self) -> torch.utils.data.DataLoader:
        if self.tokenizer is None:
            raise UserError("train: this Trainer has no tokenizer; pass tokenizer= to read shards")
        preset = self.model.preset or get_preset(self.cfg.preset)
        stream = ShardStream(
            urls=resolve_shards(self.cfg.shards), batch_size=self.local_batch,
            transform=transform_for(preset, train=True, uint8=True), tokenizer=self.tokenizer,
            max_text_len=preset.max_text_len, seed=self.cfg.seed, rank=self.info.rank,
            world_size=self.info.world_size, num_workers=self.cfg.workers, shuffle_buffer=self.cfg.shuffle_buffer,
            start_positions=dict(self.positions),
            worker_offset=self.batches_seen % max(1, self.cfg.workers),
        )
        return make_loader(stream)

    # -- loop ----------------------------------------------------------------------------------
    def one_step(self, batch: dict) -> dict[str, float]:
        """One optimizer update (``train_step``) on this process's batch; advances ``self.step``."""
        metrics = train_step(self.model, self.optimizer, self.scheduler, batch, self.step, self.spec, forward=self._fwd)
        self.step += 1
        return metrics

    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", {"train": to_dict(cfg), "world_size": info.world_size,
                                                            "model_preset": asdict(self.model.preset) if self.model.preset else None})
        losses: list[float] = []
        deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not info.is_main, desc="train", dynamic_ncols=True)
        t_window, n_window = time.monotonic(), 0
        last_ckpt = self.step
        it = iter(self.loader()) if self.step < cfg.steps else iter(())
        while self.step < cfg.steps and time.monotonic() < deadline:
            t0 = time.monotonic()
            batch = _next_batch(it)
            self._account(batch.pop("state"))
            metrics = self.one_step(batch)
            self.elapsed += time.monotonic() - t0
            losses.append(metrics["loss"])
            n_window += cfg.batch_size
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                metrics["samples_per_s"] = n_window / max(1e-9, time.monotonic() - t_window)
                t_window, n_window = time.monotonic(), 0
                self._log(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", T=f"{metrics['temperature']:.4f}",
                                sps=f"{metrics['samples_per_s']:.0f}")
            bar.update(1)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save()
                last_ckpt = self.step
        bar.close()
        if last_ckpt != self.step:
            self.save()
        return self.finish(losses)

    def _account(self, state: dict) -> None:
        self.positions[state["reader"]] = state["position"]
        self.skipped.update(state["counts"])
        self.batches_seen += 1

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        row = {"step": self.step, **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._writer is None:  # created on the first log: no empty event file for runs that log nothing
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for k, v in metrics.items():
            self._writer.add_scalar(f"train/{k}", v, self.step)

    def finish(self, losses: list[float]) -> TrainResult:
        skipped = _sum_counters(self.skipped, self.info)
        sps = self.cfg.batch_size * self.step / max(1e-9, self.elapsed)
        model_dir = self.run_dir / "model"
        if self.info.is_main:
            if self._writer is not None:
                self._writer.close()
            bad = _bad_samples(skipped)
            summary = {"steps": self.step, "batch_size": self.cfg.batch_size, "samples_seen": self.step * self.cfg.batch_size,
                       "final_loss": losses[-1] if losses else None, "temperature": self.model.temperature.item(),
                       "skipped": bad, "samples_read": skipped.get("samples_read", 0), "train_seconds": self.elapsed}
            self.model.save_pretrained(model_dir, tokenizer=self.tokenizer, summary=summary)
            write_json_atomic(self.run_dir / "summary.json", summary)
            log.info("skipped samples: %s (of %d read)", bad or "none", skipped.get("samples_read", 0))
        barrier(self.info)
        return TrainResult(self.run_dir, model_dir, self.step, losses, dict(skipped), sps)


def _next_batch(it: Any) -> dict:
    """The next batch; a UserError raised in a DataLoader worker comes back wrapped in the worker's
    traceback: keep its one line."""
    try:
        return next(it)
    except UserError as exc:
        text = str(exc).strip()
        raise UserError(text.rsplit("UserError: ", 1)[-1].strip() if "Traceback" in text else text) from None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again), and
    rows a crash tore mid-write (not JSON, or without a step)."""
    if not path.is_file():
        return
    keep, torn = [], 0
    for ln in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(ln)
            row_step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            torn += int(bool(ln.strip()))
            continue
        if row_step <= step:
            keep.append(ln)
    if torn:
        log.warning("%s: dropped %d torn line(s) left by an interrupted write", path, torn)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _sum_counters(c: Counter, info: DistInfo) -> Counter:
    total = Counter()
    for part in _gather_objects(dict(c), info):
        total.update(part)
    return total


def train(cfg: TrainConfig, resume: bool = False, info: DistInfo | None = None) -> TrainResult:
    trainer = Trainer(cfg, info)
    if resume:
        trainer.resume()
    return trainer.run()


__all__ = ["TrainResult", "Trainer", "build_model", "train"]
