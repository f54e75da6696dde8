"""Parity with the reference implementations users trust, on random weights and generated images.

* CLIP: our zero-shot head and logits vs ``open_clip.build_zero_shot_classifier`` and open_clip's
  own forward on the model open_clip builds from the same state dict (RN and ViT towers).
* ``clip:ARCH=FILE`` is built with the activation of ARCH's released weights (QuickGELU for every
  RN50), decided from open_clip's pretrained registry, for every checkpoint format.
* ResNet-50: logits vs torchvision's own forward with its weights' transforms.
* ``evaluate``: the Parquet's top-1 vs a plain loop over the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

from clipcompare.classes import ClassSet
from clipcompare.data.synthetic import synthetic_image
from clipcompare.models.build_info import activation_names
from clipcompare.models.classifier import create_classifier
from clipcompare.models.clip import register_tiny_configs
from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from helpers import make_image_folder, save_openai_torchscript

register_tiny_configs()  # the references below build tiny-ViT / tiny-RN-quickgelu with open_clip directly

CLASSES = ClassSet(("dog", "cat", "bald eagle", "axolotl", "goldfish"))
CONFIGS = Path(__file__).parents[1] / "src/clipcompare/models/configs"
# Heads agree to 1e-6; logits are logit_scale x cosine, so the same 1e-6 on the cosines (float32
# rounding of the scale multiply alone is ~1e-6 at scale 14-100).
TOL = 1e-6
SINGLE = ["a photo of a {}."]


def _pil_images(n: int = 3, size: tuple[int, int] = (90, 70)) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [synthetic_image(rng, size) for _ in range(n)]


def _reference(ref: torch.nn.Module, arch: str, images: list[Image.Image], templates) -> tuple[torch.Tensor, ...]:
    """open_clip's own zero-shot head and logits: build_zero_shot_classifier + model(image)."""
    ref.eval()
    pre = image_transform_v2(PreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)
    with torch.no_grad():
        head = open_clip.build_zero_shot_classifier(
            ref, tokenizer=open_clip.get_tokenizer(arch), classnames=CLASSES.names, templates=templates,
            num_classes_per_batch=10, device="cpu",
        )
        image_features, _, scale = ref(torch.stack([pre(im) for im in images]), None)
    return head, scale * image_features @ head, scale


