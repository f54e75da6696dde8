"""Bounding boxes for the pointing game: the ILSVRC2012 validation XML folder, or a CSV.

CSV: the header ``path,x0,y0,x1,y1`` or ``path,x0,y0,x1,y1,class``, boxes in the original image's
pixels (x0, y0 the top-left corner, x1, y1 the bottom-right one), the class a wnid or a class name,
several rows per image allowed. ``path`` is matched to the images explained by its full path
(relative paths: from the CSV's folder, then from the working directory), else by file name.
ILSVRC: ``<stem>.xml`` per image (``ILSVRC2012_val_00000001.xml``), its ``<size>`` checked against
the image, each ``<object>``'s ``<name>`` (a wnid) the box's class.

A boxes file that does not fit the images (no box for any of them, a box outside its image, a
class not among the labels) is the user's to fix: one line, before any model is loaded.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipcompare.classes import ClassSet
from clipcompare.errors import UserError


class NoBoxMatch(UserError):
    """The boxes file has no box for any of the images (``explain --run`` allows this per dataset)."""


CSV_HEADERS = (["path", "x0", "y0", "x1", "y1"], ["path", "x0", "y0", "x1", "y1", "class"])


@dataclass(frozen=True)
class Box:
    """A box in original-image pixels; ``class_index`` into the class set (None: the file names no class)."""

    x0: float
    y0: float
    x1: float
    y1: float
    class_index: int | None = None

    def to_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


def class_position(classes: ClassSet, text: str) -> int | None:
    """The position in ``classes`` of a class given as a name (case-insensitive), a wnid or a WordNet lemma."""
    wanted = text.strip().casefold()
    for i, name in enumerate(classes.names):
        if name.casefold() == wanted:
            return i
    if classes.imagenet_indices is not None:
        from clipcompare.imagenet.classes import imagenet_index_of_label

        index = imagenet_index_of_label(text.strip())
        if index is not None and index in classes.imagenet_indices:
            return classes.imagenet_indices.index(index)
    return None


def read_boxes(source: Path, paths: Sequence[Path], sizes: Sequence[tuple[int, int]],
               classes: ClassSet) -> list[list[Box]]:
    """Boxes per image (``paths[i]``, of ``sizes[i]`` = (width, height)); [] for an image without boxes."""
    source = Path(source)
    if source.is_dir():
        boxes = _read_ilsvrc(source, paths, sizes, classes)
    elif source.is_file():
        boxes = _read_csv(source, paths, sizes, classes)
    else:
        raise UserError(f"--boxes {source}: no such file or folder")
    if not any(boxes):
        raise NoBoxMatch(f"--boxes {source} has no box for any of the {len(paths)} images "
                        f"(first image: {paths[0] if paths else '-'}); it does not match the images")
    return boxes


def _check(box: Box, size: tuple[int, int], where: str) -> Box:
    width, height = size
    if not (0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height):
        raise UserError(f"{where}: box {box.to_list()} is not inside its {width}x{height} image "
                        "(expected 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height, in original pixels)")
    return box


def _class_of(text: str, classes: ClassSet, where: str) -> int:
    position = class_position(classes, text)
    if position is None:
        raise UserError(f"{where}: class {text!r} is not among the {len(classes)} labels")
    return position


def _read_csv(path: Path, paths: Sequence[Path], sizes: Sequence[tuple[int, int]],
              classes: ClassSet) -> list[list[Box]]:
    by_path = {_key(p): i for i, p in enumerate(paths)}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_name.setdefault(Path(p).name, []).append(i)
    boxes: list[list[Box]] = [[] for _ in paths]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--boxes {path}: cannot read it ({exc})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if header not in CSV_HEADERS:
        raise UserError(f"--boxes {path}: expected the header 'path,x0,y0,x1,y1' or 'path,x0,y0,x1,y1,class', "
                        f"got {','.join(header) or 'an empty file'!r}")
    unmatched = 0
    for n, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise UserError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        try:
            x0, y0, x1, y1 = (float(v) for v in row[1:5])
        except ValueError:
            raise UserError(f"{where}: the coordinates {row[1:5]} are not numbers") from None
        i = _match(row[0].strip(), path.parent, by_path, by_name)
        if i is None:
            unmatched += 1
            continue
        cls = _class_of(row[5], classes, where) if len(row) == 6 and row[5].strip() else None
        boxes[i].append(_check(Box(x0, y0, x1, y1, cls), sizes[i], where))
    return boxes


def _key(path: Path | str) -> str:
    return str(Path(path).expanduser().resolve())


def _match(text: str, base: Path, by_path: dict[str, int], by_name: dict[str, list[int]]) -> int | None:
    given = Path(text).expanduser()
    for candidate in ([given] if given.is_absolute() else [base / given, given]):
        if _key(candidate) in by_path:
            return by_path[_key(candidate)]
    named = by_name.get(given.name, [])
    return named[0] if len(named) == 1 else None


def _read_ilsvrc(folder: Path, paths: Sequence[Path], sizes: Sequence[tuple[int, int]],
                 classes: ClassSet) -> list[list[Box]]:
    boxes: list[list[Box]] = [[] for _ in paths]
    for i, p in enumerate(paths):
        xml = folder / f"{Path(p).stem}.xml"
        if not xml.is_file():
            continue
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            raise UserError(f"--boxes {xml}: not readable ILSVRC XML ({exc})") from None
        size = root.find("size")
        if size is not None:
            try:
                declared = (int(float(size.findtext("width", "0"))), int(float(size.findtext("height", "0"))))
            except ValueError:
                raise UserError(f"--boxes {xml}: its <size> has no numeric <width>/<height>") from None
            if declared != tuple(sizes[i]):
                raise UserError(f"--boxes {xml} is for a {declared[0]}x{declared[1]} image, but {p} is "
                                f"{sizes[i][0]}x{sizes[i][1]}: the boxes do not match the images")
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                continue
            try:
                coords = [float(bb.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError:
                raise UserError(f"--boxes {xml}: a bndbox without numeric xmin/ymin/xmax/ymax") from None
            cls = _class_of(obj.findtext("name", ""), classes, str(xml))
            boxes[i].append(_check(Box(*coords, class_index=cls), sizes[i], str(xml)))
    return boxes
