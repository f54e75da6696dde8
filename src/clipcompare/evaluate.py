"""The evaluation loop: decode each image once, feed every model, store predictions, resume.

A run directory holds::

    run.json                          command, settings, models (+ weight fingerprints), versions, times
    predictions/<dataset>.parquet     one row per image: path, target, per model top-5 ids + probs
    predictions/<dataset>.parts/      part-NNNNN.parquet chunks while a dataset is in progress
    metrics.json                      per dataset and model (see :mod:`clipcompare.metrics`)
    skipped.jsonl                     unreadable images with the reason
    .clipcompare.lock                 while a process writes the directory (see rundir.RunLock)

Rows are flushed in chunks written atomically (temp file + rename), so an interrupted run (Ctrl-C,
kill -9) loses at most the chunk in flight; the same command continues with the paths not yet
stored and ends with the same files as an uninterrupted run.

Started by ``torchrun --nproc_per_node N``, every rank predicts a disjoint shard of each dataset's
pending images (``pending[rank::N]``) into its own part files; rank 0 holds the lock, merges and
writes metrics.json. Which images are pending is decided from the stored files, so a run resumes
with any N.

``--decode gpu`` decodes JPEGs on the device (:mod:`clipcompare.data.gpu_decode`); ``--precision``
casts the models as ``clipcompare precision`` does; on CUDA each model's memory format is the
faster of contiguous and channels_last, measured at load time, unless ``--channels-last`` or
``--no-channels-last`` says which.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from clipcompare import distributed
from clipcompare.data import DatasetSpec, ImageDataset, load_datasets
from clipcompare.data.decode import Batch, DecodedImages, ThreadedDecode, collate
from clipcompare.distributed import DistInfo
from clipcompare.errors import UserError
from clipcompare.metrics import (
    TOP_K,
    dataset_metrics,
    prob_column,
    top_column,
)
from clipcompare.models.classifier import Classifier, create_classifier
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.precision.support import DTYPES, dtype_support, parse_dtype
from clipcompare.rundir import RunLock, RunStore, SkipLog, now_iso, versions
from clipcompare.runtime import steady_heap

log = logging.getLogger(__name__)

SETTINGS_VERSION = 1
DECODE_PATHS = ("cpu", "gpu")


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything besides the models and datasets; only some of it binds a resumed run (see ``_settings``)."""

    out: Path
    limit_per_class: int | None = None
    batch_size: int = 32
    workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    templates: str = "openai"
    channels_last: bool | None = None  # None: on CUDA the faster format per model (measured), else contiguous
    allow_random: bool = False
    chunk_size: int = 2048  # rows per part file (whole batches)
    flush_seconds: float = 60.0  # ... or sooner, so a slow CPU run also checkpoints
    progress: bool = True
    cache_dir: Path | None = None  # zero-shot head cache; None: zeroshot.default_cache_dir()
    command: tuple[str, ...] = field(default=())
    decode: str = "cpu"  # "gpu": JPEGs decoded and preprocessed on the device (data.gpu_decode)
    precision: str = "fp32"  # fp32 | bf16 | fp16: the models are cast, as `precision` does


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


# --------------------------------------------------------------------------- entry point