def _ours(spec: str, images: list[Image.Image], templates: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    clf = create_classifier(spec, templates=templates, cache_dir=None)
    with torch.no_grad():
        logits = clf.logits(torch.stack([clf.preprocess(im) for im in images]), CLASSES)
    return clf.head(CLASSES), logits, clf.loaded


def _assert_parity(ours_head, ours_logits, ref_head, ref_logits, scale) -> None:
    assert (ours_head - ref_head).abs().max().item() <= TOL
    assert (ours_logits - ref_logits).abs().max().item() <= TOL * float(scale)
    assert torch.equal(ours_logits.argmax(dim=-1), ref_logits.argmax(dim=-1))


def _save(model: torch.nn.Module, path: Path, fmt: str, image_size: int = 64) -> torch.nn.Module:
    """Write ``model`` in ``fmt``; return the model the file holds (fp16-rounded for TorchScript)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "torchscript":
        return save_openai_torchscript(model, path, image_size)
    else:  # .pt / .bin / .pth state dicts are all torch.save
        torch.save(state, path)
    return model


# ------------------------------------------------------------- released weights decide the activation


@pytest.fixture(scope="module")
def released_tiny_rn(tmp_path_factory):
    """``tiny-RN-plain``: the tiny RN with a plain (GELU) config, like open_clip's RN50.json, and
    released tags that all say QuickGELU, like RN50's openai/yfcc15m/cc12m: a toy-size RN50."""
    cfg = json.loads((CONFIGS / "tiny-RN-quickgelu.json").read_text())
    cfg.pop("quick_gelu")
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "tiny-RN-plain.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    tags = {t: open_clip.pretrained._pcfg(url=f"https://x.invalid/{t}.pt", quick_gelu=True) for t in ("openai", "yfcc")}
    list_tags, get_cfg = open_clip.list_pretrained_tags_by_model, open_clip.get_pretrained_cfg
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(open_clip, "list_pretrained_tags_by_model",
                   lambda m: list(tags) if m == "tiny-RN-plain" else list_tags(m))
        mp.setattr(open_clip, "get_pretrained_cfg", lambda m, t: tags.get(t, {}) if m == "tiny-RN-plain" else get_cfg(m, t))
        yield "tiny-RN-plain"


@pytest.mark.parametrize("fmt, name, templates", [
    ("pt", "w.pt", "single"), ("bin", "open_clip_pytorch_model.bin", "openai"),
    ("safetensors", "open_clip_model.safetensors", "single"), ("torchscript", "RN.pt", "single"),
])
def test_local_checkpoint_is_built_like_its_released_weights(tmp_path, released_tiny_rn, fmt, name, templates):
    """A QuickGELU-trained state dict given as clip:ARCH=FILE, in every format, equals open_clip's
    own QuickGELU model built from it: head and logits within 1e-6."""
    torch.manual_seed(3)
    ref = open_clip.create_model(released_tiny_rn, force_quick_gelu=True)
    ref = _save(ref, tmp_path / name, fmt)
    images = _pil_images()
    head, logits, loaded = _ours(f"clip:{released_tiny_rn}={tmp_path / name}", images, templates)
    assert loaded.build.activation == "QuickGELU" and "QuickGELU" in activation_names(loaded.model)
    ref_templates = open_clip.OPENAI_IMAGENET_TEMPLATES if templates == "openai" else SINGLE
    _assert_parity(head, logits, *_reference(ref, released_tiny_rn, images, ref_templates))


def test_spec_can_name_the_other_activation(tmp_path, released_tiny_rn):
    """clip:ARCH-gelu=FILE builds plain GELU (open_clip's config as is); its head then differs
    from the QuickGELU one by far more than the parity tolerance, which is what the test guards."""
    torch.manual_seed(3)
    ref = open_clip.create_model(released_tiny_rn)  # plain GELU
    path = tmp_path / "w.safetensors"
    _save(ref, path, "safetensors")
    images = _pil_images()
    head, logits, loaded = _ours(f"clip:{released_tiny_rn}-gelu={path}", images, "single")
    assert loaded.build.activation == "GELU" and loaded.build.activation_source == "spec suffix -gelu"
    ref_head, ref_logits, scale = _reference(ref, released_tiny_rn, images, SINGLE)
    _assert_parity(head, logits, ref_head, ref_logits, scale)
    quick_head, _, _ = _ours(f"clip:{released_tiny_rn}={path}", images, "single")
    assert (quick_head - ref_head).abs().max().item() > 1e-3


@pytest.mark.slow  # a full RN50
def test_full_size_rn50_state_dict_resolves_to_quickgelu(tmp_path):
    """The real name: clip:RN50=FILE with an open_clip-format RN50 state dict is QuickGELU, decided
    from open_clip's registry (openai, yfcc15m, cc12m), and agrees with RN50-quickgelu."""
    torch.manual_seed(0)
    ref = open_clip.create_model("RN50-quickgelu")
    path = tmp_path / "open_clip_model.safetensors"
    _save(ref, path, "safetensors")
    images = _pil_images(2, (240, 230))
    head, logits, loaded = _ours(f"clip:RN50={path}", images, "single")
    assert loaded.build.activation == "QuickGELU"
    assert "openai, yfcc15m, cc12m" in loaded.build.activation_source
    assert loaded.build.preprocess_source == "pretrained tag RN50@openai"
    _assert_parity(head, logits, *_reference(ref, "RN50", images, SINGLE))


# ------------------------------------------------------------------- RN and ViT towers vs open_clip


@pytest.mark.parametrize("arch, spec_arch, quick", [
    ("tiny-RN-quickgelu", "tiny-RN-quickgelu", True),
    ("tiny-ViT", "tiny-ViT", False),
    ("tiny-ViT", "tiny-ViT-quickgelu", True),  # the suffix forces QuickGELU on a config without it
])
def test_zero_shot_matches_open_clip(tmp_path, arch, spec_arch, quick):
    torch.manual_seed(5)
    ref = open_clip.create_model(arch, force_quick_gelu=quick)
    path = tmp_path / "weights.bin"
    _save(ref, path, "bin")
    images = _pil_images()
    head, logits, loaded = _ours(f"clip:{spec_arch}={path}", images, "single")
    assert loaded.build.activation == ("QuickGELU" if quick else "GELU")
    _assert_parity(head, logits, *_reference(ref, arch, images, SINGLE))


# ------------------------------------------------------------------------------ torchvision


@pytest.mark.slow  # full ResNet-50s at 224 pixels
def test_resnet50_matches_torchvision_with_its_weights_transforms(tmp_path):
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(0)
    ref = resnet50().eval()
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    images = _pil_images(2, (300, 260))
    pre = ResNet50_Weights.IMAGENET1K_V1.transforms()
    clf = create_classifier(f"resnet50={path}")
    classes = ClassSet.imagenet()
    with torch.no_grad():
        expected = ref(torch.stack([pre(im) for im in images]))
        ours = clf.logits(torch.stack([clf.preprocess(im) for im in images]), classes)
    assert torch.equal(ours, expected)
    build = clf.loaded.build
    assert (build.resize, build.crop, build.interpolation) == (256, 224, "bilinear")
    assert "IMAGENET1K_V1" in build.preprocess_source
    # a file of V2 weights says so, and gets V2's transforms (resize 232)
    v2 = load_model(parse_spec(f"resnet50:IMAGENET1K_V2={path}")).build
    assert (v2.resize, v2.crop) == (232, 224)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_top1_matches_a_plain_loop(tmp_path):
    """Every image's top-1 in the Parquet equals a loop over the folder with the reference
    models (open_clip / torchvision, their own transforms and zero-shot head)."""
    import pyarrow.parquet as pq
    from torchvision.models import ResNet18_Weights, resnet18

    from clipcompare.evaluation import EvaluateOptions, evaluate
    from clipcompare.evaluation.metrics import top_column

    wnids = ["n01440764", "n01443537", "n02102040", "n01530575"]
    root = make_image_folder(tmp_path / "data", wnids, per_class=4, size=(100, 80))
    torch.manual_seed(1)
    clip_ref = open_clip.create_model("tiny-ViT")
    clip_file = tmp_path / "clip.safetensors"
    _save(clip_ref, clip_file, "safetensors")
    tv_ref = resnet18().eval()
    tv_file = tmp_path / "r18.pth"
    torch.save(tv_ref.state_dict(), tv_file)

    specs = [f"clip:tiny-ViT={clip_file}", f"resnet18={tv_file}"]
    result = evaluate(specs, [f"folder={root}"], EvaluateOptions(out=tmp_path / "run", batch_size=5, progress=False,
                                                                 templates="single", cache_dir=tmp_path / "cache"))
    ds = result.datasets[0]
    table = pq.read_table(tmp_path / "run" / "predictions" / f"{ds.name}.parquet").to_pydict()
    names = [parse_spec(s).name for s in specs]

    # the plain loop: sorted folders, sorted files, PIL, each reference's own preprocessing
    classes = ds.classes
    clip_pre = image_transform_v2(PreprocessCfg(**clip_ref.visual.preprocess_cfg), is_train=False)
    with torch.no_grad():
        clip_head = open_clip.build_zero_shot_classifier(
            clip_ref.eval(), tokenizer=open_clip.get_tokenizer("tiny-ViT"), classnames=classes.names,
            templates=SINGLE, device="cpu")
    tv_pre = ResNet18_Weights.IMAGENET1K_V1.transforms()
    expected: dict[str, list[int]] = {n: [] for n in names}
    paths = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir()):
            paths.append(file.relative_to(root).as_posix())
            with Image.open(file) as im:
                img = im.convert("RGB")
            with torch.no_grad():
                feats, _, scale = clip_ref(clip_pre(img)[None], None)
                expected[names[0]].append(int((scale * feats @ clip_head).argmax()))
                logits = tv_ref(tv_pre(img)[None])[0, list(classes.imagenet_indices)]
                expected[names[1]].append(int(logits.argmax()))
    assert table["path"] == paths and len(paths) == 16
    # run.json tells the two builds apart without loading anything
    builds = {m["name"]: m["build"] for m in json.loads((tmp_path / "run" / "run.json").read_text())["models"]}
    assert builds[names[0]]["activation"] == "GELU" and builds[names[0]]["logit_scale"].startswith("learned")
    assert (builds[names[1]]["resize"], builds[names[1]]["crop"], builds[names[1]]["activation"]) == (256, 224, "ReLU")
    for name in names:
        assert [row[0] for row in table[top_column(name)]] == expected[name], name


