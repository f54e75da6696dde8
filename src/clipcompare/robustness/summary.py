"""The robustness map as a short table: the user's models first, then the two models this tool
compares (``timm:resnet50.tv_in1k``, ``clip:RN50@openai``) and the most accurate ``standard`` and
``zero-shot`` rows; one column per shift (top-1 and effective robustness) and the average."""

from __future__ import annotations

from typing import Any

from clipcompare.robustness.map import YOUR_RUNS
from clipcompare.robustness.reference import load_reference

LANDMARKS: tuple[str, ...] = ("timm:resnet50.tv_in1k", "clip:RN50@openai")
DASH = "–"


def key_rows(result: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(model, run) of the rows to show: every user model (each followed by its published row, ``timm:X``
    after a run of ``timm:X``), the landmarks, the best standard and zero-shot."""
    rows: list[tuple[str, str | None]] = []
    for r in result["runs"]:
        for m in r["models"]:
            rows.append((m, r["path"]))
            published = r.get("published", {}).get(m)
            if published is not None and (published, None) not in rows:
                rows.append((published, None))
    table = load_reference()
    best = []
    for group in ("standard", "zero-shot"):
        rows_of = table[(table["group"] == group) & table["primary"]]
        best.append(rows_of.loc[rows_of["imagenet"].idxmax(), "model"])
    for model in (*LANDMARKS, *best):
        if (model, None) not in rows:
            rows.append((model, None))
    return rows


def _views(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    views = [(v["label"], v) for v in result["shifts"].values() if v["points"]]
    return views + [("average", result["average"])]


def summary_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes): each shift's cell is ``top-1 (ρ)`` in percent / points."""
    views = _views(result)
    index = [{(p["model"], p.get("run")): p for p in view["points"]} for _, view in views]
    imagenet = load_reference().set_index("model")["imagenet"]
    header = ["model", "group", "ImageNet", *[label for label, _ in views]]
    rows, notes = [], []
    for model, run in key_rows(result):
        if run is None:
            group = next((p["group"] for idx in index if (p := idx.get((model, None)))), "")
            base = imagenet.get(model)
        else:
            info = next(r for r in result["runs"] if r["path"] == run)
            group = YOUR_RUNS + (", random weights" if model in info["random_weights"] else "")
            base = info["imagenet_top1"].get(model)
        cells = []
        for idx in index:
            p = idx.get((model, run))
            cells.append(_cell(p))
            if p is not None and p.get("reason"):
                notes.append(f"{model}: {p['reason']}")
        rows.append([model, group, DASH if base is None else f"{base:.1f}", *cells])
    for label, view in views:
        fit = view["fit"]
        if fit:
            notes.append(f"{label}: {fit['transform']}(ood) = {fit['slope']:.3f}·{fit['transform']}(id) "
                         f"{fit['intercept']:+.3f} over {fit['n_models']} standard models; x = {view['x_axis']}")
        notes += [f"{label}: {n}" for n in view["notes"]]
    for run in result["runs"]:
        notes += run["notes"]
    return header, rows, list(dict.fromkeys(notes))


def _cell(point: dict[str, Any] | None) -> str:
    if point is None or point["ood_top1"] is None:
        return DASH
    rho = point.get("effective_robustness")
    if rho is None:
        return f"{point['ood_top1']:.1f} (no x)" if point.get("reason") else f"{point['ood_top1']:.1f}"
    return f"{point['ood_top1']:.1f} ({rho:+.1f})"
