"""Goal: `clipcompare precision`'s FP32 latency within 10% of torch.utils.benchmark.Timer's, per model.

For each model (default: ResNet-50 and CLIP RN50, random weights, CPU), this runs the library's
FP32 measurement at batch 8 (``clipcompare.precision.evaluate``, the code behind the command) and
times the same forward pass independently (a fresh model, ``model(x)`` for ResNet-50,
``model.encode_image(x)`` for CLIP) with ``Timer.blocked_autorange`` at the same thread count, in
the same process. The two alternate over a few rounds (precision first, then Timer first, ...) so
that load from other processes on a shared machine falls on both; the medians over rounds are
compared. It prints both numbers and their ratio, and exits 1 if any ratio falls outside
1 ± tolerance (default 10%).

Both sides run under the allocator setting ``precision`` uses on CPU (``steady_heap()``: glibc
keeps freed memory instead of re-faulting activations on every call); it is applied before the
first measurement, so neither side sees a different heap state.

    .venv/bin/python benchmarks/precision_latency.py [--model SPEC ...] [--batch-size 8] [--tolerance 0.1]

This is a script, not a test: it takes minutes on a busy CPU and its verdict depends on load.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys

from goals import report_goals  # benchmarks/goals.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights are fine; never wait on a download


def build_parser() -> argparse.ArgumentParser:
    """The script's options (tests/test_docs.py checks the documented examples against them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", "-m", dest="models", action="append", metavar="SPEC",
                   help="model spec, repeatable (default: resnet50 clip:RN50)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed relative difference (default 0.10)")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timed runs per measurement (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved precision/Timer rounds; medians over rounds are compared (default 3)")
    return p


def _precision_median(spec: str, config) -> tuple[str, float]:
    """The median latency `clipcompare precision` reports (its first dtype and batch size)."""
    from clipcompare.precision import evaluate

    report = evaluate([spec], config)
    model = report["models"][0]
    batches = model["results"][0]["batches"]
    latency = batches[0]["latency"] if batches else None
    return model["model"], (latency["median_ms"] if latency else math.nan)


def _timer_median(spec: str, batch_size: int, threads: int, min_time: float) -> float:
    """Independent: a fresh model, a plain random batch, the forward called directly, Timer's own loop."""
    import torch
    from torch.utils import benchmark

    from clipcompare.models.classifier import create_classifier

    torch.manual_seed(0)
    clf = create_classifier(spec, templates="single", allow_random=True)
    model = clf.model.eval()
    probe = clf.preprocess(_gray_image())
    x = torch.randn(batch_size, *probe.shape)
    forward = model.encode_image if clf.spec.family == "clip" else model
    # Timer defaults to one thread; match the thread count precision measured with
    timer = benchmark.Timer(stmt="forward(x)", globals={"forward": forward, "x": x}, num_threads=threads)
    with torch.inference_mode():
        for _ in range(2):
            forward(x)  # warm-up, as precision does
        measurement = timer.blocked_autorange(min_run_time=min_time)
    return measurement.median * 1e3


def _gray_image():
    from PIL import Image

    return Image.new("RGB", (256, 256), (128, 128, 128))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from clipcompare.models.spec import DEFAULT_MODELS
    from clipcompare.precision import PrecisionConfig, steady_heap

    threads = args.threads or torch.get_num_threads()
    allocator = steady_heap()
    models = args.models or list(DEFAULT_MODELS)
    config = PrecisionConfig(
        dtypes=("fp32",), batch_sizes=(args.batch_size,), device="cpu", warmup=2,
        min_runs=5, min_time_s=args.min_time, max_time_s=max(60.0, 4 * args.min_time), threads=threads,
    )
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, fp32, CPU, "
          f"tolerance ±{args.tolerance:.0%}")
    print(f"allocator: {allocator}")
    print(f"{'model':<28} {'precision ms':>13} {'Timer ms':>10} {'ratio':>7}  verdict  (per round: precision/Timer ms)")
    goals: list[tuple[str, bool]] = []
    for spec in models:
        ours: list[float] = []
        theirs: list[float] = []
        name = spec
        for r in range(args.rounds):
            # alternate which side goes first, so a load change on a shared machine hits both alike
            precision_first = r % 2 == 0
            if precision_first:
                name, value = _precision_median(spec, config)
                ours.append(value)
            theirs.append(_timer_median(spec, args.batch_size, threads, args.min_time))
            if not precision_first:
                name, value = _precision_median(spec, config)
                ours.append(value)
        goal = f"{name}: precision's FP32 latency within {args.tolerance:.0%} of Timer's"
        if any(math.isnan(v) for v in ours):
            print(f"{name:<28} precision measured nothing (see notes in its report)")
            goals.append((goal, False))
            continue
        a, b = statistics.median(ours), statistics.median(theirs)
        ratio = a / b
        ok = abs(ratio - 1.0) <= args.tolerance
        goals.append((goal, ok))
        rounds = ", ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(ours, theirs))
        print(f"{name:<28} {a:13.1f} {b:10.1f} {ratio:7.3f}  {'ok' if ok else 'OUTSIDE tolerance'}  ({rounds})")
    return report_goals(goals)


if __name__ == "__main__":
    sys.exit(main())
