"""Training configuration: one frozen dataclass, the paper's recipe as defaults, ``key=value`` overrides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    # data and model
    shards: str = ""  # brace pattern(s) of WebDataset shards, joined by '::'
    tokenizer: str = ""  # tokenizer directory (ours from `openalign tokenizer train`, or any BERT one)
    out: str = "runs/align"  # run directory
    preset: str = "tiny"
    embed_dim: int | None = None  # None = the image tower's native width (a plain AlignModel)
    image_tower: str | None = None  # efficientnet-b0..b7 | efficientnet-l2; None = the preset's
    text_tower: str | None = None  # bert-mini | bert-small | bert-medium | bert-base | bert-large; None = preset
    image_size: int | None = None  # training crop in px (the paper: 289 from 346); None = the preset's
    text_init_std: float | None = None  # std of the text tower's initial weights; None = the preset's (BERT: 0.02)
    init: str | None = None  # fine-tune from this model directory (ours or the align-base layout)
    # schedule (the paper: batch 16,384, lr 1e-3, 10k warm-up steps, linear decay to 0, LAMB, wd 1e-5)
    steps: int = 1000
    max_minutes: float | None = None
    batch_size: int = 16384  # GLOBAL contrastive batch (all processes, all micro-batches)
    micro_batch_size: int | None = None  # per forward pass; None = the whole per-process batch
    lr: float = 1e-3
    warmup_steps: int = 10000
    optimizer: str = "lamb"  # lamb | adamw
    weight_decay: float = 1e-5
    grad_clip: float | None = None
    # loss (the paper: learnable temperature from 1.0, label smoothing 0.1, sum of both directions)
    temperature_init: float = 1.0
    fixed_temperature: float | None = None  # set to freeze the temperature (Table 8 ablation)
    temperature_lr: float | None = None  # None = lr (the paper); short runs learn it faster with more
    # the text tower's learning rate as a share of lr (1 = the paper: one rate for both towers; 0 locks it)
    text_lr_scale: float = 1.0
    min_temperature: float = 1e-3  # the learnable temperature is clamped to stay positive
    label_smoothing: float = 0.1
    negatives_fraction: float = 1.0  # share of the global batch used as negatives (Table 8 ablation)
    # performance
    bf16: bool = False
    grad_checkpointing: bool = False
    channels_last: bool = True  # 1.3-1.5x faster steps on CPU (bench/train_throughput.py)
    compile: bool = False
    sync_bn: bool = False  # default per-device BatchNorm, as the paper
    workers: int = 2
    # torch threads per training process; None = this process's share of the cores minus one (at
    # least 1): torch's one-per-core default stalls whenever a data worker or another process holds
    # a core (measured on 2 shared cores: 437 -> 76 samples/s)
    threads: int | None = None
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    shuffle_buffer: int = 1000
