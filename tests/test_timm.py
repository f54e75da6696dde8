"""``timm:ARCH[.TAG]``: parity with timm's own eval path, the offline Hugging Face cache, bad input.

The model is ``resnet18.a1_in1k`` (trained at 224, evaluated by timm at 288 with crop_pct 1.0), with
random weights saved as a real state dict in a fake Hugging Face cache (and as ``=FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.data.synthetic import synthetic_image
from clipcompare.evaluation.metrics import prob_column, top_column
from clipcompare.imagenet.classes import IMAGENET_R_INDICES, imagenet_classes
from clipcompare.models.spec import parse_spec
from helpers import fake_hf_cache, make_image, make_image_folder

NAME = "resnet18.a1_in1k"
SPEC = f"timm:{NAME}"
REPO = f"timm/{NAME}"
WNIDS = ["n01440764", "n01443537", "n02102040"]


def _reference_model() -> torch.nn.Module:
    """timm's own model with random but well-spread weights (BN scales not zero, so every block counts)."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
        # a random net maps every image near one direction: centre the pooled features (on generated
        # images like the tests') and spread the logits, so that each image gets its own top 5
        transform = create_transform(**resolve_model_data_config(model, use_test_size=True))
        x = torch.stack([transform(synthetic_image(np.random.default_rng(k), (160, 120))) for k in range(8)])
        mean = model.forward_head(model.forward_features(x), pre_logits=True).mean(0)
        model.fc.weight.mul_(10)
        model.fc.bias.copy_(-model.fc.weight @ mean)
    return model


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return _reference_model()


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$HF_HOME`` whose ``hub/`` is the cache huggingface_hub reads; offline."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def _safetensors(model: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def cached(hf_home, reference, tmp_path) -> Path:
    """The reference weights as ``model.safetensors`` of ``timm/resnet18.a1_in1k`` in the fake cache."""
    data = _safetensors(reference, tmp_path / "w" / "model.safetensors").read_bytes()
    return fake_hf_cache(hf_home / "hub", REPO, {"model.safetensors": data}) / "model.safetensors"


