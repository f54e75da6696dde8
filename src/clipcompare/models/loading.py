"""The one entry point the rest of the package loads models through.

Families live in their own modules (:mod:`~clipcompare.models.torchvision`, :mod:`~clipcompare.models.clip`,
:mod:`~clipcompare.models.clip_hub`, :mod:`~clipcompare.models.contrastive`), looked up in
:mod:`~clipcompare.models.registry`; weight files, caches and the download switch in
:mod:`~clipcompare.models.weights`. When weights are neither cached nor downloadable,
:class:`~clipcompare.errors.MissingWeightsError` names the file, where it comes from and where to put
it; with ``allow_random=True`` the architecture is built with random weights instead
(``LoadedModel.pretrained`` is then False), which is what ``inspect`` and the tests use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from clipcompare.models.build_info import LoadedModel
from clipcompare.models.registry import loader_for
from clipcompare.models.spec import ModelSpec

log = logging.getLogger(__name__)


@contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Random inits (``allow_random``) made inside are the same on every run, so a dry run is
    reproducible and resumable; the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_model(spec: ModelSpec, *, allow_random: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model of any family, in eval mode on ``device``."""
    loaded = loader_for(spec)(spec, allow_random=allow_random)
    loaded.model.eval().to(device)
    if loaded.build is not None:
        log.info("%s: %s", loaded.spec.name, loaded.build.describe())
    return loaded
