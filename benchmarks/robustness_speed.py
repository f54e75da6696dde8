"""Goals: the whole robustness map within 3 s; a report with its robustness section within 2x of one without.

The map: load the ~1.6k published rows, fit the 5 baselines (4 shifts with a standard line + the
average) with 1,000 bootstrap resamples each, draw the 6 plots, under 3 s on the project machine; with ``--report RUN_DIR`` (an evaluate run
holding ImageNet shifts) the report of that run built with its robustness section in under 2x the
time without it. Printed: the one-off import of the libraries the
map needs (pandas, matplotlib; a CLI call pays it once), then the best of ``--repeat`` full maps (each
re-reading the table), the stages of that best run, and whether import + best meets the goal; the
exit status is 1 when it does not. CPU seconds are printed beside wall seconds because a shared
machine's load inflates wall time.

    PYTHONPATH=src .venv/bin/python benchmarks/robustness_speed.py [--repeat 3] [--report RUN_DIR] [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from goals import report_goals  # benchmarks/goals.py, beside this script

GOAL_S = 3.0
REPORT_GOAL = 2.0  # report with the robustness section / without it


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="evaluate run directories to place (default: none)")
    parser.add_argument("--repeat", type=int, default=3, help="full maps to time; the best counts (default 3)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per fit (default 1000)")
    parser.add_argument("--report", type=Path, metavar="RUN_DIR",
                        help="also time `report` of this evaluate run with and without its robustness section")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    w0, c0 = _clock()
    import matplotlib  # noqa: F401
    import pandas  # noqa: F401

    from clipcompare.robustness import evaluate, read_run
    from clipcompare.robustness.plots import _pyplot, map_figures
    from clipcompare.robustness.reference import load_reference

    _pyplot()
    w1, c1 = _clock()
    import_s = (w1 - w0, c1 - c0)

    best = None
    for _ in range(max(1, args.repeat)):
        load_reference.cache_clear()
        t0 = _clock()
        table = load_reference()
        runs = [read_run(p) for p in args.runs]
        t1 = _clock()
        result = evaluate(runs, bootstrap=args.bootstrap, seed=0)
        t2 = _clock()
        figures = map_figures(result)
        t3 = _clock()
        stages = {"load": (t1[0] - t0[0], t1[1] - t0[1]), "fits": (t2[0] - t1[0], t2[1] - t1[1]),
                  "plots": (t3[0] - t2[0], t3[1] - t2[1]), "total": (t3[0] - t0[0], t3[1] - t0[1])}
        if best is None or stages["total"][0] < best["total"][0]:
            best = stages
    fits = sum(1 for v in [*result["shifts"].values(), result["average"]] if v["fit"])
    total = import_s[0] + best["total"][0]
    print(f"robustness map: {len(table)} rows, {fits} fits x {args.bootstrap} bootstrap resamples, "
          f"{len(figures)} plots, {len(runs)} runs")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  imports (once)    {import_s[0]:6.2f} s wall  {import_s[1]:6.2f} s CPU")
    for name, (wall, cpu) in best.items():
        print(f"  {name:<17} {wall:6.2f} s wall  {cpu:6.2f} s CPU   (best of {args.repeat})")
    print(f"imports + map: {total:.2f} s ({total / GOAL_S:.2f} of the {GOAL_S:.0f} s bound)")
    goals = [(f"the whole map within {GOAL_S:.0f} s ({total:.2f} s)", total < GOAL_S)]
    if args.report is not None:
        ratio = report_ratio(args.report, args.repeat)
        goals.append((f"report with robustness within {REPORT_GOAL:.0f}x of without ({ratio:.2f}x)", ratio < REPORT_GOAL))
    return report_goals(goals)


def report_ratio(run_dir: Path, repeat: int) -> float:
    """Best-of-``repeat`` seconds of ``build_report`` + HTML with and without the robustness section."""
    from clipcompare.report import build_report, render_html
    from clipcompare.report.sections import robustness

    def best(with_section: bool) -> float:
        original = robustness.for_evaluate_run
        if not with_section:
            robustness.for_evaluate_run = lambda *a, **k: None
        try:
            times = []
            for _ in range(max(1, repeat)):
                t0 = time.perf_counter()
                render_html(build_report([run_dir]))
                times.append(time.perf_counter() - t0)
        finally:
            robustness.for_evaluate_run = original
        return min(times)

    without, with_ = best(False), best(True)
    ratio = with_ / without
    print(f"report of {run_dir}: {without:.2f} s without the robustness section, {with_:.2f} s with it: "
          f"{ratio:.2f}x, goal < {REPORT_GOAL:.0f}x: {'met' if ratio < REPORT_GOAL else 'MISSED'}")
    return ratio


if __name__ == "__main__":
    sys.exit(main())
