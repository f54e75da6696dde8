"""`clipcompare demo`: the main job on a built-in default, what `make demo` runs.

Architecture comparison of ResNet-50 and CLIP RN50, then an end-to-end `evaluate` of both on
generated images of the seed notebooks' 10 ImageNet classes. Pretrained weights are used when
they are in the caches; otherwise the models run with random weights and the output says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipcompare.cli.common import add_model_args, ensure_out_dir, model_specs
from clipcompare.models.spec import DEFAULT_MODELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compare ResNet-50 and CLIP RN50 end to end on a built-in default",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument("--per-class", type=int, default=3, help="generated images per class (default 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_model_args(p, DEFAULT_MODELS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.cli.evaluate_cmd import format_summary, summary_rows
    from clipcompare.cli.inspect_cmd import render
    from clipcompare.data.synthetic import make_image_folder
    from clipcompare.errors import UserError
    from clipcompare.evaluate import EvaluateOptions, evaluate
    from clipcompare.imagenet.classes import SEED_LABELS, imagenet_classes
    from clipcompare.models.classifier import ClassSet
    from clipcompare.models.inspect import build_report

    if args.per_class < 1:
        raise UserError("--per-class must be at least 1")
    ensure_out_dir(args.out)
    print("== 1. Architecture (clipcompare inspect) ==")
    specs = model_specs(args)
    report = build_report(specs)
    print("\n".join(render(report)))

    seed = ClassSet.from_labels(SEED_LABELS)
    wnids = [imagenet_classes()[i].wnid for i in seed.imagenet_indices]
    data = make_image_folder(args.out / "data", wnids, args.per_class)
    print(f"\n== 2. Evaluation (clipcompare evaluate) on {len(wnids) * args.per_class} generated images "
          f"of {len(wnids)} ImageNet classes in {data} ==")
    result = evaluate(
        specs, [f"imagenet={data}"],
        EvaluateOptions(out=args.out / "run", device=args.device, templates="single", allow_random=True,
                        workers=0, command=("clipcompare", "demo")),
    )
    print(format_summary(result.metrics, summary_rows(result.metrics), result.out))
    if result.random_weights:
        print(f"\nnote: {', '.join(result.random_weights)} ran with RANDOM weights (none cached, no network), so the accuracies "
              "above are meaningless; the images are generated too. Put the weights where `clipcompare classify "
              "IMAGE` tells you, then run `clipcompare evaluate --dataset imagenet=/path/to/val ...` on real data.")
    return 0
