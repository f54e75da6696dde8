"""Where a model's input pixels come from in the original image: the preprocessing's resize and crop, undone.

Every model sees its own preprocessing (ResNet-50: shorter side 256, centre crop 224; CLIP: shorter
side 224, centre crop 224; a trained checkpoint: a plain resize), so a class-activation map at the
model's input resolution covers a different part of the photo for each model. :class:`CropGeometry`
is that resize + crop as an affine map, computed from the :class:`~clipcompare.models.build_info.BuildInfo`
exactly as torchvision and open_clip compute it, and :meth:`CropGeometry.to_original` resamples a map
onto the original pixels (zero where the model saw nothing), so the maps of two models line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipcompare.models.build_info import BuildInfo, size_hw


def resized_size(height: int, width: int, resize: int | list[int], mode: str) -> tuple[int, int]:
    """(height, width) after the preprocessing's resize, as torchvision / open_clip round it.

    ``shortest`` with one size is torchvision's ``Resize(n)`` (shorter side n, longer side truncated);
    ``shortest`` with [h, w] and ``longest`` are open_clip's ``ResizeKeepRatio`` (rounded); ``squash``
    resizes to the size as given.
    """
    th, tw = size_hw(resize)
    if mode == "squash":
        return th, tw
    if mode == "shortest" and th == tw:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = th, int(th * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if mode not in ("shortest", "longest"):
        raise ValueError(f"unknown resize mode {mode!r}")
    ratio_h, ratio_w = height / th, width / tw
    ratio = max(ratio_h, ratio_w) if mode == "longest" else min(ratio_h, ratio_w)
    return round(height / ratio), round(width / ratio)


def _crop_offset(size: int, crop: int) -> int:
    """Top (or left) of a centre crop of ``crop`` pixels out of ``size``; negative when padded (open_clip,
    torchvision pad a smaller image on both sides first)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class CropGeometry:
    """One image through one model's preprocessing: original (h, w) → resized (h, w) → crop box."""

    height: int  # the original image
    width: int
    resized_height: int
    resized_width: int
    top: int  # the crop's offset in the resized image (negative: padding)
    left: int
    crop_height: int  # the model's input
    crop_width: int

    @classmethod
    def from_build(cls, height: int, width: int, build: BuildInfo) -> CropGeometry:
        rh, rw = resized_size(height, width, build.resize, build.resize_mode)
        ch, cw = size_hw(build.crop) if build.crop else (rh, rw)
        if build.resize_mode == "squash" and (ch > rh or cw > rw):
            ch, cw = rh, rw  # a squash with no smaller crop is the resize alone
        # else a squash then a centre crop (timm crop_pct < 1 with crop_mode squash: 256x256, then 224)
        return cls(height, width, rh, rw, _crop_offset(rh, ch), _crop_offset(rw, cw), ch, cw)

    @classmethod
    def squash(cls, height: int, width: int, input_height: int, input_width: int) -> CropGeometry:
        """A plain resize to the input size (no crop)."""
        return cls(height, width, input_height, input_width, 0, 0, input_height, input_width)

    @classmethod
    def from_dict(cls, width: int, height: int, data: dict) -> CropGeometry:
        """Back from :meth:`to_dict` (as explain.json stores it) and the image's size."""
        (rw, rh), (x0, y0, x1, y1) = data["resized"], data["crop_box"]
        return cls(height, width, rh, rw, y0, x0, y1 - y0, x1 - x0)

    def to_dict(self) -> dict[str, list[int]]:
        return {"resized": [self.resized_width, self.resized_height],
                "crop_box": [self.left, self.top, self.left + self.crop_width, self.top + self.crop_height]}

    def input_to_original(self, x: float, y: float) -> tuple[float, float]:
        """A point (pixel centre) of the model input → the original image's pixel coordinates."""
        sx, sy = self.width / self.resized_width, self.height / self.resized_height
        return (x + self.left + 0.5) * sx - 0.5, (y + self.top + 0.5) * sy - 0.5

    def visible_box(self) -> tuple[float, float, float, float]:
        """The part of the original image the model sees, (x0, y0, x1, y1) in pixel edges."""
        sx, sy = self.width / self.resized_width, self.height / self.resized_height
        x0, x1 = max(self.left, 0) * sx, min(self.left + self.crop_width, self.resized_width) * sx
        y0, y1 = max(self.top, 0) * sy, min(self.top + self.crop_height, self.resized_height) * sy
        return x0, y0, x1, y1

    def to_original(self, input_map: np.ndarray) -> np.ndarray:
        """A [crop_h, crop_w] map on the model input → [height, width] on the original pixels, bilinear;
        0 outside the part of the image the model saw."""
        if input_map.shape != (self.crop_height, self.crop_width):
            raise ValueError(f"map {input_map.shape} is not the model input {(self.crop_height, self.crop_width)}")
        # each original pixel centre, in the crop's pixel-edge coordinates
        xs = (torch.arange(self.width, dtype=torch.float64) + 0.5) * (self.resized_width / self.width) - self.left
        ys = (torch.arange(self.height, dtype=torch.float64) + 0.5) * (self.resized_height / self.height) - self.top
        gx = (2 * xs / self.crop_width - 1).float()
        gy = (2 * ys / self.crop_height - 1).float()
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        src = torch.from_numpy(np.ascontiguousarray(input_map, dtype=np.float32))[None, None]
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        inside = ((gx >= -1) & (gx <= 1))[None, :] & ((gy >= -1) & (gy <= 1))[:, None]
        return torch.where(inside, out, torch.zeros(())).numpy()

    def visible_mask(self) -> np.ndarray:
        """[height, width] booleans: the original pixels the model saw."""
        x0, y0, x1, y1 = self.visible_box()
        xs, ys = np.arange(self.width) + 0.5, np.arange(self.height) + 0.5
        return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
