"""A ``train`` run directory as a section: curves, recalls per epoch, start / trained / reference, examples.

Layout read (written by ``clipcompare train``)::

    run.json                      {"kind": "train", "settings", "counts", "random_weights", "device", ...}
    log/steps.jsonl               per optimizer step: epoch, step, loss, lr, temperature, images_per_s
    log/epochs.jsonl              per epoch: val_loss and the six recalls + mean_recall@1
    retrieval.json                {"split", "rows": [{"model", "role", six recalls, "images", "captions"}]}
    retrieval_examples.json       [{"caption", "root", "image", "top5"}]

``text_retrieval`` is image → text and ``image_retrieval`` text → image (CLIP_benchmark's names).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clipcompare.report import plots
from clipcompare.report.blocks import (
    Cell,
    Figure,
    Gallery,
    Heading,
    ReportOptions,
    Section,
    Table,
    Text,
    Tile,
    num,
    pct,
    read_json,
    run_label,
    thumbnail,
)
from clipcompare.retrieval import RECALL_KEYS

log = logging.getLogger(__name__)

def is_run(path: Path) -> bool:
    if not (path / "run.json").is_file():
        return False
    try:
        return json.loads((path / "run.json").read_text(encoding="utf-8")).get("kind") == "train"
    except (OSError, ValueError, AttributeError):
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines log; unreadable lines (torn by a kill, damaged bytes) are skipped and counted.

    A partly damaged log still gives its readable records: the report shows what survives, and one
    warning says how many lines it could not read.
    """
    if not path.is_file():
        return []
    out, bad = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            record = None
        if isinstance(record, dict):
            out.append(record)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line%s", path, bad, "" if bad == 1 else "s")
    return out


def build(run_dir: Path, options: ReportOptions) -> Section:
    run = read_json(run_dir / "run.json")
    counts = run.get("counts", {})
    settings = run.get("settings", {})
    section = Section(
        "train", f"train: {run_label(run_dir)}", str(run_dir), random_weights=list(run.get("random_weights", [])),
        facts=[("device", str(run.get("device", "?"))),
               ("parameters", f"{counts.get('trainable', 0):,} trainable, {counts.get('frozen', 0):,} frozen"),
               ("settings", ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, (dict, list)))),
               ("run", f"{run.get('started', '?')} → {run.get('finished') or 'unfinished'}")],
    )
    steps = [s for s in read_jsonl(run_dir / "log" / "steps.jsonl") if "step" in s]
    if steps:
        section.blocks.append(Figure("loss, learning rate and temperature", plots.training_curves(steps),
                                     f"{len(steps):,} optimizer steps"))
    epochs = [e for e in read_jsonl(run_dir / "log" / "epochs.jsonl") if "epoch" in e]
    if epochs:
        keys = [k for k in (*RECALL_KEYS, "mean_recall@1") if any(e.get(k) is not None for e in epochs)]
        section.blocks.append(Figure("recalls per epoch", plots.recall_curves(epochs, keys)))
        section.blocks.append(Table(
            "validation per epoch", ["epoch", "val loss", *(_short(k) for k in keys)],
            [[num(e["epoch"], "d"), num(e.get("val_loss"), ".4f"), *(pct(e.get(k), 1) for k in keys)] for e in epochs],
            [True] * (2 + len(keys)), role="epochs"))
    if (run_dir / "retrieval.json").is_file():
        section.blocks.append(retrieval_table(read_json(run_dir / "retrieval.json")))
    if (run_dir / "retrieval_examples.json").is_file():
        examples = read_json(run_dir / "retrieval_examples.json")[: options.retrieval_examples]
        if examples:
            section.blocks.append(Heading("retrieval examples (text → image)", 4))
        for ex in examples:
            section.blocks.append(example_gallery(ex, options))
    if not section.blocks:
        section.blocks.append(Text("nothing logged yet"))
    return section


def _short(key: str) -> str:
    """``text_retrieval_recall@5`` → ``image→text R@5`` (CLIP_benchmark's text retrieval is image → text)."""
    if key == "mean_recall@1":
        return "mean R@1 %"
    direction, _, k = key.partition("_retrieval_recall@")
    return f"{'image→text' if direction == 'text' else 'text→image'} R@{k} %"


def retrieval_table(data: dict[str, Any]) -> Table:
    rows = [[Cell(r.get("model", "?")), Cell(r.get("role", "")), *(pct(r.get(k), 1) for k in RECALL_KEYS),
             num(r.get("images"), ","), num(r.get("captions"), ",")] for r in data.get("rows", [])]
    return Table(f"retrieval on {data.get('split', '?')}: start / trained / reference",
                 ["model", "role", *(_short(k) for k in RECALL_KEYS), "images", "captions"], rows,
                 [False, False] + [True] * (len(RECALL_KEYS) + 2), role="retrieval")


def example_gallery(example: dict[str, Any], options: ReportOptions) -> Gallery:
    """A caption and its top-5 retrieved images; the true image is marked."""
    root = Path(example.get("root", ""))
    true = example.get("image")
    tiles = []
    for rank, rel in enumerate(example.get("top5", []), 1):
        jpeg, missing = thumbnail(root / rel, options)
        tiles.append(Tile(rel, jpeg, f"#{rank}" + (" — the true image" if rel == true else ""), marked=rel == true,
                          missing=missing))
    found = true in example.get("top5", [])
    if not found and true:  # shown after the five, so the reader sees what should have come up
        jpeg, missing = thumbnail(root / true, options)
        tiles.append(Tile(true, jpeg, "the true image (not retrieved)", marked=True, missing=missing))
    return Gallery(f"“{example.get('caption', '')}”", tiles, role="retrieval-example",
                   note="" if found else "the true image is not among the top 5; it is shown last")
