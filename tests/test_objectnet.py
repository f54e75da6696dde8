"""``--dataset objectnet=``: the release layout, its ImageNet mapping, group scoring and the 1-pixel border."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import ImageOps

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.data import build_dataset, parse_dataset_arg
from clipcompare.data.synthetic import synthetic_image
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import prob_column, top_column
from clipcompare.models.classifier import SupervisedClassifier

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
# ImageNet 2012 id k ↔ PyTorch index PT[k]: a permutation, so a wrong direction of the mapping shows
PT = [(7 * k + 3) % 1000 for k in range(1000)]
# ObjectNet label → its ImageNet 2012 ids (folder names: the label, lower-cased, spaces → _)
MAPPED = {"Alarm clock": [409, 530], "Banana": [954], "Bath towel": [434]}
UNMAPPED = ["Air freshener"]


def _folder(label: str) -> str:
    return label.lower().replace(" ", "_")


def make_objectnet(root: Path, per_class: int = 2, size: tuple[int, int] = (64, 48)) -> tuple[Path, Path]:
    """An ObjectNet 1.0 release (images with a red 1-pixel frame) and a folder of its mapped classes' images
    unframed."""
    release = root / "objectnet-1.0"
    plain = root / "unframed"
    maps = release / "mappings"
    maps.mkdir(parents=True)
    labels = [*MAPPED, *UNMAPPED]
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps({_folder(x): x for x in labels}))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {label: "; ".join(f"imagenet thing {i}" for i in ids) for label, ids in MAPPED.items()}))
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(PT[k]): k for k in range(1000)}))
    (maps / "imagenet_to_label_2012_v2").write_text("".join(f"imagenet thing {k}\n" for k in range(1000)))
    rng = np.random.default_rng(0)
    for label in labels:
        for j in range(per_class):
            img = synthetic_image(rng, size)
            copies = [(release / "images" / _folder(label), ImageOps.expand(img, 1, fill=(255, 0, 0)))]
            if label in MAPPED:
                copies.append((plain / label.lower(), img))
            for folder, im in copies:
                folder.mkdir(parents=True, exist_ok=True)
                im.save(folder / f"{j}.png")
    return root, plain


def test_release_layout_read_as_documented(tmp_path):
    root, _ = make_objectnet(tmp_path)
    ds = build_dataset(parse_dataset_arg(f"objectnet={root}"))
    assert ds.classes.names == ("alarm clock", "banana", "bath towel")  # sorted folders, lower-cased labels
    assert ds.classes.imagenet_indices is None
    assert ds.classes.imagenet_groups == (tuple(sorted(PT[i] for i in (409, 530))), (PT[954],), (PT[434],))
    assert [s.path for s in ds.samples] == [f"{f}/{j}.png" for f in ("alarm_clock", "banana", "bath_towel")
                                            for j in range(2)]
    assert [s.target for s in ds.samples] == [0, 0, 1, 1, 2, 2]
    assert ds.border == 1 and any("map to no ImageNet class" in n for n in ds.notes)
    # the release folder itself is accepted too
    assert build_dataset(parse_dataset_arg(f"objectnet={root / 'objectnet-1.0'}")).samples == ds.samples


def test_group_scoring_by_hand():
    """Class scores are the best logit of each class's ImageNet ids; worked out by hand on 3 images."""
    classes = ClassSet(("a", "b", "c"), imagenet_groups=((1, 2), (5,), (7, 9, 0)))
    logits = torch.full((3, 1000), -5.0)
    logits[0, [1, 2, 5, 7, 9, 0]] = torch.tensor([0.1, 3.0, 2.0, 0.0, 1.0, 0.5])  # a: 3.0, b: 2.0, c: 1.0
    logits[1, [1, 2, 5, 7, 9, 0]] = torch.tensor([0.0, 0.0, 1.0, 0.0, 4.0, 0.0])  # a: 0, b: 1, c: 4
    logits[2, [1, 2, 5, 7, 9, 0]] = torch.tensor([2.5, 0.0, 2.0, 0.0, 0.0, 2.6])  # a: 2.5, b: 2, c: 2.6
    model = torch.nn.Identity()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    clf = SupervisedClassifier(SimpleNamespace(model=model, spec=SimpleNamespace(name="stub"), preprocess=None))
    scores = clf.logits(logits, classes)
    torch.testing.assert_close(scores, torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 4.0], [2.5, 2.0, 2.6]]))
    targets = torch.tensor([0, 2, 0])
    assert (scores.argmax(1) == targets).float().mean().item() == pytest.approx(2 / 3)
    assert clf.supports(classes) is None and clf.supports(ClassSet(("x",))) is not None


