"""Model presets and towers: frozen configs from a CPU toy up to the paper's EfficientNet-L2 + BERT-large.

A model is an image tower (EfficientNet-B0..B7, L2) and a text tower (BERT-mini..large), as in the
paper's ablations; ``ModelPreset.with_towers`` composes them on top of a preset, which supplies
the rest (training resolution, BatchNorm momentum, vocabulary, text length). The named presets
(``tiny``, ``b3-mini``, ``b7-base``, ``l2-large``) are shorthands.

Every preset uses the image tower's native width as the embedding size (B7 -> 640, L2 -> 1376),
so the model is a plain ``transformers.AlignModel``. ``embed_dim`` set to another size adds an
image projection (the paper's B1/B3/B5 ablations), which plain transformers cannot load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from transformers import AlignConfig, AlignTextConfig, AlignVisionConfig

from openalign.errors import UserError
from openalign.registry import Registry

PRESETS: Registry["ModelPreset"] = Registry("model preset")
IMAGE_TOWERS: Registry["ImageTower"] = Registry("image tower")
TEXT_TOWERS: Registry["TextTower"] = Registry("text tower")

# The paper trains at 289 px after resizing to 346: keep that ratio at every resolution.
RESIZE_RATIO = 346 / 289
# EfficientNet-B0's stages (transformers' AlignVisionConfig defaults): repeats and last width.
_B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_B0_LAST_CHANNELS = 320


class UnknownModelName(UserError, KeyError):
    """A preset or tower name that is not registered (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ImageTower:
    """EfficientNet compound scaling, as in the TF reference (``efficientnet_builder.py``)."""

    name: str
    width_coefficient: float
    depth_coefficient: float
    resolution: int  # EfficientNet's own input size (ALIGN trains every tower at 289 from 346)
    dropout_rate: float  # EfficientNet's classifier dropout; ALIGN has no classifier: for the record
    drop_connect_rate: float = 0.2  # stochastic depth of the last block (linear in the block index)

    @property
    def native_dim(self) -> int:
        return round_filters(_B0_LAST_CHANNELS, self.width_coefficient)

    @property
    def num_blocks(self) -> int:
        return sum(math.ceil(self.depth_coefficient * r) for r in _B0_REPEATS)


@dataclass(frozen=True)
class TextTower:
    """A BERT of Turc et al. 2019 ("well-read students"): heads = hidden / 64, intermediate = 4 x hidden."""

    name: str
    hidden: int
    layers: int

    @property
    def heads(self) -> int:
        return self.hidden // 64

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


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
    # conv init: "efficientnet" = the TF reference, normal(0, sqrt(2 / fan_out)) with fan_out =
    # k*k*out/groups (k*k for depthwise); "torch-fan-out" = torch's kaiming fan-out, which ignores
    # groups (depthwise kernels start sqrt(C) smaller). The reference's scale is harmless under LAMB
    # (per-layer trust ratio) but makes the depthwise kernels learn ~sqrt(C) times slower relative
    # to their size under AdamW: the tiny demo (AdamW, 600 steps) reached held-out t2i R@10 7.2
    # with it vs 23.5 with torch's (same data, same run length), so `tiny` keeps torch's.
    conv_init: str = "efficientnet"
    # text tower (BERT)
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    text_dropout: float = 0.1
    # std of the text tower's initial weights (BERT's 0.02, tuned for 768 wide). Only read at
    # initialisation; it is saved in config.json as `initializer_range` and plain transformers ignores it
    # when loading trained weights.
    text_init_std: float = 0.02
    vocab_size: int = 30522
    max_text_len: int = 64
    # embedding: None = the image tower's native width (a plain AlignModel)
    embed_dim: int | None = None
    temperature_init: float = 1.0
    # the registered towers this preset is made of (None: a shape of its own, e.g. ``tiny``)
    image_tower: str | None = None
    text_tower: str | None = None

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size * RESIZE_RATIO))

    @property
    def native_dim(self) -> int:
        return round_filters(_B0_LAST_CHANNELS, self.width_coefficient)

    @property
    def dim(self) -> int:
        return self.embed_dim or self.native_dim

    def with_(self, **changes: object) -> "ModelPreset":
        return dataclasses.replace(self, **changes)

    def with_towers(
        self, image_tower: str | None = None, text_tower: str | None = None, image_size: int | None = None
    ) -> "ModelPreset":
        """This preset with its image and/or text tower swapped and/or another crop size (None = keep).

        The preset keeps the rest (BatchNorm momentum, vocabulary, text length, embedding size), so
        ``get_preset("b3-mini").with_towers("efficientnet-b5")`` is the paper's B5 + BERT-mini at 289 px.
        """
        changes: dict[str, object] = {}
        if image_tower is not None and image_tower != self.image_tower:
            t = get_image_tower(image_tower)
            changes.update(image_tower=t.name, width_coefficient=t.width_coefficient,
                           depth_coefficient=t.depth_coefficient, drop_connect_rate=t.drop_connect_rate,
                           conv_init="efficientnet")  # a named EfficientNet tower starts as the reference does
        if text_tower is not None and text_tower != self.text_tower:
            t = get_text_tower(text_tower)
            changes.update(text_tower=t.name, text_hidden=t.hidden, text_layers=t.layers, text_heads=t.heads,
                           text_intermediate=t.intermediate)
        if changes:
            image = changes.get("image_tower", self.image_tower) or self.name
            text = changes.get("text_tower", self.text_tower) or self.name
            changes["name"] = f"{image}+{text}"
        if image_size is not None:
            if image_size < 32:  # EfficientNet downsamples 32x
                raise UserError(f"image_size {image_size}: EfficientNet needs crops of at least 32 px")
            changes["image_size"] = image_size
        return self.with_(**changes)

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
            initializer_range=self.text_init_std,
        )
        return AlignConfig(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            projection_dim=self.dim,
            temperature_init_value=self.temperature_init,
        )

    @classmethod
    def from_towers(cls, name: str, image_tower: str, text_tower: str, image_size: int = 289,
                    **changes: object) -> "ModelPreset":
        """A preset made of two registered towers (the paper's 289 px crops unless told)."""
        base = cls(name=name, width_coefficient=1.0, depth_coefficient=1.0, image_size=image_size)
        return base.with_towers(image_tower, text_tower).with_(name=name, **changes)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding (same rule as transformers' ``round_filters``)."""
    filters = filters * width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _lookup(registry: Registry, name: str):
    try:
        return registry.get(name)
    except KeyError:
        raise UnknownModelName(f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}") from None


def get_preset(name: str) -> ModelPreset:
    return _lookup(PRESETS, name)


def get_image_tower(name: str) -> ImageTower:
    return _lookup(IMAGE_TOWERS, name)


def get_text_tower(name: str) -> TextTower:
    return _lookup(TEXT_TOWERS, name)


def _reg(preset: ModelPreset) -> ModelPreset:
    PRESETS.register(preset.name)(preset)
    return preset


# -- image towers: (width, depth, resolution, dropout) from the TF reference's efficientnet_params;
# drop-connect 0.2 for all (its default; Noisy Student's L2 too: survival 0.8 at the last block).
for _name, _w, _d, _res, _drop in [
    ("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    ("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    ("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    ("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    ("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    ("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    ("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    ("efficientnet-b7", 2.0, 3.1, 600, 0.5),
    ("efficientnet-l2", 4.3, 5.3, 800, 0.5),  # Noisy Student (Xie et al. 2020)
]:
    IMAGE_TOWERS.register(_name)(ImageTower(_name, _w, _d, _res, _drop))

# -- text towers: Turc et al. 2019's BERT miniatures (mini..medium) and the original base/large.
for _name, _h, _l in [
    ("bert-mini", 256, 4),
    ("bert-small", 512, 4),
    ("bert-medium", 512, 8),
    ("bert-base", 768, 12),
    ("bert-large", 1024, 24),
]:
    TEXT_TOWERS.register(_name)(TextTower(_name, _h, _l))

# -- named presets (shorthands; their configs predate the tower registry and are kept as they were)
# A CPU toy: trains in minutes on 2 cores. 64 px crops, 8 EfficientNet blocks, 2-layer BERT.
TINY = _reg(
    ModelPreset(
        name="tiny",
        width_coefficient=0.5,
        depth_coefficient=0.3,
        image_size=64,
        drop_connect_rate=0.0,
        bn_momentum=0.1,
        conv_init="torch-fan-out",
        text_hidden=128,
        text_layers=2,
        text_heads=2,
        text_intermediate=256,
        vocab_size=4096,
    )
)
# The paper's ablation shape: EfficientNet-B3 + BERT-mini (4 layers, 256 hidden).
B3_MINI = _reg(ModelPreset.from_towers("b3-mini", "efficientnet-b3", "bert-mini"))
# The shape of kakaobrain/align-base: EfficientNet-B7 (640-d) + BERT-base, 289 px crops of 346.
B7_BASE = _reg(ModelPreset.from_towers("b7-base", "efficientnet-b7", "bert-base"))
# The paper's model: EfficientNet-L2 (1376-d) + BERT-large, 100k WordPiece vocabulary. Its
# drop-connect 0.5 predates the tower registry (EfficientNet's reference uses 0.2); kept as it was.
L2_LARGE = _reg(
    ModelPreset.from_towers("l2-large", "efficientnet-l2", "bert-large", drop_connect_rate=0.5, vocab_size=100_000)
)

assert math.isclose(B7_BASE.native_dim, 640) and L2_LARGE.native_dim == 1376
