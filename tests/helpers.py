"""Helpers the tests share: generated images, nothing downloaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clipcompare.data.synthetic import synthetic_image


def make_image(path: Path, size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """The package's generated image (JPEG or PNG by suffix)."""
    img = synthetic_image(np.random.default_rng(seed), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_image_folder(root: Path, classes: Sequence[str], per_class: int = 3,
                      size: tuple[int, int] = (96, 72), suffix: str = ".JPEG") -> Path:
    """``root/<class>/img_<k>.JPEG`` for each class."""
    seed = 0
    for c in classes:
        for k in range(per_class):
            make_image(root / c / f"img_{k}{suffix}", size=size, seed=seed)
            seed += 1
    return root


def make_karpathy_file(coco: Path, path: Path) -> Path:
    """A Karpathy ``dataset_coco.json`` for a generated COCO root: train2014 → train; val2014 (by id) → val, test, restval in turn."""
    images = []
    for folder, split_of in (("train2014", lambda k: "train"), ("val2014", lambda k: ("val", "test", "restval")[k % 3])):
        doc = json.loads((coco / "annotations" / f"captions_{folder}.json").read_text())
        caps: dict[int, list[str]] = {}
        for a in sorted(doc["annotations"], key=lambda a: a["id"]):
            caps.setdefault(a["image_id"], []).append(a["caption"])
        for k, im in enumerate(sorted(doc["images"], key=lambda im: im["id"])):
            images.append({"filepath": folder, "filename": im["file_name"], "split": split_of(k), "cocoid": im["id"],
                           "sentences": [{"raw": c, "tokens": c.split()} for c in caps[im["id"]]]})
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


class _OpenAIArchive(torch.nn.Module):
    """Mimics OpenAI's released .pt files: a TorchScript archive of the whole CLIP model whose
    state_dict has the CLIP keys plus input_resolution/context_length/vocab_size, in fp16."""

    def __init__(self, model: torch.nn.Module, image_size: int):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(image_size))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, x):
        return self.logit_scale * x


def save_openai_torchscript(model: torch.nn.Module, path: Path, image_size: int = 64) -> torch.nn.Module:
    """Write ``model`` as an OpenAI-style archive; return the fp32 model the file equals exactly."""
    import copy
    import warnings

    half = copy.deepcopy(model).half()
    with warnings.catch_warnings():  # writing TorchScript is deprecated, but it is the format under test
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(_OpenAIArchive(half, image_size), torch.ones(1, dtype=torch.half)), str(path))
    return copy.deepcopy(half).float()


def interrupt_after_first_chunk(monkeypatch, run) -> None:
    """Call ``run()`` with evaluate's part writer storing one chunk, then raising KeyboardInterrupt (a Ctrl-C)."""
    import pytest

    from clipcompare.evaluation import predict as ev

    original = ev.write_part
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(ev, "write_part", interrupt)
        with pytest.raises(KeyboardInterrupt, match="^$"):  # ours, raised bare above
            run()


def fake_hf_cache(hub: Path, repo: str, files: dict[str, bytes], kind: str = "models") -> Path:
    """``files`` as huggingface_hub caches a repo's main revision: blobs/<sha256>, snapshots/<rev>/<name> →
    blob (a relative symlink), refs/main = rev. ``kind``: models or datasets. Returns the snapshot folder."""
    import hashlib

    rev = hashlib.sha1(repo.encode()).hexdigest()
    root = hub / f"{kind}--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / rev
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(Path("../" * (name.count("/") + 2) + "blobs") / blob.name)
    return snapshot