# ------------------------------------------------------------------------- decisions from the registry


def test_disagreeing_releases_follow_the_default_tag_and_warn(caplog):
    """ViT-B-32's releases differ (openai: QuickGELU, laion2b: GELU): a bare file follows
    clip:ViT-B-32 (@openai) and says how to name it otherwise; naming the tag decides silently."""
    from clipcompare.models.clip import plan_clip_build

    with caplog.at_level("WARNING", logger="clipcompare.models.clip"):
        plan = plan_clip_build(parse_spec("clip:ViT-B-32=/w.bin"), "ViT-B-32", None, torchscript=False)
    assert plan.quick_gelu and "differ" in plan.activation_source
    assert len(caplog.records) == 1 and "clip:ViT-B-32@TAG=FILE" in caplog.text
    caplog.clear()
    laion = plan_clip_build(parse_spec("clip:ViT-B-32@laion2b_s34b_b79k=/w.bin"), "ViT-B-32", None, torchscript=False)
    assert not laion.quick_gelu and laion.preprocess_source == "pretrained tag ViT-B-32@laion2b_s34b_b79k"
    assert not caplog.records


@pytest.mark.parametrize("spec, message", [
    ("clip:RN50-gelu", "names the activation of a local file"),
    ("clip:RN50@nosuchtag=/w.bin", "no pretrained tag"),
    ("clip:RN50-swish=/w.bin", "unknown open_clip model"),
])
def test_activation_spec_errors(tmp_path, spec, message):
    from clipcompare.errors import UserError

    with pytest.raises(UserError, match=message):
        load_model(parse_spec(spec.replace("/w.bin", str(tmp_path / "w.bin"))), allow_random=True)


