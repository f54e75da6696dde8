"""Run every benchmark that has a goal, each to its end, then exit 1 listing every goal missed.

Each script prints its figures and one verdict line per goal (``goal met: ...`` / ``goal MISSED: ...``,
see ``goals.py``) and exits 1 on a miss; a script that stops for another reason (a crash) is listed
with its exit status. ``make bench`` runs this, so a missed goal in one script no longer hides the
figures of the ones after it.

    .venv/bin/python benchmarks/run_all.py            # all of them, CPU, a quarter of an hour on 2 cores
    .venv/bin/python benchmarks/run_all.py --only train_speed.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from goals import MISSED

HERE = Path(__file__).resolve().parent
# Every script here is a benchmark with goals, so a new one is run without being listed, except these:
# this runner, the verdict helper, decode_agreement.py (it reports agreement figures, no goal) and
# hf_random_clip.py (it writes the random hf: model evaluate_speed.py --models can time).
NOT_BENCHMARKS = frozenset({"run_all.py", "goals.py", "decode_agreement.py", "hf_random_clip.py"})
SCRIPTS: tuple[str, ...] = tuple(sorted(p.name for p in HERE.glob("*.py") if p.name not in NOT_BENCHMARKS))


def run_script(script: Path) -> tuple[int, list[str]]:
    """Run one benchmark with this interpreter, echoing its output; its exit status and missed goals."""
    # A process per script, not main() in this one: the scripts set process-wide state (the heap
    # allocator's thresholds, torch threads, loaded models) that would leak into the next measurement.
    missed: list[str] = []
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith(MISSED):
                missed.append(line[len(MISSED):].strip())
    return proc.returncode, missed


def build_parser() -> argparse.ArgumentParser:
    """The runner's options (tests/test_docs.py checks the documented examples against them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=SCRIPTS, metavar="SCRIPT",
                    help=f"run only this script, repeatable (default: all of {', '.join(SCRIPTS)})")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    failures: list[str] = []
    for name in args.only or SCRIPTS:
        print(f"=== benchmarks/{name}", flush=True)
        status, missed = run_script(HERE / name)
        failures += [f"{name}: {goal}" for goal in missed]
        if status != 0 and not missed:  # a crash, or a script that says a miss only by its exit status
            failures.append(f"{name}: exited with status {status} without a '{MISSED.strip()}' line")
    if failures:
        print(f"\ngoals missed ({len(failures)}):")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print("\nevery goal met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