@pytest.fixture
def no_http(monkeypatch):
    """Any attempt of huggingface_hub or timm to fetch fails the test; records whether the hub was
    offline while the cache was looked up."""
    seen: list[bool] = []
    real = huggingface_hub.try_to_load_from_cache

    def lookup(*args, **kwargs):
        seen.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", refuse)
    monkeypatch.setattr(timm.models, "load_pretrained", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return seen


def _images(folder: Path) -> list[Path]:
    # sizes on both sides of 288, portrait and landscape: the resize and the crop both matter
    sizes = [(320, 240), (200, 300), (97, 131), (288, 288)]
    return [make_image(folder / f"img{k}.png", size=s, seed=k) for k, s in enumerate(sizes)]


def _timm_top5(model: torch.nn.Module, paths: list[Path]) -> list[tuple[list[int], list[float]]]:
    """timm's validate.py path, one image at a time: its data config at the test size, its transform."""
    config = resolve_model_data_config(model, use_test_size=True)
    assert config["input_size"] == (3, 288, 288) and config["crop_pct"] == 1.0  # test size != train size
    transform = create_transform(**config)
    out = []
    with torch.no_grad():
        for p in paths:
            x = transform(Image.open(p).convert("RGB")).unsqueeze(0)
            probs, idx = model(x).softmax(-1).topk(5)
            out.append((idx[0].tolist(), probs[0].tolist()))
    return out


def _classify_json(capsys, paths: list[Path], spec: str) -> dict:
    capsys.readouterr()
    assert main(["classify", "--model", spec, "--imagenet", "--top", "5", "--json", *map(str, paths)]) == 0
    return json.loads(capsys.readouterr().out)


def _check_classify(doc: dict, paths: list[Path], expected) -> None:
    names = ClassSet.imagenet().names
    assert len(doc["results"]) == len(paths)
    for res, (idx, probs) in zip(doc["results"], expected):
        (preds,) = res["predictions"].values()
        assert [p["label"] for p in preds] == [names[i] for i in idx]
        np.testing.assert_allclose([p["prob"] for p in preds], probs, atol=1e-5, rtol=0)


def test_spec_grammar():
    spec = parse_spec("timm:resnet50.a1_in1k")
    assert (spec.family, spec.arch, spec.tag, spec.path, spec.name) == ("timm", "resnet50", "a1_in1k", None,
                                                                        "timm:resnet50.a1_in1k")
    assert parse_spec("timm:resnet50").name == "timm:resnet50"
    local = parse_spec("timm:resnet50.a1_in1k=/tmp/w.safetensors")
    assert local.path == Path("/tmp/w.safetensors") and local.name == "timm:resnet50.a1_in1k=w.safetensors"


def test_classify_equals_timm_from_the_hf_cache(cached, no_http, reference, tmp_path, capsys):
    paths = _images(tmp_path / "imgs")
    expected = _timm_top5(reference, paths)
    _check_classify(_classify_json(capsys, paths, SPEC), paths, expected)
    # no tag: timm's default tag for resnet18 is a1_in1k, the same cached file and transform
    _check_classify(_classify_json(capsys, paths, "timm:resnet18"), paths, expected)
    assert no_http and all(no_http)  # the cache was looked up, with huggingface_hub offline


def test_classify_equals_timm_from_a_file(hf_home, reference, tmp_path, capsys):
    paths = _images(tmp_path / "imgs")
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    expected = _timm_top5(reference, paths)
    _check_classify(_classify_json(capsys, paths, f"{SPEC}={tmp_path / 'r18.pth'}"), paths, expected)
    st = _safetensors(reference, tmp_path / "r18.safetensors")
    _check_classify(_classify_json(capsys, paths, f"{SPEC}={st}"), paths, expected)


def test_load_records_timm_eval_transform(cached, no_http):
    from clipcompare.models.loading import load_model

    loaded = load_model(parse_spec(SPEC))
    b = loaded.build
    assert loaded.pretrained and loaded.weights_file == str(cached)
    assert (b.resize, b.crop, b.interpolation, b.resize_mode) == (288, 288, "bicubic", "shortest")
    assert b.mean == pytest.approx((0.485, 0.456, 0.406)) and b.std == pytest.approx((0.229, 0.224, 0.225))
    assert "crop_pct 1.0" in b.preprocess_source and "use_test_size=True" in b.preprocess_source
    # the evaluation's fast path takes exactly these steps from the transform
    from clipcompare.data.tensor_preprocess import split_preprocess

    split = split_preprocess(loaded.preprocess)
    assert split is not None
    img = Image.open(make_image(Path(cached).parents[4] / "x.png", size=(211, 157))).convert("RGB")
    whole = loaded.preprocess(img)
    assert torch.equal(split.finish(split(img).unsqueeze(0))[0], whole)


def test_evaluate_equals_timm(cached, no_http, reference, tmp_path):
    data = make_image_folder(tmp_path / "in", WNIDS, per_class=2, size=(150, 110))
    r_data = make_image_folder(tmp_path / "r", [imagenet_classes()[i].wnid for i in IMAGENET_R_INDICES[:2]],
                               per_class=1, size=(130, 170))
    out = tmp_path / "run"
    assert main(["evaluate", "-m", SPEC, "-d", f"imagenet={data}", "-d", f"imagenet-r={r_data}", "--out", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "4"]) == 0
    df = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    paths = [data / p for p in df["path"]]
    expected = _timm_top5(reference, paths)
    assert len({tuple(idx) for idx, _ in expected}) == len(paths)  # each image its own top 5
    for top, prob, (idx, probs) in zip(df[top_column(SPEC)], df[prob_column(SPEC)], expected):
        assert list(top) == idx
        np.testing.assert_allclose(list(prob), probs, atol=1e-5, rtol=0)
    # ImageNet-R: the scores restricted to its 200 classes (softmax over them), indices into them
    df = pd.read_parquet(out / "predictions" / "imagenet-r.parquet")
    transform = create_transform(**resolve_model_data_config(reference, use_test_size=True))
    assert len(df) == 2
    with torch.no_grad():
        for path, top, prob in zip(df["path"], df[top_column(SPEC)], df[prob_column(SPEC)]):
            x = transform(Image.open(r_data / path).convert("RGB")).unsqueeze(0)
            probs, idx = reference(x)[:, list(IMAGENET_R_INDICES)].softmax(-1).topk(5)
            assert list(top) == idx[0].tolist()
            np.testing.assert_allclose(list(prob), probs[0].tolist(), atol=1e-5, rtol=0)
    run = json.loads((out / "run.json").read_text())
    (model,) = run["models"]
    assert model["family"] == "timm" and model["build"]["crop"] == 288 and model["build"]["resize"] == 288


def test_inspect_counts_exactly(hf_home, capsys):
    assert main(["inspect", "--model", SPEC, "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)["models"]
    expected = sum(p.numel() for p in timm.create_model(NAME, pretrained=False).parameters())
    assert m["params_total"] == m["params_image"] == expected
    assert [s["name"] for s in m["stages"]][:5] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert sum(s["params"] for s in m["stages"]) == expected
    assert m["image_size"] == 288  # what timm evaluates it at


@pytest.mark.parametrize("spec, words", [
    ("timm:resnt18", ["unknown timm model 'resnt18'", "closest:", "resnet18"]),
    ("timm:resnet18.not_a_tag", ["no pretrained tag 'not_a_tag'", "a1_in1k", "tv_in1k"]),
    (SPEC, ["not found", "model.safetensors", REPO, "--allow-random"]),
])
def test_bad_input_is_one_line(spec, words, hf_home, no_http, tmp_path, capsys):
    img = make_image(tmp_path / "a.png")
    assert main(["classify", "--model", spec, str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("clipcompare: error:")
    for w in words:
        assert w in err


def test_garbage_or_mismatched_file_is_one_line(hf_home, tmp_path, capsys):
    img = make_image(tmp_path / "a.png")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file at all" * 10)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), other)
    missing = tmp_path / "absent.pth"
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, words in ((junk, "cannot read weights file"), (other, "does not match"), (missing, "not found"),
                        (empty, "the file is empty")):
        assert main(["classify", "--model", f"{SPEC}={path}", str(img)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(path) in err


def test_allow_random_builds_the_architecture(hf_home, no_http, tmp_path, capsys):
    img = make_image(tmp_path / "a.png")
    assert main(["classify", "--model", SPEC, "--allow-random", "--json", str(img)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any("random weights" in n for n in doc["notes"])


def test_train_image_tower_takes_the_pooled_features_and_reloads(hf_home, cached, reference, tmp_path):
    from clipcompare.models.contrastive import load_trained, save_record
    from clipcompare.train.config import TrainConfig
    from clipcompare.train.model import build_model, parameter_counts

    config = TrainConfig(out=str(tmp_path / "run"), image_model=SPEC, text_model="clip:tiny-ViT", image_size=64,
                         allow_random=True, workers=0)
    built = build_model(config)
    model = built.model.eval()
    assert built.random_weights == ["clip:tiny-ViT"]  # the timm weights came from the cache
    assert model.architecture.image_arch == "timm:resnet18"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert torch.allclose(model.visual.backbone(x), expected, atol=1e-5)
        assert model.visual.head[0].in_features == 512
    fc = sum(p.numel() for p in reference.fc.parameters())
    assert parameter_counts(model)["backbone"] == sum(p.numel() for p in reference.parameters()) - fc
    torch.save(save_record(model), tmp_path / "ckpt.pt")
    again = load_trained(tmp_path / "ckpt.pt")
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), model.encode_image(x))


def test_robustness_map_shows_a_timm_run_next_to_its_published_row(tmp_path, capsys):
    from clipcompare.robustness.reference import load_reference, published_row

    assert published_row(SPEC, 288) == f"{SPEC}@288"  # evaluated at timm's test size: that row
    assert published_row(SPEC, 224) == published_row(SPEC) == SPEC  # the primary row
    assert published_row("timm:resnet18", 288) == f"{SPEC}@288"  # no tag: timm's default one
    assert published_row(f"{SPEC}=w.pth") is None and published_row("resnet50:IMAGENET1K_V1") is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "settings": {"datasets": [{"name": "imagenet", "kind": "imagenet"}]}, "status": "complete",
        "models": [{"name": SPEC, "family": "timm", "pretrained": True, "build": {"crop": 288}}]}))
    (run / "metrics.json").write_text(json.dumps({"datasets": {
        "imagenet": {"kind": "imagenet", "models": {SPEC: {"top1": 0.7}}},
        "imagenet-v2": {"kind": "imagenet-v2", "models": {SPEC: {"top1": 0.6}}}}}))
    assert main(["robustness", str(run), "--bootstrap", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mine = next(i for i, line in enumerate(lines) if line.startswith(f"{SPEC} "))
    published = lines[mine + 1].split()
    assert published[0] == f"{SPEC}@288" and published[1] == "standard"
    ref = load_reference().set_index("model").loc[f"{SPEC}@288"]
    assert published[2] == f"{ref['imagenet']:.1f}"


def test_inspect_splits_timm_stages(hf_home, capsys):
    """timm's ``stages`` (ConvNeXt) one row each; the rows sum to timm's own count."""
    assert main(["inspect", "--model", "timm:convnext_atto", "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)["models"]
    model = timm.create_model("convnext_atto", pretrained=False)
    assert [s["name"] for s in m["stages"]] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [s["params"] for s in m["stages"][1:5]] == [sum(p.numel() for p in s.parameters()) for s in model.stages]
    assert sum(s["params"] for s in m["stages"]) == m["params_total"] == sum(p.numel() for p in model.parameters())
    assert m["stages"][4]["output_shape"] == [1, model.num_features, 9, 9]  # 288 test size / 32


@pytest.mark.parametrize("name, mode", [("convnext_tiny.in12k_ft_in1k_384", "squash"),
                                        ("deepseek_vit_412m.deepseek_v4_1_flash", "longest")])
def test_other_crop_modes_are_recorded_and_reproduced(name, mode, tmp_path):
    """``squash`` is resized to the square (the fast path takes it, bitwise); ``border`` pads, which the
    fast path has no step for, so evaluate runs timm's transform itself per image."""
    from timm.models import get_pretrained_cfg

    from clipcompare.data.tensor_preprocess import split_preprocess
    from clipcompare.models.timm import eval_transform

    stub = torch.nn.Linear(1, 1)  # the transform depends on the pretrained config alone
    stub.pretrained_cfg = get_pretrained_cfg(name).to_dict()
    transform, build = eval_transform(stub, name, parse_spec(f"timm:{name}"))
    cfg = resolve_model_data_config(stub, use_test_size=True)
    assert build.resize_mode == mode and build.crop == cfg["input_size"][-1]
    img = Image.open(make_image(tmp_path / "a.png", size=(301, 187))).convert("RGB")
    split = split_preprocess(transform)
    if mode == "squash":
        assert split is not None and torch.equal(split.finish(split(img).unsqueeze(0))[0], transform(img))
    else:
        assert split is None
    assert torch.equal(transform(img), create_transform(**cfg)(img))


def test_weights_go_through_timms_own_loader(hf_home, no_http, tmp_path):
    """timm's filter_fn applies: a ViT checkpoint of another grid (384: 577 positions) loads into the 224
    model with its position embedding resampled, as timm.create_model does; a strict load would refuse it."""
    from clipcompare.models.loading import load_model

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_384", pretrained=False)
    path = tmp_path / "vit384.pth"
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, path)  # a training checkpoint, as timm writes
    loaded = load_model(parse_spec(f"timm:{name}={path}"))
    expected = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).state_dict()
    got = loaded.model.state_dict()
    assert got["pos_embed"].shape == (1, 197, 192) != other.state_dict()["pos_embed"].shape
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert loaded.pretrained and loaded.weights_file == str(path)
