"""The evaluation loop: decode each image once, feed every model, store predictions, resume.

A run directory holds::

    run.json                          command, settings, models (+ weight fingerprints), versions, times
    predictions/<dataset>.parquet     one row per image: path, target, per model top-5 ids + probs
    predictions/<dataset>.parts/      part-NNNNN.parquet chunks while a dataset is in progress
    metrics.json                      per dataset and model (see :mod:`clipcompare.metrics`)
    skipped.jsonl                     unreadable images with the reason

Rows are flushed in chunks written atomically (temp file + rename), so an interrupted run (Ctrl-C,
kill -9) loses at most the chunk in flight; the same command continues with the paths not yet
stored and ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from clipcompare.data import DatasetSpec, ImageDataset, load_datasets
from clipcompare.data.decode import Batch, DecodedImages, collate
from clipcompare.errors import UserError
from clipcompare.metrics import (
    TOP_K,
    dataset_metrics,
    prob_column,
    top_column,
)
from clipcompare.models.classifier import Classifier, create_classifier
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.rundir import RunStore, SkipLog
from clipcompare.runtime import steady_heap

log = logging.getLogger(__name__)

SETTINGS_VERSION = 1


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything besides the models and datasets; only some of it binds a resumed run (see ``_settings``)."""

    out: Path
    limit_per_class: int | None = None
    batch_size: int = 32
    workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    templates: str = "openai"
    channels_last: bool = False
    allow_random: bool = False
    chunk_size: int = 2048  # rows per part file (whole batches)
    flush_seconds: float = 60.0  # ... or sooner, so a slow CPU run also checkpoints
    progress: bool = True
    cache_dir: Path | None = None  # zero-shot head cache; None: zeroshot.default_cache_dir()
    command: tuple[str, ...] = field(default=())


@dataclass
class EvaluationResult:
    """What the CLI summarises: the run directory, its metrics and what was evaluated."""

    out: Path
    metrics: dict[str, Any]
    datasets: list[ImageDataset]
    models: list[str]
    random_weights: list[str] = field(default_factory=list)  # models that ran without pretrained weights


# --------------------------------------------------------------------------- entry point


