"""Image-by-image check of ``clipcompare evaluate`` against the reference implementations.

Writes random-weight checkpoints in the formats users have (an open_clip RN50 state dict, as the
Hugging Face hub ships OpenAI's RN50, and a torchvision ResNet-50 ``.pth``) and a generated
ImageNet-R-style folder, runs ``evaluate`` on them, and compares every image's top-5 classes and
probabilities with a plain loop over the same files using open_clip's own ``RN50-quickgelu`` model
(+ ``build_zero_shot_classifier``) and torchvision's ``resnet50`` with its weights' transforms::

    .venv/bin/python scripts/parity_check.py --images 200 --work /tmp/parity
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision.models import ResNet50_Weights, resnet50

from clipcompare.data.synthetic import make_image_folder
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import prob_column, top_column
from clipcompare.imagenet.classes import IMAGENET_R_INDICES, imagenet_classes

TEMPLATES = ["a photo of a {}."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="images in the folder (one per class, cycling)")
    ap.add_argument("--work", type=Path, required=True, help="folder for checkpoints, images and the run")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    clip_ref = open_clip.create_model("RN50-quickgelu").eval()
    clip_file = work / "open_clip_pytorch_model.bin"
    torch.save(clip_ref.state_dict(), clip_file)
    tv_ref = resnet50().eval()
    tv_file = work / "resnet50.pth"
    torch.save(tv_ref.state_dict(), tv_file)

    wnids = [imagenet_classes()[i].wnid for i in IMAGENET_R_INDICES]
    per_class = max(1, -(-args.images // len(wnids)))
    root = make_image_folder(work / "imagenet-r", wnids[: min(len(wnids), args.images)], per_class, size=(320, 260))

    specs = [f"clip:RN50={clip_file}", f"resnet50={tv_file}"]
    out = work / "run"
    result = evaluate(specs, [f"imagenet-r={root}"], EvaluateOptions(
        out=out, templates="single", progress=False, cache_dir=work / "cache", batch_size=16))
    ds = result.datasets[0]
    table = pq.read_table(out / "predictions" / f"{ds.name}.parquet").to_pydict()
    run = json.loads((out / "run.json").read_text())
    names = [m["name"] for m in run["models"]]

    pre_clip = image_transform_v2(PreprocessCfg(**clip_ref.visual.preprocess_cfg), is_train=False)
    pre_tv = ResNet50_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        head = open_clip.build_zero_shot_classifier(
            clip_ref, tokenizer=open_clip.get_tokenizer("RN50"), classnames=ds.classes.names, templates=TEMPLATES,
            device="cpu")
        index = torch.tensor(ds.classes.imagenet_indices)
        ref = {n: ([], []) for n in names}
        for path in table["path"]:
            with Image.open(root / path) as im:
                img = im.convert("RGB")
            feats, _, scale = clip_ref(pre_clip(img)[None], None)
            clip_probs = (scale * feats @ head).softmax(-1)[0]
            tv_probs = tv_ref(pre_tv(img)[None])[0, index].softmax(-1)
            for name, probs in zip(names, (clip_probs, tv_probs)):
                top = probs.topk(5)
                ref[name][0].append(top.indices.tolist())
                ref[name][1].append(top.values.numpy())

    print(f"{len(table['path'])} images, {len(ds.classes)} classes")
    for name, build in zip(names, (m.get("build") or {} for m in run["models"])):
        tops = np.array(table[top_column(name)])
        probs = np.array(table[prob_column(name)])
        want_top, want_probs = np.array(ref[name][0]), np.array(ref[name][1])
        print(f"{name}: activation {build.get('activation', 'not recorded')} ({build.get('activation_source', '-')})")
        print(f"  top-1 agrees on {(tops[:, 0] == want_top[:, 0]).sum()}/{len(tops)}, "
              f"top-5 lists on {(tops == want_top).all(axis=1).sum()}/{len(tops)}, "
              f"max top-5 probability difference {np.abs(probs - want_probs).max():.2e}")


if __name__ == "__main__":
    main()
