"""Checkpoints: tensors and plain data only (``torch.load(weights_only=True)`` reads them), written
atomically, holding everything a resumed run needs to continue bit for bit."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipcompare.fileio import atomic_torch_save
from clipcompare.models.contrastive import ContrastiveModel, save_record


def rng_state() -> dict[str, Any]:
    """torch, numpy, python and CUDA generator states as tensors / plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: Path, model: ContrastiveModel, config: dict[str, Any], *,
                    training: dict[str, Any] | None = None) -> None:
    """``model`` weights + its architecture record (what rebuilds it) + the run's ``config``; ``training``
    (optimizer, scaler, position, RNG, ...) for a resumable checkpoint."""
    ckpt: dict[str, Any] = {**save_record(model), "config": config}
    if training is not None:
        ckpt["training"] = training
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, path)

