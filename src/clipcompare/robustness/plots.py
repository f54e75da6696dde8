"""The robustness map's pictures: per shift, ImageNet accuracy against shifted accuracy on
logit- (or probit-) scaled axes with percent ticks, y = x, the baseline with its bootstrap band,
the published models coloured by group, and the user's models large and labelled.

Labels are placed greedily: each tries offsets around its point, nearest first, and takes the first
whose box overlaps no label placed before it and no labelled point, so the default figure has no
overlapping labels (hovering is not needed). Figures come back as PNG bytes, as the report's do.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipcompare.robustness.fit import from_axis, to_axis
from clipcompare.robustness.map import YOUR_RUNS, predicted_ood

DPI = 100  # as the report's plots


def _pyplot() -> Any:
    """pyplot on the headless Agg backend (not via clipcompare.report, whose package imports torch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


GROUP_STYLE: dict[str, dict[str, Any]] = {
    "standard": {"color": "#7f9fbf", "s": 9, "alpha": 0.55, "label": "standard (ImageNet-1k only)"},
    "more data": {"color": "#e6a04e", "s": 9, "alpha": 0.55, "label": "more data, then ImageNet-1k"},
    "zero-shot": {"color": "#3a9a3a", "s": 16, "alpha": 0.8, "label": "zero-shot (open_clip)"},
}
# published rows every map names: the two models this tool compares
LANDMARKS: tuple[str, ...] = ("timm:resnet50.tv_in1k", "clip:RN50@openai")
TICKS: tuple[float, ...] = (0.1, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9)
# offsets (points) tried around a labelled point, nearest first
_OFFSETS = [(dx * r, dy * r) for r in (8, 16, 28, 42, 60)
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1.4, 0), (-1.4, 0), (0, 1.2), (0, -1.2))]


