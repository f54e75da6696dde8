"""``evaluate``: every model on every dataset into a run directory, resuming what is there; run.json
and metrics.json."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipcompare import distributed
from clipcompare.data import DatasetSpec, ImageDataset, load_datasets
from clipcompare.data.gpu_decode import jpeg_decoder
from clipcompare.distributed import DistInfo
from clipcompare.dtypes import DtypeSupport, dtype_support, parse_dtype
from clipcompare.errors import UserError
from clipcompare.evaluation.devices import apply_formats, choose_formats, load_classifiers, resolve_device
from clipcompare.evaluation.metrics import dataset_metrics, top_column
from clipcompare.evaluation.options import DECODE_PATHS, EvaluateOptions
from clipcompare.evaluation.pipeline import distinct_transforms, tensor_preprocesses
from clipcompare.evaluation.predict import run_dataset
from clipcompare.evaluation.store import RunStore, SkipLog
from clipcompare.evaluation.subsets import subset_metrics, subset_positions
from clipcompare.models.classifier import Classifier
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.rundir import RunLock, now_iso, versions
from clipcompare.runtime import steady_heap

log = logging.getLogger(__name__)


SETTINGS_VERSION = 1


@dataclass
class EvaluationResult:
    """What the CLI summarises: the run directory, its metrics and what was evaluated."""

    out: Path
    metrics: dict[str, Any]
    datasets: list[ImageDataset]
    models: list[str]
    random_weights: list[str] = field(default_factory=list)  # models that ran without pretrained weights
    options: dict[str, Any] = field(default_factory=dict)  # run.json's "options": device, decode, precision ...
    is_main: bool = True  # False on torchrun ranks other than 0 (which print nothing)


def evaluate(
    models: Sequence[ModelSpec | str], datasets: Sequence[DatasetSpec | str], options: EvaluateOptions
) -> EvaluationResult:
    """Evaluate every model on every dataset into ``options.out`` (resuming what is already there).

    Under torchrun every rank calls this with the same arguments (see the module docstring). The steps:
    ``check_request`` (every user mistake, before any model loads) → the lock and the directory's
    settings (``claim_run``) → models loaded and run.json written (``prepare``) → each dataset
    predicted → metrics.json and run.json's end (``finish``).
    """
    started = now_iso()
    request = check_request(models, datasets, options)
    owns_group = not distributed.is_initialized()  # else a caller joined it and will leave it
    dist = distributed.init_distributed(request.device)
    store = RunStore(Path(options.out))
    lock = RunLock(store.root, "clipcompare evaluate")
    settings = _settings(request.specs, request.data, options)
    try:
        previous = claim_run(store, lock, settings, dist)
        classifiers, formats, info = prepare(request, options, dist, settings, started, previous)
        if dist.is_main:
            store.write_json("run.json", info)
        distributed.barrier()  # run.json (and the directory) exist before any rank writes parts
        notes, throughput, skips = predict_datasets(request.data, classifiers, store, options, dist, formats)
        metrics = finish(store, request.data, classifiers, skips, notes, info, throughput, dist)
    finally:
        lock.release()
        if owns_group and dist.distributed:
            distributed.cleanup()
    return EvaluationResult(store.root, metrics, request.data, [c.name for c in classifiers],
                            [c.name for c in classifiers if not c.pretrained], info["options"], dist.is_main)


@dataclass(frozen=True)
class Request:
    """An evaluate call checked: its datasets scanned, specs parsed, dtype and device resolved."""

    data: list[ImageDataset]
    specs: list[ModelSpec]
    precision: str  # fp32, bf16 or fp16
    device: torch.device
    support: DtypeSupport  # whether the dtype runs on the device, and the note to log


def check_request(models: Sequence[ModelSpec | str], datasets: Sequence[DatasetSpec | str],
                  options: EvaluateOptions) -> Request:
    """Every mistake in the request as one UserError, before any model is loaded."""
    data = load_datasets(datasets, options.limit_per_class)  # dataset errors before any model loads
    specs = [parse_spec(m) if isinstance(m, str) else m for m in models]
    if not specs:
        raise UserError("no --model given")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        clashing = {s for s in specs if s.name in twice}
        if len(clashing) == len(twice):
            raise UserError(f"the same model is given twice: {', '.join(twice)}")
        # different files or folders with the same name: their columns and report rows would collide
        raise UserError(f"two models would both be called {twice[0]} (different files or folders with the same "
                        "name); rename one of them")
    if options.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if options.decode not in DECODE_PATHS:
        raise UserError(f"--decode {options.decode!r}: choose from {', '.join(DECODE_PATHS)}")
    if options.decode == "gpu":
        jpeg_decoder()  # TorchCodec loads, or one line now, before any model is loaded
    precision = parse_dtype(options.precision)
    device = resolve_device(options.device)
    support = dtype_support(precision, device.type)
    if not support.supported:
        raise UserError(f"--precision {precision} on {device}: {support.note}")
    return Request(data, specs, precision, device, support)


def claim_run(store: RunStore, lock: RunLock, settings: dict[str, Any], dist: DistInfo) -> dict[str, Any] | None:
    """Rank 0 takes the lock once for the whole job and checks the directory's settings; the others wait for
    its verdict, so a refused or mismatched run stops every rank with the same line. The stored run.json
    (None for a new run) goes to every rank: each then refuses changed weights in _run_info, not rank 0 alone."""
    error, previous = None, None
    if dist.is_main:
        try:
            lock.acquire()
            previous = store.check_settings(settings)
        except UserError as exc:
            error = str(exc)
    error, previous = distributed.broadcast_object((error, previous))
    if error:
        raise UserError(error)
    return previous


def prepare(request: Request, options: EvaluateOptions, dist: DistInfo, settings: dict[str, Any], started: str,
            previous: dict[str, Any] | None) -> tuple[list[Classifier], list[torch.memory_format], dict[str, Any]]:
    """The classifiers loaded on the device in their chosen memory formats, and run.json's record."""
    device = dist.device
    if request.support.note:
        log.warning("--precision %s: %s", request.precision, request.support.note)
    if device.type == "cpu":
        # 1.5x CPU throughput: no page-faulting of activations on every batch (see runtime.steady_heap)
        steady_heap()
    classifiers = load_classifiers(request.specs, options, device)
    chosen = None
    if dist.is_main:  # rank 0 times (or a resumed run keeps) the formats, for every rank
        chosen = choose_formats(classifiers, options, device,
                                ((previous or {}).get("options") or {}).get("memory_formats"))
    chosen = distributed.broadcast_object(chosen)
    formats = apply_formats(classifiers, chosen)
    info = _run_info(options, settings, classifiers, request.data, device, started, previous)
    info["options"].update(decode=options.decode, precision=request.precision,
                           precision_note=request.support.note, memory_formats=chosen,
                           world_size=dist.world_size)
    if options.decode == "gpu":  # what the device applies instead of each PIL transform (fails early)
        transforms, slot = distinct_transforms(classifiers)
        tensor_steps = tensor_preprocesses(transforms, classifiers, slot)
        info["options"]["tensor_preprocess"] = {c.name: tensor_steps[s].describe() for c, s in zip(classifiers, slot)}
    return classifiers, formats, info


