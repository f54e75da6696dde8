"""Goal: `explain` of two models within 1.5x a bare forward + backward of the same models on CPU.

Measured in one run on random weights: ``explain(...)`` (each model's own preprocessing, batched
Grad-CAM maps of the top-1 class over the 1000 ImageNet classes, the maps mapped back onto the
original pixels, a side-by-side PNG and an .npz per image, explain.json) for ResNet-50 and CLIP RN50
on generated 500×375 images, against the bare cost of the same two loaded models on the same
images already preprocessed: a forward to the logits and a backward of the top-1 logits (as
training would, to the weights). Both sides get the same models, already loaded, their zero-shot
head already built (a model loads once per command; the head is cached on disk). The medians of
interleaved rounds are compared; the maps-only time (no files) is printed beside.

    .venv/bin/python benchmarks/explain_speed.py                      # exits 1 if the goal is missed
    .venv/bin/python benchmarks/explain_speed.py --models resnet18 clip:tiny-RN-quickgelu --images 4 --rounds 1
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from goals import report_goals  # benchmarks/goals.py, beside this script

from clipcompare.classes import ClassSet
from clipcompare.data.synthetic import synthetic_image
from clipcompare.explain import ImageItem, explain, explain_model
from clipcompare.models.classifier import create_classifiers
from clipcompare.models.spec import DEFAULT_MODELS

GOAL = 1.5  # explain / bare forward + backward


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model specs (default: %(default)s)")
    parser.add_argument("--images", type=int, default=16, help="generated 500x375 images (default 16)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch on both sides (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians compared (default 3)")
    return parser


def bare_seconds(models, inputs: list[list[torch.Tensor]]) -> float:
    """Forward to the logits and backward of the top-1 logits, per model and batch: the bare cost."""
    start = time.perf_counter()
    for model, batches in zip(models, inputs):
        for batch in batches:
            model.logits.zero_grad(set_to_none=True)
            logits = model.logits(batch)
            logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    return time.perf_counter() - start


def explain_seconds(models, items, classes, batch: int, out: Path | None) -> float:
    start = time.perf_counter()
    explain(models, items, classes, out=out, batch_size=batch)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rng = np.random.default_rng(0)
    images = [synthetic_image(rng, (500, 375)) for _ in range(args.images)]
    items = [ImageItem(Path(f"img_{i:03d}.jpg"), im) for i, im in enumerate(images)]
    classes = ClassSet.imagenet()
    classifiers = create_classifiers(args.models, templates="single", allow_random=True)
    models = [explain_model(clf, classes) for clf in classifiers]  # builds the zero-shot heads, untimed
    inputs = [[torch.stack([m.preprocess(im) for im in images[s:s + args.batch_size]])
               for s in range(0, len(images), args.batch_size)] for m in models]
    explain_seconds(models, items[:2], classes, args.batch_size, None)  # warm-up: first-call costs on both sides
    bare_seconds(models, [[batches[0][:2]] for batches in inputs])
    bare, full, maps_only = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(max(1, args.rounds)):
            bare.append(bare_seconds(models, inputs))
            full.append(explain_seconds(models, items, classes, args.batch_size, Path(tmp) / f"round{r}"))
            maps_only.append(explain_seconds(models, items, classes, args.batch_size, None))
    b, f, m = (statistics.median(x) for x in (bare, full, maps_only))
    print(f"explain of {', '.join(mod.name for mod in models)} on {args.images} generated 500x375 images, "
          f"batch {args.batch_size}, {len(classes)} classes, {args.rounds} rounds (medians)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"  bare forward + backward   {b:7.2f} s  ({args.images / b:6.1f} images/s)")
    print(f"  explain, files written    {f:7.2f} s  ({args.images / f:6.1f} images/s)  ratio {f / b:.2f}")
    print(f"  explain, maps only        {m:7.2f} s  ({args.images / m:6.1f} images/s)  ratio {m / b:.2f}")
    return report_goals([(f"explain within {GOAL}x the bare forward + backward ({f / b:.2f}x)", f / b <= GOAL)])


if __name__ == "__main__":
    raise SystemExit(main())
