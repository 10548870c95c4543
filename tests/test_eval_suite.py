"""``openalign eval all``: a YAML/JSON suite -> one report; CLI smoke tests of the classification commands."""

from __future__ import annotations

import json

import pytest
from eval_helpers import PerfectBundle, class_index, save_tiny_model, write_image_folder, write_karpathy

from openalign.errors import UserError
from openalign.evals.base import EvalContext
from openalign.evals.suite import load_suite, run_suite

SUITE_YAML = """
evaluations:
  - {type: retrieval, name: captions, karpathy_json: k/karpathy.json, image_root: k/images}
  - {type: zeroshot, name: zs, data: train, templates: none}
  - {type: linear_probe, train: train, test: test, weight_decays: [0.001, 0.1], max_iter: 30}
  - {type: knn, train: train, test: test}
"""


def _fixture(tmp_path):
    write_karpathy(tmp_path / "k", n_test=4)
    write_image_folder(tmp_path / "train", n_classes=3, per_class=4)
    write_image_folder(tmp_path / "test", n_classes=3, per_class=2, corrupt=1)
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE_YAML)
    return suite


def test_suite_report_perfect_model(tmp_path) -> None:
    suite = load_suite(_fixture(tmp_path))
    assert [k for k, _ in suite] == ["retrieval", "zeroshot", "linear_probe", "knn"]
    text_index = lambda t: class_index(t) if "class" in t else int(t.rsplit(" ", 1)[-1])  # noqa: E731
    results = run_suite(PerfectBundle(dim=8, text_index=text_index), suite, tmp_path / "out",
                        EvalContext(batch_size=4, progress=False), model="perfect")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["captions", "zs", "linear_probe", "knn"]
    assert results[0].metrics["mean_recall"] == 100.0 and results[3].metrics["top1"] == 100.0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| captions | retrieval | mean_recall | 100.00 |" in md and "unreadable image" in md
    assert (tmp_path / "out" / "knn.png").is_file()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"evaluations": []}), "field 'evaluations' missing or empty"),
        (json.dumps([{"name": "x"}]), "evaluations[0].type missing"),
        (json.dumps([{"type": "nope"}]), "unknown evaluation type 'nope'"),
        (json.dumps([{"type": "knn", "train": "a"}]), "evaluations[0]: missing field(s) test"),
        (json.dumps([{"type": "knn", "train": "a", "test": "b", "kk": 3}]), "unknown field(s) kk"),
    ],
)
def test_bad_suite(tmp_path, text, needle) -> None:
    path = tmp_path / "suite.json"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_suite(path)
    assert needle in str(err.value)


def test_cli_classification_and_suite_smoke(tmp_path, capsys, monkeypatch) -> None:
    from openalign.cli import main as cli

    monkeypatch.setattr(cli, "COMMANDS", {"eval": cli.COMMANDS["eval"]})
    model = str(save_tiny_model(tmp_path))
    suite = _fixture(tmp_path)
    common = ["--model", model, "--workers", "0", "--no-progress"]
    assert cli.main(["eval", "zeroshot", *common, "--data", str(tmp_path / "train"), "--templates", "none",
                     "--out", str(tmp_path / "zs")]) == 0
    assert json.loads((tmp_path / "zs" / "zeroshot.json").read_text())["metrics"]["num_classes"] == 3
    assert cli.main(["eval", "knn", *common, "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
                     "--out", str(tmp_path / "knn")]) == 0
    assert cli.main(["eval", "all", *common, "--suite", str(suite), "--out", str(tmp_path / "rep"),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # train folder embedded once, reused
    assert "report.md" in capsys.readouterr().out
