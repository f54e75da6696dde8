"""FP32 vs FP16 vs BF16 for the image forward pass: latency, memory and prediction drift.

For each model and dtype, a copy of the FP32 model is converted (``cast`` mode: weights and inputs
in the dtype) or kept in FP32 and run under :func:`torch.autocast` (``autocast`` mode). The timed
call is :meth:`Classifier.logits` on a fixed :class:`ClassSet` (for CLIP: ``encode_image`` plus a
negligible matmul with the cached zero-shot head; for ResNet-50: the forward plus an index select).

Measurements, per model × dtype:

* latency per batch size: warm-up, then timed single calls bracketed by device synchronisation,
  with a fixed thread count and the garbage collector paused; median, mean ± std, p90, img/s
  (on CPU, glibc is first told to keep freed memory, see :func:`steady_heap`, so that the result
  does not depend on heap layout left by earlier work);
* memory: bytes of weights after the cast, peak memory of one inference call (CUDA: the caching
  allocator's peak; CPU: the kernel's resident-set high-water mark after resetting it) and, on
  CUDA, a PNG timeline of allocated bytes over a few iterations;
* drift of the class probabilities against FP32 on a handful of images.

Where a dtype is unsupported or only emulated on the device, the result says so in ``notes``
instead of raising, and whatever can still be measured (weight bytes at least) is reported.
Everything here returns data; printing belongs to ``clipcompare.cli.precision_cmd``.
"""

from __future__ import annotations

import contextlib
import ctypes
import copy
import dataclasses
import gc
import json
import logging
import math
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipcompare.errors import UserError
from clipcompare.models.classifier import (
    Classifier,
    ClassSet,
    ClipClassifier,
    SupervisedClassifier,
    create_classifier,
)
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.runtime import steady_heap

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
MODES: tuple[str, ...] = ("cast", "autocast")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
DEFAULT_MODELS: tuple[str, ...] = ("resnet50", "clip:RN50")

