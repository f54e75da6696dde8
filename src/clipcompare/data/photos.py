"""Real photographs that ship inside scikit-image and scikit-learn, and their sketch / art renditions.

No dataset ships with clipcompare and the demo must run offline, so it borrows the sample photos of
two widely installed packages and derives, for each, a line drawing (Canny edges) and a stylised
"painting" (posterised colours with inked edges): the photo → sketch → art comparison users make
with ImageNet / ImageNet-Sketch / ImageNet-R, on a handful of classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from clipcompare.errors import UserError


@dataclass(frozen=True)
class SamplePhoto:
    name: str
    source: str  # "skimage:<function>" or "sklearn:<file>"
    label: str  # free-text label for CLIP
    wnid: str | None  # its ImageNet class, when one clearly fits; None: free-text classification only


# Chosen by looking at each photo. ImageNet has no class for a person, a space rocket (its "missile"
# is a weapon), a sports motorcycle ("moped" / "motor scooter" are not it) or a dahlia, so those four
# are classified with free-text labels only.
SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("chelsea", "skimage:chelsea", "a cat", "n02123045"),  # a tabby cat: "tabby, tabby cat"
    SamplePhoto("coffee", "skimage:coffee", "a cup of coffee", "n07920052"),  # espresso in a red cup on a saucer
    SamplePhoto("china", "sklearn:china.jpg", "a Chinese palace", "n03877845"),  # Summer Palace, Beijing: "palace"
    SamplePhoto("camera", "skimage:camera", "a photographer", "n04485082"),  # "cameraman": a camera on a "tripod"
    SamplePhoto("rocket", "skimage:rocket", "a rocket on a launch pad", None),
    SamplePhoto("astronaut", "skimage:astronaut", "an astronaut", None),
    SamplePhoto("motorcycle", "skimage:stereo_motorcycle", "a motorcycle", None),
    SamplePhoto("flower", "sklearn:flower.jpg", "a flower", None),
)


def load_photo(photo: SamplePhoto) -> Image.Image:
    """The photo as an RGB PIL image (grayscale ones converted)."""
    package, _, item = photo.source.partition(":")
    try:
        if package == "skimage":
            import skimage.data

            array = getattr(skimage.data, item)()
            array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        else:
            from sklearn.datasets import load_sample_image

            array = load_sample_image(item)
    except ImportError as exc:
        raise UserError(f"the demo's photos come with scikit-image and scikit-learn: pip install scikit-image "
                        f"scikit-learn ({exc})") from None
    return Image.fromarray(np.asarray(array)).convert("RGB")


def _edges(img: Image.Image, sigma: float) -> Image.Image:
    """White Canny edge lines on black, thickened to about 3 px so they survive a 224 px resize."""
    from skimage.feature import canny

    gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    lines = Image.fromarray((canny(gray, sigma=sigma) * 255).astype(np.uint8))
    return lines.filter(ImageFilter.MaxFilter(3))


def sketch(img: Image.Image) -> Image.Image:
    """A line drawing: dark Canny edges on white paper."""
    return ImageOps.invert(_edges(img, sigma=2.0)).convert("RGB")


def art(img: Image.Image) -> Image.Image:
    """A poster-like painting: smoothed, saturated, 6 flat colours, edges inked in."""
    smooth = img.filter(ImageFilter.ModeFilter(7)).filter(ImageFilter.SMOOTH_MORE)
    vivid = ImageEnhance.Color(smooth).enhance(1.6)
    flat = vivid.quantize(colors=6, method=Image.Quantize.MEDIANCUT).convert("RGB")
    flat = flat.filter(ImageFilter.EDGE_ENHANCE_MORE)
    ink = _edges(img, sigma=3.0)
    return Image.composite(Image.new("RGB", img.size, (20, 20, 20)), flat, ink)


def views(img: Image.Image, n: int) -> list[Image.Image]:
    """``n`` views of a photo: itself, then mirrored / cropped variants (a few more images per class)."""
    w, h = img.size
    crops = [
        lambda im: im,
        lambda im: ImageOps.mirror(im.crop((w // 10, h // 10, w - w // 10, h - h // 10))),
        lambda im: im.crop((0, 0, w - w // 6, h - h // 6)),
        lambda im: ImageOps.mirror(im.crop((w // 6, h // 6, w, h))),
    ]
    return [crops[i % len(crops)](img) for i in range(n)]


DOMAINS: dict[str, Callable[[Image.Image], Image.Image]] = {"photo": lambda im: im, "sketch": sketch, "art": art}


def write_photos(root: Path, photos: Sequence[SamplePhoto]) -> dict[str, Path]:
    """Each photo as ``root/<name>.jpg``; returns name → path."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for p in photos:
        path = root / f"{p.name}.jpg"
        load_photo(p).save(path, quality=92)
        out[p.name] = path
    return out


def write_domains(root: Path, photos: Sequence[SamplePhoto], n_views: int = 2) -> dict[str, Path]:
    """``root/<domain>/<wnid>/<name>-<view>.jpg`` for photo, sketch and art; returns domain → folder.

    Only photos with an ImageNet class are used, so every folder is an ImageNet class both models can score.
    """
    classed = [p for p in photos if p.wnid is not None]
    if not classed:
        raise UserError("no photo with an ImageNet class to evaluate")
    for p in classed:
        img = load_photo(p)
        img.thumbnail((512, 512))  # the models see 224 px; smaller files decode faster
        for k, view in enumerate(views(img, n_views)):
            for domain, render in DOMAINS.items():
                folder = root / domain / p.wnid
                folder.mkdir(parents=True, exist_ok=True)
                render(view).save(folder / f"{p.name}-{k}.jpg", quality=90)
    return {domain: root / domain for domain in DOMAINS}
