"""Pictures of maps: the side-by-side PNG per image (matplotlib) and small overlays for the report.

Overlays are pytorch-grad-cam's own ``show_cam_on_image`` (its jet colour map blended with the
image); the part of the image a model never saw (cut by its centre crop) is shown dimmed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipcompare.explain.boxes import Box

PANEL_PX = 320  # longest side of each panel in the PNG
DIM = 0.35  # brightness of the pixels a model did not see


@dataclass
class Panel:
    """One model's overlay in the side-by-side figure."""

    title: str
    original_map: np.ndarray  # [H, W] in [0, 1], 0 where the model saw nothing
    visible: np.ndarray  # [H, W] booleans: the pixels the model saw
    peak: tuple[int, int] | None  # (x, y) in original pixels; None: the map is zero everywhere


def _shrink(image: Image.Image, longest: int) -> tuple[Image.Image, float]:
    scale = min(1.0, longest / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    return image, scale


def _resize_array(values: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
    if values.shape[::-1] == size:
        return values
    return np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, resample))


def overlay(image: Image.Image, original_map: np.ndarray, visible: np.ndarray, longest: int) -> np.ndarray:
    """uint8 RGB [h, w, 3]: the map over the image, shrunk so its longest side is at most ``longest``."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    small, _ = _shrink(image.convert("RGB"), longest)
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    mask = np.clip(_resize_array(original_map, small.size), 0.0, 1.0)
    seen = _resize_array(visible.astype(np.float32), small.size, Image.NEAREST) > 0.5
    out = show_cam_on_image(rgb, mask, use_rgb=True)
    dimmed = (rgb * DIM * 255).astype(np.uint8)
    return np.where(seen[..., None], out, dimmed)


def overlay_jpeg(image: Image.Image, original_map: np.ndarray, visible: np.ndarray, longest: int,
                 quality: int = 80) -> bytes:
    """:func:`overlay` as JPEG bytes (the report's thumbnails)."""
    buf = io.BytesIO()
    Image.fromarray(overlay(image, original_map, visible, longest)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def side_by_side_png(image: Image.Image, title: str, panels: Sequence[Panel], boxes: Sequence[Box] = ()) -> bytes:
    """The image, then each model's overlay with its title; the peak marked, boxes (if any) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    small, scale = _shrink(image.convert("RGB"), PANEL_PX)
    n = 1 + len(panels)
    aspect = small.height / small.width
    fig = Figure(figsize=(3.0 * n, 3.0 * aspect + 0.6), dpi=100)
    axes = fig.subplots(1, n, squeeze=False)[0]
    pictures = [np.asarray(small)] + [overlay(image, p.original_map, p.visible, PANEL_PX) for p in panels]
    titles = [title] + [p.title for p in panels]
    for k, (ax, picture, text) in enumerate(zip(axes, pictures, titles)):
        ax.imshow(picture)
        ax.set_title(text, fontsize=8)
        ax.set_axis_off()
        for b in boxes:
            ax.add_patch(Rectangle((b.x0 * scale, b.y0 * scale), (b.x1 - b.x0) * scale, (b.y1 - b.y0) * scale,
                                   fill=False, edgecolor="white", linewidth=1.2, linestyle="--"))
        if k and panels[k - 1].peak is not None:
            x, y = panels[k - 1].peak
            ax.plot([(x + 0.5) * scale], [(y + 0.5) * scale], marker="x", color="white", markersize=8, mew=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