def test_evaluate_crops_the_border_and_scores_groups(tmp_path):
    root, plain = make_objectnet(tmp_path)
    opts = EvaluateOptions(out=tmp_path / "run", workers=0, templates="single", allow_random=True, progress=False,
                           device="cpu", batch_size=4)
    result = evaluate([RESNET, CLIP], [f"objectnet={root}", f"folder={plain}"], opts)
    sup = result.models[0]  # resnet18:IMAGENET1K_V1
    on = pd.read_parquet(tmp_path / "run" / "predictions" / "objectnet.parquet")
    flat = pd.read_parquet(tmp_path / "run" / "predictions" / "folder.parquet")
    # CLIP: a head over the 3 names; the framed images with their frame cropped are the unframed ones
    assert (np.stack(on[top_column(CLIP)]) == np.stack(flat[top_column(CLIP)])).all()
    np.testing.assert_array_equal(np.stack(on[prob_column(CLIP)]), np.stack(flat[prob_column(CLIP)]))
    # the supervised model: best logit among each class's ImageNet ids, recomputed here on the unframed files
    from PIL import Image

    from clipcompare.models.classifier import create_classifier

    torch.manual_seed(0)
    ref = create_classifier(RESNET, allow_random=True)
    files = sorted(p for p in plain.rglob("*.png"))
    groups = [sorted(PT[i] for i in ids) for ids in MAPPED.values()]
    with torch.inference_mode():
        full = ref.model(torch.stack([ref.preprocess(Image.open(f).convert("RGB")) for f in files]))
    best = torch.stack([full[:, g].max(dim=1).values for g in groups], dim=1)
    assert (np.stack(on[top_column(sup)])[:, 0] == best.argmax(1).numpy()).all()
    top1 = float((best.argmax(1).numpy() == on["target"].to_numpy()).mean())
    m = result.metrics["datasets"]["objectnet"]["models"]
    assert m[sup]["top1"] == pytest.approx(top1) and m[sup]["n"] == 6
    assert m[CLIP]["top1"] == result.metrics["datasets"]["folder"]["models"][CLIP]["top1"]


def test_objectnet_feeds_the_robustness_map(tmp_path):
    from clipcompare.robustness.runs import read_run

    root, plain = make_objectnet(tmp_path, per_class=1)
    imagenet = tmp_path / "in"
    for k, wnid in enumerate(("n01440764", "n01443537")):
        (imagenet / wnid).mkdir(parents=True)
        synthetic_image(np.random.default_rng(k), (64, 48)).save(imagenet / wnid / "a.png")
    opts = EvaluateOptions(out=tmp_path / "run", workers=0, templates="single", allow_random=True, progress=False,
                           device="cpu")
    evaluate([CLIP], [f"imagenet={imagenet}", f"objectnet={root}"], opts)
    run = read_run(tmp_path / "run")
    [point] = run.points
    assert point.shift == "objectnet" and point.model == CLIP and point.id_top1 is not None


@pytest.mark.parametrize("missing", ["objectnet_to_imagenet_1k.json", "imagenet_to_label_2012_v2"])
def test_missing_mapping_file_is_one_line(tmp_path, capsys, missing):
    root, _ = make_objectnet(tmp_path, per_class=1)
    (root / "objectnet-1.0" / "mappings" / missing).unlink()
    argv = ["evaluate", "-m", CLIP, "-d", f"objectnet={root}", "--out", str(tmp_path / "run"), "--allow-random"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"mapping file {missing} not found" in err
    assert not (tmp_path / "run").exists()
