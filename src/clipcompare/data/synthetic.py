"""Generated images for the demo and benchmarks: no dataset ships with the package."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(rng: np.random.Generator, size: tuple[int, int] = (500, 375), noise: float = 12.0) -> Image.Image:
    """Smooth colour shapes plus sensor-like noise: JPEG entropy close to a photo's."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_image_folder(
    root: Path, class_dirs: Sequence[str], per_class: int, *, size: tuple[int, int] = (500, 375), seed: int = 0
) -> Path:
    """``root/<class_dir>/<k>.JPEG`` (quality 90), deterministic for a seed; existing files are kept."""
    rng = np.random.default_rng(seed)
    for d in class_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = synthetic_image(rng, size)  # drawn even when the file exists, so content never depends on it
            path = root / d / f"{k:03d}.JPEG"
            if not path.exists():
                img.save(path, quality=90)
    return root


# --------------------------------------------------------------------------- captioned images (COCO layout)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
    "yellow": (235, 215, 30), "purple": (140, 40, 170), "white": (250, 250, 250),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# each position: where the shape's centre goes (fractions of the size) and three ways to say it
POSITIONS: dict[str, tuple[tuple[float, float], tuple[str, str, str]]] = {
    "left": ((0.27, 0.5), ("on the left", "at the left side", "to the left")),
    "right": ((0.73, 0.5), ("on the right", "at the right side", "to the right")),
    "top": ((0.5, 0.27), ("at the top", "near the top edge", "up high")),
    "bottom": ((0.5, 0.73), ("at the bottom", "near the bottom edge", "down low")),
    "middle": ((0.5, 0.5), ("in the middle", "at the centre", "in the center")),
}
# five paraphrases per image: {c} colour, {s} shape, {p0..p2} the position's three phrasings
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} {p0}",
    "a picture of a {s} that is {c}, {p1}",
    "{p2} there is a {c} {s}",
    "one {s} coloured {c} {p0}",
    "a drawing with a single {c} {s} placed {p1}",
)


def shape_image(rng: np.random.Generator, colour: str, shape: str, position: str,
                size: tuple[int, int] = (64, 64)) -> Image.Image:
    """One filled ``shape`` in ``colour`` at ``position`` on a noisy grey background (jittered)."""
    from PIL import ImageDraw

    w, h = size
    grey = int(rng.integers(70, 150))
    bg = np.clip(grey + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    (fx, fy), _ = POSITIONS[position]
    r = min(w, h) * rng.uniform(0.14, 0.2)
    cx = fx * w + rng.uniform(-0.04, 0.04) * w
    cy = fy * h + rng.uniform(-0.04, 0.04) * h
    box = (cx - r, cy - r, cx + r, cy + r)
    draw = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def shape_captions(colour: str, shape: str, position: str) -> list[str]:
    """The five paraphrases describing one drawn shape."""
    p = POSITIONS[position][1]
    return [t.format(c=colour, s=shape, p0=p[0], p1=p[1], p2=p[2]) for t in CAPTION_TEMPLATES]


def make_coco(root: Path, n_train: int, n_val: int, *, seed: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    """A COCO-2014-layout captions dataset whose captions describe what is drawn.

    Writes ``root/annotations/captions_{train,val}2014.json`` (the official format: ``images`` with
    ``id``/``file_name``/``width``/``height``, ``annotations`` with ``image_id``/``id``/``caption``, in
    shuffled order as in the real files) and ``root/{train,val}2014/COCO_{split}2014_%012d.jpg``.
    Each image is one of 6 colours × 3 shapes × 5 positions, with 5 paraphrased captions, so a short
    training run can learn to match them. Deterministic for a seed; existing image files are kept.
    """
    import json

    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 600_000), size=n_train + n_val, replace=False))
    split_ids = {"train2014": rng.permutation(ids)[:n_train], "val2014": None}
    split_ids["val2014"] = np.setdiff1d(ids, split_ids["train2014"])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split in ("train2014", "val2014"):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id in np.sort(split_ids[split]).tolist():
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            position = str(rng.choice(list(POSITIONS)))
            img = shape_image(rng, colour, shape, position, size)  # drawn even if the file exists
            name = f"COCO_{split}_{image_id:012d}.jpg"
            path = root / split / name
            if not path.exists():
                img.save(path, quality=90)
            images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1], "license": 1})
            for caption in shape_captions(colour, shape, position):
                annotations.append({"image_id": image_id, "id": ann_id, "caption": caption})
                ann_id += 1
        order = rng.permutation(len(annotations))  # the real files are not grouped by image
        doc = {"info": {"description": "clipcompare synthetic COCO", "year": 2014}, "licenses": [],
               "images": images, "annotations": [annotations[i] for i in order]}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(doc), encoding="utf-8")
    return root
