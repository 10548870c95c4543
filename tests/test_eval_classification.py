"""Zero-shot, linear probe and kNN: references, perfect/random models, formats, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import PerfectBundle, class_index, write_csv, write_image_folder

from openalign.errors import UserError
from openalign.evals.base import EvalContext, run_evaluation, write_result
from openalign.evals.classification import (class_embeddings, classification_metrics, fit_logistic, knn_predict,
                                            stratified_split)
from openalign.evals.datasets import load_classnames, load_templates
from openalign.media.labeled import read_labeled

CTX = EvalContext(batch_size=4, workers=0, progress=False)


def test_shipped_assets() -> None:
    names = load_classnames("imagenet1k", "imagenet1k", [])
    templates = load_templates("imagenet1k", "imagenet1k")
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"
    assert len(templates) == 80 and all("{c}" in t for t in templates)
    assert load_templates("none", "x") == ["a photo of a {c}."]


def test_classification_metrics_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(300, 7, generator=g), torch.randint(0, 7, (300,), generator=g)
    m = classification_metrics(logits, labels, 7)
    order = [sorted(range(7), key=lambda c: -float(row[c])) for row in logits]
    top1 = sum(o[0] == int(y) for o, y in zip(order, labels)) / 300 * 100
    top5 = sum(int(y) in o[:5] for o, y in zip(order, labels)) / 300 * 100
    per_class = []
    for c in range(7):
        idx = [i for i in range(300) if int(labels[i]) == c]
        per_class.append(sum(order[i][0] == c for i in idx) / len(idx))
    assert m["top1"] == pytest.approx(top1, abs=1e-4) and m["top5"] == pytest.approx(top5, abs=1e-4)
    assert m["mean_per_class_recall"] == pytest.approx(100 * sum(per_class) / 7, abs=1e-4)
    assert m["top1"] == pytest.approx(100 / 7, abs=6)  # random logits: near chance


def test_template_ensembling_is_mean_of_normalised_then_renormalised() -> None:
    class Bundle:
        def encode_texts(self, texts, batch_size=256):
            g = torch.Generator().manual_seed(len(texts))
            return torch.randn(len(texts), 6, generator=g) * 3  # not normalised on purpose

    emb = class_embeddings(Bundle(), ["cat", "dog"], ["a {c}.", "the {c}!", "{c}"])
    raw = Bundle().encode_texts(["a cat.", "the cat!", "cat", "a dog.", "the dog!", "dog"])
    ref = torch.stack([F.normalize(F.normalize(raw[i * 3:(i + 1) * 3], dim=-1).mean(0), dim=0) for i in range(2)])
    assert torch.allclose(emb, ref, atol=1e-6)


@pytest.mark.parametrize("fmt", ["folder", "csv", "csv-numeric"])
def test_zeroshot_perfect_model(tmp_path, fmt) -> None:
    if fmt == "folder":
        data = write_image_folder(tmp_path / "ds", n_classes=6, corrupt=1)
    else:
        data = write_csv(tmp_path, n_classes=6, numeric=fmt == "csv-numeric")
    names = None
    if fmt == "csv-numeric":  # integer labels index a CLIP_benchmark-layout class-name file
        names = tmp_path / "names.json"
        names.write_text(json.dumps({"imagenet1k": [f"class{c}" for c in range(6)]}))
    bundle = PerfectBundle(dim=6, text_index=class_index)
    res = run_evaluation(bundle, "zeroshot", {"data": str(data), "classnames": names and str(names)}, CTX)
    assert res.metrics["top1"] == 100.0 and res.metrics["top5"] == 100.0
    assert res.metrics["mean_per_class_recall"] == 100.0
    assert res.metrics["num_templates"] == 80 and res.metrics["num_classes"] == 6
    assert res.info["skipped_images"] == (1 if fmt == "folder" else 0)
    files = write_result(res, tmp_path / "out")
    assert {"json", "md", "png"} <= set(files) and files["png"].stat().st_size > 0


def test_zeroshot_single_template(tmp_path) -> None:
    data = write_image_folder(tmp_path / "ds", n_classes=3)
    bundle = PerfectBundle(dim=3, text_index=class_index)
    res = run_evaluation(bundle, "zeroshot", {"data": str(data), "templates": "none"}, CTX)
    assert res.metrics["num_templates"] == 1 and res.metrics["top1"] == 100.0


def test_logistic_regression_separable_and_split() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat_interleave(25)
    x = centers[y] + 0.3 * torch.randn(100, 16, generator=g)
    clf = fit_logistic(x, y, 4, weight_decay=1e-4, max_iter=100)
    assert (clf(x.double()).argmax(1) == y).all()
    tr, va = stratified_split(y, 0.2, seed=0)
    assert len(tr) + len(va) == 100 and len(set(tr.tolist()) & set(va.tolist())) == 0
    assert torch.bincount(y[va]).tolist() == [5, 5, 5, 5]


def test_knn_against_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    tr_x, tr_y = torch.randn(50, 8, generator=g), torch.randint(0, 5, (50,), generator=g)
    te_x = torch.randn(30, 8, generator=g)
    pred = knn_predict(tr_x, tr_y, te_x, k=1, n_classes=5, chunk=7)
    for i in range(30):
        sims = [float(F.cosine_similarity(te_x[i], tr_x[j], dim=0)) for j in range(50)]
        assert int(pred[i]) == int(tr_y[max(range(50), key=lambda j: sims[j])])
    pred3 = knn_predict(tr_x, tr_y, te_x, k=3, n_classes=5)
    for i in range(30):
        nn3 = torch.argsort(F.normalize(tr_x, dim=-1) @ F.normalize(te_x[i], dim=0), descending=True)[:3]
        counts = torch.bincount(tr_y[nn3], minlength=5)
        if counts.max() > 1:
            assert int(pred3[i]) == int(counts.argmax())
        else:
            assert int(pred3[i]) == int(tr_y[nn3[0]])


@pytest.mark.parametrize("kind", ["linear_probe", "knn"])
def test_probe_and_knn_perfect_model(tmp_path, kind) -> None:
    train = write_image_folder(tmp_path / "train", n_classes=4, per_class=5, corrupt=1)
    test = write_image_folder(tmp_path / "test", n_classes=4, per_class=2)
    cfg = {"train": str(train), "test": str(test)}
    if kind == "linear_probe":
        cfg.update(weight_decays=[1e-4, 1e-2], max_iter=50)
    res = run_evaluation(PerfectBundle(dim=4), kind, cfg, CTX)
    assert res.metrics["top1"] == 100.0 and res.metrics["skipped_images"] == 1
    write_result(res, tmp_path / "out")


def test_random_embeddings_probe_near_chance() -> None:
    g = torch.Generator().manual_seed(1)
    tr_x, tr_y = torch.randn(400, 32, generator=g), torch.randint(0, 4, (400,), generator=g)
    te_x, te_y = torch.randn(400, 32, generator=g), torch.randint(0, 4, (400,), generator=g)
    acc = float((knn_predict(tr_x, tr_y, te_x, 1, 4) == te_y).float().mean()) * 100
    assert acc == pytest.approx(25, abs=8)
    clf = fit_logistic(tr_x, tr_y, 4, 1e-1, max_iter=50)
    acc = float((clf(te_x.double()).argmax(1) == te_y).float().mean()) * 100
    assert acc == pytest.approx(25, abs=8)


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(UserError, match="not found or not a folder"):
        read_labeled(tmp_path / "missing")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,cat\n")
    with pytest.raises(UserError, match=r"bad.csv: column 'path' missing"):
        read_labeled(bad)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"cifar10": ["a"], "cifar100": ["b"]}))
    with pytest.raises(UserError, match="no key 'imagenet1k'.*--dataset-name"):
        load_classnames(str(names), "imagenet1k", [])
    tpl = tmp_path / "tpl.json"
    tpl.write_text(json.dumps(["a photo of a {}."]))
    with pytest.raises(UserError, match=r"tpl.json: template .* no \{c\} placeholder"):
        load_templates(str(tpl), "imagenet1k")
    data = write_image_folder(tmp_path / "ds", n_classes=3)
    names.write_text(json.dumps(["a", "b"]))
    with pytest.raises(UserError, match="2 class names for 3 classes"):
        run_evaluation(PerfectBundle(dim=3), "zeroshot", {"data": str(data), "classnames": str(names)}, CTX)
    with pytest.raises(UserError, match="unknown field.*colour"):
        run_evaluation(PerfectBundle(dim=3), "zeroshot", {"data": str(data), "colour": 1}, CTX)
