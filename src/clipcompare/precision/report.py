"""Writing a run's report: JSON (non-finite floats as null) and the summary plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from clipcompare.fileio import atomic_write_bytes


def _jsonable(obj: Any) -> Any:
    """Paths to str, tuples to lists, non-finite floats to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``precision.png`` and ``precision.json`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_report(report, out_dir / "precision.png")
    report["files"] = {"plot": png.name, "json": "precision.json"}
    path = out_dir / "precision.json"
    atomic_write_bytes(path, (json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n").encode())
    return {"json": path, "plot": png}


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Per model: median latency (p90 whisker) and peak inference memory by batch size, weights by dtype."""
    plt = _pyplot()
    models = report["models"]
    rows = max(1, len(models))
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.8 * rows), squeeze=False)
    colors = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:green"}
    for row, model in zip(axes, models):
        ax_lat, ax_mem, ax_w = row
        dtypes = [r for r in model["results"]]
        sizes = sorted({b["batch_size"] for r in dtypes for b in r["batches"]})
        width = 0.8 / max(1, len(dtypes))
        for j, r in enumerate(dtypes):
            by_bs = {b["batch_size"]: b for b in r["batches"]}
            xs, med, err, mem_x, mem = [], [], [], [], []
            for i, bs in enumerate(sizes):
                b = by_bs.get(bs)
                if b and b.get("latency"):
                    lat = b["latency"]
                    xs.append(i + j * width)
                    med.append(lat["median_ms"] / bs)
                    err.append(max(0.0, lat["p90_ms"] - lat["median_ms"]) / bs)
                mpeak = (b or {}).get("memory") or {}
                if mpeak.get("peak_inference_bytes") is not None:
                    mem_x.append(i + j * width)
                    mem.append(mpeak["peak_inference_bytes"] / 2**20)
            color = colors.get(r["dtype"])
            if xs:
                ax_lat.bar(xs, med, width, yerr=[[0] * len(err), err], capsize=3, color=color, label=r["dtype"])
            if mem_x:
                ax_mem.bar(mem_x, mem, width, color=color, label=r["dtype"])
            if r.get("weight_bytes") is not None:
                ax_w.bar(j, r["weight_bytes"] / 2**20, color=color)
        ticks = [i + width * (len(dtypes) - 1) / 2 for i in range(len(sizes))]
        for ax in (ax_lat, ax_mem):
            ax.set_xticks(ticks, [str(s) for s in sizes])
            ax.set_xlabel("batch size")
            ax.grid(axis="y", alpha=0.3)
            if dtypes:
                ax.legend(fontsize=8)
        lat_values = [b["latency"]["median_ms"] for r in dtypes for b in r["batches"] if b.get("latency")]
        if lat_values and min(lat_values) > 0 and max(lat_values) / min(lat_values) > 20:
            ax_lat.set_yscale("log")  # emulated fp16 can be 10-100x slower: keep the others readable
        ax_lat.set_ylabel("median ms per image (whisker: p90)")
        ax_lat.set_title(f"{model['model']}: latency")
        ax_mem.set_ylabel("peak inference memory (MiB)")
        ax_mem.set_title(f"{model['model']}: peak memory above baseline")
        ax_w.set_xticks(range(len(dtypes)), [r["dtype"] for r in dtypes])
        ax_w.set_ylabel("weights (MiB)")
        ax_w.set_title(f"{model['model']}: weights")
        ax_w.grid(axis="y", alpha=0.3)
    env = report.get("environment", {})
    fig.suptitle(f"precision ({report['config'].get('mode')}) on {env.get('device')}: "
                 f"{env.get('cpu') if env.get('device') == 'cpu' else (env.get('cuda') or {}).get('name')}, "
                 f"{env.get('threads')} threads", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window, never need a display
    import matplotlib.pyplot as plt

    return plt
