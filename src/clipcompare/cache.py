"""On-disk tensor cache shared by the tasks: zero-shot heads, caption embeddings.

Task-free: evaluation, training, retrieval and captions all keep their cached tensors under
:func:`default_cache_dir` and read them back through :func:`cached_tensor`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from clipcompare.fileio import atomic_torch_save

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$CLIPCOMPARE_CACHE`` or ``$XDG_CACHE_HOME/clipcompare`` (``~/.cache/clipcompare``)."""
    env = os.environ.get("CLIPCOMPARE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipcompare"


def cached_tensor(
    path: Path | None,
    build: Callable[[], torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    what: str = "tensor",
    rows: int | None = None,
) -> torch.Tensor:
    """``path`` loaded (weights_only) when it holds a tensor (of ``rows`` rows, if given), else ``build()``
    saved there.

    ``path=None`` disables the cache. The write is atomic, so a concurrent or interrupted run never
    sees half a file; an unreadable or mis-shaped file (a torn write from an older version) is rebuilt.
    """
    if path is not None and path.is_file():
        try:
            value = torch.load(path, map_location=device, weights_only=True)
            if isinstance(value, torch.Tensor) and (rows is None or (value.dim() and value.shape[0] == rows)):
                log.info("loaded %s from %s", what, path)
                return value
            log.warning("ignoring cached %s %s: unexpected content", what, path)
        except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt, never fatal
            log.warning("ignoring unreadable cached %s %s", what, path)
    value = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(value.cpu(), path)
    return value
