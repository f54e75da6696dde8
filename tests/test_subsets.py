"""The 200-class x-axis of ImageNet-R / -A: stored at prediction time, equal to a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.subsets import MISSING_REASON, subset_column, subset_metrics, subset_positions
from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES, imagenet_classes
from clipcompare.models.classifier import ClassSet, create_classifiers
from helpers import make_image_folder

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
# tench (index 0) is in neither subset; 1 is in R only; 6 in both
INDICES = [0, 1, 6]


def test_stored_restricted_argmax_and_clean_top1_equal_a_hand_computation(tmp_path):
    wnids = [imagenet_classes()[i].wnid for i in INDICES]
    data = make_image_folder(tmp_path / "val", wnids, per_class=3)
    out = tmp_path / "run"
    opts = EvaluateOptions(out=out, workers=0, templates="single", allow_random=True, progress=False, device="cpu",
                           batch_size=4)
    result = evaluate([RESNET, CLIP], [f"imagenet={data}"], opts)
    df = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    classifiers = create_classifiers([RESNET, CLIP], templates="single", allow_random=True)
    classes = ClassSet.imagenet()
    for clf in classifiers:
        images = [Image.open(data / p).convert("RGB") for p in df["path"]]
        with torch.inference_mode():
            logits = clf.logits(torch.stack([clf.preprocess(im) for im in images]), classes).numpy()
        targets = df["target"].to_numpy()
        for subset, idx in (("imagenet-r", IMAGENET_R_INDICES), ("imagenet-a", IMAGENET_A_INDICES)):
            by_hand = np.array([max(idx, key=lambda c: row[c]) for row in logits])
            np.testing.assert_array_equal(df[subset_column(clf.name, subset)].to_numpy(), by_hand)
            keep = np.isin(targets, idx)
            expected = {"top1": float((by_hand[keep] == targets[keep]).mean()), "n": int(keep.sum())}
            assert result.metrics["datasets"]["imagenet"]["models"][clf.name]["subset_top1"][subset] == expected
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["datasets"]["imagenet"]["models"][CLIP]["subset_top1"]["imagenet-r"]["n"] == 6
    assert metrics["datasets"]["imagenet"]["models"][CLIP]["subset_top1"]["imagenet-a"]["n"] == 3


def test_clean_top1_counts_only_subset_images():
    positions = {"imagenet-r": np.array([1, 2])}
    df = pd.DataFrame({"target": [0, 1, 2, 2], subset_column("m", "imagenet-r"): [1, 1, 2, 1]})
    assert subset_metrics(df, ["m"], positions) == {"m": {"imagenet-r": {"top1": pytest.approx(2 / 3), "n": 3}}}


def test_old_predictions_without_the_columns_give_the_reason(tmp_path):
    positions = subset_positions("imagenet", list(range(1000)))
    assert sorted(positions) == ["imagenet-a", "imagenet-r"] and subset_positions("imagenet-r", [1, 2]) == {}
    old = pd.DataFrame({"target": [1, 2]})
    got = subset_metrics(old, ["m"], positions)
    assert got["m"]["imagenet-r"] == {"top1": None, "n": 0, "reason": MISSING_REASON}
    # parts from before and after the column: merged with nulls, which also give the reason
    a = pa.table({"path": ["x"], "target": pa.array([1], pa.int32())})
    b = pa.table({"path": ["y"], "target": pa.array([2], pa.int32()),
                  subset_column("m", "imagenet-r"): pa.array([2], pa.int32())})
    merged = pa.concat_tables([a, b], promote_options="default")
    pq.write_table(merged, tmp_path / "p.parquet")
    mixed = pd.read_parquet(tmp_path / "p.parquet")
    assert subset_metrics(mixed, ["m"], {"imagenet-r": positions["imagenet-r"]})["m"]["imagenet-r"]["top1"] is None


def test_clip_head_restricted_to_200_columns_is_the_200_class_head(tiny_clip):
    from clipcompare.models.classifier import ClipClassifier

    clf = ClipClassifier(tiny_clip, templates="single")
    full = clf.head(ClassSet.imagenet())
    sub = clf.head(ClassSet.imagenet(IMAGENET_R_INDICES))
    torch.testing.assert_close(full[:, list(IMAGENET_R_INDICES)], sub, rtol=1e-5, atol=1e-6)
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        restricted = clf.logits(images, ClassSet.imagenet())[:, list(IMAGENET_R_INDICES)].argmax(1)
        own = clf.logits(images, ClassSet.imagenet(IMAGENET_R_INDICES)).argmax(1)
    torch.testing.assert_close(restricted, own)
