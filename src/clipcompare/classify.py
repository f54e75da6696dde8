"""Zero-shot (CLIP) and supervised (ResNet-50) top-k classification of images, or folders of them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipcompare.classes import ClassSet
from clipcompare.data.decode import load_rgb
from clipcompare.errors import UserError
from clipcompare.models.classifier import Classifier, ClipClassifier

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    label: str
    prob: float
    imagenet_index: int | None = None


@dataclass
class ImageResult:
    path: str
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)


BATCH = 64  # images per forward: a folder of hundreds stays within memory


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Image files as given, each folder replaced by the image files directly in it (sorted)."""
    from clipcompare.data import IMAGE_EXTENSIONS, is_image_file

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q.name))
            if not found:
                raise UserError(f"{p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); for a dataset "
                                "with class subfolders use `clipcompare evaluate -d folder=DIR`")
            out += found
        else:
            out.append(p)
    return out


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Decode every image up front, so a bad path fails before any model is loaded."""
    images = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"image not found: {p}")
        try:
            images.append(load_rgb(p))
        except Exception as exc:  # PIL raises many types for corrupt or non-image files
            raise UserError(f"cannot read image {p}: {exc.__class__.__name__}: {exc}") from None
    return images


def read_inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Image.Image], list[tuple[Path, str]]]:
    """The images named or found in folders, decoded up front: (paths, images, skipped (path, reason)).

    A file named on the command line that cannot be read is the user's to fix (a UserError); an
    unreadable file found in a folder is skipped with its reason, as ``evaluate`` skips it.
    """
    kept: list[Path] = []
    images: list[Image.Image] = []
    skipped: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if not given.is_dir():
            images += open_images([given])
            kept.append(given)
            continue
        for p in expand_paths([given]):
            try:
                images.append(load_rgb(p))
            except Exception as exc:  # noqa: BLE001 - as in evaluate: one bad file must not stop the rest
                log.warning("skipping unreadable image %s: %s: %s", p, type(exc).__name__, exc)
                skipped.append((p, f"{type(exc).__name__}: {exc}"))
                continue
            kept.append(p)
    if not kept:
        raise UserError(f"no readable image among {len(skipped)} files (first: {skipped[0][0]}: {skipped[0][1]})")
    return kept, images, skipped


def skipped_note(skipped: Sequence[tuple[Any, str]]) -> str:
    """The note a command prints for the unreadable images it skipped: how many, and the first with its reason."""
    (first, reason), n = skipped[0], len(skipped)
    return f"skipped {n} unreadable image{'s' if n > 1 else ''} (first: {first}: {reason})"


@torch.inference_mode()
def classify(
    classifiers: Sequence[Classifier],
    paths: Sequence[Path],
    classes: ClassSet,
    *,
    top_k: int = 5,
    raw_cosine: bool = False,
    images: Sequence[Image.Image] | None = None,
) -> tuple[list[ImageResult], list[str]]:
    """Top-k predictions per image and model, plus notes (models skipped and why). ``images``: the
    decoded ``paths`` when the caller has them already (:func:`open_images`).

    Probabilities are a softmax over ``classes``, except for a model with a sigmoid head (SigLIP):
    its own sigmoid per label (they need not sum to 1), noted once per such model."""
    images = list(images) if images is not None else open_images(paths)
    results = [ImageResult(str(p)) for p in paths]
    notes: list[str] = []
    k = min(top_k, len(classes))
    for clf in classifiers:
        reason = clf.supports(classes)
        if reason:
            notes.append(f"skipped {clf.name}: {reason}")
            continue
        tops = []
        for start in range(0, len(images), BATCH):
            batch = torch.stack([clf.preprocess(im) for im in images[start:start + BATCH]]).to(clf.device, clf.dtype)
            if raw_cosine and isinstance(clf, ClipClassifier):
                probs = clf.cosine(batch, classes).float().softmax(dim=-1)
            elif getattr(clf, "sigmoid_head", False):
                # SigLIP was trained with a sigmoid per image-text pair: scale·cos + bias is the log-odds
                # that this label fits, what its model card and transformers' pipeline report; a softmax
                # over the label set would ignore the bias and invent a competition it never learnt
                probs = torch.sigmoid(clf.logits(batch, classes).float())
            else:
                probs = clf.logits(batch, classes).float().softmax(dim=-1)
            tops.append(probs.topk(k, dim=-1))
        if getattr(clf, "sigmoid_head", False) and not raw_cosine:
            notes.append(f"{clf.name}: sigmoid probabilities (a SigLIP-style head scores each label on its own; "
                         "they do not sum to 1)")
        values = torch.cat([t.values for t in tops]).tolist()
        indices = torch.cat([t.indices for t in tops]).tolist()
        for res, vals, idxs in zip(results, values, indices):
            res.predictions[clf.name] = [
                Prediction(
                    classes.names[i], v,
                    classes.imagenet_indices[i] if classes.imagenet_indices is not None else None,
                )
                for v, i in zip(vals, idxs)
            ]
    return results, notes


def results_to_dict(results: Sequence[ImageResult]) -> list[dict]:
    return [asdict(r) for r in results]
