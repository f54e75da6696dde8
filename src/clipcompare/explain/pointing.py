"""The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop") and the
share of a map's energy inside the boxes.

A hit: the map's peak (in original pixels) lies inside a box of the true class, or within
:data:`TOLERANCE_PX` pixels of one (the paper's 15-pixel tolerance). Energy inside the boxes: the
map's sum over the union of those boxes divided by its sum over the image, the number that says
whether a model looks at the object or around it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipcompare.explain.boxes import Box

TOLERANCE_PX = 15.0


def peak(original_map: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the map's maximum (the first, in reading order, when several pixels share it); None for a
    map that is zero everywhere (no positive evidence: it points nowhere)."""
    if not np.any(original_map > 0):
        return None
    y, x = np.unravel_index(int(np.argmax(original_map)), original_map.shape)
    return int(x), int(y)


def point_hits(x: float, y: float, boxes: Sequence[Box], tolerance: float = TOLERANCE_PX) -> bool:
    """Whether pixel (x, y) (its centre) lies within ``tolerance`` pixels of a box."""
    cx, cy = x + 0.5, y + 0.5
    for b in boxes:
        dx = max(b.x0 - cx, 0.0, cx - b.x1)
        dy = max(b.y0 - cy, 0.0, cy - b.y1)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def box_mask(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """[height, width] booleans: the pixels whose centre lies in one of the boxes."""
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for b in boxes:
        mask |= ((ys >= b.y0) & (ys <= b.y1))[:, None] & ((xs >= b.x0) & (xs <= b.x1))[None, :]
    return mask


def energy_inside(original_map: np.ndarray, boxes: Sequence[Box]) -> float | None:
    """The map's share of its total inside the boxes; None for a map that is zero everywhere."""
    total = float(np.asarray(original_map, dtype=np.float64).sum())
    if total <= 0:
        return None
    inside = float(np.asarray(original_map, dtype=np.float64)[box_mask(boxes, *original_map.shape)].sum())
    return inside / total


def summarise(hits: Sequence[bool], energies: Sequence[float | None]) -> dict[str, float | int | None]:
    """One model's pointing-game accuracy and mean energy inside the boxes over the images that have boxes."""
    kept = [e for e in energies if e is not None]
    return {"images": len(hits), "hits": int(sum(hits)),
            "accuracy": float(np.mean(hits)) if hits else None,
            "energy_in_boxes": float(np.mean(kept)) if kept else None,
            "tolerance_px": TOLERANCE_PX}
