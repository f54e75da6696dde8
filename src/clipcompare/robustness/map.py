"""The robustness map: every published model and the user's runs on each shift, the baseline line,
and everyone's effective robustness, as one JSON-ready dict (CLIP_benchmark style).

For each shift (:data:`~clipcompare.robustness.reference.SHIFTS`) the line is fitted on the ``standard``
rows (supervised on ImageNet-1k only, timm's default resolution) and every point gets
ρ = acc_ood − f(acc_id) in points. ``average`` is CLIP's Fig. 13 view: ImageNet top-1 against the mean
over :data:`AVERAGE_SHIFTS`, for the models that have all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clipcompare.robustness.fit import BAND_LEVEL, EPSILON_PERCENT, LinearFit, fit_baseline, from_axis, to_axis
from clipcompare.robustness.reference import SHIFTS, load_reference
from clipcompare.robustness.runs import RunData

AVERAGE_SHIFTS: tuple[str, ...] = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a")
YOUR_RUNS = "your runs"
SOURCES = {
    "timm": "huggingface/pytorch-image-models results/ @ aa4b5850c1543fa488abf260f18390eda46cf85d (Apache-2.0)",
    "open_clip": "mlfoundations/open_clip docs/openclip_results.csv @ 89fb801f1e6087880e951fc8354b8a2077b79c6d "
                 "(MIT-style)",
}


def evaluate(runs: Sequence[RunData] = (), transform: str = "logit", bootstrap: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """The map for ``runs`` (none: the published models alone).

    Returns ``{"transform", "epsilon_percent", "bootstrap", "seed", "band_level", "shifts": {kind: view},
    "average": view, "runs": [...], "sources"}``; a view holds ``label``, ``x_axis``, ``fit`` (None when
    fewer than two standard rows have the shift), ``band`` (``x``, ``lo``, ``hi`` in percent), ``notes`` and
    ``points`` (``model``, ``group``, ``id_top1``, ``ood_top1`` in percent, ``effective_robustness`` in
    points; the user's also ``run``, ``random_weights`` and, without an x, ``reason``).
    """
    table = load_reference()
    out: dict[str, Any] = {"transform": transform, "epsilon_percent": EPSILON_PERCENT, "bootstrap": bootstrap,
                           "seed": seed, "band_level": BAND_LEVEL, "shifts": {}}
    for kind, shift in SHIFTS.items():
        x, x_estimated = _reference_x(table, kind, transform)
        y = table[kind]
        label = f"ImageNet top-1 on the 200 {shift.label} classes" if shift.clean else "ImageNet top-1"
        notes = []
        if x_estimated.any():
            notes.append(f"zero-shot rows publish no 200-class {shift.label} x-axis: theirs is estimated from their "
                         "ImageNet top-1 by the timm rows' relation between the two (id_estimated)")
        user = [(p.model, p.run, p.random_weights, p.id_top1, p.ood_top1, p.reason)
                for r in runs for p in r.points if p.shift == kind]
        out["shifts"][kind] = _view(shift.label, label, table, x, y, x_estimated, user, transform, bootstrap, seed,
                                    notes)
    out["average"] = _average(table, runs, transform, bootstrap, seed)
    out["runs"] = [{"path": str(r.path), "models": r.models, "random_weights": r.random_weights,
                    "imagenet_top1": r.imagenet, "notes": r.notes, "published": r.published} for r in runs]
    out["sources"] = SOURCES
    return out


def _reference_x(table: pd.DataFrame, kind: str, transform: str) -> tuple[pd.Series, np.ndarray]:
    """A shift's x for every reference row, and which are estimated (zero-shot rows on -R / -A)."""
    shift = SHIFTS[kind]
    if not shift.clean:
        return table["imagenet"], np.zeros(len(table), dtype=bool)
    column = shift.x_column(kind)
    x = table[column].copy()
    missing = (x.isna() & table["imagenet"].notna() & table[kind].notna()).to_numpy()
    if missing.any():
        known = table[table["primary"] & table[column].notna() & table["imagenet"].notna()]
        line = fit_baseline(known["imagenet"], known[column], known["model"].tolist(), transform, bootstrap=0)
        x[missing] = line.predict(table.loc[missing, "imagenet"].to_numpy())
    return x, missing


def _view(label: str, x_label: str, table: pd.DataFrame, x: pd.Series, y: pd.Series, x_estimated: np.ndarray,
          user: Sequence[tuple], transform: str, bootstrap: int, seed: int, notes: list[str]) -> dict[str, Any]:
    has = (x.notna() & y.notna()).to_numpy()
    base = has & (table["group"] == "standard").to_numpy() & table["primary"].to_numpy()
    fit: LinearFit | None = None
    if base.sum() >= 2:
        fit = fit_baseline(x[base], y[base], table.loc[base, "model"].tolist(), transform, bootstrap, seed)
        if fit.clipped:
            notes.append(f"{fit.clipped} accuracies of 0% or 100% clipped to {EPSILON_PERCENT} points from the edge")
    else:
        notes.append(f"fewer than two standard (ImageNet-1k only) models are published on {label}: no line, "
                     "the points are listed without effective robustness")
    ref = table[has]
    points: list[dict[str, Any]] = []
    ux = np.array([np.nan if u[3] is None else u[3] for u in user], dtype=np.float64)
    uy = np.array([u[4] for u in user], dtype=np.float64)
    rho_ref = fit.effective_robustness(x[has], y[has]) if fit else np.full(len(ref), np.nan)
    rho_user = np.full(len(user), np.nan)
    if fit and len(user):  # a point without x gets no ρ (50 only stands in for the missing x)
        rho_user = fit.effective_robustness(np.nan_to_num(ux, nan=50.0), uy)
    for (model, run, random, xi, yi, reason), rho in zip(user, rho_user):
        point = {"model": model, "group": YOUR_RUNS, "id_top1": _r(xi), "ood_top1": _r(yi),
                 "effective_robustness": _r(rho) if xi is not None else None, "run": run, "random_weights": random}
        if reason:
            point["reason"] = reason
        points.append(point)
    columns = (ref["model"].tolist(), ref["group"].tolist(), _rl(x[has].to_numpy()), _rl(y[has].to_numpy()),
               _rl(rho_ref), x_estimated[has].tolist())
    for model, group, xi, yi, rho, est in zip(*columns):
        point = {"model": model, "group": group, "id_top1": xi, "ood_top1": yi, "effective_robustness": rho}
        if est:
            point["id_estimated"] = True
        points.append(point)
    view: dict[str, Any] = {"label": label, "x_axis": x_label, "fit": fit.to_dict() if fit else None,
                            "band": None, "notes": notes, "points": points}
    if fit is not None and len(fit.band_lo):
        view["band"] = {"x": _rl(fit.band_x), "lo": _rl(fit.band_lo), "hi": _rl(fit.band_hi)}
    return view


def _average(table: pd.DataFrame, runs: Sequence[RunData], transform: str, bootstrap: int,
             seed: int) -> dict[str, Any]:
    """CLIP's Fig. 13: ImageNet top-1 against the mean top-1 over :data:`AVERAGE_SHIFTS`."""
    labels = [SHIFTS[k].label for k in AVERAGE_SHIFTS]
    y = table[list(AVERAGE_SHIFTS)].mean(axis=1, skipna=False)
    user = []
    for run in runs:
        for model in run.models:
            ood = {p.shift: p.ood_top1 for p in run.points if p.model == model}
            if not ood:
                continue  # a model on ImageNet only has no point here
            missing = [SHIFTS[k].label for k in AVERAGE_SHIFTS if k not in ood]
            xi = run.imagenet.get(model)
            if missing:  # an average over fewer shifts would not be comparable with the line
                user.append((model, str(run.path), model in run.random_weights, None, np.nan,
                             f"not evaluated on {', '.join(missing)}: no average over the shifts"))
                continue
            user.append((model, str(run.path), model in run.random_weights, xi,
                         float(np.mean([ood[k] for k in AVERAGE_SHIFTS])),
                         None if xi is not None else "the run has no imagenet dataset, so no ImageNet accuracy"))
    view = _view("average over shifts", "ImageNet top-1", table, table["imagenet"], y, np.zeros(len(table), bool),
                 user, transform, bootstrap, seed,
                 [f"mean top-1 over {', '.join(labels)}; models without all of them are left out"])
    view["shifts"] = list(AVERAGE_SHIFTS)
    return view


def _r(v: Any) -> float | None:
    if v is None or not np.isfinite(v):
        return None
    return round(float(v), 3)


def _rl(a: np.ndarray) -> list[float | None]:
    """Rounded to 3 decimals, NaN as None (vectorised: thousands of points per view)."""
    a = np.round(np.asarray(a, dtype=np.float64), 3)
    return [None if v != v else v for v in a.tolist()]


def predicted_ood(fit_dict: dict[str, Any], id_top1: Sequence[float]) -> np.ndarray:
    """The line of a JSON ``fit`` at ``id_top1`` (percent), for plots drawn from the dict alone."""
    t = fit_dict["slope"] * to_axis(id_top1, fit_dict["transform"]) + fit_dict["intercept"]
    return from_axis(t, fit_dict["transform"])
