"""The verdict lines every benchmark prints, one per goal, and that ``run_all.py`` collects."""

from __future__ import annotations

from collections.abc import Sequence

MET = "goal met: "
MISSED = "goal MISSED: "


def report_goals(goals: Sequence[tuple[str, bool]]) -> int:
    """Print one verdict line per ``(goal, met)``; the script's exit status: 1 if any goal was missed."""
    for goal, met in goals:
        print(f"{MET if met else MISSED}{goal}")
    return 0 if all(met for _, met in goals) else 1
