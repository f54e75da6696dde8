"""What a report is made of: sections of headings, text, tables, figures and galleries (plain data).

Sections build these from run directories; :mod:`clipcompare.report.render` turns them into HTML or
Markdown with Jinja2 templates. Figures and thumbnails are held as encoded bytes (PNG / JPEG), so the
HTML can embed them as ``data:`` URIs and the Markdown can write them beside ``report.md``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from clipcompare.errors import UserError
from clipcompare.rundir import GALLERY_PER_CLASS, GALLERY_SEED, GALLERY_TOTAL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    """Bounds that keep a report of a 50,000-image run small and quick to open."""

    gallery_per_class: int = GALLERY_PER_CLASS  # thumbnails per true class in one gallery
    gallery_total: int = GALLERY_TOTAL  # thumbnails per gallery
    thumb_px: int = 128  # longest side of a thumbnail
    thumb_quality: int = 80  # JPEG quality of thumbnails
    seed: int = GALLERY_SEED  # the galleries' fixed random choice
    labelled_classes: int = 8  # classes named in a per-class scatter (furthest from the diagonal)
    listed: int = 5  # rows in "wins by most" / "most confused" tables
    retrieval_examples: int = 4  # captions shown from a train run


@dataclass
class Cell:
    """A table cell: the text shown, and the exact value behind it (``data-value`` in the HTML)."""

    text: str
    value: Any = None


@dataclass
class Heading:
    kind: ClassVar[str] = "heading"
    text: str
    level: int = 3


@dataclass
class Text:
    kind: ClassVar[str] = "text"
    text: str


@dataclass
class Table:
    kind: ClassVar[str] = "table"
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool]  # right-aligned columns
    role: str = ""  # a stable name (``accuracy``, ``calibration``, ...) for readers and tests
    note: str = ""


@dataclass
class Figure:
    kind: ClassVar[str] = "figure"
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Prediction:
    label: str
    prob: float
    correct: bool


@dataclass
class MapThumb:
    """A model's class-activation map over a tile's image (``explain --run``), as a small JPEG."""

    model: str
    jpeg: bytes
    caption: str = ""


@dataclass
class Tile:
    """One thumbnail with its caption; ``jpeg`` is None when the image could not be read (``missing`` says why)."""

    path: str
    jpeg: bytes | None
    title: str  # e.g. the true class, or "true image"
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)  # model → top-k
    marked: bool = False  # highlighted (the true image among retrieval results)
    missing: str = ""
    maps: list[MapThumb] = field(default_factory=list)  # where each model looks (explain --run), if explained


@dataclass
class Gallery:
    kind: ClassVar[str] = "gallery"
    title: str
    tiles: list[Tile]
    role: str = ""
    note: str = ""


Block = Heading | Text | Table | Figure | Gallery


@dataclass
class Section:
    """One run directory's part of the report."""

    kind: str  # evaluate | precision | train
    title: str
    source: str  # the run directory
    blocks: list[Block] = field(default_factory=list)
    random_weights: list[str] = field(default_factory=list)  # models whose numbers mean nothing
    facts: list[tuple[str, str]] = field(default_factory=list)  # short key/value lines under the title


@dataclass
class Report:
    title: str
    created: str
    sections: list[Section]

    @property
    def random_weights(self) -> list[tuple[str, str]]:
        """(model, section title) for every model that ran with random weights."""
        return [(m, s.title) for s in self.sections for m in s.random_weights]


def thumbnail(path: Path, options: ReportOptions, open_image: Callable[[], Any] | None = None) -> tuple[bytes | None, str]:
    """A small JPEG of the image at ``path`` (or the PIL image ``open_image()`` returns: a dataset's own
    reading), longest side ``thumb_px``; or None and the reason."""
    from PIL import Image

    try:
        if open_image is not None:
            img = open_image()
        else:
            with Image.open(path) as img:
                img.draft("RGB", (options.thumb_px * 2, options.thumb_px * 2))  # JPEG: decode at a reduced scale
                img = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - a moved or unreadable image leaves an empty tile, not a failed report
        log.warning("no thumbnail for %s: %s", path, exc)
        return None, f"{type(exc).__name__}: {exc}"
    img.thumbnail((options.thumb_px, options.thumb_px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=options.thumb_quality)
    return buf.getvalue(), ""


def pct(x: float | None, digits: int = 2) -> Cell:
    """A fraction shown as a percentage (``63.42``), its exact value kept."""
    return Cell("–" if x is None else f"{100 * x:.{digits}f}", x)


def num(x: float | int | None, fmt: str = ".2f") -> Cell:
    return Cell("–" if x is None else format(x, fmt), x)


def read_json(path: Path) -> Any:
    """A run's JSON file; unreadable is the user's to fix (one line), not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def run_label(run_dir: Path) -> str:
    """The run's last two path parts (``demo/evaluate``): enough to tell runs apart in a title."""
    return "/".join(Path(run_dir).resolve().parts[-2:])
