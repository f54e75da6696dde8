"""`clipcompare classify`: top-k labels for a few images from CLIP (zero-shot) and ResNet-50."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipcompare.cli.common import add_model_args, label_list, model_specs, print_json
from clipcompare.models.spec import DEFAULT_MODELS

RAW_COSINE_HELP = (
    "softmax over raw cosine similarities with no temperature, as the seed notebooks did. Cosines "
    "between CLIP image and text embeddings differ by only ~0.01-0.1, so this flattens every "
    "distribution (top probability ~0.11 over 10 classes). The default multiplies by the model's "
    "own learned logit scale (100 for OpenAI CLIP), the temperature CLIP was trained with, which "
    "gives calibrated-looking probabilities. Affects CLIP models only."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="top-k labels for images (CLIP zero-shot; ResNet-50 when labels are ImageNet classes)",
        description="Classify images with CLIP zero-shot and, when every label is an ImageNet class, with the "
        "supervised model too (its 1000 logits restricted to those classes).",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files, or folders (the image files directly in them)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=label_list, help='comma-separated labels, e.g. "dog,cat,bald eagle"')
    labels.add_argument("--imagenet", action="store_true", help="the 1000 ImageNet classes (default)")
    labels.add_argument("--seed-classes", action="store_true",
                        help="the seed notebooks' 10 ImageNet classes (bald eagle, axolotl, ... leopard)")
    p.add_argument("--templates", default="openai",
                   help="prompt templates: single ('a photo of a {}.'), openai (80-template ensemble, default) or a file")
    p.add_argument("--top", type=int, default=5, help="how many predictions per image and model (default 5)")
    p.add_argument("--raw-cosine", action="store_true", help=RAW_COSINE_HELP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16|fp16",
                   help="cast the models to this dtype, as `precision` does (default fp32)")
    p.add_argument("--allow-random", action="store_true",
                   help="use random weights when pretrained weights are missing (for dry runs; results are meaningless)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_args(p, default=DEFAULT_MODELS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.cache import default_cache_dir
    from clipcompare.classes import ClassSet
    from clipcompare.classify import classify, read_inputs, results_to_dict, skipped_note
    from clipcompare.dtypes import DTYPES, dtype_support, parse_dtype
    from clipcompare.errors import UserError
    from clipcompare.evaluation import resolve_device
    from clipcompare.imagenet.classes import SEED_LABELS
    from clipcompare.models.classifier import create_classifiers

    if args.top < 1:
        raise UserError("--top must be at least 1")
    precision = parse_dtype(args.precision)
    device = resolve_device(args.device)  # an unusable device is its own one-line error
    support = dtype_support(precision, device.type)
    if not support.supported:
        raise UserError(f"--precision {precision} on {device}: {support.note}")
    # a bad file named fails (and unreadable ones in folders are skipped) before minutes of model loading
    paths, images, skipped = read_inputs(args.images)
    if args.labels is not None:
        classes = ClassSet.from_labels(args.labels)
        _refuse_one_class_twice(args.labels, classes)
    elif args.seed_classes:
        classes = ClassSet.from_labels(SEED_LABELS)
    else:
        classes = ClassSet.imagenet()
    classifiers = create_classifiers(model_specs(args), templates=args.templates, cache_dir=default_cache_dir(),
                                     allow_random=args.allow_random, device=device, dtype=DTYPES[precision])
    results, notes = classify(classifiers, paths, classes, top_k=args.top, raw_cosine=args.raw_cosine,
                              images=images)
    random = [c.name for c in classifiers if not c.pretrained]
    notes += [f"{n}: random weights (results are meaningless)" for n in random]
    if support.note:
        notes.append(f"precision {precision}: {support.note}")
    if skipped:
        notes.append(skipped_note(skipped))
    if args.json:
        print_json({"classes": len(classes), "templates": args.templates, "raw_cosine": args.raw_cosine,
                    "precision": precision, "results": results_to_dict(results), "notes": notes,
                    "skipped": [{"path": str(p), "reason": r} for p, r in skipped]})
        return 0
    for res in results:
        print(res.path)
        for model, preds in res.predictions.items():
            print(f"  {model}")
            for rank, pr in enumerate(preds, 1):
                print(f"    {rank}. {pr.label:<32} {pr.prob:7.2%}")
    print(f"precision: {precision}")
    for note in notes:
        print(f"note: {note}")
    return 0


def _refuse_one_class_twice(labels: list[str], classes) -> None:
    """Two labels naming one ImageNet class (``tench``, ``n01440764``) would split its probability."""
    from clipcompare.errors import UserError

    first: dict[int, str] = {}
    for label, index in zip(labels, classes.imagenet_indices or ()):
        if index in first:
            raise UserError(f"--labels: {label!r} and {first[index]!r} name the same ImageNet class")
        first[index] = label