def evaluate(
    models: Sequence[ModelSpec | str], datasets: Sequence[DatasetSpec | str], options: EvaluateOptions
) -> EvaluationResult:
    """Evaluate every model on every dataset into ``options.out`` (resuming what is already there)."""
    started = _now()
    data = load_datasets(datasets, options.limit_per_class)  # dataset errors before any model loads
    specs = [parse_spec(m) if isinstance(m, str) else m for m in models]
    if not specs:
        raise UserError("no --model given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"the same model is given twice: {', '.join(names)}")
    if options.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    store = RunStore(Path(options.out))
    settings = _settings(specs, data, options)
    previous = store.check_settings(settings)
    device = resolve_device(options.device)
    if device.type == "cpu":
        # 1.5x CPU throughput: no page-faulting of activations on every batch (see runtime.steady_heap)
        steady_heap()
    classifiers = load_classifiers(specs, options, device)
    info = _run_info(options, settings, classifiers, data, device, started, previous)
    store.write_json("run.json", info)

    skips = SkipLog(store.root / "skipped.jsonl")
    notes: dict[str, list[str]] = {}
    throughput: dict[str, dict[str, float]] = {}
    try:
        for ds in data:
            notes[ds.name] = run_dataset(ds, classifiers, store, skips, options, device, throughput)
    except KeyboardInterrupt:
        log.warning("interrupted: run the same command again to continue where it stopped")
        raise
    finally:
        skips.close()

    metrics = compute_metrics(store, data, classifiers, skips, notes)
    store.write_json("metrics.json", metrics)
    # images/s of this invocation's prediction loops (decode + preprocess + forward + writes)
    info.update(end_time=_now(), status="complete", throughput=throughput)
    store.write_json("run.json", info)
    return EvaluationResult(store.root, metrics, data, [c.name for c in classifiers],
                            [c.name for c in classifiers if not c.pretrained])


def resolve_device(name: str | None) -> torch.device:
    """``None``/``auto`` → cuda when available; an unusable device is a UserError."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_classifiers(specs: Sequence[ModelSpec], options: EvaluateOptions, device: torch.device) -> list[Classifier]:
    """Each model on ``device``; random inits are seeded so a resumed dry run gets the same weights."""
    from clipcompare.zeroshot import default_cache_dir

    cache_dir = options.cache_dir or default_cache_dir()
    classifiers = []
    for spec in specs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clf = create_classifier(
                spec, templates=options.templates, cache_dir=cache_dir, allow_random=options.allow_random,
                device=device,
            )
        if options.channels_last:
            clf.model.to(memory_format=torch.channels_last)
        classifiers.append(clf)
    return classifiers


# --------------------------------------------------------------------------- one dataset


def run_dataset(
    ds: ImageDataset, classifiers: Sequence[Classifier], store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device, throughput: dict[str, dict[str, float]] | None = None,
) -> list[str]:
    """Predict every image of ``ds`` not yet stored, then merge the parts; returns notes for metrics.json.

    ``throughput[ds.name]`` receives the images, seconds and images/s of the prediction loop.
    """
    notes = list(ds.notes)
    active = []
    for clf in classifiers:
        reason = clf.supports(ds.classes)
        if reason:
            log.warning("dataset %s: skipping %s: %s", ds.name, clf.name, reason)
            notes.append(f"{clf.name} skipped: {reason}")
        else:
            active.append(clf)
    if not active:
        return notes
    done = store.stored_paths(ds.name) | skips.paths(ds.name)
    pending = np.array([i for i, s in enumerate(ds.samples) if s.path not in done], dtype=np.int64)
    if len(done):
        log.info("dataset %s: %d of %d images already done, %d to go", ds.name, len(ds) - len(pending), len(ds),
                 len(pending))
    if len(pending):
        for clf in active:  # zero-shot heads now, so throughput (and the progress bar) covers images only
            clf.prepare(ds.classes)
        start = time.perf_counter()
        _predict(ds, active, pending, store, skips, options, device)
        seconds = time.perf_counter() - start
        if throughput is not None:
            throughput[ds.name] = {"images": int(len(pending)), "seconds": round(seconds, 3),
                                   "images_per_s": round(len(pending) / seconds, 2)}
    store.merge(ds, [c.name for c in active])
    return notes


def make_loader(
    ds: ImageDataset, pending: np.ndarray, transforms: Sequence[Any], options: EvaluateOptions, device: torch.device
) -> torch.utils.data.DataLoader:
    """Decode + preprocess in ``options.workers`` processes (in this process when 0), in dataset order."""
    images = DecodedImages(ds.root, [ds.samples[i].path for i in pending], transforms)
    workers = max(0, options.workers)
    return torch.utils.data.DataLoader(
        images, batch_size=options.batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def _predict(
    ds: ImageDataset, classifiers: Sequence[Classifier], pending: np.ndarray, store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device,
) -> None:
    from tqdm import tqdm

    transforms, slot = _distinct_transforms(classifiers)
    dtypes = [clf.dtype for clf in classifiers]
    k = min(TOP_K, len(ds.classes))
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    writer = ChunkWriter(store, ds, [c.name for c in classifiers], pending, options)
    loader = make_loader(ds, pending, transforms, options, device)
    bar = tqdm(total=len(ds), initial=len(ds) - len(pending), desc=ds.name, unit="img", file=sys.stderr,
               disable=not options.progress, dynamic_ncols=True, mininterval=0.5)
    with torch.inference_mode(), bar:
        for batch in loader:
            for pos, reason in batch.failures:
                skips.add(ds.name, ds.samples[pending[pos]].path, reason)
            if len(batch.positions):
                inputs = [t.to(device, non_blocking=True) for t in batch.tensors]
                outputs = []
                for clf, s, dtype in zip(classifiers, slot, dtypes):
                    x = inputs[s].to(dtype=dtype, memory_format=memory_format)
                    probs = clf.logits(x, ds.classes).float().softmax(dim=-1)
                    outputs.append(probs.topk(k, dim=-1))
                writer.add(batch, outputs)
            bar.update(len(batch.positions) + len(batch.failures))
            if writer.due():
                writer.flush()
        writer.flush()


def _distinct_transforms(classifiers: Sequence[Classifier]) -> tuple[list[Any], list[int]]:
    """One transform per distinct preprocess object (models sharing one run it once), and each model's slot."""
    transforms: list[Any] = []
    slot: list[int] = []
    for clf in classifiers:
        same = [j for j, t in enumerate(transforms) if t is clf.preprocess]
        if not same:
            transforms.append(clf.preprocess)
        slot.append(same[0] if same else len(transforms) - 1)
    return transforms, slot


class ChunkWriter:
    """Collects predictions on the device (no per-batch sync) and writes them out as part files."""

    def __init__(self, store: RunStore, ds: ImageDataset, models: Sequence[str], pending: np.ndarray,
                 options: EvaluateOptions) -> None:
        self.store, self.ds, self.models, self.pending = store, ds, list(models), pending
        self.chunk_size = max(options.chunk_size, 1)
        self.flush_seconds = options.flush_seconds
        self._positions: list[torch.Tensor] = []
        self._outputs: list[list[Any]] = [[] for _ in self.models]
        self._rows = 0
        self._last = time.monotonic()

    def add(self, batch: Batch, outputs: Sequence[Any]) -> None:
        self._positions.append(batch.positions)
        for acc, out in zip(self._outputs, outputs):
            acc.append(out)
        self._rows += len(batch.positions)

    def due(self) -> bool:
        return self._rows >= self.chunk_size or (
            self._rows > 0 and time.monotonic() - self._last >= self.flush_seconds
        )

    def flush(self) -> None:
        if self._rows:
            write_part(self.store, self.ds.name, self._table())
        self._positions = []
        self._outputs = [[] for _ in self.models]
        self._rows = 0
        self._last = time.monotonic()

    def _table(self) -> pa.Table:
        index = self.pending[torch.cat(self._positions).numpy()]
        columns: dict[str, pa.Array] = {
            "path": pa.array([self.ds.samples[i].path for i in index], pa.string()),
            "target": pa.array(np.array([self.ds.samples[i].target for i in index], dtype=np.int32)),
        }
        for name, outs in zip(self.models, self._outputs):
            values = torch.cat([o.values for o in outs]).cpu().numpy().astype(np.float32)
            indices = torch.cat([o.indices for o in outs]).cpu().numpy().astype(np.int32)
            columns[top_column(name)] = _fixed_lists(indices, pa.int32())
            columns[prob_column(name)] = _fixed_lists(values, pa.float32())
        return pa.table(columns)


def _fixed_lists(matrix: np.ndarray, dtype: pa.DataType) -> pa.Array:
    flat = pa.array(matrix.reshape(-1), dtype)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def write_part(store: RunStore, dataset: str, table: pa.Table) -> Path:
    """One flushed chunk (module-level so tests can interrupt a run between chunks)."""
    return store.write_part(dataset, table)


# --------------------------------------------------------------------------- metrics + run.json


def compute_metrics(
    store: RunStore, data: Sequence[ImageDataset], classifiers: Sequence[Classifier], skips: SkipLog,
    notes: dict[str, list[str]],
) -> dict[str, Any]:
    """metrics.json: per dataset, its size, skipped images, notes and :func:`metrics.dataset_metrics`."""
    out: dict[str, Any] = {"datasets": {}, "skipped_images": 0}
    for ds in data:
        reasons = skips.reasons(ds.name)
        entry: dict[str, Any] = {
            "kind": ds.kind, "root": str(ds.root.resolve()), "n_classes": len(ds.classes),
            "classes_present": ds.classes_present, "n_files": len(ds),
            "skipped": {"count": len(reasons), "by_error": dict(Counter(r.split(":", 1)[0] for r in reasons))},
        }
        final = store.final_path(ds.name)
        if final.is_file():
            df = store.read_predictions(ds.name)
            names = [c.name for c in classifiers if top_column(c.name) in df.columns]
            entry.update(dataset_metrics(df, ds.classes.names, ds.classes.imagenet_indices, models=names))
        entry["notes"] = list(notes.get(ds.name, []))
        out["datasets"][ds.name] = entry
        out["skipped_images"] += len(reasons)
    return out


def _settings(specs: Sequence[ModelSpec], data: Sequence[ImageDataset], options: EvaluateOptions) -> dict[str, Any]:
    """What the stored predictions depend on; a resumed run must match it exactly."""
    return {
        "version": SETTINGS_VERSION,
        "models": [s.name if s.path is None else f"{s.name} ({s.path.resolve()})" for s in specs],
        "datasets": [
            {"name": ds.name, "kind": ds.kind, "root": str(ds.root.resolve()), "classes": ds.classes.key}
            for ds in data
        ],
        "limit_per_class": options.limit_per_class,
        # prompts only matter to CLIP models
        "templates": _templates_identity(options.templates) if any(s.family == "clip" for s in specs) else None,
    }


def _templates_identity(templates: str) -> str:
    path = Path(templates)
    if templates not in ("single", "openai") and path.is_file():
        import hashlib

        return f"{path.name}#{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return templates


def _run_info(
    options: EvaluateOptions, settings: dict[str, Any], classifiers: Sequence[Classifier],
    data: Sequence[ImageDataset], device: torch.device, started: str, previous: dict[str, Any] | None,
) -> dict[str, Any]:
    from clipcompare.models.hashing import weights_fingerprint

    models = [
        {"name": c.name, "family": c.spec.family, "pretrained": c.pretrained,
         "weights_file": c.loaded.weights_file, "fingerprint": weights_fingerprint(c.model),
         "build": c.loaded.build.to_dict() if c.loaded.build is not None else None}
        for c in classifiers
    ]
    if previous is not None:
        old = {m["name"]: (m.get("fingerprint"), m.get("build")) for m in previous.get("models", [])}
        # the build (activation, preprocessing) as JSON reads it back, so tuples compare equal to lists
        changed = [m["name"] for m in models if old.get(m["name"], (None, None)) not in (
            (None, None), (m["fingerprint"], None), (m["fingerprint"], json.loads(json.dumps(m["build"]))))]
        if changed:
            raise UserError(
                f"the weights or build (activation, preprocessing) of {', '.join(changed)} differ from those "
                f"{options.out} was started with; use a new --out"
            )
    return {
        "command": list(options.command),
        "settings": settings,
        "models": models,
        "datasets": [
            {"name": ds.name, "kind": ds.kind, "root": str(ds.root.resolve()), "files": len(ds),
             "classes": len(ds.classes), "classes_present": ds.classes_present}
            for ds in data
        ],
        "options": {"batch_size": options.batch_size, "workers": options.workers, "device": str(device),
                    "channels_last": options.channels_last, "templates": options.templates},
        "versions": _versions(),
        "start_time": (previous or {}).get("start_time", started),
        "resumed_at": (previous or {}).get("resumed_at", []) + ([started] if previous else []),
        "end_time": None,
        "status": "running",
    }


def _versions() -> dict[str, str]:
    import open_clip
    import PIL
    import torchvision

    from clipcompare import __version__

    return {"clipcompare": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": open_clip.__version__, "pillow": PIL.__version__, "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
