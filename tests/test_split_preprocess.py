"""``--decode cpu``'s split preprocessing: PIL resize/crop per image to uint8, then ``/255`` and the
normalisation once per batch, bitwise equal to each model's own transform applied per image."""

from __future__ import annotations

import dataclasses

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.models import ResNet50_Weights

from clipcompare.data.decode import DecodedImages, collate
from clipcompare.data.synthetic import synthetic_image
from clipcompare.data.tensor_preprocess import split_preprocess
from clipcompare.evaluation import EvaluateOptions, input_pipeline
from clipcompare.models.classifier import create_classifier
from helpers import make_image, make_image_folder

SIZES = [(500, 375), (375, 500), (224, 224), (96, 72), (300, 100), (257, 256), (1000, 999)]


def _transforms() -> dict[str, object]:
    _, _, clip_rn50 = open_clip.create_model_and_transforms("RN50", pretrained=None)
    return {
        "torchvision ResNet-50 V1": ResNet50_Weights.IMAGENET1K_V1.transforms(),
        "torchvision ResNet-50 V2": ResNet50_Weights.IMAGENET1K_V2.transforms(),  # resize 232
        "open_clip RN50": clip_rn50,
        "bicubic to 100, crop 80x90": T.Compose([
            T.Resize(100, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((80, 90)), T.ToTensor(),
            T.Normalize((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))]),
        "PILToTensor + ConvertImageDtype": T.Compose([
            T.Resize((70, 50)), T.PILToTensor(), T.ConvertImageDtype(torch.float32),
            T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))]),
        "no Normalize": T.Compose([T.CenterCrop(64), T.ToTensor()]),
    }


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Generated photos-like images and pure noise, in the sizes above (JPEG round trip for some)."""
    rng = np.random.default_rng(0)
    out = []
    for size in SIZES:
        out.append(synthetic_image(rng, size))
        out.append(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))
    return out


@pytest.mark.parametrize("name", list(_transforms()))
def test_split_batch_is_bitwise_equal_to_the_transform_per_image(name, images):
    transform = _transforms()[name]
    split = split_preprocess(transform)
    assert split is not None
    by_size: dict[tuple[int, ...], list[Image.Image]] = {}
    for img in images:  # a batch holds one output size; transforms without a crop keep the aspect
        by_size.setdefault(tuple(split(img).shape), []).append(img)
    for group in by_size.values():
        reference = torch.stack([transform(img) for img in group])
        assert reference.dtype == torch.float32
        stacked = torch.stack([split(img) for img in group])
        assert stacked.dtype == torch.uint8 and stacked.shape[-1] == 3
        for fmt in (torch.contiguous_format, torch.channels_last):
            ours = split.finish(stacked, fmt)
            assert ours.is_contiguous(memory_format=fmt)
            assert ours.shape == reference.shape and torch.equal(ours, reference)


def test_transforms_that_cannot_be_split_are_left_whole():
    for bad in (T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), T.Compose([T.Resize(10)]),
                T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))]), lambda im: im):
        assert split_preprocess(bad) is None


def test_decoded_images_collate_uint8_and_failures(tmp_path):
    paths = [make_image(tmp_path / f"{i}.jpg", size=SIZES[i], seed=i).name for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    transform = _transforms()["open_clip RN50"]
    split = split_preprocess(transform)
    items = DecodedImages(tmp_path, [*paths, "bad.jpg"], [split, transform])
    batch = collate([items[i] for i in range(4)])
    assert batch.positions.tolist() == [0, 1, 2] and [p for p, _ in batch.failures] == [3]
    assert batch.tensors[0].dtype == torch.uint8
    assert torch.equal(split.finish(batch.tensors[0]), batch.tensors[1])


def test_evaluate_pipeline_feeds_each_model_what_its_transform_gives(tmp_path):
    """input_pipeline's batches (ResNet + CLIP, one of them in channels_last) equal the per-image
    transforms stacked, and a model whose transform cannot be split still runs it whole."""
    data = make_image_folder(tmp_path / "d", ["n01440764", "n01443537"], per_class=3)
    from clipcompare.data import load_datasets

    (ds,) = load_datasets([f"imagenet={data}"])
    torch.manual_seed(0)
    clfs = [create_classifier(m, allow_random=True, templates="single") for m in ("resnet18", "clip:tiny-RN-quickgelu")]
    opts = EvaluateOptions(out=tmp_path / "out", batch_size=4, device="cpu")
    pending = np.arange(len(ds), dtype=np.int64)
    from clipcompare.data.decode import ThreadedDecode

    # both transforms split: batches are decoded by threads (with workers, by the DataLoader)
    assert isinstance(input_pipeline(ds, pending, clfs, opts, torch.device("cpu")).loader, ThreadedDecode)
    with_workers = input_pipeline(ds, pending, clfs, dataclasses.replace(opts, workers=1), torch.device("cpu"))
    assert isinstance(with_workers.loader, torch.utils.data.DataLoader)
    whole = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.RandomHorizontalFlip(p=0.0)])
    clfs[1].preprocess = whole  # an unknown step: no split, the transform runs per image
    formats = [torch.channels_last, torch.contiguous_format]
    pipeline = input_pipeline(ds, pending, clfs, opts, torch.device("cpu"), formats)
    assert isinstance(pipeline.loader, torch.utils.data.DataLoader)  # a whole transform: no decode threads
    batches = list(pipeline)
    assert sum(len(b.positions) for b in batches) == len(ds) == 6
    for b in batches:
        for clf, s, fmt in zip(clfs, [0, 1], formats):
            imgs = [Image.open(data / ds.samples[int(pending[p])].path).convert("RGB") for p in b.positions]
            reference = torch.stack([clf.preprocess(img) for img in imgs])
            assert b.tensors[s].is_contiguous(memory_format=fmt) and torch.equal(b.tensors[s], reference)


def test_threaded_decode_gives_the_dataloaders_batches(tmp_path):
    """The threaded batching (CPU, no workers): same positions, tensors and failures, in order."""
    from clipcompare.data.decode import ThreadedDecode

    paths = [make_image(tmp_path / f"{i}.jpg", size=SIZES[i % 3], seed=i).name for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(4, "bad.jpg")
    split = split_preprocess(_transforms()["open_clip RN50"])
    images = DecodedImages(tmp_path, paths, [split])
    threaded = list(ThreadedDecode(images, 3, threads=2))
    loader = list(torch.utils.data.DataLoader(images, batch_size=3, collate_fn=collate))
    assert len(threaded) == len(loader) == 3
    for a, b in zip(threaded, loader):
        assert a.positions.tolist() == b.positions.tolist() and a.failures == b.failures
        assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors))
    assert [p for b in threaded for p, _ in b.failures] == [4]
    assert list(ThreadedDecode(DecodedImages(tmp_path, [], [split]), 3)) == []
