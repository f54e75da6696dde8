"""Per-call latency: timed calls bracketed by device synchronisation, GC paused, fixed thread count."""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# p90 and std say little below this many timed runs, whatever the time budget
_MIN_TIMED_RUNS = 3
_MAX_TIMED_RUNS = 1000


@dataclass
class LatencyStats:
    """Per-call latency of one batch size (milliseconds) and the throughput at the median."""

    batch_size: int
    runs: int
    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    min_ms: float
    throughput_ips: float
    # process-wide minor page faults per timed call: high values mean the allocator hands memory
    # back to the kernel between calls and every call pays to fault it in again
    minor_faults_per_run: float | None = None


def summarize_times(times_s: Sequence[float], batch_size: int, minor_faults: int | None = None) -> LatencyStats:
    """Statistics over per-call wall times in seconds (and the minor page faults they incurred)."""
    if not times_s:
        raise ValueError("no timings")
    ms = [t * 1e3 for t in times_s]
    median = statistics.median(ms)
    return LatencyStats(
        batch_size=batch_size,
        runs=len(ms),
        median_ms=median,
        mean_ms=statistics.fmean(ms),
        std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        p90_ms=float(np.percentile(ms, 90)),
        min_ms=min(ms),
        throughput_ips=batch_size / (median / 1e3) if median > 0 else math.inf,
        minor_faults_per_run=None if minor_faults is None else minor_faults / len(ms),
    )


def _minor_faults() -> int | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):  # not on Unix
        return None


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU, where calls are synchronous)."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # as timeit does: a collection landing inside one timed call would show up as an outlier
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def measure_latency(
    fn: Callable[[], Any],
    *,
    batch_size: int,
    device: str,
    warmup: int = 2,
    min_runs: int = 5,
    min_time_s: float = 1.0,
    max_time_s: float = 10.0,
) -> tuple[LatencyStats, list[str]]:
    """Time ``fn`` call by call: ``warmup`` untimed calls, then timed ones until both ``min_runs``
    and ``min_time_s`` are reached, or ``max_time_s`` has passed with at least 3 runs.

    Each call is bracketed by device synchronisation, so queued GPU work is counted in the call
    that queued it. Returns the statistics and notes (e.g. when the time cap cut the runs short).
    """
    sync = synchronizer(device)
    notes: list[str] = []
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    faults_before = _minor_faults()
    with _gc_paused():
        start = time.perf_counter()
        while True:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if len(times) >= min_runs and elapsed >= min_time_s:
                break
            if elapsed >= max_time_s and len(times) >= min(_MIN_TIMED_RUNS, min_runs):
                notes.append(f"batch {batch_size}: only {len(times)} timed runs (time cap {max_time_s:g} s)")
                break
            if len(times) >= _MAX_TIMED_RUNS:
                break
    faults_after = _minor_faults()
    faults = None if faults_before is None or faults_after is None else faults_after - faults_before
    return summarize_times(times, batch_size, faults), notes


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for the block (None: keep the current one); yields it."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
