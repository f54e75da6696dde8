"""``clipcompare evaluate``: accuracy of every model on every dataset, into a resumable run directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from clipcompare.cli.common import add_model_args, format_table, int_at_least, model_specs, print_json
from clipcompare.models.spec import DEFAULT_MODELS

DATASET_HELP = (
    "KIND=PATH, repeatable. Kinds: imagenet (val images in wnid folders), imagenet-v2 (folders 0..999), "
    "imagenet-sketch (wnid folders), imagenet-r / imagenet-a (their 200 wnid folders; both models scored on "
    "those 200 classes), folder (any class sub-folders; folder=PATH:MAPFILE renames them with a file of "
    "'FOLDER<TAB>CLASS' lines or a JSON object; classes may be ImageNet wnids or names), wds (a CLIP_benchmark "
    "webdataset: a folder with SPLIT/nshards.txt and SPLIT/0.tar …, or hf://datasets/ORG/REPO from the local Hugging "
    "Face cache; wds=PATH:SPLIT or --split), objectnet (the ObjectNet 1.0 release: its 113 ImageNet-mapped classes)"
)


def default_workers(device: str | None) -> int:
    """Decode workers: none on CPU, cores - 1 (at most 16) when a GPU does the compute (cores / N - 1
    for each of torchrun's N processes on this machine).

    On CPU the forward passes already use every core; a worker process only takes a core from
    them. Measured on 2 cores (ResNet-50 + CLIP RN50, batch 32): 13.7 images/s decoding inline vs
    12.0-13.0 with 1-2 workers; inline decoding now runs on all cores between forwards
    (``data.decode.ThreadedDecode``), at 0.975x the bare forward.
    """
    from clipcompare.evaluation import resolve_device

    on_cpu = resolve_device(device).type == "cpu"
    # torchrun starts LOCAL_WORLD_SIZE processes on this machine: they share its cores
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return 0 if on_cpu else max(0, min(16, (os.cpu_count() or 1) // local - 1))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="top-1/top-5 accuracy of each model on each dataset (resumable)",
        description="Evaluate every --model on every --dataset, decoding each image once. Predictions go to "
        "RUN_DIR/predictions/<dataset>.parquet, metrics to RUN_DIR/metrics.json; running the same "
        "command again continues an interrupted run.",
    )
    add_model_args(p, DEFAULT_MODELS)
    p.add_argument("--dataset", "-d", dest="datasets", action="append", required=True, metavar="KIND=PATH",
                   help=DATASET_HELP)
    p.add_argument("--out", "-o", type=Path, required=True, metavar="RUN_DIR", help="run directory (created)")
    p.add_argument("--limit-per-class", type=int_at_least(1), metavar="N", help="first N images per class (sorted)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--workers", type=int_at_least(0), default=None, metavar="N",
                   help="decoding processes; 0 decodes in the main process (default: 0 on CPU, where the forward passes use every core; cores - 1, at most 16, on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--templates", default="openai", metavar="single|openai|dataset|FILE",
                   help="CLIP prompt templates (default: openai's 80; dataset: each wds= set's own "
                   "zeroshot_classification_templates.txt, openai's where it has none)")
    p.add_argument("--split", default="test", metavar="NAME",
                   help="split of the wds= datasets that name none (default: test, as CLIP_benchmark)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format for models and inputs (default: on CUDA whichever is faster "
                   "for each model, measured at start-up; contiguous on CPU, where --channels-last is often "
                   "faster for CNNs: 23-29%% for ResNet-50 + CLIP RN50 on an AVX-512 CPU)")
    p.add_argument("--decode", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: PIL decoding and preprocessing in the workers (default, the reference); gpu: JPEGs "
                   "decoded (nvJPEG) and preprocessed on the device, other files through the CPU path")
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16|fp16",
                   help="cast the models to this dtype (default fp32); bf16/fp16 are for GPUs and CPUs with native "
                   "support")
    p.add_argument("--allow-random", action="store_true",
                   help="use random weights when pretrained ones are missing (dry runs, tiny test models)")
    p.add_argument("--chunk-size", type=int_at_least(1), default=2048, metavar="N",
                   help="images per flushed part file, i.e. at most what an interruption loses (default 2048; "
                   "a part is also flushed every 60 s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipcompare.evaluation import EvaluateOptions, evaluate

    options = EvaluateOptions(
        out=args.out, limit_per_class=args.limit_per_class, batch_size=args.batch_size,
        workers=default_workers(args.device) if args.workers is None else max(0, args.workers), device=args.device,
        templates=args.templates, channels_last=args.channels_last, allow_random=args.allow_random,
        chunk_size=args.chunk_size, progress=args.progress, command=tuple(["clipcompare", *sys.argv[1:]]),
        decode=args.decode, precision=args.precision,
    )
    result = evaluate(model_specs(args), with_split(args.datasets, args.split), options)
    if not result.is_main:  # a torchrun rank other than 0: rank 0 prints the summary
        return 0
    rows = summary_rows(result.metrics)
    setup = run_setup(result.options)
    if args.json:
        print_json({"run_dir": str(result.out), "rows": rows, "skipped_images": result.metrics["skipped_images"],
                    "setup": setup})
    else:
        print(format_summary(result.metrics, rows, result.out))
        print(format_setup(setup))
    return 0


def with_split(datasets: list[str], split: str) -> list[Any]:
    """``--dataset`` arguments, a ``wds=`` one without ``:SPLIT`` given ``--split``."""
    from dataclasses import replace

    from clipcompare.data import parse_dataset_arg

    specs = [parse_dataset_arg(d) for d in datasets]
    return [replace(s, option=split) if s.kind == "wds" and s.option is None else s for s in specs]


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (dataset, model) with the headline numbers."""
    rows = []
    for name, ds in metrics["datasets"].items():
        for model, m in ds.get("models", {}).items():
            rows.append({"dataset": name, "model": model, "images": m["n"], "top1": m["top1"], "top5": m["top5"],
                         "mean_per_class": m["mean_per_class"], "wordnet_distance": m["mean_wordnet_distance_wrong"],
                         "skipped": ds["skipped"]["count"]})
    return rows


def run_setup(options: dict[str, Any]) -> dict[str, Any]:
    """How the predictions were computed (from run.json's options)."""
    keys = ("device", "decode", "precision", "memory_formats", "world_size", "precision_note")
    return {k: options[k] for k in keys if options.get(k) is not None}


def format_setup(setup: dict[str, Any]) -> str:
    """One line: ``device cpu, decode cpu, precision fp32, contiguous`` (+ the precision note)."""
    formats = sorted(set((setup.get("memory_formats") or {}).values()))
    parts = [f"device {setup.get('device')}", f"decode {setup.get('decode')}", f"precision {setup.get('precision')}",
             "memory format " + ("/".join(formats) or "contiguous")]
    if setup.get("world_size", 1) > 1:
        parts.append(f"{setup['world_size']} processes")
    line = "computed with " + ", ".join(parts)
    if setup.get("precision_note"):
        line += f"\nnote: {setup['precision_note']}"
    return line


SHOW = 3  # per model in the text summary; metrics.json has the top 10


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_summary(metrics: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> str:
    """A plain-text table plus the pairwise 'only one model is right' counts and notes."""
    header = ("dataset", "model", "images", "top-1", "top-5", "per-class", "WN dist", "skipped")
    cells = [
        (r["dataset"], r["model"], str(r["images"]), _pct(r["top1"]), _pct(r["top5"]), _pct(r["mean_per_class"]),
         "-" if r["wordnet_distance"] is None else f"{r['wordnet_distance']:.2f}", str(r["skipped"]))
        for r in rows
    ]
    lines = format_table(header, cells, [False, False] + [True] * 6)
    for name, ds in metrics["datasets"].items():
        for model, m in ds.get("models", {}).items():
            worst = [w["text"].replace(" misclassified", "") for w in m.get("most_misclassified", [])[:SHOW]]
            confused = [f"{c['true']} -> {c['predicted']} ({c['count']})" for c in m.get("confused_pairs", [])[:SHOW]]
            if worst:
                lines.append(f"{name} / {model}: most misclassified: {'; '.join(worst)}")
            if confused:
                lines.append(f"{name} / {model}: most confused: {'; '.join(confused)}")
        for cmp in ds.get("comparisons", []):
            a, b = cmp["models"]
            only = cmp["only_right"]
            lines.append(f"{name}: only {a} right on {only[a]['count']} images, only {b} right on "
                         f"{only[b]['count']}; better on {cmp['better_classes'][a]['count']} vs "
                         f"{cmp['better_classes'][b]['count']} classes")
        lines.extend(f"{name}: note: {note}" for note in ds.get("notes", []))
    lines.append(f"results in {out}/ (metrics.json, predictions/, run.json"
                 f"{', skipped.jsonl' if metrics['skipped_images'] else ''})")
    return "\n".join(lines)
