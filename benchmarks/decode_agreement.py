"""How far ``--decode gpu`` and ``--precision bf16|fp16`` are from the reference (``--decode cpu``, fp32).

Per model (ResNet-50 and CLIP RN50 by default, random weights unless yours are installed) and per
image set (generated JPEGs; scikit-image's sample photographs re-encoded as JPEG when
scikit-image is installed), it prints:

* decode: the largest pixel difference of the preprocessed images (8-bit levels), and the
  models' top-1 agreement and max / mean |Δp| between the two paths, both in fp32;
* precision: the same agreement figures for bf16 and fp16 against fp32, on the CPU path's inputs.

|Δp| is over every image and class of the softmax over the scored classes. Random weights answer
nearly one class for everything, so "top-1" is also given for logits centred over the images
(each class's mean over the set subtracted), which depends on the image.

    .venv/bin/python benchmarks/decode_agreement.py                 # CPU: TorchCodec's decode_jpeg via libjpeg
    .venv/bin/python benchmarks/decode_agreement.py --device cuda   # nvJPEG + GPU resize
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcompare.classes import ClassSet
from clipcompare.data.decode import DecodedImages, collate
from clipcompare.data.gpu_decode import DeviceDecoder, EncodedImages, collate_raw
from clipcompare.data.synthetic import synthetic_image
from clipcompare.data.tensor_preprocess import tensor_preprocess
from clipcompare.dtypes import dtype_support
from clipcompare.evaluation import EvaluateOptions, load_classifiers, resolve_device
from clipcompare.models.spec import DEFAULT_MODELS, parse_spec

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "coins")


def generated_set(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for k in range(n):
        size = ((500, 375), (375, 500), (640, 480), (333, 250))[k % 4]
        names.append(f"gen_{k:04d}.jpg")
        synthetic_image(rng, size).save(root / names[-1], quality=90)
    return names


def photo_set(root: Path) -> list[str]:
    """scikit-image's sample photographs as JPEG (quality 90); empty when it is not installed."""
    try:
        import skimage.data
    except ImportError:
        return []
    names = []
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        Image.fromarray(arr).convert("RGB").save(root / f"photo_{name}.jpg", quality=90)
        names.append(f"photo_{name}.jpg")
    return names


def cpu_inputs(root: Path, names: list[str], transform) -> torch.Tensor:
    ds = DecodedImages(root, names, [transform])
    return collate([ds[i] for i in range(len(names))]).tensors[0]


def gpu_inputs(root: Path, names: list[str], transform, device: torch.device, batch: int) -> torch.Tensor:
    ds = EncodedImages(root, names, [transform])
    decoder = DeviceDecoder(root, names, [transform], [tensor_preprocess(transform)], device)
    outs = [decoder(collate_raw([ds[i] for i in range(s, min(s + batch, len(names)))])).tensors[0]
            for s in range(0, len(names), batch)]
    return torch.cat(outs).cpu()


@torch.inference_mode()
def logits_of(clf, x: torch.Tensor, classes: ClassSet, device: torch.device, batch: int) -> torch.Tensor:
    outs = [clf.logits(x[s : s + batch].to(device, clf.dtype), classes).float().cpu()
            for s in range(0, len(x), batch)]
    return torch.cat(outs)


def agreement(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    pr, po = ref.softmax(-1), other.softmax(-1)
    mean = ref.mean(0, keepdim=True)
    dp = (pr - po).abs()
    return {"top1": (ref.argmax(1) == other.argmax(1)).float().mean().item(),
            "top1_centred": ((ref - mean).argmax(1) == (other - mean).argmax(1)).float().mean().item(),
            "max_dp": dp.max().item(), "mean_dp": dp.mean().item()}


def line(label: str, a: dict[str, float]) -> str:
    return (f"    {label:<22} top-1 {a['top1']:7.2%}  centred top-1 {a['top1_centred']:7.2%}  "
            f"max |Δp| {a['max_dp']:.2e}  mean |Δp| {a['mean_dp']:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64, help="generated JPEGs (default 64)")
    ap.add_argument("--classes", type=int, default=100, help="ImageNet classes scored, spread over the 1000")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--model", action="append", help="default: " + ", ".join(DEFAULT_MODELS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = resolve_device(args.device)
    classes = ClassSet.imagenet(range(0, 1000, 1000 // args.classes))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {"generated": generated_set(root, args.images), "photos": photo_set(root)}
        options = EvaluateOptions(out=root / "run", device=str(device), allow_random=True, templates="single",
                                  cache_dir=root / "cache")
        specs = [parse_spec(m) for m in args.model or DEFAULT_MODELS]
        classifiers = load_classifiers(specs, options, device)
        # each dtype's models loaded and cast as evaluate --precision does (seeded: the same weights)
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        supports = {d: dtype_support(d, device.type) for d in dtypes}
        casts = {d: load_classifiers(specs, dataclasses.replace(options, precision=d), device)
                 for d in dtypes if supports[d].supported}
        print(f"device {device}, {len(classes)} ImageNet classes, models {', '.join(c.name for c in classifiers)}"
              f" ({'pretrained' if all(c.pretrained for c in classifiers) else 'random weights'})")
        for set_name, names in sets.items():
            if not names:
                print(f"{set_name}: scikit-image not installed, skipped")
                continue
            print(f"{set_name}: {len(names)} JPEGs")
            for m, clf in enumerate(classifiers):
                ref_x = cpu_inputs(root, names, clf.preprocess)
                gpu_x = gpu_inputs(root, names, clf.preprocess, device, args.batch_size)
                std = torch.tensor(tensor_preprocess(clf.preprocess).std).view(1, 3, 1, 1)
                pixel = ((gpu_x - ref_x) * std * 255).abs()
                ref = logits_of(clf, ref_x, classes, device, args.batch_size)
                print(f"  {clf.name}: pixels differ by at most {pixel.max():.2f} 8-bit levels "
                      f"(mean {pixel.mean():.4f})")
                print(line("decode gpu vs cpu", agreement(ref, logits_of(clf, gpu_x, classes, device, args.batch_size))))
                for dtype in dtypes:
                    support = supports[dtype]
                    if not support.supported:
                        print(f"    {dtype}: {support.note}")
                        continue
                    got = logits_of(casts[dtype][m], ref_x, classes, device, args.batch_size)
                    print(line(f"{dtype} vs fp32" + (" (emulated)" if support.native is False else ""),
                               agreement(ref, got)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
