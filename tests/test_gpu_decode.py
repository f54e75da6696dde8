"""``--decode gpu`` on CPU tensors: the tensor preprocessing against each model's PIL transform, routing, fallbacks.

TorchCodec's ``decode_jpeg`` (libjpeg-turbo on CPU, nvJPEG on CUDA) and the tensor transforms run on
CPU too, so everything here except nvJPEG itself is the code a GPU runs. Stated bound: after resize and crop, every pixel of the
tensor path is within 1/255 of the PIL path (one 8-bit level; both round the resized image to
uint8), i.e. within (1/255)/std after normalisation.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchcodec.decoders import decode_jpeg
from torchvision import transforms as T

from clipcompare.data.decode import load_rgb
from clipcompare.data.gpu_decode import DeviceDecoder, EncodedImages, collate_raw, jpeg_route
from clipcompare.data.synthetic import synthetic_image
from clipcompare.data.tensor_preprocess import UnsupportedTransform, tensor_preprocess
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import prob_column, top_column
from clipcompare.models.classifier import create_classifier
from helpers import make_image, make_image_folder

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
WNIDS = ["n01440764", "n01443537", "n02102040"]
PIXEL_BOUND = 1 / 255 + 1e-6  # one 8-bit level, in [0, 1] units


def jpeg_bytes(seed: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    synthetic_image(np.random.default_rng(seed), size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_parameters_come_from_the_transform_object():
    from torchvision.models import ResNet18_Weights

    tp = tensor_preprocess(ResNet18_Weights.IMAGENET1K_V1.transforms())
    assert (tp.resize, tp.crop, tp.interpolation.value, tp.antialias) == ((256,), (224, 224), "bilinear", True)
    assert tp.mean == (0.485, 0.456, 0.406) and tp.std == (0.229, 0.224, 0.225)
    # an open_clip-style Compose with other values: every value is read, none assumed
    custom = T.Compose([T.Resize(100, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
                        T.CenterCrop((80, 90)), T.ToTensor(), T.Normalize((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))])
    tp = tensor_preprocess(custom)
    assert (tp.resize, tp.crop, tp.interpolation.value, tp.antialias) == ((100,), (80, 90), "bicubic", False)
    assert tp.mean == (0.1, 0.2, 0.3) and tp.std == (0.4, 0.5, 0.6)
    for bad, says in ((T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), "no tensor equivalent for the step "
                       "RandomHorizontalFlip"), (T.Compose([T.Resize(10)]), "never converts the image to a float tensor"),
                      (lambda im: im, "no tensor equivalent for function")):
        with pytest.raises(UnsupportedTransform, match=says):
            tensor_preprocess(bad)


@pytest.mark.parametrize("model", [RESNET, CLIP])
def test_tensor_path_matches_the_pil_path(model):
    """120 generated JPEGs of 4 sizes: pixels within one 8-bit level; top-1 agreement >= 99% (on the
    first 40 for ResNet, whose 224-pixel forward is slow on a small CPU: there it means all 40)."""
    torch.manual_seed(0)
    clf = create_classifier(model, allow_random=True, templates="single")
    tp = tensor_preprocess(clf.preprocess)
    sizes = [(500, 375), (375, 500), (96, 72), (240, 240)]
    blobs = [jpeg_bytes(seed, sizes[seed % 4]) for seed in range(120)]
    pil = torch.stack([clf.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    decoded = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], mode="RGB")
    ours = tp(decoded)
    assert ours.shape == pil.shape and ours.dtype == torch.float32
    pixel = ((ours - pil) * torch.tensor(tp.std).view(1, 3, 1, 1)).abs()
    assert pixel.max().item() <= PIXEL_BOUND
    assert pixel.mean().item() < 0.05 / 255  # nearly every pixel is identical
    n = 40 if model == RESNET else len(blobs)
    with torch.inference_mode():
        fa, fb = clf.features(pil[:n]).float(), clf.features(ours[:n]).float()
    # random weights answer one class for everything; centring each output over the images makes
    # top-1 depend on the image, so the agreement below is a real comparison
    mean = fa.mean(0, keepdim=True)
    top_a, top_b = (fa - mean).argmax(1), (fb - mean).argmax(1)
    assert len(set(top_a.tolist())) >= 10
    assert (top_a == top_b).float().mean().item() >= 0.99


def test_routing_sends_non_plain_jpegs_through_the_cpu_path(tmp_path):
    good = jpeg_bytes(0, (64, 48))
    assert jpeg_route(good) is None
    grey = io.BytesIO()
    synthetic_image(np.random.default_rng(1), (64, 48)).convert("L").save(grey, format="JPEG")
    assert jpeg_route(grey.getvalue()) is None
    cmyk = io.BytesIO()
    synthetic_image(np.random.default_rng(1), (64, 48)).convert("CMYK").save(cmyk, format="JPEG")
    assert jpeg_route(cmyk.getvalue()) == "JPEG in mode CMYK"
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    synthetic_image(np.random.default_rng(1), (64, 48)).save(rotated, format="JPEG", exif=exif)
    assert jpeg_route(rotated.getvalue()) == "EXIF orientation"
    assert jpeg_route(good[:-200]) == "no JPEG end marker (truncated?)"
    assert jpeg_route(make_image(tmp_path / "a.png").read_bytes()) == "not a JPEG"


def test_device_decoder_batch_in_order_with_fallbacks_and_skips(tmp_path, monkeypatch):
    """A batch mixing plain JPEGs, a PNG, a JPEG the decoder rejects and a truncated file."""
    torch.manual_seed(0)
    clfs = [create_classifier(m, allow_random=True, templates="single") for m in (RESNET, CLIP)]
    transforms = [c.preprocess for c in clfs]
    names = ["a.JPEG", "b.png", "c.JPEG", "d.JPEG", "e.JPEG"]
    for k, name in enumerate(names):
        make_image(tmp_path / name, size=(80 + 8 * k, 60), seed=k)
    (tmp_path / "e.JPEG").write_bytes((tmp_path / "e.JPEG").read_bytes()[:300])  # truncated
    rejected = (tmp_path / "c.JPEG").read_bytes()
    real = decode_jpeg

    def picky(data, *args, **kwargs):  # stands in for nvJPEG refusing one file
        items = data if isinstance(data, list) else [data]
        if any(len(d) == len(rejected) for d in items):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, *args, **kwargs)

    monkeypatch.setattr("torchcodec.decoders.decode_jpeg", picky)
    ds = EncodedImages(tmp_path, names, transforms)
    decoder = DeviceDecoder(tmp_path, names, transforms, [tensor_preprocess(t) for t in transforms],
                            torch.device("cpu"))
    batch = decoder(collate_raw([ds[i] for i in range(len(names))]))
    assert batch.positions.tolist() == [0, 1, 2, 3]
    assert [pos for pos, _ in batch.failures] == [4]
    assert decoder.decoded == 2
    assert dict(decoder.fallbacks) == {"not a JPEG": 1, "rejected by the device decoder": 1}
    for k, t in enumerate(transforms):
        ref = torch.stack([t(load_rgb(tmp_path / n)) for n in names[:4]])
        std = torch.tensor(tensor_preprocess(t).std).view(1, 3, 1, 1)
        assert ((batch.tensors[k] - ref) * std).abs().max().item() <= PIXEL_BOUND
        torch.testing.assert_close(batch.tensors[k][[1, 2]], ref[[1, 2]], rtol=0, atol=0)  # the CPU path: exact


def test_cuda_decode_waits_for_the_current_stream(tmp_path, monkeypatch):
    """pytorch/vision#9606: the CUDA decoder writes from a private stream that does not wait for the
    current one, so the current stream is drained before every decode (batched, and one by one after
    a refusal). CUDA stands in by its two calls here: the stream's synchronize and decode_jpeg."""
    names = ["a.JPEG", "b.JPEG"]
    for k, name in enumerate(names):
        make_image(tmp_path / name, size=(64, 48), seed=k)
    calls = []

    class Stream:
        def synchronize(self):
            calls.append("sync")

    def decode(data, *args, device=None, **kwargs):
        calls.append("decode")
        if isinstance(data, list):
            raise RuntimeError("nvjpeg: refused the batch")  # then one by one
        return decode_jpeg(data, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr("torchcodec.decoders.decode_jpeg", decode)
    ds = EncodedImages(tmp_path, names, [])
    decoder = DeviceDecoder(tmp_path, names, [], [], torch.device("cuda"))
    images, slots = decoder._decode(collate_raw([ds[0], ds[1]]), [])
    assert calls == ["sync", "decode"] * 3 and slots == [0, 1]
    assert [tuple(im.shape) for im in images] == [(3, 48, 64)] * 2


def test_device_decoding_emits_no_deprecation_warning(tmp_path):
    """torchvision 0.29 deprecated its image decoders for TorchCodec's (docs/decoding.md): the project's
    decoding calls must not warn. A colour and a greyscale JPEG decoded by the device decoder, a PNG by
    the CPU path, every warning recorded; the pixels still within one level of the PIL path."""
    make_image(tmp_path / "a.JPEG", size=(90, 70), seed=0)
    synthetic_image(np.random.default_rng(1), (70, 90)).convert("L").save(tmp_path / "b.JPEG", quality=90)
    make_image(tmp_path / "c.png", size=(64, 64), seed=2)
    names = ["a.JPEG", "b.JPEG", "c.png"]
    transform = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                           T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
    pre = tensor_preprocess(transform)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = EncodedImages(tmp_path, names, [transform])
        decoder = DeviceDecoder(tmp_path, names, [transform], [pre], torch.device("cpu"))
        batch = decoder(collate_raw([ds[i] for i in range(len(names))]))
    deprecations = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []
    assert decoder.decoded == 2 and dict(decoder.fallbacks) == {"not a JPEG": 1}
    ref = torch.stack([transform(load_rgb(tmp_path / n)) for n in names])
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    assert ((batch.tensors[0] - ref) * std).abs().max().item() <= PIXEL_BOUND


def _decode_gpu_argv(tmp_path) -> tuple[list[str], Path]:
    """`evaluate --decode gpu` on CPU over two generated images, and its --out."""
    data = make_image_folder(tmp_path / "d", WNIDS[:2], per_class=1)
    out = tmp_path / "run"
    return ["evaluate", "-m", CLIP, "-d", f"imagenet={data}", "--out", str(out), "--allow-random", "--templates",
            "single", "--workers", "0", "--no-progress", "--device", "cpu", "--decode", "gpu"], out


def test_decode_gpu_without_a_loadable_torchcodec_is_one_line(tmp_path, capsys, monkeypatch):
    """TorchCodec's wheels are built for one torch/CUDA; a missing or mismatched one is the user's to fix."""
    from clipcompare.cli import main

    monkeypatch.setitem(sys.modules, "torchcodec", None)  # `import torchcodec` now raises ImportError
    argv, out = _decode_gpu_argv(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TorchCodec" in err and "--decode cpu" in err
    assert not out.exists()  # refused before the run directory, its lock or any model


def test_evaluate_decode_gpu_on_cpu_matches_decode_cpu(tmp_path):
    data = make_image_folder(tmp_path / "d", WNIDS, per_class=3)
    make_image(data / WNIDS[0] / "zz.png", seed=50)
    Image.open(data / WNIDS[1] / "img_0.JPEG").convert("CMYK").save(data / WNIDS[1] / "zz.jpg")
    (data / WNIDS[2] / "zz.jpg").write_bytes(b"not an image")
    runs = {}
    for path in ("cpu", "gpu"):
        opts = EvaluateOptions(out=tmp_path / path, workers=0, templates="single", allow_random=True,
                               progress=False, device="cpu", batch_size=4, decode=path)
        runs[path] = evaluate([RESNET, CLIP], [f"imagenet={data}"], opts)
    a = pd.read_parquet(tmp_path / "cpu" / "predictions" / "imagenet.parquet")
    b = pd.read_parquet(tmp_path / "gpu" / "predictions" / "imagenet.parquet")
    assert list(a["path"]) == list(b["path"]) and len(a) == 11
    for name in runs["cpu"].models:
        assert (np.stack(a[top_column(name)])[:, 0] == np.stack(b[top_column(name)])[:, 0]).all()
        np.testing.assert_allclose(np.stack(a[prob_column(name)]), np.stack(b[prob_column(name)]), atol=1e-4)
    run = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert run["options"]["decode"] == "gpu" and run["settings"]["decode"] == "gpu"
    assert run["options"]["tensor_preprocess"][CLIP] == {
        "resize": [64], "interpolation": "bicubic", "antialias": True, "crop": [64, 64],
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    assert run["throughput"]["imagenet"]["decode"] == {"device": 9,
                                                       "cpu_path": {"JPEG in mode CMYK": 1, "not a JPEG": 1}}
    assert runs["gpu"].metrics["skipped_images"] == 1
    assert "decode" not in json.loads((tmp_path / "cpu" / "run.json").read_text())["settings"]


def test_decode_gpu_refuses_a_model_whose_preprocessing_has_no_tensor_equivalent(tmp_path, capsys, monkeypatch):
    from clipcompare.cli import main
    from clipcompare.models import loading

    original = loading.load_model

    def with_flip(*args, **kwargs):  # a model whose transform has a step the tensor path does not know
        loaded = original(*args, **kwargs)
        preprocess = T.Compose([T.RandomHorizontalFlip(), *loaded.preprocess.transforms])
        return dataclasses.replace(loaded, preprocess=preprocess)

    monkeypatch.setattr("clipcompare.models.classifier.load_model", with_flip)
    argv, out = _decode_gpu_argv(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RandomHorizontalFlip" in err and "--decode cpu" in err
    assert not (out / "predictions").exists()
