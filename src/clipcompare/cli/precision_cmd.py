"""`clipcompare precision`: FP32 vs FP16 vs BF16 latency, memory and prediction drift."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clipcompare.cli.common import (
    add_model_args,
    csv_list,
    ensure_out_dir,
    format_table,
    int_at_least,
    label_list,
    model_specs,
    print_json,
)
from clipcompare.models.spec import DEFAULT_MODELS

DTYPE_CHOICES = ("fp32", "fp16", "bf16")


def _dtypes(text: str) -> tuple[str, ...]:
    names = csv_list(text)
    bad = [n for n in names if n.lower() not in DTYPE_CHOICES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"invalid dtype {bad[0] if bad else text!r}; choose from {','.join(DTYPE_CHOICES)} (comma-separated)")
    return tuple(dict.fromkeys(n.lower() for n in names))


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in csv_list(text))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``precision`` subcommand."""
    p = sub.add_parser(
        "precision", help="FP32 vs FP16 vs BF16: latency, memory and prediction drift",
        description="Run each model's image forward in FP32, FP16 and BF16 and report latency (median, "
        "mean ± std, p90, img/s per batch size), memory (weight bytes, peak inference memory; a "
        "memory timeline on CUDA) and how far class probabilities drift from FP32. Missing "
        "pretrained weights fall back to random initialisation (noted); dtypes the device cannot "
        "run, or only emulates, are reported as such.",
    )
    add_model_args(p, default=DEFAULT_MODELS)
    p.add_argument("--dtypes", type=_dtypes, default=DTYPE_CHOICES, metavar="LIST",
                   help="comma-separated dtypes from fp32,fp16,bf16 (default: all three)")
    p.add_argument("--mode", choices=("cast", "autocast"), default="cast",
                   help="cast: weights and inputs converted to the dtype (default); autocast: fp32 weights "
                   "under torch.autocast")
    p.add_argument("--batch-sizes", type=_positive_ints, default=(1, 8, 32), metavar="LIST",
                   help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="images for the drift comparison (default: a few generated images)")
    p.add_argument("--max-images", type=int_at_least(1), default=16, metavar="N",
                   help="use at most N images from --images (default 16)")
    p.add_argument("--labels", type=label_list, metavar="LIST",
                   help="comma-separated class labels for the drift comparison (default: the 10 seed classes "
                   "bald eagle, axolotl, ... leopard)")
    p.add_argument("--templates", default="single",
                   help="CLIP prompt templates: single (default, cheap), openai (80) or a file")
    p.add_argument("--channels-last", action="store_true", help="convert model and inputs to channels_last")
    p.add_argument("--compile", action="store_true", help="wrap the image tower in torch.compile (noted if it fails)")
    p.add_argument("--warmup", type=int_at_least(0), default=2, metavar="N", help="untimed calls first (default 2)")
    p.add_argument("--min-runs", type=int_at_least(1), default=5, metavar="N", help="timed calls at least (default 5)")
    p.add_argument("--min-time", type=_positive_float, default=1.0, metavar="SEC",
                   help="time each batch size for at least this long (default 1)")
    p.add_argument("--max-time", type=_positive_float, default=10.0, metavar="SEC",
                   help="stop timing a batch size after this long once 3 runs are in (default 10)")
    p.add_argument("--threads", type=int_at_least(1), metavar="N",
                   help="torch intra-op threads during measurement (default: torch's current setting)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", type=Path, metavar="DIR", help="write precision.json, precision.png (and CUDA memory timelines)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.imagenet.classes import SEED_LABELS
    from clipcompare.precision import PrecisionConfig, evaluate, save_report

    config = PrecisionConfig(
        dtypes=args.dtypes, mode=args.mode, batch_sizes=args.batch_sizes, device=args.device,
        channels_last=args.channels_last, compile=args.compile,
        labels=tuple(args.labels) if args.labels is not None else SEED_LABELS, templates=args.templates,
        images=args.images, max_images=args.max_images, warmup=args.warmup, min_runs=args.min_runs,
        min_time_s=args.min_time, max_time_s=max(args.max_time, args.min_time), threads=args.threads,
    )
    specs = model_specs(args)
    ensure_out_dir(args.out)
    report = evaluate(specs, config, out_dir=args.out, allow_random=True)
    files = save_report(report, args.out) if args.out is not None else {}
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
        for kind, path in files.items():
            print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- human output


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _status(r: dict[str, Any]) -> str:
    if r["status"] == "ok" and r.get("native") is False:
        return "emulated"
    return r["status"]


def format_report(report: dict[str, Any]) -> str:
    """The results as one latency/memory table and one drift table per model, with notes."""
    env = report["environment"]
    cfg = report["config"]
    where = env["cpu"] if env["device"] == "cpu" else (env.get("cuda") or {}).get("name", "cuda")
    lines = [
        f"device {env['device']} ({where}; PyTorch CPU capability {env['cpu_capability']}), "
        f"{env['threads']} threads, torch {env['torch']}, mode {cfg['mode']}"
        + (", channels_last" if cfg["channels_last"] else "") + (", torch.compile" if cfg["compile"] else ""),
    ]
    imgs = report["images"]
    for model in report["models"]:
        weights = "pretrained" if model["pretrained"] else "random weights"
        lines += ["", f"== {model['model']} ({model['family']}, {weights}, input {'x'.join(map(str, model['input_size']))})"]
        rows = []
        for r in model["results"]:
            first = True
            batches = r["batches"] or [None]
            for b in batches:
                lat = (b or {}).get("latency")
                mem = (b or {}).get("memory") or {}
                rows.append([
                    r["dtype"] if first else "", _status(r) if first else "",
                    _mib(r["weight_bytes"]) if first else "",
                    str(b["batch_size"]) if b else "-",
                    _num(lat and lat["median_ms"], ".2f"),
                    f"{lat['mean_ms']:.2f} ± {lat['std_ms']:.2f}" if lat else "-",
                    _num(lat and lat["p90_ms"], ".2f"),
                    _num(lat and lat["throughput_ips"], ".1f"),
                    str(lat["runs"]) if lat else "-",
                    _mib(mem.get("peak_inference_bytes")),
                ])
                first = False
        lines += format_table(["dtype", "status", "weights", "batch", "median ms", "mean ± std ms", "p90 ms",
                               "img/s", "runs", "peak mem"], rows, [False, False] + [True] * 8, rule=True)
        drift_rows = [
            [r["dtype"], _num(d["max_abs_prob_diff"], ".2e"), _num(d["mean_abs_prob_diff"], ".2e"),
             _num(d["top1_agreement"], ".3f"), _num(d["top5_agreement"], ".3f"), _num(d["kl_mean"], ".2e"),
             _num(d["kl_max"], ".2e")]
            for r in model["results"] if (d := r.get("drift"))
        ]
        if drift_rows:
            top_k = next(r["drift"]["top5_k"] for r in model["results"] if r.get("drift"))
            lines += ["", f"drift vs fp32 on {imgs['count']} {'generated images' if imgs['source'] == 'generated' else 'images from ' + imgs['source']}, "
                          f"{model['classes']} classes:"]
            lines += format_table(["dtype", "max|Δp|", "mean|Δp|", "top-1 agree", f"top-{top_k} agree", "KL mean",
                                   "KL max"], drift_rows, [False] + [True] * 6, rule=True)
        notes = [f"{model['model']}: {n}" for n in model["notes"]]
        notes += [f"{r['dtype']}: {n}" for r in model["results"] for n in r["notes"]]
        notes += [f"{r['dtype']}: memory timeline {r['memory_timeline']}" for r in model["results"] if r.get("memory_timeline")]
        if notes:
            lines += ["", "notes:", *[f"  - {n}" for n in notes]]
    if report.get("notes"):
        lines += ["", *[f"note: {n}" for n in report["notes"]]]
    return "\n".join(lines)
