"""One dataset: predict the images not yet stored (this rank's shard under torchrun), write them
as part files in chunks, merge."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from clipcompare import distributed
from clipcompare.data import ImageDataset
from clipcompare.data.decode import Batch
from clipcompare.distributed import DistInfo
from clipcompare.evaluation.metrics import TOP_K, prob_column, top_column
from clipcompare.evaluation.options import EvaluateOptions
from clipcompare.evaluation.pipeline import input_pipeline
from clipcompare.evaluation.store import RunStore, SkipLog
from clipcompare.evaluation.subsets import subset_column, subset_positions
from clipcompare.models.classifier import Classifier

log = logging.getLogger(__name__)


def run_dataset(
    ds: ImageDataset, classifiers: Sequence[Classifier], store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device, throughput: dict[str, dict[str, Any]] | None = None,
    dist: DistInfo | None = None, formats: Sequence[torch.memory_format] | None = None,
) -> list[str]:
    """Predict every image of ``ds`` not yet stored, then merge the parts; returns notes for metrics.json.

    ``throughput[ds.name]`` receives the images, seconds and images/s of the prediction loop (over
    all ranks), and with ``--decode gpu`` how many images took which path. Under torchrun every
    rank calls this for every dataset (it has barriers); this rank predicts ``pending[rank::N]`` (whole shards of a tar dataset, ``ImageDataset.rank_share``)
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
        shard = np.array(ds.rank_share(pending, dist.rank, dist.world_size), dtype=np.int64)
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


def _predict(
    ds: ImageDataset, classifiers: Sequence[Classifier], pending: np.ndarray, store: RunStore, skips: SkipLog,
    options: EvaluateOptions, device: torch.device, formats: Sequence[torch.memory_format], dist: DistInfo,
) -> dict[str, Any]:
    """Predict ``pending`` (this rank's shard); returns the decode-path counts for ``--decode gpu``."""
    from tqdm import tqdm

    k = min(TOP_K, len(ds.classes))
    # ImageNet val: each model's argmax over the ImageNet-R / -A classes too (the x-axis of their shifts)
    subsets = {name: torch.as_tensor(pos, device=device)
               for name, pos in subset_positions(ds.benchmark, ds.classes.imagenet_indices).items()}
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
                    logits = clf.logits(x, ds.classes).float()
                    restricted = {name: idx[logits.index_select(1, idx).argmax(dim=-1)]
                                  for name, idx in subsets.items()}
                    outputs.append((logits.softmax(dim=-1).topk(k, dim=-1), restricted))
                writer.add(batch, outputs)
            bar.update(len(batch.positions) + len(batch.failures))
            if writer.due():
                writer.flush()
        writer.flush()
    return batches.decode_counts()


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
            values = torch.cat([o.values for o, _ in outs]).cpu().numpy().astype(np.float32)
            indices = torch.cat([o.indices for o, _ in outs]).cpu().numpy().astype(np.int32)
            columns[top_column(name)] = _fixed_lists(indices, pa.int32())
            columns[prob_column(name)] = _fixed_lists(values, pa.float32())
            for subset in outs[0][1]:
                argmax = torch.cat([r[subset] for _, r in outs]).cpu().numpy().astype(np.int32)
                columns[subset_column(name, subset)] = pa.array(argmax, pa.int32())
        return pa.table(columns)


def _fixed_lists(matrix: np.ndarray, dtype: pa.DataType) -> pa.Array:
    flat = pa.array(matrix.reshape(-1), dtype)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def write_part(store: RunStore, dataset: str, table: pa.Table, rank: int | None = None) -> Path:
    """One flushed chunk (module-level so tests can interrupt a run between chunks)."""
    return store.write_part(dataset, table, rank)
