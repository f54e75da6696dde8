"""The report's plots: matplotlib (Agg) figures returned as PNG bytes. Data in, pictures out."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DPI = 100
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never a window, never a display
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def top1_bars(datasets: Sequence[str], models: Sequence[str], top1: Mapping[tuple[str, str], float | None]) -> bytes:
    """Grouped bars: top-1 per dataset (groups), one bar per model, the value written on each bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(datasets) * max(1, len(models)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(datasets))
    for j, model in enumerate(models):
        values = [top1.get((d, model)) for d in datasets]
        heights = [100 * v if v is not None else 0.0 for v in values]
        offset = (j - (len(models) - 1) / 2) * width
        bars = ax.bar(x + offset, heights, width, label=model, color=COLORS[j % len(COLORS)])
        ax.bar_label(bars, labels=[f"{h:.1f}" if v is not None else "n/a" for h, v in zip(heights, values)],
                     fontsize=8, padding=2)
    ax.set_xticks(x, list(datasets))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 110)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("top-1 accuracy by dataset")
    return _png(fig)


def per_class_scatter(
    a: str, b: str, names: Sequence[str], acc_a: np.ndarray, acc_b: np.ndarray, n_label: int
) -> bytes:
    """Per-class top-1 of model ``a`` (x) against ``b`` (y), the diagonal, the furthest classes named."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    acc_a = 100 * np.asarray(acc_a, dtype=float)
    acc_b = 100 * np.asarray(acc_b, dtype=float)
    # many classes share a point (0/0, 100/100): a little transparency shows where they pile up
    ax.scatter(acc_a, acc_b, s=22, alpha=0.55, color="tab:blue", edgecolors="none")
    ax.plot([0, 100], [0, 100], color="0.4", lw=1, ls="--")
    gap = acc_b - acc_a
    for i in np.argsort(-np.abs(gap), kind="stable")[:n_label]:
        if gap[i] != 0:
            ax.annotate(names[i], (acc_a[i], acc_b[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"{a}: per-class top-1 (%)")
    ax.set_ylabel(f"{b}: per-class top-1 (%)")
    ax.set_title(f"{len(names)} classes; above the line: {b} better", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def severity_histogram(distances: Mapping[str, np.ndarray]) -> bytes:
    """Histogram of WordNet tree distance (true → predicted) over each model's mistakes, bars side by side."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    values = [int(v) for d in distances.values() for v in d]
    lo, hi = (min(values), max(values)) if values else (0, 1)
    edges = np.arange(lo, hi + 2)
    width = 0.8 / max(1, len(distances))
    for j, (model, d) in enumerate(distances.items()):
        counts, _ = np.histogram(np.asarray(d, dtype=int), bins=edges)
        share = 100 * counts / max(1, len(d))
        ax.bar(edges[:-1] + (j - (len(distances) - 1) / 2) * width, share, width, color=COLORS[j % len(COLORS)],
               label=f"{model} ({len(d)} mistakes, mean {np.mean(d):.1f})" if len(d) else f"{model} (no mistakes)")
    if hi - lo <= 20:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.set_xlabel("WordNet distance true → predicted (edges; 2 = siblings)")
    ax.set_ylabel("% of mistakes")
    ax.set_ylim(0, max([ax.get_ylim()[1], 1.0]) * 1.3)  # headroom: the legend sits above the bars
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("mistake severity", fontsize=10)
    return _png(fig)


def reliability_diagram(bins: Mapping[str, dict[str, Any]], ece: Mapping[str, float | None]) -> bytes:
    """Per model: accuracy per confidence bin against the diagonal (perfect calibration), with the ECE."""
    plt = _pyplot()
    n = max(1, len(bins))
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.4), squeeze=False)
    for j, (ax, (model, b)) in enumerate(zip(axes[0], bins.items())):
        edges = np.asarray(b["edges"])
        width = np.diff(edges)
        acc = [a if a is not None else 0.0 for a in b["accuracy"]]
        conf = [c if c is not None else 0.0 for c in b["confidence"]]
        filled = np.asarray(b["count"]) > 0
        ax.bar(edges[:-1][filled], np.asarray(acc)[filled], width[filled], align="edge", color=COLORS[j % len(COLORS)],
               edgecolor="white", label="accuracy")
        acc_f, conf_f = np.asarray(acc)[filled], np.asarray(conf)[filled]
        ax.bar(edges[:-1][filled], np.abs(conf_f - acc_f), width[filled], bottom=np.minimum(acc_f, conf_f),
               align="edge", facecolor="none", edgecolor="tab:red", hatch="///", lw=0.6, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], color="0.3", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 probability")
        ax.set_ylabel("accuracy")
        e = ece.get(model)
        ax.set_title(f"{model}\nECE {e:.3f}" if e is not None else model, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def training_curves(steps: Sequence[Mapping[str, Any]]) -> bytes:
    """Loss, learning rate and temperature against the optimizer step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    x = [s["step"] for s in steps]
    for ax, key, color in zip(axes, ("loss", "lr", "temperature"), COLORS):
        ax.plot(x, [s.get(key) for s in steps], color=color, lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    return _png(fig)


def recall_curves(epochs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> bytes:
    """Validation recalls (and mean recall@1) per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = [e["epoch"] for e in epochs]
    for j, key in enumerate(keys):
        ys = [100 * e[key] if e.get(key) is not None else None for e in epochs]
        ax.plot(x, ys, marker="o", ms=3, lw=1.2, color=COLORS[j % len(COLORS)] if j < len(COLORS) else None,
                ls="-" if key.startswith("image") else "--", label=key)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("recall (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("validation retrieval per epoch", fontsize=10)
    return _png(fig)