def predict_datasets(data: Sequence[ImageDataset], classifiers: Sequence[Classifier], store: RunStore,
                     options: EvaluateOptions, dist: DistInfo, formats: Sequence[torch.memory_format],
                     ) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]], SkipLog]:
    """Every dataset's predictions into the store (each rank its share); notes, throughput and the skip log."""
    skips = SkipLog(store.root / "skipped.jsonl", rank=dist.rank if dist.distributed else None)
    notes: dict[str, list[str]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    try:
        for ds in data:
            notes[ds.name] = run_dataset(ds, classifiers, store, skips, options, dist.device, throughput, dist,
                                         formats)
    except KeyboardInterrupt:
        log.warning("interrupted: run the same command again to continue where it stopped")
        raise
    finally:
        skips.close()
    return notes, throughput, skips


def finish(store: RunStore, data: Sequence[ImageDataset], classifiers: Sequence[Classifier], skips: SkipLog,
           notes: dict[str, list[str]], info: dict[str, Any], throughput: dict[str, dict[str, Any]],
           dist: DistInfo) -> dict[str, Any]:
    """Rank 0 folds the skips and writes metrics.json and run.json's end; every rank gets the metrics."""
    distributed.barrier()  # every rank's parts and skips are written
    metrics = None
    if dist.is_main:
        skips.fold()
        metrics = compute_metrics(store, data, classifiers, skips, notes)
        store.write_json("metrics.json", metrics)
        # images/s of this invocation's prediction loops (decode + preprocess + forward + writes)
        info.update(end_time=now_iso(), status="complete", throughput=throughput)
        store.write_json("run.json", info)
    return distributed.broadcast_object(metrics)


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
            positions = subset_positions(ds.benchmark, ds.classes.imagenet_indices)
            for model, subsets in subset_metrics(df, names, positions).items():
                entry["models"][model]["subset_top1"] = subsets
        if ds.stands_for:  # only then, so metrics.json of other datasets reads as before
            entry["stands_for"] = ds.stands_for
        entry["notes"] = list(notes.get(ds.name, []))
        out["datasets"][ds.name] = entry
        out["skipped_images"] += len(reasons)
    return out


def _settings(specs: Sequence[ModelSpec], data: Sequence[ImageDataset], options: EvaluateOptions) -> dict[str, Any]:
    """What the stored predictions depend on; a resumed run must match it exactly."""
    settings: dict[str, Any] = {
        "version": SETTINGS_VERSION,
        "models": [s.name if s.path is None else f"{s.name} ({s.path.resolve()})" for s in specs],
        # "option" (the wds split, the folder's mapping file) only when set, so older run directories resume
        "datasets": [
            {"name": ds.name, "kind": ds.kind, "root": str(ds.root.resolve()), "classes": ds.classes.key,
             **_option(ds)}
            for ds in data
        ],
        "limit_per_class": options.limit_per_class,
        # prompts only matter to CLIP models
        "templates": _templates_identity(options.templates) if any(not s.supervised for s in specs) else None,
    }
    # Only when not the default, so run directories made before these options existed still resume.
    if options.decode != "cpu":
        settings["decode"] = options.decode
    if parse_dtype(options.precision) != "fp32":
        settings["precision"] = parse_dtype(options.precision)
    return settings


def _option(ds: ImageDataset) -> dict[str, str]:
    """``{"option": …}`` for a dataset built with one: ``build_dataset(DatasetSpec(kind, Path(root), option))``
    rebuilds it from run.json."""
    return {"option": ds.option} if ds.option is not None else {}


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
        # "spec": the spec that loads the model again (parse_spec), absolute paths; "name" is its column
        {"name": c.name, "spec": c.spec.text, "family": c.spec.family, "pretrained": c.pretrained,
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
            {"name": ds.name, "kind": ds.kind, "root": str(ds.root.resolve()), **_option(ds), "files": len(ds),
             "classes": len(ds.classes), "classes_present": ds.classes_present}
            for ds in data
        ],
        "options": {"batch_size": options.batch_size, "workers": options.workers, "device": str(device),
                    "channels_last": options.channels_last, "templates": options.templates},
        "versions": versions(),
        "start_time": (previous or {}).get("start_time", started),
        "resumed_at": (previous or {}).get("resumed_at", []) + ([started] if previous else []),
        "end_time": None,
        "status": "running",
    }
