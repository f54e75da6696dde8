"""Effective robustness of an ``evaluate`` run as a report section: its models placed among the
published ones (:mod:`clipcompare.robustness`), the table and one plot per shift the run holds."""

from __future__ import annotations

import logging
from pathlib import Path

from clipcompare.errors import UserError
from clipcompare.report.blocks import Cell, Figure, ReportOptions, Section, Table, Text, run_label

log = logging.getLogger(__name__)


def build(run_dir: Path, options: ReportOptions) -> Section | None:
    """The section, or None when the run holds no ImageNet shift to place (the map would say nothing of it)."""
    from clipcompare.robustness import evaluate, read_run, summary_table
    from clipcompare.robustness.plots import view_figure

    try:
        run = read_run(run_dir)
    except UserError as exc:
        log.info("no robustness section for %s: %s", run_dir, exc)
        return None
    if not run.points:
        return None
    result = evaluate([run], bootstrap=1000, seed=options.seed)
    header, rows, notes = summary_table(result)
    section = Section("robustness", f"robustness: {run_label(run_dir)}", str(run_dir),
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
    shifts = {p.shift for p in run.points}
    views = [(v, None) for k, v in result["shifts"].items() if k in shifts]
    views.append((result["average"], "average over " + ", ".join(result["shifts"][k]["label"]
                                                                 for k in result["average"]["shifts"])))
    for view, title in views:
        if any(p.get("run") and p["id_top1"] is not None and p["ood_top1"] is not None for p in view["points"]):
            section.blocks.append(Figure(title or view["label"], view_figure(view, result["transform"], title),
                                         caption=f"x: {view['x_axis']}"))
    return section
