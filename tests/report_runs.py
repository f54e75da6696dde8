"""Generated run directories for the report tests: evaluate (controlled predictions), train (the layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipcompare.evaluation.metrics import dataset_metrics, prob_column, top_column
from clipcompare.imagenet.classes import imagenet_classes
from helpers import make_image, make_image_folder

MODEL_A = "resnet50:IMAGENET1K_V1"
MODEL_B = "clip:RN50@openai"
# six ImageNet classes: two fish, two dogs, two vehicles, so WordNet distances vary
WNIDS = ["n01440764", "n01443537", "n02102040", "n02085620", "n03417042", "n04037443"]


def _predictions(
    rng: np.random.Generator, targets: np.ndarray, n_classes: int, p_right: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-5 with the right class first with probability ``p_right``; descending probabilities."""
    top = np.zeros((len(targets), 5), dtype=np.int32)
    for i, t in enumerate(targets):
        order = rng.permutation(n_classes)
        if rng.random() < p_right:
            order = np.concatenate([[t], order[order != t]])
        elif order[0] == t:
            order = np.roll(order, -1)
        top[i] = order[:5]
    probs = np.sort(rng.dirichlet(np.ones(n_classes), len(targets))[:, :5], axis=1)[:, ::-1].astype(np.float32)
    return top, probs


def make_evaluate_run(root: Path, per_class: int = 5, random_b: bool = True, seed: int = 0) -> tuple[Path, Path]:
    """An evaluate run dir (two datasets over the same generated images) and its image root."""
    images = make_image_folder(root / "images", WNIDS, per_class=per_class, size=(80, 60))
    run = root / "run"
    (run / "predictions").mkdir(parents=True)
    classes = imagenet_classes()
    index = {c.wnid: i for i, c in enumerate(classes)}
    indices = [index[w] for w in WNIDS]
    names = [classes[i].name for i in indices]
    paths = [f"{w}/img_{k}.JPEG" for w in WNIDS for k in range(per_class)]
    targets = np.repeat(np.arange(len(WNIDS)), per_class)
    rng = np.random.default_rng(seed)
    metrics = {"datasets": {}, "skipped_images": 0}
    for dataset, (pa_, pb) in {"photos": (0.6, 0.5), "sketches": (0.4, 0.5)}.items():
        df = pd.DataFrame({"path": paths, "target": targets.astype(np.int32)})
        table = pa.table({"path": pa.array(paths), "target": pa.array(targets.astype(np.int32))})
        for model, p in ((MODEL_A, pa_), (MODEL_B, pb)):
            top, probs = _predictions(rng, targets, len(WNIDS), p)
            table = table.append_column(top_column(model), pa.array(list(top), pa.list_(pa.int32(), 5)))
            table = table.append_column(prob_column(model), pa.array(list(probs), pa.list_(pa.float32(), 5)))
            df[top_column(model)] = list(top)
            df[prob_column(model)] = list(probs)
        meta = {"dataset": dataset, "kind": "folder", "classes": names, "imagenet_indices": indices,
                "models": [MODEL_A, MODEL_B]}
        pq.write_table(table.replace_schema_metadata({"clipcompare": json.dumps(meta)}),
                       run / "predictions" / f"{dataset}.parquet")
        entry = {"kind": "folder", "root": str(images), "n_classes": len(WNIDS), "classes_present": len(WNIDS),
                 "n_files": len(paths), "skipped": {"count": 1 if dataset == "sketches" else 0, "by_error": {}}}
        entry.update(dataset_metrics(df, names, indices, models=[MODEL_A, MODEL_B]))
        entry["notes"] = []
        metrics["datasets"][dataset] = entry
    (run / "metrics.json").write_text(json.dumps(metrics))
    models = [{"name": MODEL_A, "family": "torchvision", "pretrained": True},
              {"name": MODEL_B, "family": "clip", "pretrained": not random_b}]
    (run / "run.json").write_text(json.dumps({
        "command": ["clipcompare", "evaluate"], "models": models, "options": {"device": "cpu", "templates": "single"},
        "start_time": "2026-01-01T00:00:00+00:00", "end_time": "2026-01-01T00:01:00+00:00", "status": "complete"}))
    return run, images


TRAIN_RECALLS = [f"{d}_retrieval_recall@{k}" for d in ("text", "image") for k in (1, 5, 10)]


def make_train_run(root: Path, epochs: int = 3, steps_per_epoch: int = 4) -> Path:
    """A train run dir in the layout `clipcompare train` writes, with generated images for the examples."""
    run = root / "train"
    (run / "log").mkdir(parents=True)
    images = root / "coco"
    for k in range(6):
        make_image(images / "val" / f"{k}.jpg", size=(64, 48), seed=100 + k)
    (run / "run.json").write_text(json.dumps({
        "kind": "train", "command": ["clipcompare", "train"], "settings": {"epochs": epochs, "lr": 5e-4},
        "split": {"train": 100, "val": 20}, "versions": {}, "counts": {"trainable": 1234, "frozen": 5678},
        "random_weights": ["clip:RN50@openai"], "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T01:00:00+00:00", "device": "cpu"}))
    with (run / "log" / "steps.jsonl").open("w") as f:
        for step in range(epochs * steps_per_epoch):
            f.write(json.dumps({"epoch": step // steps_per_epoch, "step": step, "loss": 4.0 / (1 + step),
                                "lr": 5e-4 * (1 - step / (epochs * steps_per_epoch)), "temperature": 0.07,
                                "images_per_s": 50.0}) + "\n")
    with (run / "log" / "epochs.jsonl").open("w") as f:
        for e in range(epochs):
            rec = {"epoch": e, "val_loss": 3.0 - e / 2}
            rec.update({k: min(1.0, 0.1 * (e + 1) + 0.01 * j) for j, k in enumerate(TRAIN_RECALLS)})
            rec["mean_recall@1"] = (rec[TRAIN_RECALLS[0]] + rec[TRAIN_RECALLS[3]]) / 2
            f.write(json.dumps(rec) + "\n")
    rows = []
    for role, base in (("start", 0.05), ("trained", 0.3), ("reference", 0.5)):
        row = {"model": f"model-{role}", "role": role, "images": 20, "captions": 100}
        row.update({k: base + 0.02 * j for j, k in enumerate(TRAIN_RECALLS)})
        rows.append(row)
    (run / "retrieval.json").write_text(json.dumps({"split": "val", "rows": rows}))
    examples = [
        {"caption": "a dog on a beach", "root": str(images), "image": "val/2.jpg",
         "top5": ["val/0.jpg", "val/2.jpg", "val/1.jpg", "val/3.jpg", "val/4.jpg"]},
        {"caption": "a red bus", "root": str(images), "image": "val/5.jpg",
         "top5": ["val/0.jpg", "val/1.jpg", "val/2.jpg", "val/3.jpg", "val/4.jpg"]},
    ]
    (run / "retrieval_examples.json").write_text(json.dumps(examples))
    return run
