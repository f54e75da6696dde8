"""``clipcompare retrieval``: image↔text Recall@1/5/10 of CLIP models (or trained checkpoints) on COCO captions,
a captions file, or a CLIP_benchmark retrieval webdataset (``--wds``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clipcompare.cli.common import (
    add_model_args,
    ensure_out_dir,
    format_table,
    int_at_least,
    model_specs,
    print_json,
)

DEFAULT_RETRIEVAL_MODELS: tuple[str, ...] = ("clip:RN50",)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrieval", help="image↔text Recall@1/5/10 on COCO captions (CLIP_benchmark's definition)",
        description="Encode every image and caption of a split and report Recall@K both ways: image→text "
        "(a hit when any of the image's 5 captions is in its top K) and text→image. Captions are encoded "
        "once per model and cached.",
    )
    add_model_args(p, DEFAULT_RETRIEVAL_MODELS)
    p.add_argument("--coco", type=Path, metavar="ROOT",
                   help="COCO 2014 root: annotations/captions_{train,val}2014.json, train2014/, val2014/")
    p.add_argument("--split", default=None, metavar="seed|karpathy=FILE|NAME",
                   help="seed: the seeded draw from val2014 (default); karpathy=FILE: dataset_coco.json, "
                   "evaluated on its 5k test split by default; with --wds the webdataset's split (default test)")
    p.add_argument("--captions", type=Path, metavar="FILE",
                   help="your own data instead: CSV/TSV with filepath,title columns or JSONL with "
                   "filepath|image and caption|title (paths relative to --coco ROOT, else to the file)")
    p.add_argument("--wds", metavar="PATH",
                   help="a CLIP_benchmark retrieval webdataset instead (dataset_type.txt = retrieval; SPLIT/N.tar "
                   "with images and .txt captions): a folder or hf://datasets/ORG/REPO from the local Hugging Face "
                   "cache")
    p.add_argument("--on", choices=("val", "test"), default=None,
                   help="which split to evaluate (default: test for karpathy, val otherwise)")
    p.add_argument("--val-size", type=int_at_least(1), metavar="N",
                   help="images to evaluate (seeded draw; default: 4000 for seed, the whole split otherwise, --wds too)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw (default 0)")
    p.add_argument("--short-captions", choices=("drop", "cycle"), default="drop",
                   help="images with fewer than 5 captions: drop them (default, keeps Recall@K comparable "
                   "to COCO) or repeat their captions up to 5")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, metavar="N", help="images per batch (default 64)")
    p.add_argument("--workers", type=int_at_least(0), default=None, metavar="N",
                   help="decoding processes (default: 0 on CPU, cores - 1 on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--allow-random", action="store_true",
                   help="use random weights when pretrained ones are missing (dry runs, tiny test models)")
    p.add_argument("--out", "-o", type=Path, metavar="DIR", help="write DIR/retrieval.json")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipcompare.cache import default_cache_dir
    from clipcompare.cli.evaluate_cmd import default_workers
    from clipcompare.data.coco import load_caption_splits
    from clipcompare.retrieval import RetrievalOptions, check_retrieval_specs, run_retrieval

    specs = model_specs(args)
    check_retrieval_specs(specs)
    ensure_out_dir(args.out)  # a bad --out fails now, not after the models ran
    # data errors come before any model is loaded
    if args.wds is not None:
        from clipcompare.data.coco import load_wds_captions
        from clipcompare.errors import UserError

        if args.coco is not None or args.captions is not None:
            raise UserError("--wds reads a webdataset: give it without --coco or --captions")
        if args.on == "val":  # --on test is what --wds evaluates anyway
            raise UserError("--on picks a COCO split; with --wds name the webdataset's split with --split")
        on = "test"
        splits = load_wds_captions(args.wds, split=args.split or "test", short_captions=args.short_captions,
                                   val_size=args.val_size, seed=args.seed)
    else:
        split = args.split or "seed"
        on = args.on or ("test" if split.startswith("karpathy") and args.captions is None else "val")
        splits = load_caption_splits(args.coco, split=split, val_size=args.val_size, captions_file=args.captions,
                                     seed=args.seed, which=(on,), short_captions=args.short_captions)
    options = RetrievalOptions(
        batch_size=args.batch_size, device=args.device,
        workers=default_workers(args.device) if args.workers is None else args.workers,
        allow_random=args.allow_random, cache_dir=default_cache_dir(), out=args.out,
        command=tuple(["clipcompare", *sys.argv[1:]]),
    )
    doc = run_retrieval(specs, splits, on, options)
    if args.json:
        print_json(doc)
        return 0
    print(format_results(doc))
    return 0


def format_results(doc: dict[str, Any]) -> str:
    """One row per model: Recall@1/5/10 both ways (percent), images, captions, skipped."""
    ks = doc["settings"]["ks"]
    header = ["model", *(f"i→t R@{k}" for k in ks), *(f"t→i R@{k}" for k in ks), "images", "captions", "skipped"]
    rows = [
        [r["model"], *(f"{100 * r[f'text_retrieval_recall@{k}']:.2f}" for k in ks),
         *(f"{100 * r[f'image_retrieval_recall@{k}']:.2f}" for k in ks),
         str(r["images"]), str(r["captions"]), str(r["skipped"])]
        for r in doc["results"]
    ]
    lines = [f"{doc['split']['kind']} split, {doc['evaluated_on']}: Recall@K in % (i→t: image→text, t→i: text→image)"]
    lines += format_table(header, rows, [False] + [True] * (len(header) - 1), rule=True)
    lines += [f"note: {r['model']}: random weights (results are meaningless)" for r in doc["results"]
              if not r["pretrained"]]
    return "\n".join(lines)
