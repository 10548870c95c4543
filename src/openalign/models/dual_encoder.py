"""The ALIGN dual encoder: ``transformers.AlignModel`` plus L2-normalised encoders and saving.

EfficientNet (global average pooling, no top conv) and BERT ([CLS] -> one linear layer) are
exactly ``AlignModel``. The only addition is an optional image projection for embedding sizes
other than the image tower's native width; a model saved with it is marked as not loadable by
plain transformers.

The EfficientNet tower is made to train as EfficientNet does (``_exact_efficientnet``): per-sample
stochastic depth, the preset's BatchNorm momentum everywhere, and the reference's fan-out conv
init. None of it changes the state dict, so saved models still load in plain transformers.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AlignModel, AlignProcessor

from openalign.errors import UserError
from openalign.io import atomic_write_text
from openalign.models.presets import ModelPreset, get_preset

log = logging.getLogger(__name__)

OPENALIGN_JSON = "openalign.json"
IMAGE_PROJECTION_FILE = "image_projection.safetensors"


class DualEncoder(nn.Module):
    """ALIGN dual encoder. ``encode_images``/``encode_texts`` return L2-normalised embeddings."""

    def __init__(self, align: nn.Module, image_projection: nn.Linear | None = None, preset: ModelPreset | None = None):
        super().__init__()
        self.align = align
        self.image_projection = image_projection
        self.preset = preset

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: ModelPreset | str, vocab_size: int | None = None, seed: int | None = None) -> "DualEncoder":
        if isinstance(preset, str):
            preset = get_preset(preset)
        if seed is not None:
            torch.manual_seed(seed)
        config = preset.align_config(vocab_size=vocab_size)
        align = AlignModel(config)
        _efficientnet_init(align.vision_model, preset.conv_init)
        _exact_efficientnet(align.vision_model, preset.drop_connect_rate, preset.bn_momentum)
        proj = None
        if preset.embed_dim is not None and preset.embed_dim != preset.native_dim:
            proj = nn.Linear(preset.native_dim, preset.embed_dim)
        return cls(align, proj, preset)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DualEncoder":
        """Load a directory written by :meth:`save_pretrained` or the ``kakaobrain/align-base`` layout."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; pass a model directory written by `openalign train` "
                                    "or a downloaded kakaobrain/align-base folder")
        align = _load_align(path)
        proj = None
        meta = read_openalign_json(path)
        if (path / IMAGE_PROJECTION_FILE).is_file():
            state = load_file(str(path / IMAGE_PROJECTION_FILE))
            out_dim, in_dim = state["weight"].shape
            proj = nn.Linear(in_dim, out_dim)
            proj.load_state_dict(state)
        preset = None
        if meta.get("preset"):
            preset = ModelPreset(**{k: v for k, v in meta["preset"].items() if k in ModelPreset.__dataclass_fields__})
        # fine-tuning trains as EfficientNet does too. align-base's config says momentum 0.99, TF's
        # meaning (keep 99% of the running average); torch's momentum is the other side: 1 - 0.99
        tf_momentum = getattr(align.config.vision_config, "batch_norm_momentum", 0.99)
        bn_momentum = preset.bn_momentum if preset else (1.0 - tf_momentum if tf_momentum > 0.5 else tf_momentum)
        _exact_efficientnet(align.vision_model, align.config.vision_config.drop_connect_rate, bn_momentum)
        return cls(align, proj, preset)

    # -- encoders -----------------------------------------------------------------------------
    @property
    def temperature(self) -> nn.Parameter:
        return self.align.temperature

    @property
    def embed_dim(self) -> int:
        return self.image_projection.out_features if self.image_projection is not None else self.align.projection_dim

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) -> EfficientNet -> global average pool -> (B, C_native) [-> projection]
        feats = self.align.vision_model(pixel_values=pixel_values).pooler_output
        if self.image_projection is not None:
            feats = self.image_projection(feats)
        return feats

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # (B, L) -> BERT -> [CLS] hidden state (B, H) -> linear -> (B, D)
        hidden = self.align.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.align.text_projection(hidden[:, 0, :])

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_features(pixel_values).float(), dim=-1)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.text_features(input_ids, attention_mask).float(), dim=-1)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask)

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, tokenizer: Any = None, summary: dict | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (+ tokenizer, preprocessor) + ``openalign.json``.

        The folder loads with ``AlignModel.from_pretrained`` and ``AlignProcessor.from_pretrained``.
        It is written to a temp folder and renamed, so a crash never leaves half a model.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.align.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                processor = make_processor(tokenizer, self.preset)
                processor.save_pretrained(str(tmp))
            loadable = self.image_projection is None
            if not loadable:
                save_file({k: v.contiguous() for k, v in self.image_projection.state_dict().items()},
                          str(tmp / IMAGE_PROJECTION_FILE))
            meta = {
                "format": "openalign-model/1",
                "preset": asdict(self.preset) if self.preset else None,
                "embed_dim": self.embed_dim,
                "transformers_loadable": loadable,
                "stochastic_depth": (
                    "openalign trains EfficientNet with per-sample drop-connect (whole residual branches); "
                    "plain transformers.AlignModel trains with element-wise dropout there instead"
                ),
                "summary": summary or {},
            }
            if not loadable:
                meta["warning"] = (
                    f"this model adds an image projection ({IMAGE_PROJECTION_FILE}) for embed_dim={self.embed_dim}; "
                    "plain transformers.AlignModel ignores it and gives wrong image embeddings: "
                    "load it with openalign.models.DualEncoder.from_pretrained"
                )
            atomic_write_text(tmp / OPENALIGN_JSON, json.dumps(meta, indent=2) + "\n")
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _efficientnet_init(vision: nn.Module, kind: str = "efficientnet") -> None:
    """EfficientNet's own conv init, not transformers' normal(0, 0.02).

    The TF reference draws normal(0, sqrt(2 / fan_out)) with fan_out = k * k * out_channels / groups:
    k * k for a depthwise kernel ([k, k, C, 1] in TF). torch's ``kaiming_normal_(mode="fan_out")``
    ignores groups and would start depthwise kernels sqrt(C) times too small.
    """
    if kind not in ("efficientnet", "torch-fan-out"):
        raise ValueError(f"conv_init {kind!r}: use 'efficientnet' or 'torch-fan-out'")
    for m in vision.modules():
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            fan_out = k_h * k_w * m.out_channels // (m.groups if kind == "efficientnet" else 1)
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DropConnect(nn.Module):
    """EfficientNet's stochastic depth: a block's residual branch is dropped whole, per sample.

    Kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)`` in training; the identity in
    eval. No parameters or buffers, so swapping it in leaves the state dict as transformers wrote it.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # (B, 1, 1, 1): one draw per sample, from torch's RNG (so the step's mask replay covers it)
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"


def _exact_efficientnet(vision: nn.Module, drop_connect_rate: float, bn_momentum: float | None) -> None:
    """Make transformers' EfficientNet blocks train as EfficientNet's reference does.

    1. Stochastic depth: block i of N drops its residual branch per sample with probability
       rate * i / N (transformers puts element-wise ``nn.Dropout`` with that rate there instead).
    2. BatchNorm momentum: every BatchNorm gets ``bn_momentum`` (transformers builds ``expand_bn``
       without the config's momentum, so those get torch's 0.1). None leaves them as built.
    """
    blocks = vision.encoder.blocks
    for i, block in enumerate(blocks):
        block.projection.dropout = DropConnect(drop_connect_rate * i / len(blocks))
    if bn_momentum is not None:
        for m in vision.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    # 3. Global average pooling as such: transformers pools with AvgPool2d(kernel=hidden_dim=2560,
    #    ceil_mode) -- the same numbers, but torch.compile lowers it to a 2560 x 2560 masked reduction
    #    per output that took 1.41 of a 1.55 s compiled step (bench/gpu_step.py). No parameters: the
    #    state dict and plain-transformers loading are unchanged.
    if isinstance(getattr(vision, "pooler", None), nn.AvgPool2d):
        vision.pooler = nn.AdaptiveAvgPool2d(1)


def _load_align(path: Path) -> AlignModel:
    """``AlignModel.from_pretrained`` on safetensors weights only; every failure is one line naming the
    file and the fix. Pickled weights (``pytorch_model.bin``) are refused: unpickling runs code."""
    weights = sorted(p.name for p in path.glob("*.safetensors") if p.name != IMAGE_PROJECTION_FILE)
    if not weights:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles:
            raise UserError(f"{path / pickles[0]}: weights only as a pickle, which OpenALIGN never loads "
                            "(unpickling can run code); convert it to model.safetensors with a tool you trust "
                            "or download the safetensors version of the model")
        raise UserError(f"{path}: no model.safetensors; pass a model directory written by `openalign train` "
                        "or a downloaded kakaobrain/align-base folder")
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path / 'config.json'}: not readable JSON ({exc}); restore the file from the "
                        "model's source") from None
    try:
        return AlignModel.from_pretrained(str(path), use_safetensors=True)
    except Exception as exc:  # safetensors, transformers and OS errors: name the file, not a traceback
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path / weights[0]}: cannot load the weights ({detail[:200]}); the file is corrupt or "
                        "truncated: copy it again or retrain") from None


def read_openalign_json(path: str | Path) -> dict:
    f = Path(path) / OPENALIGN_JSON
    return json.loads(f.read_text()) if f.is_file() else {}


def make_processor(tokenizer: Any, preset: ModelPreset | None):
    """An ``AlignProcessor`` with the paper's preprocessing at the preset's resolution.

    Resize (squash) to ``resize_size`` bilinear, centre crop ``image_size``, pixels in [-1, 1]:
    the same rules as ``kakaobrain/align-base``'s preprocessor_config.json (346 -> 289).
    """
    try:  # transformers 5: the PIL processor (the default one needs torchvision, which we avoid)
        from transformers import (
            EfficientNetImageProcessorPil as EfficientNetImageProcessor,
        )
    except ImportError:
        from transformers import EfficientNetImageProcessor

    size = preset.image_size if preset else 289
    resize = preset.resize_size if preset else 346
    image_processor = EfficientNetImageProcessor(
        size={"height": resize, "width": resize},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        do_normalize=False,
        include_top=False,
        resample=2,  # PIL bilinear
    )
    return AlignProcessor(image_processor=image_processor, tokenizer=tokenizer)
