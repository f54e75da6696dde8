"""Memory: weight bytes, peak memory of one call (CUDA allocator or CPU resident set), CUDA allocation timelines."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcompare.precision.report import _pyplot
from clipcompare.runtime import malloc_trim


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by parameters and buffers: floating-point tensors (what a cast shrinks) and the rest.

    Integer buffers such as BatchNorm's ``num_batches_tracked`` keep their dtype under a cast, so
    they are counted apart; shared tensors are counted once.
    """
    floating = other = 0
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        size = t.numel() * t.element_size()
        if t.is_floating_point():
            floating += size
        else:
            other += size
    return {"floating": floating, "other": other}


@dataclass
class MemoryStats:
    """Peak memory of one inference call.

    ``peak_inference_bytes`` is the peak above what was held just before the call (activations,
    workspaces, outputs); ``peak_allocated_bytes`` (CUDA only) is the absolute allocator peak,
    weights included.
    """

    method: str
    peak_inference_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    note: str | None = None


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kib(*keys: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _STATUS.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])  # "VmHWM:   123456 kB"
    return out


def reset_rss_peak() -> str | None:
    """Reset the kernel's resident-set high-water mark (VmHWM); the reason when that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS to the current RSS (Linux ≥ 4.0)
        now = _proc_status_kib("VmRSS", "VmHWM")
    except (OSError, ValueError) as exc:
        return f"cannot reset the resident-set peak ({exc.__class__.__name__}: {exc})"
    if "VmHWM" not in now or "VmRSS" not in now:
        return "/proc/self/status has no VmHWM/VmRSS"
    if now["VmHWM"] > now["VmRSS"] + 1024:  # a kernel that ignores the write leaves the old peak
        return "writing /proc/self/clear_refs did not reset VmHWM"
    return None


def measure_peak_memory(fn: Callable[[], Any], device: str) -> MemoryStats:
    """Peak memory of a single call to ``fn``, not inflated by earlier calls in this process."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return MemoryStats("cuda.max_memory_allocated", peak - base, peak)
    # memory freed by earlier runs goes back to the kernel first, so the measured call cannot
    # silently reuse it (and be missed by the resident-set peak)
    malloc_trim()
    reason = reset_rss_peak()
    if reason is not None:
        return MemoryStats("unavailable", note=f"peak CPU memory not measured: {reason}")
    before = _proc_status_kib("VmRSS")["VmRSS"]
    fn()
    hwm = _proc_status_kib("VmHWM")["VmHWM"]
    return MemoryStats("VmHWM-VmRSS", max(0, hwm - before) * 1024)


def timeline_from_snapshot(snapshot: dict[str, Any], *, base_bytes: int = 0, device_index: int = 0) -> tuple[list[float], list[int]]:
    """Allocated bytes over time (ms from the first event) from a ``torch.cuda.memory._snapshot()``.

    Allocations made before recording started are not in the trace: ``base_bytes`` (what
    ``memory_allocated`` said when recording began) is added to every point.
    """
    traces = snapshot.get("device_traces") or []
    events = traces[device_index] if device_index < len(traces) else []
    has_completed = any(e.get("action") == "free_completed" for e in events)
    free_action = "free_completed" if has_completed else ("free_requested" if any(
        e.get("action") == "free_requested" for e in events) else "free")
    t0 = None
    times: list[float] = []
    values: list[int] = []
    current = base_bytes
    for i, event in enumerate(events):
        action = event.get("action")
        if action == "alloc":
            current += int(event.get("size", 0))
        elif action == free_action:
            current -= int(event.get("size", 0))
        else:
            continue
        stamp = event.get("time_us")
        t = float(stamp) / 1e3 if stamp is not None else float(i)
        t0 = t if t0 is None else t0
        times.append(t - t0)
        values.append(current)
    return times, values


def record_memory_timeline(fn: Callable[[], Any], *, iterations: int, path: Path, title: str) -> Path:
    """Record CUDA allocator events over ``iterations`` calls and plot allocated bytes to ``path``."""
    mem = torch.cuda.memory
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    mem._record_memory_history(max_entries=200_000)
    try:
        for _ in range(iterations):
            fn()
        torch.cuda.synchronize()
        snapshot = mem._snapshot()
    finally:
        mem._record_memory_history(enabled=None)
    times, values = timeline_from_snapshot(snapshot, base_bytes=base, device_index=torch.cuda.current_device())
    plot_timeline(times, values, path, title)
    return path


def plot_timeline(times_ms: Sequence[float], values: Sequence[int], path: Path, title: str) -> Path:
    """A step plot of allocated MiB over time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.step(list(times_ms), [v / 2**20 for v in values], where="post")
    ax.set_xlabel("time (ms)" if times_ms and any(t != int(t) for t in times_ms) else "time (ms or event index)")
    ax.set_ylabel("allocated (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
