"""`clipcompare demo`: the whole tool on real photographs, what `make demo` runs.

1. architecture (`inspect`) of ResNet-50 and CLIP RN50; 2. classification of the photos that ship
with scikit-image and scikit-learn (CLIP with free-text labels and with the 1000 ImageNet classes,
ResNet-50 with the ImageNet classes); 3. `evaluate` on photo / sketch / art renditions of those
photos whose ImageNet class is clear, and `explain --run` of it (Grad-CAM of the images only one model gets
right, shown in the report's galleries); 4. a small `precision` run; 5. `robustness`: the published
accuracies of 1,677 models with the demo's own marked (photos standing in for ImageNet, sketches for
ImageNet-Sketch), so the demo shows something true even with random weights; 6. `report` of it all as
one HTML page, whose path is the last line printed. Pretrained weights are used when they are in the caches;
otherwise the models run with random weights and the output says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clipcompare.cli.common import add_model_args, ensure_out_dir, int_at_least, model_specs
from clipcompare.models.spec import DEFAULT_MODELS

if TYPE_CHECKING:  # the command imports torch and the tasks when it runs, so --help stays light
    from clipcompare.evaluation import EvaluationResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="ResNet-50 vs CLIP RN50 end to end on real photos, ending in an HTML report",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--photos", type=int_at_least(1), default=None, metavar="N",
                   help="use only the first N photos that have an ImageNet class (default: all; for quick checks)")
    p.add_argument("--views", type=int_at_least(1), default=2, metavar="N",
                   help="views (the photo, mirrored / cropped variants) per photo and rendition (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_model_args(p, DEFAULT_MODELS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:

    from clipcompare.architecture import build_report
    from clipcompare.cli.inspect_cmd import render
    from clipcompare.data.photos import SAMPLE_PHOTOS, write_photos
    from clipcompare.evaluation import resolve_device
    from clipcompare.report import build_report as build_html_report
    from clipcompare.report import write_html

    ensure_out_dir(args.out)
    specs = model_specs(args)
    device = resolve_device(args.device)
    classed = [p for p in SAMPLE_PHOTOS if p.wnid is not None][: args.photos]
    photos = classed + [p for p in SAMPLE_PHOTOS if p.wnid is None][: args.photos]
    random: set[str] = set()
    clock = _Clock()

    print("== 1. Architecture (clipcompare inspect) ==")
    print("\n".join(render(build_report(specs))))
    clock.lap()

    print(f"\n== 2. Classification (clipcompare classify) of {len(photos)} photos from scikit-image and "
          "scikit-learn ==")
    paths = write_photos(args.out / "photos", photos)
    random |= _classify(specs, photos, paths, device)
    clock.lap()

    print(f"\n== 3. Evaluation (clipcompare evaluate): {len(classed) * args.views} images of {len(classed)} ImageNet "
          "classes as photo, sketch (Canny edges) and art (posterised) ==")
    result = _evaluate(args, specs, device, classed)
    random |= set(result.random_weights)
    clock.lap()

    print("\n== 3b. Where each model looks (clipcompare explain --run): Grad-CAM of the images only one model "
          "gets right ==")
    _explain(result.out, specs, device)
    clock.lap()

    print("\n== 4. Precision (clipcompare precision): fp32 vs bf16" + (" vs fp16" if device.type == "cuda" else "")
          + ", batch 1 and 4 ==")
    random |= _precision(args.out, specs, device, classed)
    clock.lap()

    print("\n== 5. Robustness (clipcompare robustness): the demo's models among 1,677 published ones ==")
    robustness_dir = _robustness(result.out, args.out / "robustness")
    clock.lap()

    print("\n== 6. Report (clipcompare report) ==")
    report = write_html(build_html_report([result.out, args.out / "precision", robustness_dir],
                                          title="clipcompare demo"), args.out / "report.html")
    clock.lap()
    print(f"demo took {clock.total():.0f} s")
    if random:
        print(f"note: {', '.join(sorted(random))} ran with RANDOM weights (none cached, no network), so every accuracy "
              "and prediction above is meaningless. Put the weights where `clipcompare classify IMAGE` tells you and "
              "run `make demo` again.")
    print("open the report (self-contained, works offline):")
    print(report)
    return 0


def _evaluate(args: argparse.Namespace, specs, device, classed) -> EvaluationResult:
    """Step 3: the classed photos as three domains (photo, sketch, art), evaluated; the summary printed."""
    from clipcompare.cli.evaluate_cmd import format_summary, summary_rows
    from clipcompare.data.base import DatasetSpec
    from clipcompare.data.photos import write_domains
    from clipcompare.evaluation import EvaluateOptions, evaluate

    data = write_domains(args.out / "data", classed, args.views)
    result = evaluate(
        specs, [DatasetSpec("folder", folder, name=domain) for domain, folder in data.items()],
        EvaluateOptions(out=args.out / "evaluate", device=str(device), templates="single", allow_random=True,
                        workers=0, command=("clipcompare", "demo")),
    )
    print(format_summary(result.metrics, summary_rows(result.metrics), result.out))
    return result


def _precision(out: Path, specs, device, classed) -> set[str]:
    """Step 4: fp32 vs bf16 (and fp16 on CUDA) on four photos, saved and printed; the models with random weights."""
    from clipcompare.cli.precision_cmd import format_report
    from clipcompare.precision import PrecisionConfig, save_report
    from clipcompare.precision import evaluate as precision_evaluate

    config = PrecisionConfig(
        dtypes=("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"), batch_sizes=(1, 4),
        device=device.type, labels=tuple(p.wnid for p in classed), images=out / "photos", max_images=4,
        warmup=1, min_runs=3, min_time_s=0.2, max_time_s=2.0,
    )
    precision = precision_evaluate(specs, config, out_dir=out / "precision", allow_random=True)
    save_report(precision, out / "precision")
    print(format_report(precision))
    return {m["model"] for m in precision["models"] if not m["pretrained"]}


def _explain(evaluate_dir: Path, specs, device) -> None:
    """`explain --run` of the evaluate run: the report's galleries then show both models' maps."""
    from clipcompare.cache import default_cache_dir
    from clipcompare.cli.explain_cmd import format_result
    from clipcompare.explain.gallery import explain_run, plan_run, run_models
    from clipcompare.models.classifier import create_classifiers

    _, _, templates = run_models(evaluate_dir)
    classifiers = create_classifiers(specs, templates=templates, cache_dir=default_cache_dir(), allow_random=True,
                                     device=device)
    print("\n".join(format_result(explain_run(plan_run(evaluate_dir), classifiers))))


# the demo's renditions as the shifts they imitate, to mark its models on the published map
DEMO_AS_KINDS = {"photo": "imagenet", "sketch": "imagenet-sketch"}


def _robustness(evaluate_dir: Path, out: Path) -> Path:
    """The published map with the demo's models placed (as `clipcompare robustness --out`); its directory."""
    from clipcompare.cli.common import format_table
    from clipcompare.robustness import evaluate, read_run, summary_table
    from clipcompare.robustness.plots import write_map

    result = evaluate([read_run(evaluate_dir, as_kinds=DEMO_AS_KINDS)])
    header, rows, notes = summary_table(result)
    print("\n".join(format_table(header, rows, [False, False] + [True] * (len(header) - 2), rule=True)))
    for note in notes:
        print(f"  {note}")
    write_map(result, out)
    print(f"wrote {out}/ (robustness.json, one plot per shift)")
    return out


