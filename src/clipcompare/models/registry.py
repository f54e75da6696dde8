"""Model families: the spec's family → the function that loads it.

Adding a family is a new module with a ``load_X(spec, *, allow_random) -> LoadedModel`` plus one line
here (and its spelling in :func:`clipcompare.models.spec.parse_spec`). open_clip's own name forms
(``clip:hf-hub:``, ``clip:local-dir:``) are keyed ``family:schema``.
"""

from __future__ import annotations

from typing import Callable

from clipcompare.models.build_info import LoadedModel
from clipcompare.models.clip import load_clip
from clipcompare.models.clip_hub import load_clip_hub
from clipcompare.models.contrastive import load_trained_checkpoint
from clipcompare.models.hf import load_hf
from clipcompare.models.spec import ModelSpec
from clipcompare.models.timm import load_timm
from clipcompare.models.torchvision import load_torchvision

Loader = Callable[..., LoadedModel]  # (spec, *, allow_random: bool) -> LoadedModel

LOADERS: dict[str, Loader] = {
    "torchvision": load_torchvision,
    "clip": load_clip,
    "clip:hf-hub": load_clip_hub,
    "clip:local-dir": load_clip_hub,
    "trained": load_trained_checkpoint,
    "timm": load_timm,
    "hf": load_hf,
}


def loader_for(spec: ModelSpec) -> Loader:
    """The loader of ``spec``'s family (``family:schema`` for open_clip's schema'd names)."""
    return LOADERS[f"{spec.family}:{spec.schema}" if spec.schema else spec.family]
