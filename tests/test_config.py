"""Config overrides parse by the field's type and reject unknown keys."""

import pytest

from openalign.config import apply_overrides, from_dict, to_dict
from openalign.train.config import TrainConfig


def test_overrides_are_typed():
    cfg = apply_overrides(TrainConfig(), ["lr=3e-4", "steps=1e3", "bf16=true", "embed_dim=64", "max_minutes=none"])
    assert cfg.lr == 3e-4 and cfg.steps == 1000 and cfg.bf16 is True and cfg.embed_dim == 64 and cfg.max_minutes is None
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_bad_overrides_name_the_field():
    with pytest.raises(ValueError, match="unknown config field 'lrr'"):
        apply_overrides(TrainConfig(), ["lrr=1"])
    with pytest.raises(ValueError, match="'steps'"):
        apply_overrides(TrainConfig(), ["steps=many"])
    with pytest.raises(ValueError, match="boolean"):
        apply_overrides(TrainConfig(), ["bf16=maybe"])
