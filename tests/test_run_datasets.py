"""run.json records each dataset so that ``build_dataset(DatasetSpec(kind, Path(root), option, name))``
rebuilds it (what ``explain --run`` and ``report`` do), for every dataset kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clipcompare.data import DatasetSpec, build_dataset
from clipcompare.errors import UserError
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES, imagenet_classes
from helpers import make_image_folder
from test_objectnet import make_objectnet
from test_wds import CLASSES, export_folder

CLIP = "clip:tiny-RN-quickgelu"


def test_run_json_rebuilds_every_dataset_kind(tmp_path, monkeypatch):
    wnids = [c.wnid for c in imagenet_classes()]
    folder = make_image_folder(tmp_path / "folder", ["a", "b"], per_class=1)
    mapping = tmp_path / "map.txt"
    mapping.write_text("a\tgoldfish\nb\ttench\n")
    wds = export_folder(make_image_folder(tmp_path / "for-wds", CLASSES, per_class=1), tmp_path / "wds", CLASSES)
    shutil.copytree(wds / "test", wds / "train")  # a second split: the one asked for must come back
    onet, _ = make_objectnet(tmp_path / "on", per_class=1)
    args = [
        f"imagenet={make_image_folder(tmp_path / 'in', wnids[:2], per_class=1)}",
        f"imagenet-v2={make_image_folder(tmp_path / 'v2', ['0', '7'], per_class=1)}",
        f"imagenet-sketch={make_image_folder(tmp_path / 'sk', wnids[:2], per_class=1)}",
        f"imagenet-r={make_image_folder(tmp_path / 'r', [wnids[i] for i in IMAGENET_R_INDICES[:2]], per_class=1)}",
        f"imagenet-a={make_image_folder(tmp_path / 'a', [wnids[i] for i in IMAGENET_A_INDICES[:2]], per_class=1)}",
        f"folder={folder}", f"folder={folder}:map.txt",  # the mapping file relative to the working directory
        f"wds={wds}:train", f"objectnet={onet}",
    ]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = evaluate([CLIP], args, EvaluateOptions(out=out, workers=0, templates="single", allow_random=True,
                                                    progress=False, device="cpu"))
    run = json.loads((out / "run.json").read_text())
    entries = {e["name"]: e for e in run["datasets"]}
    assert {n: e.get("option") for n, e in entries.items() if "option" in e} == {
        "folder-2": str(mapping.resolve()), "wds": "train"}
    settings = {e["name"]: e.get("option") for e in run["settings"]["datasets"] if "option" in e}
    assert settings == {"folder-2": str(mapping.resolve()), "wds": "train"}
    monkeypatch.chdir(Path("/"))  # rebuilt from elsewhere: nothing relative to where evaluate ran
    for ds in result.datasets:
        entry = entries[ds.name]
        again = build_dataset(DatasetSpec(entry["kind"], Path(entry["root"]), entry.get("option"), entry["name"]))
        assert (again.name, again.kind, again.root.resolve()) == (ds.name, ds.kind, ds.root.resolve())
        assert again.samples == ds.samples and again.classes.key == ds.classes.key, ds.name
        assert again.border == ds.border and again.option == ds.option
    assert [s.path for s in next(d for d in result.datasets if d.kind == "wds").samples][0].startswith("train/")


def test_a_folder_run_recorded_before_options_resumes(tmp_path, monkeypatch):
    """Run directories written before run.json recorded a folder's mapping file ("option") still resume with
    their original arguments; a different mapping is still refused (its classes differ)."""
    folder = make_image_folder(tmp_path / "folder", ["a", "b"], per_class=1)
    (tmp_path / "map.txt").write_text("a\tgoldfish\nb\ttench\n")
    (tmp_path / "other.txt").write_text("a\ttench\nb\tgoldfish\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    options = EvaluateOptions(out=out, workers=0, templates="single", allow_random=True, progress=False,
                              device="cpu")
    evaluate([CLIP], [f"folder={folder}:map.txt"], options)
    run = json.loads((out / "run.json").read_text())
    for entry in run["settings"]["datasets"]:
        del entry["option"]  # as an older clipcompare wrote it
    (out / "run.json").write_text(json.dumps(run))
    evaluate([CLIP], [f"folder={folder}:map.txt"], options)  # resumes: no UserError
    with pytest.raises(UserError, match="different settings"):
        evaluate([CLIP], [f"folder={folder}:other.txt"], options)