def view_figure(view: dict[str, Any], transform: str = "logit", title: str | None = None) -> bytes:
    """One shift's (or the average's) scatter as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    # fixed margins instead of tight_layout: its extra draws were half of the map's time
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.09, top=0.94)
    scale = ("function", {"functions": (lambda p: to_axis(p, transform), lambda t: from_axis(t, transform))})
    ax.set_xscale(scale[0], **scale[1])
    ax.set_yscale(scale[0], **scale[1])
    placed = [p for p in view["points"] if p["id_top1"] is not None and p["ood_top1"] is not None]
    for group, style in GROUP_STYLE.items():
        pts = [p for p in placed if p["group"] == group]
        if pts:
            ax.scatter([p["id_top1"] for p in pts], [p["ood_top1"] for p in pts], s=style["s"], c=style["color"],
                       alpha=style["alpha"], linewidths=0, label=f"{style['label']} ({len(pts)})", zorder=2)
    xs = np.array([p["id_top1"] for p in placed] or [1.0, 99.0])
    ys = np.array([p["ood_top1"] for p in placed] or [1.0, 99.0])
    lo = max(min(xs.min(), ys.min()) * 0.8, 0.05)
    hi = min(100 - (100 - max(xs.max(), ys.max())) * 0.8, 99.95)
    grid = np.linspace(lo, hi, 200)
    ax.plot(grid, grid, ls="--", lw=1, color="0.4", label="y = x", zorder=1)
    fit = view.get("fit")
    if fit:
        ax.plot(grid, predicted_ood(fit, grid), color="#1f4e79", lw=1.6, zorder=3,
                label=f"{transform} fit on {fit['n_models']} standard models")
        band = view.get("band")
        if band:
            ax.fill_between(band["x"], band["lo"], band["hi"], color="#1f4e79", alpha=0.25, lw=0, zorder=3,
                            label=f"{int(round(100 * 0.95))}% bootstrap band")
    yours = [p for p in placed if p["group"] == YOUR_RUNS]
    for random in (False, True):
        pts = [p for p in yours if bool(p.get("random_weights")) == random]
        if pts:
            ax.scatter([p["id_top1"] for p in pts], [p["ood_top1"] for p in pts], s=90,
                       marker="X" if random else "*", c="#c0392b" if not random else "#7d3c98",
                       edgecolors="black", linewidths=0.6, zorder=5,
                       label="your models" + (" (random weights)" if random else ""))
    # the published landmarks only: a run of the same model is labelled above, as yours
    marks = [p for p in placed if p["model"] in LANDMARKS and p["group"] != YOUR_RUNS]
    ax.scatter([p["id_top1"] for p in marks], [p["ood_top1"] for p in marks], s=45, facecolors="none",
               edgecolors="black", linewidths=1.0, zorder=4)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ticks = _spaced([t for t in TICKS if lo <= t <= hi], transform)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(_fixed(ticks))
        axis.set_major_formatter(_percent())
        axis.set_minor_locator(_fixed([]))
    ax.set_xlabel(view.get("x_axis", "ImageNet top-1") + " (%)")
    ax.set_ylabel(f"{view['label']} top-1 (%)")
    ax.set_title(title or view["label"])
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    labels = [(p, p["model"] + (" (random)" if p.get("random_weights") else ""), 8) for p in yours]
    labels += [(p, p["model"], 7) for p in marks]
    place_labels(ax, labels)
    buf = io.BytesIO()
    # fastest zlib level: the plots are flat colours, a tenth larger and a third quicker to write
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return buf.getvalue()


def place_labels(ax: Any, labels: Sequence[tuple[dict[str, Any], str, float]]) -> list[Any]:
    """Annotate each point with its text at the first offset whose box overlaps nothing placed so far.

    Each text is measured once; candidate boxes are then plain arithmetic (pixels), so only the chosen
    annotation is ever drawn.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    pad = 2.0 * px
    anchors = [ax.transData.transform((p["id_top1"], p["ood_top1"])) for p, _, _ in labels]
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in anchors]  # the labelled points stay visible
    frame = ax.get_window_extent(renderer)
    out = []
    for (point, text, size), (x, y) in zip(labels, anchors):
        probe = ax.text(0, 0, text, fontsize=size)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width + 2 * pad, box.height + 2 * pad
        chosen = _OFFSETS[-1]
        for dx, dy in _OFFSETS:
            x0 = x + dx * px - (w if dx < 0 else 0)
            y0 = y + dy * px - (h if dy < 0 else 0)
            # with a margin: the drawn box differs slightly from the measured one
            rect = (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)
            inside = frame.x0 <= x0 and rect[2] <= frame.x1 and frame.y0 <= y0 and rect[3] <= frame.y1
            if inside and not any(_overlap(rect, other) for other in taken):
                chosen = (dx, dy)
                taken.append(rect)
                break
        dx, dy = chosen  # nowhere free: the last offset still names the point
        out.append(ax.annotate(text, (point["id_top1"], point["ood_top1"]), xytext=(dx, dy),
                               textcoords="offset points", fontsize=size, zorder=6,
                               ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                               arrowprops={"arrowstyle": "-", "color": "0.3", "lw": 0.6},
                               bbox={"boxstyle": f"round,pad={pad / px / size:.2f}", "fc": "white", "ec": "none",
                                     "alpha": 0.8}))
    return out


def _spaced(ticks: Sequence[float], transform: str, n: int = 9) -> list[float]:
    """Ticks at least 1/n of the axis apart on the transformed scale (logit crowds the middle)."""
    if not ticks:
        return []
    t = to_axis(ticks, transform)
    gap = (t.max() - t.min()) / n
    kept = [0]
    for i in range(1, len(ticks)):
        if t[i] - t[kept[-1]] >= gap:
            kept.append(i)
    return [ticks[i] for i in kept]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fixed(ticks: Sequence[float]) -> Any:
    from matplotlib.ticker import FixedLocator

    return FixedLocator(list(ticks))


def _percent() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}%")


def map_figures(result: dict[str, Any]) -> dict[str, bytes]:
    """PNG per shift with points (file stem → bytes), then ``average``."""
    transform = result["transform"]
    out = {kind: view_figure(view, transform) for kind, view in result["shifts"].items() if view["points"]}
    out["average"] = view_figure(result["average"], transform, title="average over " + ", ".join(
        result["shifts"][k]["label"] for k in result["average"]["shifts"]))
    return out


def write_map(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``robustness.json`` and :func:`map_figures` as PNGs into ``out_dir`` (each written atomically)."""
    import json

    from clipcompare.fileio import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "robustness.json"]
    atomic_write_bytes(written[0], (json.dumps(result, indent=1) + "\n").encode())
    for name, png in map_figures(result).items():
        atomic_write_bytes(out_dir / f"{name}.png", png)
        written.append(out_dir / f"{name}.png")
    return written
