"""Effective robustness as a report section: the map's table and its plots (:mod:`clipcompare.robustness`).

Two sources: an ``evaluate`` run holding ImageNet shifts (:func:`for_evaluate_run`, added after its
own section), and a directory written by ``clipcompare robustness --out`` (``robustness.json``, the
demo's ``robustness/``), which is a run kind of its own (:func:`is_run`, :func:`build`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clipcompare.errors import UserError
from clipcompare.report.blocks import Cell, Figure, ReportOptions, Section, Table, Text, read_json, run_label

log = logging.getLogger(__name__)


def is_run(path: Path) -> bool:
    return (path / "robustness.json").is_file()


def build(path: Path, options: ReportOptions) -> Section:
    """The section of a saved map (``clipcompare robustness --out DIR``)."""
    result = read_json(path / "robustness.json")
    if not isinstance(result, dict) or "shifts" not in result:
        raise UserError(f"{path / 'robustness.json'} is not a robustness map (no 'shifts')")
    return section_of(result, path)


def for_evaluate_run(run_dir: Path, options: ReportOptions) -> Section | None:
    """The section of an evaluate run's models, or None when it holds no ImageNet shift to place."""
    from clipcompare.robustness import evaluate, read_run

    try:
        run = read_run(run_dir)
    except UserError as exc:
        log.info("no robustness section for %s: %s", run_dir, exc)
        return None
    if not run.points:
        return None
    return section_of(evaluate([run], bootstrap=1000, seed=options.seed), run_dir)


def section_of(result: dict[str, Any], source: Path) -> Section:
    """The table, its notes and a plot per shift where the user's models have points (all, without runs)."""
    from clipcompare.robustness import summary_table
    from clipcompare.robustness.plots import view_figure

    header, rows, notes = summary_table(result)
    random = sorted({m for r in result.get("runs", []) for m in r.get("random_weights", [])})
    section = Section("robustness", f"robustness: {run_label(source)}", str(source), random_weights=random,
                      facts=[("reference", "1,556 timm ImageNet classifiers, 121 open_clip zero-shot models "
                                           "(published accuracies)"),
                             ("line", f"{result['transform']} least squares over the standard (ImageNet-1k only) "
                                      "models, 95% bootstrap band")])
    section.blocks.append(Table("effective robustness", header, [[Cell(c) for c in r] for r in rows],
                                [False, False] + [True] * (len(header) - 2), role="robustness",
                                note="top-1 % on each shift, and in brackets the effective robustness: points "
                                     "above the line of the standard models (Taori et al. 2020; CLIP Fig. 13)"))
    for note in notes:
        section.blocks.append(Text(note))
    views = [(v, None) for v in result["shifts"].values()]
    views.append((result["average"], "average over " + ", ".join(result["shifts"][k]["label"]
                                                                 for k in result["average"]["shifts"])))
    has_runs = bool(result.get("runs"))
    for view, title in views:
        placed = [p for p in view["points"] if p["id_top1"] is not None and p["ood_top1"] is not None]
        if placed and (not has_runs or any(p.get("run") for p in placed)):
            section.blocks.append(Figure(title or view["label"], view_figure(view, result["transform"], title),
                                         caption=f"x: {view['x_axis']}"))
    return section
