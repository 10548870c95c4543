"""The experiment scripts' shared machinery (experiments/common.py): output names, the recipe
overrides of the command line and the run cache keys experiments share. No training here."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    mod = importlib.import_module("common")
    monkeypatch.setattr(mod, "RECIPE_OVERRIDES", {})
    monkeypatch.setattr(mod, "recipe_hash", lambda: "r")  # the demo's recipe is not what is tested here
    yield mod
    sys.modules.pop("common", None)


def parse(common, argv):
    return common.common_args(argparse.ArgumentParser()).parse_args(argv)


def test_output_names_carry_world_overrides_and_steps(common):
    assert common.named("temperature", "toy") == "temperature"
    assert common.named("temperature", "demo", 400) == "temperature-demo"  # earlier tables keep their names
    assert common.named("temperature", "long-tail", 1200) == "temperature-long-tail-1200steps"
    parse(common, ["--world", "long-tail", "--text-init-std", "0.1", "--fixed-temperature", "1/32"])
    assert common.named("negatives", "long-tail", 1200) == "negatives-long-tail-fixed_T1_32-text_init_std0.1-1200steps"


@pytest.mark.parametrize("text,value", [("1/32", 1 / 32), ("0.03125", 1 / 32), ("1/128", 1 / 128), (" 2 ", 2.0)])
def test_temperature_arg_accepts_numbers_and_fractions(common, text, value):
    assert common.temperature_arg(text) == value


@pytest.mark.parametrize("text", ["1/0", "abc", "-1", "0", "1/x"])
def test_temperature_arg_rejects_nonsense(common, text, capsys):
    with pytest.raises(SystemExit):
        parse(common, ["--fixed-temperature", text])
    assert "--fixed-temperature" in capsys.readouterr().err


def test_fixed_temperature_base_reuses_the_temperature_experiments_run(common, monkeypatch):
    """Under --fixed-temperature 1/32 a one-knob experiment's base run is the temperature
    experiment's fixed 1/32 arm: same cache key, so it is trained once."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    temperature = importlib.import_module("temperature")
    try:
        parse(common, ["--text-init-std", "0.1", "--fixed-temperature", "1/32"])
        base = common.with_world([replace(common.baseline(0, 1200, keep_model=False), label="100% (128)")], "long-tail")[0]
        common.RECIPE_OVERRIDES.pop("fixed_temperature")
        arms = common.with_world(temperature.jobs(1, 1200), "long-tail")
        fixed32 = next(j for j in arms if j.label == "fixed 1/32")
        assert base.key() == fixed32.key()
        assert base.key() != next(j for j in arms if j.label.startswith("learnable")).key()
        # a kept model is not required of the reused run, so a run saved without one is found
        assert not base.keep_model and not fixed32.keep_model
    finally:
        sys.modules.pop("temperature", None)


def test_a_recipe_override_changes_every_key(common):
    plain = common.with_world([common.baseline(0, 400)], "demo")[0]
    parse(common, ["--text-init-std", "0.1"])
    std = common.with_world([common.baseline(0, 400)], "demo")[0]
    assert plain.key() != std.key() and std.overrides == {"text_init_std": 0.1}


@pytest.mark.parametrize("script", sorted(p.name for p in EXPERIMENTS.glob("*.py") if p.name != "common.py"))
def test_every_experiment_parses_its_command_line(script):
    """The scripts build their parsers on common_args: an option one adds may not clash with a shared one."""
    import subprocess

    r = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage:")
    if "common_args(" in (EXPERIMENTS / script).read_text():
        assert "--world" in r.stdout and "--fixed-temperature" in r.stdout
