"""`clipcompare demo` (what `make demo` runs), driven with small models."""

from __future__ import annotations

import json

from clipcompare.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--per-class", "1", "--device", "cpu",
                 "-m", "resnet18", "-m", "clip:tiny-RN-quickgelu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Architecture" in text and "Evaluation" in text and "RANDOM weights" in text
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    models = metrics["datasets"]["imagenet"]["models"]
    assert set(models) == {"resnet18:IMAGENET1K_V1", "clip:tiny-RN-quickgelu"}
    assert all(m["n"] == 10 for m in models.values())  # 10 seed classes x 1 image
    assert len(list((out / "data").iterdir())) == 10