def evaluate(
    models: Sequence[ModelSpec | str], datasets: Sequence[DatasetSpec | str], options: EvaluateOptions
) -> EvaluationResult:
    """Evaluate every model on every dataset into ``options.out`` (resuming what is already there).

    Under torchrun every rank calls this with the same arguments (see the module docstring).
    """
    started = now_iso()
    data = load_datasets(datasets, options.limit_per_class)  # dataset errors before any model loads
    specs = [parse_spec(m) if isinstance(m, str) else m for m in models]
    if not specs:
        raise UserError("no --model given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"the same model is given twice: {', '.join(names)}")
    if options.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if options.decode not in DECODE_PATHS:
        raise UserError(f"--decode {options.decode!r}: choose from {', '.join(DECODE_PATHS)}")
    precision = parse_dtype(options.precision)
    device = resolve_device(options.device)
    support = dtype_support(precision, device.type)
    if not support.supported:
        raise UserError(f"--precision {precision} on {device}: {support.note}")
    owns_group = not distributed.is_initialized()  # else a caller joined it and will leave it
    dist = distributed.init_distributed(device)
    device = dist.device
    store = RunStore(Path(options.out))
    lock = RunLock(store.root, "clipcompare evaluate")
    settings = _settings(specs, data, options)
    try:
        # rank 0 takes the lock once for the whole job and checks the directory; the others wait
        # for its verdict, so a refused or mismatched run stops every rank with the same line
        error, previous = None, None
        if dist.is_main:
            try:
                lock.acquire()
                previous = store.check_settings(settings)
            except UserError as exc:
                error = str(exc)
        error = distributed.broadcast_object(error)
        if error:
            raise UserError(error)
        if support.note:
            log.warning("--precision %s: %s", precision, support.note)
        if device.type == "cpu":
            # 1.5x CPU throughput: no page-faulting of activations on every batch (see runtime.steady_heap)
            steady_heap()
        classifiers = load_classifiers(specs, options, device)
        formats = memory_formats(classifiers, options, device)
        info = _run_info(options, settings, classifiers, data, device, started, previous)
        info["options"].update(decode=options.decode, precision=precision, precision_note=support.note,
                               memory_formats={c.name: _format_name(f) for c, f in zip(classifiers, formats)},
                               world_size=dist.world_size)
        if options.decode == "gpu":  # what the device applies instead of each PIL transform (fails early)
            transforms, slot = _distinct_transforms(classifiers)
            tensor_steps = _tensor_preprocesses(transforms, classifiers, slot)
            info["options"]["tensor_preprocess"] = {c.name: tensor_steps[s].describe() for c, s in zip(classifiers, slot)}
        if dist.is_main:
            store.write_json("run.json", info)
        distributed.barrier()  # run.json (and the directory) exist before any rank writes parts

        skips = SkipLog(store.root / "skipped.jsonl", rank=dist.rank if dist.distributed else None)
        notes: dict[str, list[str]] = {}
        throughput: dict[str, dict[str, Any]] = {}
        try:
            for ds in data:
                notes[ds.name] = run_dataset(ds, classifiers, store, skips, options, device, throughput, dist,
                                             formats)
        except KeyboardInterrupt:
            log.warning("interrupted: run the same command again to continue where it stopped")
            raise
        finally:
            skips.close()

        distributed.barrier()  # every rank's parts and skips are written
        metrics = None
        if dist.is_main:
            skips.fold()
            metrics = compute_metrics(store, data, classifiers, skips, notes)
            store.write_json("metrics.json", metrics)
            # images/s of this invocation's prediction loops (decode + preprocess + forward + writes)
            info.update(end_time=now_iso(), status="complete", throughput=throughput)
            store.write_json("run.json", info)
        metrics = distributed.broadcast_object(metrics)
    finally:
        lock.release()
        if owns_group and dist.distributed:
            distributed.cleanup()
    return EvaluationResult(store.root, metrics, data, [c.name for c in classifiers],
                            [c.name for c in classifiers if not c.pretrained], info["options"], dist.is_main)


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
        if options.precision != "fp32":
            clf.model.to(dtype=DTYPES[parse_dtype(options.precision)])  # the cast `precision` measures
        classifiers.append(clf)
    return classifiers


def memory_formats(
    classifiers: Sequence[Classifier], options: EvaluateOptions, device: torch.device
) -> list[torch.memory_format]:
    """Each model's memory format, applied to it: as ``options.channels_last`` says, else on CUDA the
    faster of the two for that model (timed at the batch size), else contiguous."""
    formats = []
    for clf in classifiers:
        if options.channels_last is None and device.type == "cuda":
            fmt = fastest_memory_format(clf, options.batch_size, device)
        else:
            fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        clf.model.to(memory_format=fmt)
        formats.append(fmt)
    return formats


def fastest_memory_format(clf: Classifier, batch_size: int, device: torch.device, repeats: int = 3) -> torch.memory_format:
    """contiguous or channels_last, whichever runs ``clf``'s image tower faster on a random batch
    shaped like its preprocessing output (synchronised timing, after a warm-up call)."""
    from PIL import Image

    shape = clf.preprocess(Image.new("RGB", (500, 375))).shape
    best, best_time = torch.contiguous_format, float("inf")
    for fmt in (torch.contiguous_format, torch.channels_last):
        clf.model.to(memory_format=fmt)
        x = torch.randn(batch_size, *shape, device=device, dtype=clf.dtype).contiguous(memory_format=fmt)
        with torch.inference_mode():
            clf.features(x)  # warm-up: cuDNN picks its algorithms
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                clf.features(x)
            _synchronize(device)
        seconds = time.perf_counter() - start
        log.info("%s: %s %.1f ms per batch of %d", clf.name, _format_name(fmt), 1000 * seconds / repeats, batch_size)
        if seconds < best_time:
            best, best_time = fmt, seconds
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _format_name(fmt: torch.memory_format) -> str:
    return "channels_last" if fmt == torch.channels_last else "contiguous"


# --------------------------------------------------------------------------- one dataset


def run_dataset(
    ds: ImageDataset, classifiers: Sequence[Classifier], store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device, throughput: dict[str, dict[str, Any]] | None = None,
    dist: DistInfo | None = None, formats: Sequence[torch.memory_format] | None = None,
) -> list[str]:
    """Predict every image of ``ds`` not yet stored, then merge the parts; returns notes for metrics.json.

    ``throughput[ds.name]`` receives the images, seconds and images/s of the prediction loop (over
    all ranks), and with ``--decode gpu`` how many images took which path. Under torchrun every
    rank calls this for every dataset (it has barriers); this rank predicts ``pending[rank::N]``
    and rank 0 merges. ``formats``: each model's memory format (default: as ``options`` says).
    """
    dist = dist or DistInfo(device=device)
    notes = list(ds.notes)
    active, active_formats = [], []
    if formats is None:
        formats = [torch.channels_last if options.channels_last else torch.contiguous_format] * len(classifiers)
    for clf, fmt in zip(classifiers, formats):
        reason = clf.supports(ds.classes)
        if reason:
            log.warning("dataset %s: skipping %s: %s", ds.name, clf.name, reason)
            notes.append(f"{clf.name} skipped: {reason}")
        else:
            active.append(clf)
            active_formats.append(fmt)
    if not active:
        return notes
    distributed.barrier()  # every rank decides what is pending from the same stored files
    done = store.stored_paths(ds.name) | skips.paths(ds.name)
    pending = np.array([i for i, s in enumerate(ds.samples) if s.path not in done], dtype=np.int64)
    if len(done) and dist.is_main:
        log.info("dataset %s: %d of %d images already done, %d to go", ds.name, len(ds) - len(pending), len(ds),
                 len(pending))
    if len(pending):
        shard = pending[dist.rank :: dist.world_size]
        # zero-shot heads now, so throughput (and the progress bar) covers images only; rank 0 first,
        # so the others read its cached head instead of all writing the same cache file
        if dist.is_main:
            for clf in active:
                clf.prepare(ds.classes)
        distributed.barrier()
        if not dist.is_main:
            for clf in active:
                clf.prepare(ds.classes)
        start = time.perf_counter()
        stats = _predict(ds, active, shard, store, skips, options, device, active_formats, dist) if len(shard) else {}
        seconds = time.perf_counter() - start
        per_rank = distributed.gather_objects((int(len(shard)), seconds, stats))
        if throughput is not None:
            throughput[ds.name] = _throughput(per_rank)
    distributed.barrier()  # every rank's parts are written
    if dist.is_main:
        store.merge(ds, [c.name for c in active])
    return notes


def _throughput(per_rank: Sequence[tuple[int, float, dict[str, Any]]]) -> dict[str, Any]:
    """images / seconds of the slowest rank, and the decode paths summed over ranks."""
    images = sum(n for n, _, _ in per_rank)
    seconds = max(s for _, s, _ in per_rank)
    out: dict[str, Any] = {"images": images, "seconds": round(seconds, 3),
                           "images_per_s": round(images / seconds, 2) if seconds > 0 else None}
    if len(per_rank) > 1:
        out["ranks"] = len(per_rank)
    decoded = [st for _, _, st in per_rank if st]
    if decoded:
        fallback: Counter[str] = Counter()
        for st in decoded:
            fallback.update(st["cpu_path"])
        out["decode"] = {"device": sum(st["device"] for st in decoded), "cpu_path": dict(sorted(fallback.items()))}
    return out


def make_loader(
    ds: ImageDataset, pending: np.ndarray, transforms: Sequence[Any], options: EvaluateOptions, device: torch.device
) -> Iterable[Any]:
    """Decode + preprocess in ``options.workers`` processes (in this process when 0), in dataset order.

    On CPU with no workers, when every transform is a ``SplitPreprocess``, each batch is decoded by
    as many threads as the forward uses, between forwards (``decode.ThreadedDecode``).

    With ``options.decode == "gpu"`` the workers only read the files (``gpu_decode.EncodedImages``).
    """
    paths = [ds.samples[i].path for i in pending]
    if options.decode == "gpu":
        from clipcompare.data.gpu_decode import EncodedImages, collate_raw

        images: torch.utils.data.Dataset = EncodedImages(ds.root, paths, transforms)
        collate_fn: Callable[..., Any] = collate_raw
    else:
        images, collate_fn = DecodedImages(ds.root, paths, transforms), collate
    from clipcompare.data.tensor_preprocess import SplitPreprocess

    workers = max(0, options.workers)
    if options.decode == "cpu" and workers == 0 and device.type == "cpu" and all(
            isinstance(t, SplitPreprocess) for t in transforms):
        # DataLoader workers (processes) were slower on the 2-core machine: they compete with the
        # forward for the same cores, and every batch crosses a process boundary
        return ThreadedDecode(images, options.batch_size, torch.get_num_threads())  # type: ignore[arg-type]
    return torch.utils.data.DataLoader(
        images, batch_size=options.batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def prefetch(batches: Iterable[Any], prepare: Callable[[Any], Batch], device: torch.device) -> Iterator[Batch]:
    """``prepare(batch)`` for each batch; on CUDA the next batch's copies (and GPU decoding) are issued
    on a side stream before the current batch is handed over, so they overlap its forward passes."""
    if device.type != "cuda":
        for b in batches:
            yield prepare(b)
        return
    stream = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    it = iter(batches)

    def load() -> Batch | None:
        raw = next(it, None)
        if raw is None:
            return None
        with torch.cuda.stream(stream):
            return prepare(raw)

    nxt = load()
    while nxt is not None:
        main.wait_stream(stream)
        for t in nxt.tensors:  # allocated on the side stream, used on the main one
            t.record_stream(main)
        cur, nxt = nxt, load()
        yield cur


def _to_device(
    device: torch.device, splits: Sequence[Any] = (), layouts: Sequence[torch.memory_format] = ()
) -> Callable[[Batch], Batch]:
    """The hand-over of a collated batch: to ``device``, and for each slot with a
    ``SplitPreprocess`` (``splits[k]``, else None) its batched ``/255`` + normalise, laid out as
    ``layouts[k]`` (the memory format of the model it feeds, so no copy follows)."""
    def move(batch: Batch) -> Batch:
        tensors = []
        for k, t in enumerate(batch.tensors):
            t = t.to(device, non_blocking=True)
            if k < len(splits) and splits[k] is not None:
                t = splits[k].finish(t, layouts[k] if k < len(layouts) else torch.contiguous_format)
            tensors.append(t)
        return Batch(batch.positions, tuple(tensors), batch.failures)

    return move


@dataclass
class InputPipeline:
    """The batches of ``pending`` on the device, preprocessed for every model: iterate it.

    ``slot[m]`` is the index in ``Batch.tensors`` of model ``m``'s input (models sharing a
    transform share a tensor); ``decoder`` counts the decode paths with ``--decode gpu``.
    """

    loader: Iterable[Any]
    prepare: Callable[[Any], Batch]
    device: torch.device
    slot: list[int]
    decoder: Any = None

    def __iter__(self) -> Iterator[Batch]:
        return prefetch(self.loader, self.prepare, self.device)

    def decode_counts(self) -> dict[str, Any]:
        if self.decoder is None:
            return {}
        return {"device": self.decoder.decoded, "cpu_path": dict(self.decoder.fallbacks)}


def input_pipeline(
    ds: ImageDataset, pending: np.ndarray, classifiers: Sequence[Classifier], options: EvaluateOptions,
    device: torch.device, formats: Sequence[torch.memory_format] | None = None,
) -> InputPipeline:
    """Loader + hand-over to the device for ``options.decode`` (one decode per image for all models).

    With ``--decode cpu`` each transform that :func:`split_preprocess` can split runs its PIL part
    per image (to uint8) and its ``/255`` + normalise once per batch on the device, bitwise equal
    to the whole transform per image; the others run whole, per image. ``formats``: each
    model's memory format, in which its batch is then laid out.
    """
    transforms, slot = _distinct_transforms(classifiers)
    if options.decode != "gpu":
        from clipcompare.data.tensor_preprocess import split_preprocess

        splits = [split_preprocess(t) for t in transforms]
        per_image = [t if sp is None else sp for t, sp in zip(transforms, splits)]
        layouts = [torch.contiguous_format] * len(transforms)
        for s, fmt in reversed(list(zip(slot, formats or []))):  # a shared slot: its first model's format
            layouts[s] = fmt
        loader = make_loader(ds, pending, per_image, options, device)
        return InputPipeline(loader, _to_device(device, splits, layouts), device, slot)
    loader = make_loader(ds, pending, transforms, options, device)
    from clipcompare.data.gpu_decode import DeviceDecoder

    decoder = DeviceDecoder(ds.root, [ds.samples[i].path for i in pending], transforms,
                            _tensor_preprocesses(transforms, classifiers, slot), device)
    return InputPipeline(loader, decoder, device, slot, decoder)


def _predict(
    ds: ImageDataset, classifiers: Sequence[Classifier], pending: np.ndarray, store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device, formats: Sequence[torch.memory_format], dist: DistInfo,
) -> dict[str, Any]:
    """Predict ``pending`` (this rank's shard); returns the decode-path counts for ``--decode gpu``."""
    from tqdm import tqdm

    k = min(TOP_K, len(ds.classes))
    writer = ChunkWriter(store, ds, [c.name for c in classifiers], pending, options,
                         rank=dist.rank if dist.distributed else None)
    batches = input_pipeline(ds, pending, classifiers, options, device, formats)
    total = len(pending) if dist.distributed else len(ds)  # a rank's bar counts its own shard
    bar = tqdm(total=total, initial=total - len(pending), desc=ds.name, unit="img", file=sys.stderr,
               disable=not (options.progress and dist.is_main), dynamic_ncols=True, mininterval=0.5)
    with torch.inference_mode(), bar:
        for batch in batches:
            for pos, reason in batch.failures:
                skips.add(ds.name, ds.samples[pending[pos]].path, reason)
            if len(batch.positions):
                outputs = []
                for clf, s, fmt in zip(classifiers, batches.slot, formats):
                    x = batch.tensors[s].to(dtype=clf.dtype, memory_format=fmt)
                    probs = clf.logits(x, ds.classes).float().softmax(dim=-1)
                    outputs.append(probs.topk(k, dim=-1))
                writer.add(batch, outputs)
            bar.update(len(batch.positions) + len(batch.failures))
            if writer.due():
                writer.flush()
        writer.flush()
    return batches.decode_counts()


def _tensor_preprocesses(transforms: Sequence[Any], classifiers: Sequence[Classifier], slot: Sequence[int]) -> list[Any]:
    """The tensor equivalent of each distinct transform; a model whose transform has none is a UserError."""
    from clipcompare.data.tensor_preprocess import UnsupportedTransform, tensor_preprocess

    out = []
    for k, t in enumerate(transforms):
        try:
            out.append(tensor_preprocess(t))
        except UnsupportedTransform as exc:
            users = [c.name for c, s in zip(classifiers, slot) if s == k]
            raise UserError(f"--decode gpu: the preprocessing of {', '.join(users)} has no tensor equivalent "
                            f"({exc}); use --decode cpu") from None
    return out


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
                 options: EvaluateOptions, rank: int | None = None) -> None:
        self.store, self.ds, self.models, self.pending, self.rank = store, ds, list(models), pending, rank
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
            write_part(self.store, self.ds.name, self._table(), self.rank)
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


def write_part(store: RunStore, dataset: str, table: pa.Table, rank: int | None = None) -> Path:
    """One flushed chunk (module-level so tests can interrupt a run between chunks)."""
    return store.write_part(dataset, table, rank)


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
    settings: dict[str, Any] = {
        "version": SETTINGS_VERSION,
        "models": [s.name if s.path is None else f"{s.name} ({s.path.resolve()})" for s in specs],
        "datasets": [
            {"name": ds.name, "kind": ds.kind, "root": str(ds.root.resolve()), "classes": ds.classes.key}
            for ds in data
        ],
        "limit_per_class": options.limit_per_class,
        # prompts only matter to CLIP models
        "templates": _templates_identity(options.templates) if any(s.family != "torchvision" for s in specs) else None,
    }
    # Only when not the default, so run directories made before these options existed still resume.
    if options.decode != "cpu":
        settings["decode"] = options.decode
    if parse_dtype(options.precision) != "fp32":
        settings["precision"] = parse_dtype(options.precision)
    return settings


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
        "versions": versions(),
        "start_time": (previous or {}).get("start_time", started),
        "resumed_at": (previous or {}).get("resumed_at", []) + ([started] if previous else []),
        "end_time": None,
        "status": "running",
    }
