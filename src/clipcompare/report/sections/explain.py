"""An ``explain --out`` directory (explain.json, side-by-side PNGs) as a report section; and the pointing-game
table that the evaluate section shows for a run explained with ``--run --boxes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcompare.report.blocks import Cell, Figure, ReportOptions, Section, Table, Text, num, pct, read_json, run_label
from clipcompare.rundir import EXPLAIN_RESULT


def is_run(path: Path) -> bool:
    return (path / EXPLAIN_RESULT).is_file()


def pointing_table(result: dict[str, Any], title: str = "pointing game and energy inside the boxes") -> Table | None:
    """Per model: images with boxes, hits, pointing-game accuracy, mean energy inside the boxes; None without boxes."""
    pointing = result.get("pointing")
    if not pointing:
        return None
    rows = [[Cell(m), num(s.get("images"), ","), num(s.get("hits"), ","), pct(s.get("accuracy"), 1),
             pct(s.get("energy_in_boxes"), 1)] for m, s in pointing.items()]
    return Table(title, ["model", "images with boxes", "hits", "pointing game %", "energy in boxes %"], rows,
                 [False, True, True, True, True], role="pointing",
                 note=f"pointing game: the map's peak inside a box of the true class, within "
                      f"{result.get('tolerance_px', 15):.0f} pixels (Zhang et al. 2016); energy: the map's share "
                      "inside the boxes, low when a model looks at the context rather than the object.")


def build(run_dir: Path, options: ReportOptions) -> Section:
    """Method, models and layers; the pointing-game table; the side-by-side figures (at most a gallery's worth)."""
    result = read_json(run_dir / EXPLAIN_RESULT)
    models = result.get("models", [])
    section = Section(
        "explain", f"explain: {run_label(run_dir)}", str(run_dir),
        random_weights=[m["name"] for m in models if not m.get("pretrained", True)],
        facts=[("method", str(result.get("method"))), ("class mapped", str(result.get("target"))),
               ("layers", "; ".join(f"{m['name']}: {m['layer']['name']}" for m in models)),
               ("images", f"{len(result.get('images', []))}")],
    )
    table = pointing_table(result)
    if table is not None:
        section.blocks.append(table)
    shown = [e for e in result.get("images", []) if e.get("png") and (run_dir / e["png"]).is_file()]
    for entry in shown[: options.gallery_total]:
        section.blocks.append(Figure(Path(entry["path"]).name, (run_dir / entry["png"]).read_bytes(),
                                     "the image, then each model's map of the class named (peak: x)"))
    if len(shown) > options.gallery_total:
        section.blocks.append(Text(f"{options.gallery_total} of {len(shown)} images shown; all are in {run_dir}"))
    return section
