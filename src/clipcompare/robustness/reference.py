"""Published accuracies of ~1.6k models, shipped with the package: timm's ImageNet classifiers and
open_clip's zero-shot models on ImageNet and its distribution shifts.

``data/reference.csv.gz`` is built by ``scripts/build_reference.py`` from timm's ``results/`` (commit
aa4b5850c1543fa488abf260f18390eda46cf85d, Apache-2.0, ``data/LICENSE.timm``) and open_clip's
``docs/openclip_results.csv`` (commit 89fb801f1e6087880e951fc8354b8a2077b79c6d, MIT-style,
``data/LICENSE.open_clip``); ``data/README.md`` says which columns and rows were kept.

One row per model, named by the spec that would load it: ``timm:resnet50.tv_in1k`` (a timm weight
evaluated at a second resolution: ``timm:NAME@SIZE``), ``clip:RN50@openai``. Accuracies in percent
(NaN where not published); ``imagenet-r-clean`` / ``imagenet-a-clean`` are top-1 on the ImageNet val
images of the 200 ImageNet-R / -A classes with the scores restricted to them (timm's ``-clean``
files): the x-axis of effective robustness for those two shifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

DATA_FILE = Path(__file__).parent / "data" / "reference.csv.gz"

# accuracy columns, by clipcompare's dataset kinds (ObjectNet only from open_clip)
ACCURACY_COLUMNS: tuple[str, ...] = (
    "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet",
    "imagenet-r-clean", "imagenet-a-clean",
)
GROUPS: tuple[str, ...] = ("standard", "more data", "zero-shot")


@dataclass(frozen=True)
class Shift:
    """A distribution shift: its label, and whether its x-axis is the clean 200-class ImageNet top-1."""

    label: str
    clean: bool = False

    def x_column(self, kind: str) -> str:
        """The reference column of this shift's x-axis."""
        return f"{kind}-clean" if self.clean else "imagenet"


# by clipcompare's dataset kinds (evaluate's objectnet kind: the 113 classes that map to ImageNet)
SHIFTS: dict[str, Shift] = {
    "imagenet-v2": Shift("ImageNet-V2"),
    "imagenet-sketch": Shift("ImageNet-Sketch"),
    "imagenet-r": Shift("ImageNet-R", clean=True),
    "imagenet-a": Shift("ImageNet-A", clean=True),
    "objectnet": Shift("ObjectNet"),
}

# timm tag tokens that mean a stage on more than ImageNet-1k's labelled images before (or instead of)
# supervised ImageNet-1k training: other labelled sets, web image-text pairs, self-supervised or
# semi-supervised pretraining (mim, mae, fcmae, ssl, ssld, ns = Noisy Student on JFT)
EXTRA_DATA_TOKENS: frozenset[str] = frozenset({
    "in21k", "in22k", "in12k", "ig1b", "swsl", "ssl", "wsl", "swag", "seer", "yfcc100m", "laion", "laion2b",
    "laiona", "openai", "clip", "dfn", "webli", "jft", "ns", "m30m", "m38m", "mim", "mae", "fcmae", "ssld",
    "dino", "dinov2", "lvd142m", "indomain", "datacomp", "metaclip",
})


def timm_group(model: str) -> str:
    """``standard`` (supervised on ImageNet-1k only) or ``more data``, from a timm name's tag.

    ``resnet50.tv_in1k`` and ``resnet50.a1_in1k`` are standard; ``vit_base_patch16_224.augreg_in21k_ft_in1k``,
    ``resnet50.fb_swsl_ig1b_ft_in1k`` and ``convnextv2_tiny.fcmae_ft_in1k`` are not (``ft``: fine-tuned
    after another pretraining stage).
    """
    tag = model.partition(".")[2]
    tokens = set(tag.lower().split("_"))
    if "ft" in tokens or tokens & EXTRA_DATA_TOKENS:
        return "more data"
    return "standard"


def published_row(model: str, img_size: int | None = None) -> str | None:
    """The reference row of a user's model, when it is one the table has: ``timm:ARCH.TAG`` (no tag: timm's
    default one) is the row ``timm:ARCH.TAG@SIZE`` for the size it was evaluated at (``img_size``, timm's
    test size by default), else the weight's primary row. None for a local file or a model not in the table."""
    if not model.startswith("timm:") or "=" in model:
        return None
    name = model
    if "." not in model:  # the tag timm defaults to, as the loader picks it
        from clipcompare.models.timm import default_pretrained_name

        default = default_pretrained_name(model.removeprefix("timm:"))
        if default is None or "." not in default:  # an arch timm does not know, or one without weights
            return None
        name = f"timm:{default}"
    table = load_reference()
    rows = table[(table["model"] == name) | table["model"].str.startswith(f"{name}@")]
    if rows.empty:
        return None
    sized = rows[rows["img_size"] == img_size] if img_size is not None else rows.iloc[0:0]
    return str((sized if not sized.empty else rows[rows["primary"]] if rows["primary"].any() else rows)
               .iloc[0]["model"])


@lru_cache(maxsize=1)
def load_reference() -> pd.DataFrame:
    """The shipped table: ``model`` (spec), ``source`` (timm / open_clip), ``group``, ``img_size``,
    ``primary`` (False for a timm weight's second resolution) and the :data:`ACCURACY_COLUMNS`."""
    df = pd.read_csv(DATA_FILE)
    df["primary"] = df["primary"].astype(bool)
    return df
