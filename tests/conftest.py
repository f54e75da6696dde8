"""Test-wide setup: fully offline, caches in a temp dir, small models and generated images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before torch/open_clip/huggingface_hub are imported anywhere: no test may touch the network
# or a developer's real caches.
_TMP = Path(tempfile.mkdtemp(prefix="clipcompare-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = str(_TMP / "torch")
os.environ["HF_HOME"] = str(_TMP / "hf")
os.environ["CLIPCOMPARE_CACHE"] = str(_TMP / "cache")
os.environ["HOME"] = str(_TMP / "home")  # ~/.cache/clip lookups
os.environ.setdefault("OMP_NUM_THREADS", "2")

from helpers import make_image_folder  # noqa: E402  (needs the env above)


@pytest.fixture(scope="session")
def tiny_clip():
    """A random-weight tiny CLIP RN (QuickGELU, OpenAI layout) as a LoadedModel."""
    import torch

    from clipcompare.models.loading import load_model
    from clipcompare.models.spec import parse_spec

    torch.manual_seed(0)
    return load_model(parse_spec("clip:tiny-RN-quickgelu"), allow_random=True)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Generated JPEGs in 3 ImageNet wnid folders, 4 images each."""
    root = tmp_path_factory.mktemp("imgs")
    make_image_folder(root, ["n01440764", "n01443537", "n02102040"], per_class=4)
    return root