# The seed notebooks' 10 ImageNet classes: small enough that CLIP's text head costs nothing on CPU.
SEED_CLASSES: tuple[str, ...] = (
    "bald eagle", "axolotl", "common iguana", "Indian cobra", "peacock",
    "scorpion", "centipede", "black swan", "French bulldog", "leopard",
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# p90 and std say little below this many timed runs, whatever the time budget
_MIN_TIMED_RUNS = 3
_MAX_TIMED_RUNS = 1000


def parse_dtype(name: str) -> str:
    """Canonical dtype name (``fp32``/``fp16``/``bf16``) for a name or alias; UserError otherwise."""
    key = name.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return key


@dataclass(frozen=True)
class PrecisionConfig:
    """What to measure and how carefully; validated on construction (UserError on bad values)."""

    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    mode: str = "cast"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    labels: tuple[str, ...] = SEED_CLASSES
    templates: str = "single"
    images: Path | None = None
    max_images: int = 16
    generated_images: int = 8
    warmup: int = 2
    min_runs: int = 5
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    threads: int | None = None
    timeline_iters: int = 3
    seed: int = 0
    steady_heap: bool = True  # CPU: see steady_heap(); False keeps glibc's defaults

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(dict.fromkeys(parse_dtype(d) for d in self.dtypes)))
        if not self.dtypes:
            raise UserError("no dtypes given")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UserError("batch sizes must be positive integers")
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(int(b) for b in self.batch_sizes)))
        for name in ("max_images", "generated_images", "min_runs", "timeline_iters"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            raise UserError("warmup must be 0 or more")
        if self.threads is not None and self.threads < 1:
            raise UserError("threads must be at least 1")
        if self.min_time_s < 0 or self.max_time_s <= 0:
            raise UserError("time budgets must be positive")


# --------------------------------------------------------------------------- device support


@dataclass
class DtypeSupport:
    """Whether ``dtype`` runs on ``device`` at all, and whether natively (None: cannot tell)."""

    dtype: str
    device: str
    supported: bool
    native: bool | None
    note: str | None = None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """PyTorch's dispatch level for CPU kernels (``AVX2``, ``AVX512``, ...), or ``unknown``."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old or exotic builds
        return "unknown"


# Hardware that computes in the dtype rather than converting to fp32 around every kernel.
_CPU_NATIVE = {
    "bf16": ({"avx512_bf16", "amx_bf16", "bf16"}, "AVX512-BF16/AMX-BF16"),
    "fp16": ({"avx512_fp16", "amx_fp16", "asimdhp"}, "AVX512-FP16/AMX-FP16"),
}


def dtype_support(dtype: str, device: str) -> DtypeSupport:
    """Can ``dtype`` run on ``device``, natively or emulated? Never raises for a known dtype."""
    dtype = parse_dtype(dtype)
    if device == "cuda":
        return _cuda_support(dtype)
    if dtype == "fp32":
        return DtypeSupport(dtype, device, True, True)
    cap = cpu_capability()
    flags = cpu_flags()
    wanted, names = _CPU_NATIVE[dtype]
    if flags:
        native: bool | None = bool(flags & wanted)
    elif "AMX" in cap or {"bf16": "BF16", "fp16": "FP16"}[dtype] in cap:  # flags unreadable: trust e.g. "AVX512_BF16"
        native = True
    else:
        native = None
    note = None
    if native is False:
        note = (f"{dtype} on this CPU (PyTorch capability {cap}, no {names}): kernels run but are emulated "
                f"(converted to fp32 internally), so expect it slower than fp32")
    elif native is None:
        note = f"cannot tell whether this CPU (capability {cap}) has native {dtype} support"
    return DtypeSupport(dtype, device, True, native, note)


def _cuda_support(dtype: str) -> DtypeSupport:
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        return DtypeSupport(dtype, "cuda", False, None,
                            f"CUDA is not available on this machine (torch {torch.__version__}, built with CUDA {built}): "
                            "only weight bytes are reported")
    if dtype == "fp32":
        return DtypeSupport(dtype, "cuda", True, True)
    major, minor = torch.cuda.get_device_capability()
    if dtype == "fp16":
        if (major, minor) < (7, 0):
            return DtypeSupport(dtype, "cuda", True, False,
                                f"fp16 on compute capability {major}.{minor}: no tensor cores, expect little speed-up")
        return DtypeSupport(dtype, "cuda", True, True)
    if not torch.cuda.is_bf16_supported(including_emulation=True):
        return DtypeSupport(dtype, "cuda", False, False, f"bf16 is not supported on this GPU (compute capability {major}.{minor})")
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        return DtypeSupport(dtype, "cuda", True, False,
                            f"bf16 on compute capability {major}.{minor} is emulated (native from 8.0), expect it slow")
    return DtypeSupport(dtype, "cuda", True, True)


def environment_info(device: str, threads: int) -> dict[str, Any]:
    """What the numbers depend on: versions, CPU features, thread count, GPU and its TF32 settings."""
    flags = cpu_flags()
    interesting = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
                   "amx_tile", "amx_bf16", "amx_fp16", "asimdhp", "bf16")
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device,
        "threads": threads,
        "cpu": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_flags": [f for f in interesting if f in flags],
        "cuda": None,
    }
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info["cuda"] = {
            "name": torch.cuda.get_device_name(),
            "capability": f"{major}.{minor}",
            "cuda_version": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False),
            # "fp32" convolutions use TF32 tensor cores on Ampere+ unless these are off
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


# --------------------------------------------------------------------------- weights


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


# --------------------------------------------------------------------------- latency


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


# glibc mallopt parameters (malloc.h)
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


# --------------------------------------------------------------------------- memory


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


def _malloc_trim() -> None:
    # Hand glibc's free lists back to the kernel, so that memory freed by earlier runs is not
    # silently reused (and missed) by the measured one.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
    _malloc_trim()
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window, never need a display
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- drift


@dataclass
class DriftStats:
    """Class-probability agreement of a lower-precision run with FP32 on the same images.

    Probability differences lie in [0, 1]; agreements are fractions of images; KL(fp32 ‖ other)
    is ≥ 0 (averaged and maximised over images).
    """

    images: int
    classes: int
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    top1_agreement: float
    top5_agreement: float
    top5_k: int
    kl_mean: float
    kl_max: float
    nonfinite_images: int = 0


def prediction_drift(reference_logits: torch.Tensor, other_logits: torch.Tensor) -> DriftStats:
    """Compare softmax probabilities of ``other_logits`` with ``reference_logits`` (both [N, C]).

    Top-5 agreement is the fraction of images whose top-k class *set* is the same (k = min(5, C)).
    Rows where ``other`` is not finite (fp16 overflow) are left out and counted.
    """
    if reference_logits.shape != other_logits.shape or reference_logits.ndim != 2:
        raise ValueError(f"logit shapes differ or are not [N, C]: {tuple(reference_logits.shape)} vs {tuple(other_logits.shape)}")
    ref = reference_logits.detach().to("cpu", torch.float64)
    other = other_logits.detach().to("cpu", torch.float64)
    finite = torch.isfinite(other).all(dim=1) & torch.isfinite(ref).all(dim=1)
    bad = int((~finite).sum())
    ref, other = ref[finite], other[finite]
    n, c = ref.shape
    k = min(5, c)
    if n == 0:
        return DriftStats(0, c, math.nan, math.nan, math.nan, math.nan, k, math.nan, math.nan, bad)
    log_p = F.log_softmax(ref, dim=1)
    log_q = F.log_softmax(other, dim=1)
    p, q = log_p.exp(), log_q.exp()
    diff = (p - q).abs()
    top1 = (ref.argmax(dim=1) == other.argmax(dim=1)).double().mean()
    top_ref = ref.topk(k, dim=1).indices.sort(dim=1).values
    top_other = other.topk(k, dim=1).indices.sort(dim=1).values
    topk = (top_ref == top_other).all(dim=1).double().mean()
    # KL is ≥ 0 in exact arithmetic; clamp the last-bit rounding that can make it -1e-17
    kl = (p * (log_p - log_q)).sum(dim=1).clamp_min(0.0)
    return DriftStats(
        images=n, classes=c,
        max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
        top1_agreement=float(top1), top5_agreement=float(topk), top5_k=k,
        kl_mean=float(kl.mean()), kl_max=float(kl.max()), nonfinite_images=bad,
    )


# --------------------------------------------------------------------------- images


def generate_images(count: int, *, seed: int = 0, size: tuple[int, int] = (256, 256)):
    """Deterministic smooth random colour images (PIL), for drift when no --images are given."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize(size, Image.BILINEAR), dtype=np.float32)
        # a little high-frequency texture so convolutions see edges, not only gradients
        noisy = smooth + rng.normal(0.0, 12.0, size=smooth.shape)
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return images


def load_images(directory: Path, limit: int) -> list:
    """Up to ``limit`` RGB images from ``directory`` (recursively, sorted by path)."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--images: {directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        if len(images) >= limit:
            break
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
    if not images:
        raise UserError(f"--images: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return images


# --------------------------------------------------------------------------- per model × dtype


@dataclass
class BatchResult:
    """Latency and peak memory of one batch size."""

    batch_size: int
    latency: LatencyStats | None = None
    memory: MemoryStats | None = None


@dataclass
class DtypeResult:
    """Everything measured for one model in one dtype.

    ``status``: ``ok`` (all measured), ``partial`` (some steps failed, see notes) or
    ``unsupported`` (nothing but the weight bytes could be measured). ``native`` is False where the
    device emulates the dtype, None where that cannot be told.
    """

    dtype: str
    mode: str
    status: str = "ok"
    native: bool | None = None
    weight_bytes: int | None = None
    other_buffer_bytes: int | None = None
    batches: list[BatchResult] = field(default_factory=list)
    drift: DriftStats | None = None
    memory_timeline: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelResult:
    """One model across dtypes."""

    model: str
    family: str
    pretrained: bool
    input_size: list[int]
    classes: int
    results: list[DtypeResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _copy_classifier(base: Classifier) -> Classifier:
    """A classifier around a deep copy of ``base``'s model, so each dtype starts from exact FP32 weights."""
    loaded = dataclasses.replace(base.loaded, model=copy.deepcopy(base.loaded.model))
    if isinstance(base, ClipClassifier):
        return ClipClassifier(loaded, templates=base.template_set, cache_dir=None)
    return SupervisedClassifier(loaded)


def _image_tower(clf: Classifier) -> nn.Module:
    return clf.model.visual if isinstance(clf, ClipClassifier) else clf.model


def _set_image_tower(clf: Classifier, module: nn.Module) -> None:
    if isinstance(clf, ClipClassifier):
        clf.model.visual = module  # encode_image calls self.visual
    else:
        clf.model = module  # SupervisedClassifier.logits calls self.model


class _Runner:
    """Calls ``clf.logits`` the way this dtype and mode require (dtype, memory format, autocast)."""

    def __init__(self, clf: Classifier, classes: ClassSet, config: PrecisionConfig, dtype: str) -> None:
        self.clf = clf
        self.classes = classes
        self.device = config.device
        self.torch_dtype = DTYPES[dtype]
        self.autocast = config.mode == "autocast" and dtype != "fp32"
        self.input_dtype = self.torch_dtype if config.mode == "cast" else torch.float32
        self.channels_last = config.channels_last

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(device_type=self.device, dtype=self.torch_dtype)
        return contextlib.nullcontext()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.input_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.context():
            return self.clf.logits(x, self.classes)

    def build_head(self) -> None:
        """Build CLIP's zero-shot head now (text tower, once), so no timed call pays for it."""
        if isinstance(self.clf, ClipClassifier):
            with torch.inference_mode(), self.context():
                self.clf.head(self.classes)


def _batched_logits(runner: _Runner, images: torch.Tensor, chunk: int) -> torch.Tensor:
    outs = [runner(runner.prepare(images[i : i + chunk])).float().cpu() for i in range(0, len(images), chunk)]
    return torch.cat(outs)


def evaluate_dtype(
    base: Classifier,
    dtype: str,
    *,
    classes: ClassSet,
    images: torch.Tensor,
    reference_logits: torch.Tensor | None,
    config: PrecisionConfig,
    support: DtypeSupport,
    out_dir: Path | None = None,
) -> tuple[DtypeResult, torch.Tensor | None]:
    """Measure one dtype of one model; returns the result and the logits on ``images`` (None if not run).

    Unsupported dtypes and kernels that raise become notes; nothing here raises for them.
    """
    res = DtypeResult(dtype=dtype, mode=config.mode, native=support.native)
    if support.note:
        res.notes.append(support.note)
    if config.mode == "autocast" and dtype != "fp32":
        res.notes.append("autocast keeps fp32 weights (weight bytes are fp32); ops run in "
                         f"{dtype} where autocast allows, the rest in fp32")
    clf = _copy_classifier(base)
    try:
        if config.mode == "cast":
            clf.model.to(dtype=DTYPES[dtype])
        if config.channels_last:
            clf.model.to(memory_format=torch.channels_last)
        wb = weight_bytes(clf.model)
        res.weight_bytes, res.other_buffer_bytes = wb["floating"], wb["other"]
        if not support.supported:
            res.status = "unsupported"
            return res, None
        logits = _run_measurements(clf, dtype, res, classes=classes, images=images, config=config, out_dir=out_dir)
        if logits is not None and reference_logits is not None:
            res.drift = prediction_drift(reference_logits, logits)
            if res.drift.nonfinite_images:
                res.notes.append(f"{res.drift.nonfinite_images} image(s) gave non-finite logits in {dtype} "
                                 "(overflow); drift is over the rest")
        elif logits is not None and reference_logits is None and dtype != "fp32":
            res.notes.append("no fp32 reference logits: drift not measured")
        return res, logits
    finally:
        del clf
        gc.collect()
        if config.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_measurements(
    clf: Classifier,
    dtype: str,
    res: DtypeResult,
    *,
    classes: ClassSet,
    images: torch.Tensor,
    config: PrecisionConfig,
    out_dir: Path | None,
) -> torch.Tensor | None:
    device = config.device
    label = f"{clf.name} {dtype} ({config.mode}) on {device}"
    runner = _Runner(clf, classes, config, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _measure(clf, dtype, res, runner, label, images=images, config=config, out_dir=out_dir)
        finally:
            # e.g. "In CPU autocast, but the target dtype is not supported. Disabling autocast."
            for w in caught:
                text = f"warning: {str(w.message).splitlines()[0]}"
                if text not in res.notes:
                    res.notes.append(text)


def _measure(clf: Classifier, dtype: str, res: DtypeResult, runner: _Runner, label: str, *,
             images: torch.Tensor, config: PrecisionConfig, out_dir: Path | None) -> torch.Tensor | None:
    """Logits on ``images`` (None if the dtype cannot run), then latency and memory per batch size."""
    device = config.device
    try:
        clf.model.to(device)
        runner.build_head()
        if config.compile:
            _try_compile(clf, runner, images, res)
        logits = _batched_logits(runner, images, max(config.batch_sizes))
    except RuntimeError as exc:
        # e.g. "... not implemented for 'Half'": this dtype cannot run here at all
        res.status = "unsupported"
        res.notes.append(f"{dtype} does not run on {device}: {_first_line(exc)}")
        log.info("%s: %s", label, res.notes[-1])
        return None
    for bs in config.batch_sizes:
        x = runner.prepare(images[torch.arange(bs) % len(images)])
        batch = BatchResult(bs)
        res.batches.append(batch)
        try:
            log.info("%s: timing batch %d", label, bs)
            batch.latency, notes = measure_latency(
                lambda x=x: runner(x), batch_size=bs, device=device, warmup=config.warmup,
                min_runs=config.min_runs, min_time_s=config.min_time_s, max_time_s=config.max_time_s,
            )
            res.notes.extend(notes)
            batch.memory = measure_peak_memory(lambda x=x: runner(x), device)
            if batch.memory.note and batch.memory.note not in res.notes:
                res.notes.append(batch.memory.note)
        except RuntimeError as exc:  # out of memory, or a kernel missing for this shape
            res.status = "partial"
            res.notes.append(f"batch {bs}: {_first_line(exc)}")
            log.info("%s: %s", label, res.notes[-1])
        finally:
            del x
    if device == "cuda":
        _timeline(runner, images, config, res, out_dir, clf.name, dtype)
    return logits


def _try_compile(clf: Classifier, runner: _Runner, images: torch.Tensor, res: DtypeResult) -> None:
    """Wrap the image tower in torch.compile; on failure (at compile or first call) fall back to eager."""
    original = _image_tower(clf)
    try:
        _set_image_tower(clf, torch.compile(original))
        runner(runner.prepare(images[:1]))  # compilation happens at the first call
        res.notes.append("torch.compile: image tower compiled (each new batch shape recompiles during warm-up)")
    except Exception as exc:  # any backend failure (no compiler, unsupported op) means the same: run eager
        _set_image_tower(clf, original)
        res.notes.append(f"torch.compile failed ({_first_line(exc)}); measured eager")
        log.warning("%s %s: torch.compile failed: %s", clf.name, res.dtype, exc)


def _timeline(runner: _Runner, images: torch.Tensor, config: PrecisionConfig, res: DtypeResult,
              out_dir: Path | None, model_name: str, dtype: str) -> None:
    if out_dir is None:
        res.notes.append("memory timeline not recorded: no output directory")
        return
    bs = max(config.batch_sizes)
    x = runner.prepare(images[torch.arange(bs) % len(images)])
    name = f"memory_{re.sub(r'[^A-Za-z0-9_.-]+', '_', model_name)}_{dtype}.png"
    try:
        record_memory_timeline(lambda: runner(x), iterations=config.timeline_iters, path=Path(out_dir) / name,
                               title=f"{model_name} {dtype} ({config.mode}), batch {bs}: CUDA allocated memory")
        res.memory_timeline = name
    except Exception as exc:  # private API: its absence or change must not lose the other results
        res.notes.append(f"memory timeline failed: {_first_line(exc)}")


def _input_tensor(clf: Classifier, pil_images: Sequence) -> torch.Tensor:
    return torch.stack([clf.preprocess(img) for img in pil_images])


def evaluate_model(
    base: Classifier,
    *,
    classes: ClassSet,
    pil_images: Sequence,
    config: PrecisionConfig,
    support: dict[str, DtypeSupport],
    out_dir: Path | None = None,
) -> ModelResult:
    """All requested dtypes of one (FP32, CPU-resident) classifier; FP32 is the drift reference."""
    notes: list[str] = []
    if not base.pretrained:
        notes.append("random weights (pretrained weights not found): latency and memory are representative, "
                     "drift is measured on a random network")
    reason = base.supports(classes)
    if reason:
        notes.append(f"{reason}: scoring all 1000 ImageNet classes instead")
        classes = ClassSet.imagenet()
    images = _input_tensor(base, pil_images)
    result = ModelResult(
        model=base.name, family=base.spec.family, pretrained=base.pretrained,
        input_size=list(images.shape[1:]), classes=len(classes), notes=notes,
    )
    # FP32 runs first: it is the reference the others drift from
    order = ["fp32", *[d for d in config.dtypes if d != "fp32"]]
    reference: torch.Tensor | None = None
    for dtype in order:
        requested = dtype in config.dtypes
        dsupport = support.get(dtype) or dtype_support(dtype, config.device)
        if not requested:
            # reference only: no timing, no memory, not reported
            reference = _reference_logits(base, classes, images, config, dsupport, notes)
            continue
        log.info("%s: %s (%s)", base.name, dtype, config.mode)
        res, logits = evaluate_dtype(base, dtype, classes=classes, images=images, reference_logits=reference,
                                     config=config, support=dsupport, out_dir=out_dir)
        if dtype == "fp32":
            reference = logits
            if logits is not None:
                res.drift = prediction_drift(logits, logits)
        result.results.append(res)
    return result


def _reference_logits(base: Classifier, classes: ClassSet, images: torch.Tensor, config: PrecisionConfig,
                      support: DtypeSupport, notes: list[str]) -> torch.Tensor | None:
    if not support.supported:
        return None
    clf = _copy_classifier(base)
    try:
        runner = _Runner(clf, classes, config, "fp32")
        clf.model.to(config.device)
        if config.channels_last:
            clf.model.to(memory_format=torch.channels_last)
        runner.build_head()
        return _batched_logits(runner, images, max(config.batch_sizes))
    except RuntimeError as exc:
        notes.append(f"fp32 reference failed ({_first_line(exc)}): drift not measured")
        return None
    finally:
        del clf
        gc.collect()


# --------------------------------------------------------------------------- whole run


def evaluate(
    models: Sequence[ModelSpec | str],
    config: PrecisionConfig,
    *,
    out_dir: Path | None = None,
    allow_random: bool = True,
) -> dict[str, Any]:
    """Run the comparison for every model; returns a JSON-ready dict (see :func:`save_report`).

    ``out_dir`` receives CUDA memory timelines; :func:`save_report` writes the JSON and plot.
    """
    specs = [parse_spec(m) if isinstance(m, str) else m for m in models]
    if not specs:
        raise UserError("no models given")
    classes = ClassSet.from_labels(config.labels)
    if config.images is not None:
        pil_images = load_images(config.images, config.max_images)
        image_source = str(config.images)
    else:
        pil_images = generate_images(config.generated_images, seed=config.seed)
        image_source = "generated"
    support = {d: dtype_support(d, config.device) for d in config.dtypes}
    global_notes: list[str] = []
    if config.device == "cpu":
        global_notes.append("memory timelines are recorded on CUDA only")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results: list[ModelResult] = []
    allocator = steady_heap() if config.device == "cpu" and config.steady_heap else "default"
    with fixed_threads(config.threads) as threads:
        env = environment_info(config.device, threads)
        env["allocator"] = allocator
        for spec in specs:
            torch.manual_seed(config.seed)  # random inits are the same from run to run
            base = create_classifier(spec, templates=config.templates, allow_random=allow_random, device="cpu")
            try:
                results.append(evaluate_model(base, classes=classes, pil_images=pil_images, config=config,
                                              support=support, out_dir=out_dir))
            finally:
                del base
                gc.collect()
    return {
        "config": _jsonable(dataclasses.asdict(config)),
        "environment": env,
        "dtype_support": {d: dataclasses.asdict(s) for d, s in support.items()},
        "images": {"source": image_source, "count": len(pil_images)},
        "classes": list(classes.names),
        "models": [_jsonable(dataclasses.asdict(r)) for r in results],
        "notes": global_notes,
        "files": {},
    }


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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
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
