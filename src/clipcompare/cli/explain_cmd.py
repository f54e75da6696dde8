"""`clipcompare explain`: where each model looks (Grad-CAM side by side) and the pointing game."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipcompare.cli.common import add_model_args, int_at_least, label_list, model_specs, print_json
from clipcompare.models.spec import DEFAULT_MODELS
from clipcompare.rundir import GALLERY_PER_CLASS, GALLERY_TOTAL

METHOD_NAMES = ("gradcam", "gradcam++", "scorecam", "eigencam")  # clipcompare.explain.METHODS, without torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="class-activation maps (Grad-CAM) of each model side by side; pointing game with --boxes",
        description="For every image and model, a class-activation map (pytorch-grad-cam) of the model's top-1 class "
        "(or --class): a supervised model's logit, a CLIP-like model's zero-shot logit. Each model sees its own "
        "preprocessing; maps are mapped back onto the original image, so models with different crops line up. "
        "Writes a side-by-side PNG per image, the maps (.npz) and explain.json to --out. With --boxes: the pointing "
        "game (15-px tolerance) and the share of each map's energy inside the boxes. With --run RUN_DIR: the images "
        "of an evaluate run's \"only one model right\" galleries, which the report then shows with their maps.",
    )
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE",
                   help="image files, or folders (the image files directly in them)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=label_list, help='comma-separated labels, e.g. "dog,cat,bald eagle"')
    labels.add_argument("--imagenet", action="store_true", help="the 1000 ImageNet classes (default)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="explain this class for every image (default: each model's top-1)")
    p.add_argument("--method", choices=METHOD_NAMES, default="gradcam", help="the CAM method (default gradcam)")
    p.add_argument("--layer", metavar="NAME",
                   help="the layer to take maps from, e.g. layer4[-1] or visual.transformer.resblocks[-1].ln_1 "
                        "(default: chosen per architecture)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (PNGs, maps/*.npz, explain.json); with --run default RUN_DIR/explain")
    p.add_argument("--boxes", type=Path, metavar="FILE",
                   help="bounding boxes: the ILSVRC2012 val XML folder, or a CSV 'path,x0,y0,x1,y1[,class]'")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", dest="run_dir",
                   help="explain the images of an evaluate run's \"only one model right\" galleries")
    p.add_argument("--gallery-per-class", type=int_at_least(1), default=GALLERY_PER_CLASS, metavar="N",
                   help=f"with --run: as report's option of that name (default {GALLERY_PER_CLASS})")
    p.add_argument("--gallery-size", type=int_at_least(0), default=GALLERY_TOTAL, metavar="N",
                   help=f"with --run: as report's option of that name (default {GALLERY_TOTAL})")
    p.add_argument("--templates", default=None, metavar="single|openai|dataset|FILE",
                   help="CLIP prompt templates (default: openai's 80; with --run: the run's; dataset: each wds= set's "
                   "own zeroshot_classification_templates.txt, openai's where it has none)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-random", action="store_true",
                   help="use random weights when pretrained weights are missing (for dry runs; maps are meaningless)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_args(p, default=DEFAULT_MODELS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.errors import UserError

    if args.run_dir is None:
        if not args.images:
            raise UserError("name images or folders to explain, or an evaluate run with --run RUN_DIR")
        if args.out is None:
            raise UserError("--out DIR is required (where the PNGs, maps and explain.json go)")
        result = _explain_images(args)
    else:
        if args.images:
            raise UserError("--run explains the run's gallery images; name no images with it")
        if args.class_name is not None or args.labels is not None or args.imagenet:
            raise UserError("--run uses each dataset's own classes and each model's top-1; drop --class/--labels")
        result = _explain_run(args)
    if args.json:
        print_json(result)
    else:
        for line in format_result(result):
            print(line)
    return 0


def _load(args: argparse.Namespace, specs, templates: str, allow_random: bool):
    from clipcompare.cache import default_cache_dir
    from clipcompare.evaluation import resolve_device
    from clipcompare.models.classifier import create_classifiers

    device = resolve_device(args.device)
    return create_classifiers(specs, templates=templates, cache_dir=default_cache_dir(), allow_random=allow_random,
                              device=device)


def _explain_images(args: argparse.Namespace) -> dict:
    from clipcompare.classes import ClassSet
    from clipcompare.classify import read_inputs, skipped_note
    from clipcompare.cli.common import ensure_out_dir
    from clipcompare.errors import UserError
    from clipcompare.explain import ImageItem, explain
    from clipcompare.explain.boxes import class_position, read_boxes
    from clipcompare.explain.run import ready_models
    from clipcompare.rundir import RunLock

    ensure_out_dir(args.out)
    # every user mistake below is found before minutes of model loading
    paths, images, skipped = read_inputs(args.images)
    classes = ClassSet.from_labels(args.labels) if args.labels is not None else ClassSet.imagenet()
    target = None
    if args.class_name is not None:
        target = class_position(classes, args.class_name)
        if target is None:
            shown = ", ".join(classes.names[:5]) + (", ..." if len(classes) > 5 else "")
            raise UserError(f"--class {args.class_name!r} is not among the {len(classes)} labels ({shown})")
    boxes = read_boxes(args.boxes, paths, [im.size for im in images], classes) if args.boxes else None
    notes: list[str] = []
    with RunLock(args.out, "clipcompare explain"):
        classifiers = _load(args, model_specs(args), args.templates or "openai", args.allow_random)
        models = ready_models(classifiers, classes, args.layer, notes)
        if not models:
            raise UserError("no model can explain these classes: " + "; ".join(notes))
        notes += [f"{m.name}: random weights (its maps are meaningless)" for m in models if not m.pretrained]
        if skipped:
            notes.append(skipped_note(skipped))
        extra = {"out": str(args.out), "notes": notes,
                 "skipped": [{"path": str(p), "reason": r} for p, r in skipped]}
        return explain(models, [ImageItem(p, im) for p, im in zip(paths, images)], classes, method=args.method,
                       target=target, boxes=boxes, out=args.out, batch_size=args.batch_size, extra=extra)


def _explain_run(args: argparse.Namespace) -> dict:
    from clipcompare.explain.gallery import OUT_NAME, explain_run, plan_run, run_models
    from clipcompare.rundir import RunLock

    specs, random, templates = run_models(args.run_dir)
    if args.models:
        specs, random = model_specs(args), False
    out = args.out or args.run_dir / OUT_NAME
    # the gallery images and the boxes are read (a mismatch refused) before minutes of model loading
    plan = plan_run(args.run_dir, boxes=args.boxes, per_class=args.gallery_per_class, total=args.gallery_size)
    with RunLock(out, "clipcompare explain"):
        # the run's models random where the run's were (seeded: the very weights it evaluated)
        classifiers = _load(args, specs, args.templates or templates, args.allow_random or random)
        return explain_run(plan, classifiers, out=out, method=args.method, layer=args.layer,
                           batch_size=args.batch_size)


def format_result(result: dict) -> list[str]:
    """The terminal view: per image and model the top-1 and the map's peak; the pointing-game table."""
    from clipcompare.cli.common import format_table

    if "datasets" in result:
        lines = []
        for name, res in result["datasets"].items():
            lines.append(f"== {name}: {len(res['images'])} gallery images ==")
            lines += format_result(res)
        lines += [f"note: {n}" for n in result.get("notes", [])]
        lines.append(f"wrote {result['out']}/ (one folder per dataset; `clipcompare report {result['run']}` shows "
                     "the maps in its galleries)")
        return lines
    lines = []
    layers = ", ".join(f"{m['name']}: {m['layer']['name']}" for m in result["models"])
    lines.append(f"method {result['method']}, map of the {result['target']} class; layers: {layers}")
    boxed = bool(result.get("pointing"))
    rows = []
    for image in result["images"]:
        for model, rec in image["models"].items():
            row = [Path(image["path"]).name, model, rec["top1"], f"{rec['top1_probability']:.1%}", rec["class"],
                   "-" if rec["peak"] is None else f"({rec['peak'][0]}, {rec['peak'][1]})"]
            if boxed:
                hit, energy = rec.get("pointing_hit"), rec.get("energy_in_boxes")
                row += ["-" if hit is None else "yes" if hit else "no", "-" if energy is None else f"{energy:.1%}"]
            rows.append(row)
    header = ["image", "model", "top-1", "prob", "map of", "peak (x, y)"] + (["in box", "energy in box"] if boxed else [])
    lines += format_table(header, rows, [False, False, False, True, False, False, False, True][:len(header)], rule=True)
    if result.get("pointing"):
        lines.append(f"pointing game ({result['tolerance_px']:.0f}-px tolerance) and energy inside the boxes:")
        rows = [[model, str(s["images"]), str(s["hits"]), "-" if s["accuracy"] is None else f"{s['accuracy']:.1%}",
                 "-" if s["energy_in_boxes"] is None else f"{s['energy_in_boxes']:.1%}"]
                for model, s in result["pointing"].items()]
        lines += format_table(["model", "images", "hits", "pointing", "energy in boxes"], rows,
                              [False, True, True, True, True], indent="  ", rule=True)
    lines += [f"note: {n}" for n in result.get("notes", [])]
    if result.get("out"):
        lines.append(f"wrote {result['out']}/ (explain.json, {len(result['images'])} PNGs, maps/*.npz)")
    return lines
