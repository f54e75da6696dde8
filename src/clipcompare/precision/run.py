"""The comparison itself: configuration, per model × dtype measurement, and the whole run's report dict."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcompare.classes import ClassSet
from clipcompare.dtypes import DTYPES, DtypeSupport, dtype_support, parse_dtype
from clipcompare.errors import UserError
from clipcompare.imagenet.classes import SEED_LABELS
from clipcompare.models.classifier import Classifier, ClipClassifier, create_classifier, wrap_loaded
from clipcompare.models.loading import seeded_init
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.models.towers import image_tower
from clipcompare.precision.drift import DriftStats, prediction_drift
from clipcompare.precision.environment import environment_info
from clipcompare.precision.images import generate_images, load_images
from clipcompare.precision.memory import (
    MemoryStats,
    measure_peak_memory,
    record_memory_timeline,
    weight_bytes,
)
from clipcompare.precision.report import _jsonable
from clipcompare.precision.timing import LatencyStats, fixed_threads, measure_latency
from clipcompare.runtime import steady_heap

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("cast", "autocast")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
@dataclass(frozen=True)
class PrecisionConfig:
    """What to measure and how carefully; validated on construction (UserError on bad values)."""

    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    mode: str = "cast"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    labels: tuple[str, ...] = SEED_LABELS  # small: CLIP's text head costs nothing on CPU
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
    build: dict[str, Any] | None = None  # LoadedModel.build: activation, logit scale, preprocessing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _copy_classifier(base: Classifier) -> Classifier:
    """A classifier around a deep copy of ``base``'s model, so each dtype starts from exact FP32 weights."""
    loaded = dataclasses.replace(base.loaded, model=copy.deepcopy(base.loaded.model))
    return wrap_loaded(loaded, templates=getattr(base, "template_set", "single"), cache_dir=None)


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
        with torch.inference_mode(), self.context():
            self.clf.prepare(self.classes)


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
    original = image_tower(clf.model)
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
        build=base.loaded.build.to_dict() if base.loaded.build is not None else None,
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
            with seeded_init(config.seed):
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
