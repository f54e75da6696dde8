"""Reports people look at: run directories in, one self-contained HTML file (or Markdown) out.

``build_report(paths)`` tells each directory's kind by its files (:data:`KINDS`), lets that kind's
section module turn it into headings, tables, figures and galleries (:mod:`.blocks`), and
:mod:`.render` writes them with Jinja2 templates, every plot and thumbnail embedded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from clipcompare.errors import UserError
from clipcompare.report.blocks import Report, ReportOptions, Section
from clipcompare.report.render import render_html, write_html, write_markdown
from clipcompare.report.sections import evaluate, explain, precision, robustness, train

# checked in this order: a train run.json says so; evaluate has run.json + metrics.json + predictions/
KINDS = {"train": train, "evaluate": evaluate, "precision": precision, "robustness": robustness, "explain": explain}

__all__ = ["KINDS", "Report", "ReportOptions", "Section", "build_report", "find_runs", "render_html", "run_kind",
           "write_html", "write_markdown"]


def run_kind(path: Path) -> str | None:
    """``train``, ``evaluate``, ``precision``, ``robustness``, ``explain`` or None, by the files in ``path``."""
    return next((kind for kind, module in KINDS.items() if module.is_run(path)), None)


def find_runs(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """(kind, directory) for each path; a directory holding run directories (``runs/demo``) gives each of them."""
    runs: list[tuple[str, Path]] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"run directory not found: {path}")
        kind = run_kind(path)
        if kind is not None:
            runs.append((kind, path))
            continue
        inner = [(k, p) for p in sorted(path.iterdir()) if p.is_dir() and (k := run_kind(p)) is not None]
        if inner:
            runs += inner
        elif (path / "run.json").is_file():
            raise UserError(f"{path} has a run.json but no metrics.json / predictions/: the evaluate run is unfinished "
                            "(run the same command again to complete it)")
        else:
            raise UserError(f"{path} is not a run directory: expected the files of evaluate (run.json, metrics.json, "
                            "predictions/), precision --out (precision.json), train (run.json of kind train) or "
                            "robustness --out (robustness.json) or explain --out (explain.json)")
    return runs


def build_report(
    paths: Sequence[Path], options: ReportOptions | None = None, title: str = "clipcompare report"
) -> Report:
    """Every run directory in ``paths`` as one section each, in the order given."""
    options = options or ReportOptions()
    sections = []
    for kind, path in find_runs(paths):
        sections.append(KINDS[kind].build(path, options))
        if kind == "evaluate":  # its models among the published ones, when it holds ImageNet shifts
            placed = robustness.for_evaluate_run(path, options)
            if placed is not None:
                sections.append(placed)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Report(title, created, sections)