class _Clock:
    """Seconds per step, printed after it, so a slow step shows where the time went."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self.start = self.last = self._now()

    def lap(self) -> None:
        now = self._now()
        print(f"[{now - self.last:.1f} s]")
        self.last = now

    def total(self) -> float:
        return self._now() - self.start


def _classify(specs, photos, paths, device) -> set[str]:
    """Print each photo's top-3 from CLIP over free-text labels, and from both models over ImageNet; returns
    the models that ran with random weights."""
    from clipcompare.cache import default_cache_dir
    from clipcompare.classes import ClassSet
    from clipcompare.classify import classify, open_images
    from clipcompare.models.classifier import create_classifiers

    classifiers = create_classifiers(specs, templates="single", cache_dir=default_cache_dir(), allow_random=True,
                                     device=device)
    files = [paths[p.name] for p in photos]
    images = open_images(files)
    free, free_notes = classify(classifiers, files, ClassSet.from_labels([p.label for p in photos]), top_k=3,
                                images=images)
    imagenet, _ = classify(classifiers, files, ClassSet.imagenet(), top_k=3, images=images)
    for photo, by_label, by_imagenet in zip(photos, free, imagenet):
        truth = f"ImageNet {photo.wnid}" if photo.wnid else "no ImageNet class"
        print(f"{photo.name} ({photo.source}; {truth}; free text: {photo.label!r})")
        for title, res in (("free text", by_label), ("ImageNet", by_imagenet)):
            for model, preds in res.predictions.items():
                top = ", ".join(f"{p.label} {p.prob:.1%}" + (" ✓" if _is_right(photo, p) else "") for p in preds)
                print(f"  {title:9}  {model:28} {top}")
    print("(✓: the photo's class)")
    for note in free_notes:
        print(f"note (free text): {note}")
    return {c.name for c in classifiers if not c.pretrained}


def _is_right(photo, prediction) -> bool:
    from clipcompare.imagenet.classes import index_of_wnid

    if prediction.imagenet_index is None:
        return prediction.label == photo.label
    return photo.wnid is not None and prediction.imagenet_index == index_of_wnid(photo.wnid)