def test_weights_flag_keeps_a_named_tag():
    import argparse

    from clipcompare.cli.common import model_specs

    def specs(model: str):
        args = argparse.Namespace(models=[model], default_models=(), weights=Path("/w.bin"))
        return model_specs(args)[0]

    assert specs("clip:RN50@yfcc15m").tag == "yfcc15m"
    assert specs("resnet50:IMAGENET1K_V2").tag == "IMAGENET1K_V2"
    assert specs("resnet50").tag is None and specs("clip:RN50").tag is None


def test_resuming_with_another_build_is_refused(tmp_path):
    """A run started with one activation (say, before a fix) is not continued with another:
    the predictions would mix two models under one name."""
    from clipcompare.errors import UserError
    from clipcompare.evaluation import EvaluateOptions, evaluate

    root = make_image_folder(tmp_path / "data", ["cat", "dog"], per_class=1, size=(64, 64))
    opts = EvaluateOptions(out=tmp_path / "run", templates="single", allow_random=True, progress=False, device="cpu")
    evaluate(["clip:tiny-RN-quickgelu"], [f"folder={root}"], opts)
    evaluate(["clip:tiny-RN-quickgelu"], [f"folder={root}"], opts)  # same build: resumes
    run_json = tmp_path / "run" / "run.json"
    run = json.loads(run_json.read_text())
    run["models"][0]["build"]["activation"] = "GELU"
    run_json.write_text(json.dumps(run))
    with pytest.raises(UserError, match="build"):
        evaluate(["clip:tiny-RN-quickgelu"], [f"folder={root}"], opts)
