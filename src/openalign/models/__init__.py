from openalign.models.dual_encoder import DualEncoder
from openalign.models.presets import PRESETS, ModelPreset, get_preset

__all__ = ["DualEncoder", "ModelPreset", "PRESETS", "get_preset"]
