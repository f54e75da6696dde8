"""An evaluation run directory's files: settings check for resume, atomic part files, the merged
Parquet, skipped.jsonl.

Every write is temp file + rename, so a reader (or a resumed run after kill -9) never sees half a
file; torn leftovers are removed and their rows predicted again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clipcompare.data import ImageDataset
from clipcompare.errors import UserError
from clipcompare.evaluation.metrics import TOP_K, prob_column, top_column
from clipcompare.fileio import atomic_path, atomic_write_bytes
from clipcompare.rundir import LOCK_NAME

log = logging.getLogger(__name__)

# part-00003.parquet (one process) or part-r01-00003.parquet (rank 1 of a torchrun job)
_PART = re.compile(r"^part-(?:r(\d+)-)?(\d{5,})\.parquet$")


class RunStore:
    """Files of one run directory; every write is temp file + rename, so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.predictions = root / "predictions"

    def check_settings(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The previous run.json when resuming with the same settings; a UserError when they differ."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} exists and is not a directory")
        run_json = self.root / "run.json"
        if not run_json.is_file():
            if self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir()):
                raise UserError(f"--out {self.root} is not empty and has no run.json; choose a new directory")
            return None
        try:
            previous = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {run_json}: {exc}") from None
        old = previous.get("settings")
        if old != _as_recorded_then(settings, old):
            raise UserError(
                f"{self.root} holds a run with different settings ({_difference(old or {}, settings)}); "
                "use a new --out, or the run's original arguments to resume it"
            )
        log.info("resuming the run in %s", self.root)
        return previous

    def parts_dir(self, dataset: str) -> Path:
        return self.predictions / f"{dataset}.parts"

    def final_path(self, dataset: str) -> Path:
        return self.predictions / f"{dataset}.parquet"

    def write_json(self, name: str, obj: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / name, (json.dumps(obj, indent=2, default=str) + "\n").encode())

    def write_part(self, dataset: str, table: pa.Table, rank: int | None = None) -> Path:
        """The next part file; ``rank`` (a torchrun job's) gives each process its own numbering."""
        parts = self.parts_dir(dataset)
        parts.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(2)) for p in parts.iterdir()
                   if (m := _PART.match(p.name)) and (None if m.group(1) is None else int(m.group(1))) == rank]
        prefix = "part-" if rank is None else f"part-r{rank:02d}-"
        path = parts / f"{prefix}{max(numbers, default=-1) + 1:05d}.parquet"
        _atomic_write_table(table, path)
        return path

    def _tables(self, dataset: str) -> list[pa.Table]:
        """The final file and every readable part; torn or unreadable leftovers are removed."""
        tables = []
        final = self.final_path(dataset)
        candidates = [final] if final.is_file() else []
        parts = self.parts_dir(dataset)
        if parts.is_dir():
            for p in sorted(parts.iterdir()):
                if _PART.match(p.name):
                    candidates.append(p)
                else:  # temp file of a write that was killed
                    p.unlink(missing_ok=True)
        for path in candidates:
            try:
                tables.append(pq.read_table(path).replace_schema_metadata(None))
            except Exception as exc:  # noqa: BLE001 - its rows are simply predicted again
                log.warning("ignoring unreadable %s (%s); its images will be predicted again", path, exc)
                path.unlink(missing_ok=True)
        return tables

    def stored_paths(self, dataset: str) -> set[str]:
        """Paths already predicted (final file and parts)."""
        return {p for t in self._tables(dataset) for p in t.column("path").to_pylist()}

    def merge(self, ds: ImageDataset, models: Sequence[str]) -> Path:
        """Final ``<dataset>.parquet`` in dataset order, one row per path; the parts are then removed."""
        final = self.final_path(ds.name)
        parts = self.parts_dir(ds.name)
        if final.is_file() and not parts.exists():
            return final
        tables = self._tables(ds.name)
        table = _dedupe_in_order(tables, ds) if tables else _empty_table(models, min(TOP_K, len(ds.classes)))
        meta = {"dataset": ds.name, "kind": ds.kind, "classes": list(ds.classes.names),
                "imagenet_indices": list(ds.classes.imagenet_indices or []) or None, "models": list(models)}
        table = table.replace_schema_metadata({"clipcompare": json.dumps(meta)})
        self.predictions.mkdir(parents=True, exist_ok=True)
        _atomic_write_table(table, final)
        remove_parts(parts)
        return final

    def read_predictions(self, dataset: str):
        """The merged predictions as a pandas DataFrame."""
        return pq.read_table(self.final_path(dataset)).to_pandas()


def remove_parts(parts: Path) -> None:
    """Delete a merged dataset's part files (module-level so tests can kill a run right here)."""
    shutil.rmtree(parts, ignore_errors=True)


