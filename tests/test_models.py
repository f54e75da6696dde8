"""Model specs, loading from every supported weights format, and the missing-weights error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.classifier import create_classifier
from clipcompare.models.loading import load_model
from clipcompare.models.spec import ModelSpec, parse_spec
from helpers import save_openai_torchscript


@pytest.mark.parametrize(
    "text, expected",
    [
        ("resnet50", ModelSpec("torchvision", "resnet50", "IMAGENET1K_V1")),
        ("resnet50:IMAGENET1K_V2", ModelSpec("torchvision", "resnet50", "IMAGENET1K_V2")),
        ("resnet50=/w/r.pth", ModelSpec("torchvision", "resnet50", None, Path("/w/r.pth"))),
        ("clip:RN50", ModelSpec("clip", "RN50", None)),
        ("clip:ViT-B-32", ModelSpec("clip", "ViT-B-32", None)),
        ("clip:ViT-B-32@laion2b_s34b_b79k", ModelSpec("clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("clip:RN50=/path/RN50.pt", ModelSpec("clip", "RN50", None, Path("/path/RN50.pt"))),
        # a tag with a file: the file holds that tag's weights
        ("clip:RN50@yfcc15m=/p/w.bin", ModelSpec("clip", "RN50", "yfcc15m", Path("/p/w.bin"))),
        ("clip:RN50-gelu=/p/w.bin", ModelSpec("clip", "RN50-gelu", None, Path("/p/w.bin"))),
        ("resnet50:IMAGENET1K_V2=/w/r.pth", ModelSpec("torchvision", "resnet50", "IMAGENET1K_V2", Path("/w/r.pth"))),
    ],
)
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize("bad, says", [
    ("", "empty model spec"),
    ("clip:", "missing architecture after 'clip:'"),
    ("resnet50=", "nothing after '='"),
    ("clip:RN50@open ai=/x.pt", "'open ai' is not a valid model or weights name"),
    ("res net", "'res net' is not a valid model or weights name"),
])
def test_parse_spec_rejects(bad, says):
    with pytest.raises(UserError, match=re.escape(says)):
        parse_spec(bad)


def test_spec_names():
    assert parse_spec("resnet50").name == "resnet50:IMAGENET1K_V1"
    assert parse_spec("clip:RN50@yfcc15m=/p/w.bin").name == "clip:RN50@yfcc15m=w.bin"
    assert parse_spec("resnet50:IMAGENET1K_V2=/p/r.pth").name == "resnet50:IMAGENET1K_V2=r.pth"


def test_unknown_models_and_tags_are_user_errors():
    for text, says in [("notamodel", "unknown torchvision classification model 'notamodel'"),
                       ("resnet50:IMAGENET9K", "resnet50 has no weights 'IMAGENET9K'"),
                       ("clip:NoSuchCLIP", "unknown open_clip model 'NoSuchCLIP'"),
                       ("clip:RN50@nosuchtag", "RN50 has no pretrained tag 'nosuchtag'")]:
        with pytest.raises(UserError, match=re.escape(says)):
            load_model(parse_spec(text), allow_random=True)


def _images(n=2, size=224):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


def test_torchvision_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    ref = load_model(parse_spec("resnet18"), allow_random=True).model
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_model(parse_spec(f"resnet18={path}"))
    assert loaded.pretrained and loaded.weights_file == str(path)
    x = _images()
    with torch.no_grad():
        assert torch.equal(ref(x), loaded.model(x))
    # DDP-style "module." prefixes and {"state_dict": ...} wrappers load too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, wrapped)
    with torch.no_grad():
        assert torch.equal(ref(x), load_model(parse_spec(f"resnet18={wrapped}")).model(x))


@pytest.mark.slow  # builds a full ResNet-50
def test_torchvision_preprocessing_follows_weights():
    v1 = load_model(parse_spec("resnet18:IMAGENET1K_V1"), allow_random=True).preprocess
    v2 = load_model(parse_spec("resnet50:IMAGENET1K_V2"), allow_random=True).preprocess
    assert (v1.resize_size, v1.crop_size) == ([256], [224])
    assert (v2.resize_size, v2.crop_size) == ([232], [224])


def test_mismatched_state_dict_is_a_user_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(load_model(parse_spec("resnet18"), allow_random=True).model.state_dict(), path)
    with pytest.raises(UserError, match="does not match"):
        load_model(parse_spec(f"resnet34={path}"))


def _clip_outputs(model, size=64):
    tok = open_clip.get_tokenizer("RN50")(["a photo of a dog.", "a cat"])
    with torch.no_grad():
        return model.encode_image(_images(2, size)), model.encode_text(tok)


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "torchscript"])
def test_clip_checkpoint_roundtrip(tmp_path, tiny_clip, fmt):
    ref = tiny_clip.model
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if fmt == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif fmt == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "tiny.pt"
        ref = save_openai_torchscript(ref, path)
    loaded = load_model(parse_spec(f"clip:tiny-RN-quickgelu={path}"))
    assert loaded.pretrained
    for a, b in zip(_clip_outputs(ref), _clip_outputs(loaded.model)):
        assert torch.equal(a, b)


def test_openai_torchscript_forces_quickgelu(tmp_path, tiny_clip):
    """A plain (GELU) config + an OpenAI TorchScript file must come out with QuickGELU."""
    cfg = json.loads((Path(__file__).parents[1] / "src/clipcompare/models/configs/tiny-RN-quickgelu.json").read_text())
    cfg.pop("quick_gelu")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-RN-gelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    path = tmp_path / "openai.pt"
    ref = save_openai_torchscript(tiny_clip.model, path)
    loaded = load_model(parse_spec(f"clip:tiny-RN-gelu={path}"))
    acts = {type(m).__name__ for m in loaded.model.modules()}
    assert "QuickGELU" in acts
    for a, b in zip(_clip_outputs(ref), _clip_outputs(loaded.model)):
        assert torch.equal(a, b)


@pytest.mark.slow  # builds a full RN50
def test_openai_tag_is_loaded_with_quickgelu():
    loaded = load_model(parse_spec("clip:RN50"), allow_random=True)
    assert not loaded.pretrained and loaded.spec.name == "clip:RN50@openai"  # the default tag is named
    assert any(type(m).__name__ == "QuickGELU" for m in loaded.model.modules())
    # the tag's preprocessing: OpenAI mean/std, bicubic
    norm = loaded.preprocess.transforms[-1]
    assert tuple(round(x, 4) for x in norm.mean) == (0.4815, 0.4578, 0.4082)


@pytest.mark.parametrize(
    "spec, filename",
    [pytest.param("resnet50", "resnet50-0676ba61.pth", marks=pytest.mark.slow),  # the model is built first
     pytest.param("resnet50:IMAGENET1K_V2", "resnet50-11ad3fa6.pth", marks=pytest.mark.slow),
     ("clip:RN50", "RN50.pt")],
)
def test_missing_weights_message(spec, filename):
    with pytest.raises(MissingWeightsError, match=re.escape(filename)) as err:
        load_model(parse_spec(spec))
    msg = str(err.value)
    assert filename in msg and "put it at" in msg and "\n" not in msg


def test_missing_weights_cli_exit_code(tmp_path, capsys):
    from helpers import make_image

    img = make_image(tmp_path / "x.jpg")
    assert main(["classify", str(img), "--model", "clip:RN50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RN50.pt" in err[0] and "Traceback" not in err[0]


def test_cached_weights_are_found_without_network(tmp_path, tiny_clip, monkeypatch):
    """A file put where the message says (~/.cache/clip) is picked up for the tag."""
    import os

    import clipcompare.models.loading as loading

    cache = Path(os.path.expanduser("~/.cache/clip"))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_clip.model.state_dict(), cache / "tiny.pt")
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"url": "https://x.invalid/tiny.pt", "quick_gelu": True})
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["mytag"])
    loaded = loading.load_model(parse_spec("clip:tiny-RN-quickgelu@mytag"))
    assert loaded.pretrained and loaded.weights_file == str(cache / "tiny.pt")


def test_weights_flag_applies_to_single_model(tmp_path, capsys):
    """Everything else in the command is valid (a real image, an existing weights file), so only the rule
    can refuse it; its own message says so."""
    from helpers import make_image

    img = make_image(tmp_path / "x.jpg")
    weights = tmp_path / "w.pth"
    torch.save(create_classifier("resnet18", allow_random=True).model.state_dict(), weights)
    argv = ["classify", str(img), "--allow-random", "--model", "resnet18", "--model", "clip:tiny-RN-quickgelu"]
    assert main([*argv, "--weights", str(weights)]) == 2
    assert capsys.readouterr().err.splitlines() == ["clipcompare: error: --weights needs exactly one --model"]
    assert main([*argv[:-2], "--weights", str(weights)]) == 0  # one --model: the same command runs
    assert "resnet18=w.pth" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "tag"), [("resnet50", None), ("resnet50:IMAGENET1K_V2", "IMAGENET1K_V2"),
                                           ("clip:RN50", None), ("clip:RN50@yfcc15m", "yfcc15m"),
                                           ("clip:RN50-gelu", None)])
def test_weights_flag_means_name_equals_file(text, tag, tmp_path):
    """--model NAME --weights FILE is NAME=FILE: a tag written in NAME is kept, none is added."""
    import argparse

    from clipcompare.cli.common import model_specs

    file = tmp_path / "w.pt"
    (spec,) = model_specs(argparse.Namespace(models=[text], default_models=(), weights=file))
    assert spec == parse_spec(f"{text}={file}") and spec.tag == tag and spec.path == file
    with pytest.raises(UserError, match="names its weights file already"):
        model_specs(argparse.Namespace(models=[f"{text}={file}"], default_models=(), weights=file))


def test_supervised_classifier_slices_imagenet_logits():
    torch.manual_seed(0)
    clf = create_classifier("resnet18", allow_random=True)
    x = _images(2)
    classes = ClassSet.imagenet([1, 5, 999])
    with torch.no_grad():
        full = clf.model(x)
        assert torch.equal(clf.logits(x, classes), full[:, [1, 5, 999]])
    assert clf.supports(ClassSet(("dog", "cat"))) is not None


def test_classset_from_labels():
    cs = ClassSet.from_labels(["bald eagle", "leopard", "n02102040"])
    assert cs.imagenet_indices == (22, 288, 217)
    assert cs.names[2] == "English Springer Spaniel"
    assert ClassSet.from_labels(["crane", "dog"]).imagenet_indices is None  # 'crane' is ambiguous
    assert ClassSet.from_labels(["crane bird", "construction crane"]).imagenet_indices == (134, 517)


@pytest.mark.parametrize("text", [
    "resnet50", "resnet50:IMAGENET1K_V2", "resnet50=w.pth", "resnet50:IMAGENET1K_V2=w.pth", "clip:RN50",
    "clip:ViT-B-32@laion2b_s34b_b79k", "clip:RN50=w.pt", "clip:ViT-B-32@laion2b_s34b_b79k=w.pt",
    "clip:hf-hub:someorg/repo", "clip:local-dir:folder", "trained=run/checkpoints/best.pt", "timm:resnet50",
    "timm:resnet50.a1_in1k", "timm:resnet50.a1_in1k=w.pth", "hf:someorg/repo", "hf:folder",
])
def test_spec_text_parses_back_from_anywhere(text, tmp_path, monkeypatch):
    """run.json's "spec": what loads the model again (absolute paths), the display name staying the column."""
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(text)
    stored = spec.text  # as evaluate writes it, in the working directory the spec was typed in
    monkeypatch.chdir("/")
    again = parse_spec(stored)
    assert again.name == spec.name
    resolved = ModelSpec(spec.family, spec.arch, spec.tag, spec.path and (tmp_path / spec.path).resolve())
    assert again == resolved
