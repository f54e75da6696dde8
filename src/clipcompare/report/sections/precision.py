"""A ``precision`` output directory (precision.json, precision.png, CUDA memory timelines) as a section."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from clipcompare.report.blocks import (
    Cell,
    Figure,
    Heading,
    ReportOptions,
    Section,
    Table,
    Text,
    num,
    read_json,
    run_label,
)

MIB = 2**20


def is_run(path: Path) -> bool:
    return (path / "precision.json").is_file()


def build(run_dir: Path, options: ReportOptions) -> Section:
    """Latency / memory table and drift per model, the latency and memory plot, memory timelines on CUDA."""
    report = read_json(run_dir / "precision.json")
    env, cfg = report.get("environment", {}), report.get("config", {})
    where = env.get("cpu") if env.get("device") == "cpu" else (env.get("cuda") or {}).get("name", "cuda")
    section = Section(
        "precision", f"precision: {run_label(run_dir)}", str(run_dir),
        random_weights=[m["model"] for m in report.get("models", []) if not m.get("pretrained", True)],
        facts=[("device", f"{env.get('device')} ({where}), {env.get('threads')} threads, "
                          f"CPU capability {env.get('cpu_capability')}"),
               ("mode", f"{cfg.get('mode')}" + (", channels_last" if cfg.get("channels_last") else "")
                + (", torch.compile" if cfg.get("compile") else "")),
               ("torch", str(env.get("torch")))],
    )
    section.blocks.append(latency_table(report))
    drift = drift_table(report)
    if drift.rows:
        section.blocks.append(drift)
    section.blocks.append(Figure("latency, peak memory and weights by dtype", _plot_png(run_dir, report)))
    for model in report.get("models", []):
        for r in model.get("results", []):
            name = r.get("memory_timeline")
            if name and (run_dir / name).is_file():
                section.blocks.append(Figure(f"{model['model']} {r['dtype']}: CUDA memory timeline",
                                             (run_dir / name).read_bytes()))
    notes = [f"{m['model']}: {n}" for m in report.get("models", []) for n in m.get("notes", [])]
    notes += [f"{m['model']} {r['dtype']}: {n}" for m in report.get("models", []) for r in m.get("results", [])
              for n in r.get("notes", [])]
    notes += list(report.get("notes", []))
    if notes:
        section.blocks.append(Heading("notes", 4))
        section.blocks += [Text(n) for n in notes]
    return section


def _status(r: dict[str, Any]) -> str:
    return "emulated" if r.get("status") == "ok" and r.get("native") is False else str(r.get("status"))


def _mib(n: int | None) -> Cell:
    return Cell("–" if n is None else f"{n / MIB:.1f}", n)


def latency_table(report: dict[str, Any]) -> Table:
    rows = []
    for model in report.get("models", []):
        for r in model.get("results", []):
            for b in r.get("batches") or [{}]:
                lat = b.get("latency") or {}
                rows.append([Cell(model["model"]), Cell(r["dtype"]), Cell(_status(r)), _mib(r.get("weight_bytes")),
                             num(b.get("batch_size"), "d"), num(lat.get("median_ms")), num(lat.get("p90_ms")),
                             num(lat.get("throughput_ips"), ".1f"),
                             _mib((b.get("memory") or {}).get("peak_inference_bytes"))])
    return Table("latency and memory", ["model", "dtype", "status", "weights MiB", "batch", "median ms", "p90 ms",
                                        "images/s", "peak memory MiB"], rows,
                 [False, False, False] + [True] * 6, role="precision")


def drift_table(report: dict[str, Any]) -> Table:
    rows = []
    for model in report.get("models", []):
        for r in model.get("results", []):
            d = r.get("drift")
            if d:
                rows.append([Cell(model["model"]), Cell(r["dtype"]), num(d.get("max_abs_prob_diff"), ".2e"),
                             num(d.get("top1_agreement"), ".3f"), num(d.get("top5_agreement"), ".3f"),
                             num(d.get("kl_mean"), ".2e")])
    images = report.get("images", {})
    return Table(f"prediction drift against fp32 ({images.get('count', '?')} images from {images.get('source', '?')})",
                 ["model", "dtype", "max |Δp|", "top-1 agreement", "top-5 agreement", "KL mean"], rows,
                 [False, False, True, True, True, True], role="drift")


def _plot_png(run_dir: Path, report: dict[str, Any]) -> bytes:
    """The run's own precision.png, or the same plot drawn again when it is missing."""
    png = run_dir / report.get("files", {}).get("plot", "precision.png")
    if png.is_file():
        return png.read_bytes()
    from clipcompare.precision.report import plot_report

    with tempfile.TemporaryDirectory() as tmp:
        return plot_report(report, Path(tmp) / "precision.png").read_bytes()