def _dedupe_in_order(tables: list[pa.Table], ds: ImageDataset) -> pa.Table:
    # parts written before a column existed (a run resumed by a newer version) get nulls there
    table = pa.concat_tables(tables, promote_options="default")
    order = {s.path: i for i, s in enumerate(ds.samples)}
    first: dict[str, int] = {}  # a path stored twice (never expected) keeps its first row
    for row, path in enumerate(table.column("path").to_pylist()):
        first.setdefault(path, row)
    rows = [row for _, row in sorted((order.get(p, len(order)), row) for p, row in first.items())]
    return table.take(pa.array(rows, pa.int64()))


def _empty_table(models: Sequence[str], k: int) -> pa.Table:
    columns: dict[str, pa.Array] = {"path": pa.array([], pa.string()), "target": pa.array([], pa.int32())}
    for name in models:
        columns[top_column(name)] = pa.array([], pa.list_(pa.int32(), k))
        columns[prob_column(name)] = pa.array([], pa.list_(pa.float32(), k))
    return pa.table(columns)


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _as_recorded_then(settings: dict[str, Any], old: Any) -> dict[str, Any]:
    """``settings`` as a run directory made before "option" was recorded holds them: a folder dataset's
    mapping file was not stored then (its ``classes`` key already says what the mapping did), so the
    option of a folder is left out where the stored entry of the same dataset has none."""
    if not isinstance(old, dict) or not isinstance(old.get("datasets"), list):
        return settings
    before = {d.get("name"): d for d in old["datasets"] if isinstance(d, dict)}
    datasets = [
        {k: v for k, v in d.items() if k != "option"}
        if d.get("kind") == "folder" and "option" in d and "option" not in before.get(d.get("name"), {"option": 1})
        else d
        for d in settings.get("datasets", [])
    ]
    return {**settings, "datasets": datasets}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that changed, briefly: ``models: a, b then; a now``."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {_brief(old.get(k))} then, {_brief(new.get(k))} now" for k in keys) or "unknown format"


def _brief(value: Any) -> str:
    if isinstance(value, list):
        # as typed: KIND=ROOT[:OPTION] (the wds split, the folder's mapping file)
        items = [f"{v['kind']}={v['root']}" + (f":{v['option']}" if v.get("option") else "")
                 if isinstance(v, dict) and "kind" in v else str(v) for v in value]
        return ", ".join(items) or "none"
    return str(value)


class SkipLog:
    """``skipped.jsonl``: one JSON line per unreadable image, appended and flushed as they occur.

    Rank ``k`` of a torchrun job appends to ``skipped.rank<k>.jsonl`` instead (no two processes
    append to one file, which a network file system would not keep whole); every rank reads them
    all, and :meth:`fold` (rank 0, once the others are done) moves them into ``skipped.jsonl``.
    """

    def __init__(self, path: Path, rank: int | None = None) -> None:
        self.path = path
        self.write_path = path if not rank else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
        self._records: dict[tuple[str, str], str] = {}
        self._file = None
        for p in [path, *self._rank_files()]:
            if p.is_file():
                self._load(p, repair=p == self.write_path)

    def _rank_files(self) -> list[Path]:
        if not self.path.parent.is_dir():
            return []
        return sorted(self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}"))

    def _load(self, path: Path, repair: bool) -> None:
        raw = path.read_bytes()
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
                self._records.setdefault((rec["dataset"], rec["path"]), rec["reason"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by kill -9
        if repair and raw and not raw.endswith(b"\n"):
            # drop the torn tail so the next append starts on a fresh line
            path.write_bytes(raw[: raw.rfind(b"\n") + 1])

    def paths(self, dataset: str) -> set[str]:
        return {p for d, p in self._records if d == dataset}

    def reasons(self, dataset: str) -> list[str]:
        return [r for (d, _), r in self._records.items() if d == dataset]

    def add(self, dataset: str, path: str, reason: str) -> None:
        log.warning("skipping unreadable image %s/%s: %s", dataset, path, reason)
        if (dataset, path) in self._records:
            return
        self._records[(dataset, path)] = reason
        try:
            if self._file is None:
                self.write_path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.write_path.open("a", encoding="utf-8")
            self._file.write(json.dumps({"dataset": dataset, "path": path, "reason": reason}) + "\n")
            self._file.flush()
        except OSError as exc:  # a full disk: a torn last line is dropped when the run resumes
            if self._file is not None:
                with contextlib.suppress(OSError):  # closing would try the unwritten buffer again
                    self._file.close()
                self._file = None
            raise UserError(f"cannot write {self.write_path}: {exc.strerror or exc}") from None

    def fold(self) -> None:
        """Re-read every rank's file and keep one ``skipped.jsonl`` (atomically rewritten) with them all."""
        self.close()
        others = self._rank_files()
        if not others:
            return
        for p in others:
            self._load(p, repair=False)
        lines = "".join(json.dumps({"dataset": d, "path": p, "reason": r}) + "\n" for (d, p), r in self._records.items())
        atomic_write_bytes(self.path, lines.encode())
        for p in others:  # a kill between these lines leaves duplicates, which loading drops
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
