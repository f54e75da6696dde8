"""`clipcompare demo` (what `make demo` runs) on a reduced input with small models, and its report."""

from __future__ import annotations

import json

import pytest

from clipcompare.cli import main
from clipcompare.data.photos import SAMPLE_PHOTOS
from test_report import parse

MODELS = ["resnet18:IMAGENET1K_V1", "clip:tiny-RN-quickgelu"]


@pytest.mark.slow  # every step of `make demo`, precision timing of a 224-pixel ResNet-18 in three dtypes included
def test_demo_runs_end_to_end_on_photos_and_ends_with_the_report_path(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--photos", "2", "--views", "1", "--device", "cpu",
                 "-m", "resnet18", "-m", "clip:tiny-RN-quickgelu"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    text = "\n".join(lines)
    for step in ("Architecture", "Classification", "Evaluation", "Where each model looks", "Precision",
                 "Robustness", "Report", "RANDOM weights"):
        assert step in text
    report = out / "report.html"
    assert lines[-1] == str(report) and report.is_file()

    # classification: 2 photos with an ImageNet class + 2 without, CLIP on free text, both on ImageNet
    classed = [p for p in SAMPLE_PHOTOS if p.wnid][:2]
    assert sorted(p.name for p in (out / "photos").iterdir()) == sorted(
        f"{p.name}.jpg" for p in classed + [p for p in SAMPLE_PHOTOS if not p.wnid][:2])
    assert "skipped resnet18:IMAGENET1K_V1" in text  # free-text labels are not ImageNet classes

    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert list(metrics["datasets"]) == ["photo", "sketch", "art"]
    for entry in metrics["datasets"].values():
        assert set(entry["models"]) == set(MODELS)
        assert all(m["n"] == 2 for m in entry["models"].values())  # 2 classes x 1 view
    for domain in ("photo", "sketch", "art"):
        assert sorted(p.name for p in (out / "data" / domain).iterdir()) == sorted(p.wnid for p in classed)

    # the report holds the evaluate and precision runs, with the random-weights banner
    page = parse(report.read_text())
    assert page.banner
    assert {"accuracy", "calibration", "precision", "drift"} <= set(page.tables)
    assert len(page.tables["accuracy"]) == 6  # 3 renditions x 2 models
    precision = json.loads((out / "precision" / "precision.json").read_text())
    rows = page.tables["precision"]
    expected = [(m["model"], r["dtype"], b["batch_size"], b["latency"]["median_ms"])
                for m in precision["models"] for r in m["results"] for b in r["batches"]]
    assert [(r[0][0], r[1][0], int(r[4][1]), float(r[5][1])) for r in rows] == expected
    assert all(s.startswith("data:image/") for s in page.img_srcs)

    # the published map with the demo's models marked as random: photos as ImageNet, sketches as -Sketch
    doc = json.loads((out / "robustness" / "robustness.json").read_text())
    ours = [p for p in doc["shifts"]["imagenet-sketch"]["points"] if p["group"] == "your runs"]
    sketch = metrics["datasets"]["sketch"]["models"]
    assert {p["model"]: (p["ood_top1"], p["random_weights"]) for p in ours} == {
        m: (round(100 * sketch[m]["top1"], 3), True) for m in MODELS}
    assert [r[0][0] for r in page.tables["robustness"]][:2] == MODELS

    # without its precision.png the precision section draws the same plot again
    from clipcompare.report import build_report

    (out / "precision" / "precision.png").unlink()
    (section,) = build_report([out / "precision"]).sections
    figures = [b for b in section.blocks if b.kind == "figure"]
    assert len(figures) == 1 and figures[0].png[:8] == b"\x89PNG\r\n\x1a\n"


def test_sketch_and_art_renditions_differ_from_the_photo_and_keep_its_size():
    import numpy as np

    from clipcompare.data.photos import art, load_photo, sketch

    photo = load_photo(SAMPLE_PHOTOS[0])
    photo.thumbnail((160, 160))
    s, a = sketch(photo), art(photo)
    assert s.size == a.size == photo.size and s.mode == a.mode == "RGB"
    gray = np.asarray(s.convert("L"))
    assert 0.5 < (gray > 128).mean() < 0.99  # mostly white paper, some dark lines
    colours = {name: len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) for name, im in (("photo", photo), ("art", a))}
    assert colours["art"] < colours["photo"] / 4  # flat colour areas (6 colours, then edges sharpened and inked)
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(photo, dtype=int)).mean() > 5
