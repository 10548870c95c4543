"""Image transforms in a few lines of PIL + torch (no torchvision, which pulls a CUDA torch here).

Eval: squash-resize to ``resize`` (bilinear), centre crop ``size``, pixels in [-1, 1] -- the same
arithmetic as transformers' ``EfficientNetImageProcessor`` with align-base's settings, so our
embeddings match ``AlignProcessor``'s. Train: squash-resize, random crop, horizontal flip
(the paper's 346 -> 289, scaled to the preset's resolution).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from openalign.media.images import to_rgb


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1] (x / 127.5 - 1, as align-base's rescale with offset)."""
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * np.float32(1 / 127.5) - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 HWC -> uint8 CHW: 4x less memory and worker IPC than float; see :func:`normalize_pixels`."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) -> float in [-1, 1], the same arithmetic as :func:`to_tensor`; floats pass through."""
    if x.dtype != torch.uint8:
        return x
    return x.to(torch.float32) * (1 / 127.5) - 1.0


@dataclass(frozen=True)
class ImageTransform:
    size: int  # crop fed to the network
    resize: int  # squash-resize before cropping
    train: bool = False
    hflip: bool = True
    uint8: bool = False  # return uint8 CHW (training batches are normalised on the fly)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        img = to_rgb(img).resize((self.resize, self.resize), Image.BILINEAR)
        if self.train:
            rng = rng or random
            top = rng.randint(0, self.resize - self.size)
            left = rng.randint(0, self.resize - self.size)
            img = img.crop((left, top, left + self.size, top + self.size))
            if self.hflip and rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            top = (self.resize - self.size) // 2
            left = (self.resize - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return to_uint8_tensor(img) if self.uint8 else to_tensor(img)


def transform_for(preset, train: bool, uint8: bool = False) -> ImageTransform:
    return ImageTransform(size=preset.image_size, resize=preset.resize_size, train=train, uint8=uint8)


def transform_from_processor_config(cfg: dict, train: bool = False) -> ImageTransform:
    """Build the transform that an ``EfficientNetImageProcessor`` config describes (align-base layout)."""
    size = cfg.get("crop_size", {}).get("height", 289)
    resize = cfg.get("size", {}).get("height", 346)
    if cfg.get("do_normalize") or cfg.get("resample", 2) != 2 or not cfg.get("rescale_offset", True):
        raise ValueError(
            "preprocessor_config.json: only align-base's preprocessing (bilinear, rescale with offset to [-1, 1], "
            "no normalisation) is supported; fix the file or use AlignProcessor directly"
        )
    return ImageTransform(size=size, resize=resize, train=train)
