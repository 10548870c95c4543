"""Named model presets: frozen configs from a CPU toy up to the paper's EfficientNet-L2 + BERT-large.

Every preset uses the image tower's native width as the embedding size (B7 -> 640, L2 -> 1376),
so the model is a plain ``transformers.AlignModel``. ``embed_dim`` set to another size adds an
image projection (the paper's B1/B3/B5 ablations), which plain transformers cannot load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from transformers import AlignConfig, AlignTextConfig, AlignVisionConfig

from openalign.registry import Registry

PRESETS: Registry["ModelPreset"] = Registry("model preset")

# The paper trains at 289 px after resizing to 346: keep that ratio at every resolution.
RESIZE_RATIO = 346 / 289


@dataclass(frozen=True)
class ModelPreset:
    name: str
    # image tower (EfficientNet compound scaling)
    width_coefficient: float
    depth_coefficient: float
    image_size: int  # crop size fed to the network
    drop_connect_rate: float = 0.2
    # torch semantics (weight of the NEW batch): 0.01 = TF's 0.99, EfficientNet's own setting for
    # long runs. Short runs need fresher statistics: with weights moving fast, 100-step averages
    # are stale and eval-mode features collapse (the tiny preset uses 0.1).
    bn_momentum: float = 0.01
    # text tower (BERT)
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    text_dropout: float = 0.1
    vocab_size: int = 30522
    max_text_len: int = 64
    # embedding: None = the image tower's native width (a plain AlignModel)
    embed_dim: int | None = None
    temperature_init: float = 1.0

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size * RESIZE_RATIO))

    @property
    def native_dim(self) -> int:
        return round_filters(320, self.width_coefficient)

    @property
    def dim(self) -> int:
        return self.embed_dim or self.native_dim

    def with_(self, **changes: object) -> "ModelPreset":
        return dataclasses.replace(self, **changes)

    def align_config(self, vocab_size: int | None = None):  # -> transformers.AlignConfig

        vision = AlignVisionConfig(
            image_size=self.image_size,
            width_coefficient=self.width_coefficient,
            depth_coefficient=self.depth_coefficient,
            drop_connect_rate=self.drop_connect_rate,
            # transformers hands this to torch's BatchNorm2d in the stem and depthwise layers,
            # where momentum means the weight of the NEW batch (its default 0.99 is TF's value
            # copied into torch's meaning, i.e. the last batch only).
            batch_norm_momentum=self.bn_momentum,
        )
        text = AlignTextConfig(
            vocab_size=vocab_size or self.vocab_size,
            hidden_size=self.text_hidden,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            intermediate_size=self.text_intermediate,
            hidden_dropout_prob=self.text_dropout,
            attention_probs_dropout_prob=self.text_dropout,
            max_position_embeddings=max(512, self.max_text_len),
        )
        return AlignConfig(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            projection_dim=self.dim,
            temperature_init_value=self.temperature_init,
        )


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding (same rule as transformers' ``round_filters``)."""
    filters = filters * width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def get_preset(name: str) -> ModelPreset:
    return PRESETS.get(name)


def _reg(preset: ModelPreset) -> ModelPreset:
    PRESETS.register(preset.name)(preset)
    return preset


# A CPU toy: trains in minutes on 2 cores. 64 px crops, 8 EfficientNet blocks, 2-layer BERT.
TINY = _reg(
    ModelPreset(
        name="tiny",
        width_coefficient=0.5,
        depth_coefficient=0.3,
        image_size=64,
        drop_connect_rate=0.0,
        bn_momentum=0.1,
        text_hidden=128,
        text_layers=2,
        text_heads=2,
        text_intermediate=256,
        vocab_size=4096,
    )
)
# The paper's ablation shape: EfficientNet-B3 + BERT-mini (4 layers, 256 hidden).
B3_MINI = _reg(
    ModelPreset(
        name="b3-mini",
        width_coefficient=1.2,
        depth_coefficient=1.4,
        image_size=289,
        drop_connect_rate=0.2,
        text_hidden=256,
        text_layers=4,
        text_heads=4,
        text_intermediate=1024,
    )
)
# The shape of kakaobrain/align-base: EfficientNet-B7 (640-d) + BERT-base, 289 px crops of 346.
B7_BASE = _reg(
    ModelPreset(name="b7-base", width_coefficient=2.0, depth_coefficient=3.1, image_size=289, drop_connect_rate=0.2)
)
# The paper's model: EfficientNet-L2 (1376-d) + BERT-large, 100k WordPiece vocabulary.
L2_LARGE = _reg(
    ModelPreset(
        name="l2-large",
        width_coefficient=4.3,
        depth_coefficient=5.3,
        image_size=289,
        drop_connect_rate=0.5,
        text_hidden=1024,
        text_layers=24,
        text_heads=16,
        text_intermediate=4096,
        vocab_size=100_000,
    )
)

assert math.isclose(B7_BASE.native_dim, 640) and L2_LARGE.native_dim == 1376
