"""open_clip's ``hf-hub:`` and ``local-dir:`` model names as clipcompare specs (clip:hf-hub:..., clip:local-dir:...).

A tiny random CLIP is written in open_clip's own folder format (open_clip_config.json + weights), as a
plain folder and as a Hugging Face cache entry, and must come back exactly as open_clip itself builds it.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.data.decode import load_rgb
from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.classifier import create_classifier
from clipcompare.models.clip import register_tiny_configs
from clipcompare.models.loading import load_model
from clipcompare.models.spec import ModelSpec, parse_spec
from helpers import fake_hf_cache, make_image

TINY_CONFIG = Path(__file__).parents[1] / "src/clipcompare/models/configs/tiny-RN-quickgelu.json"
# none of these is open_clip's default (OpenAI mean/std, bicubic, shortest): seeing them proves the file was read
PREPROCESS_CFG = {"size": 64, "mean": [0.25, 0.5, 0.75], "std": [0.125, 0.25, 0.5],
                  "interpolation": "bilinear", "resize_mode": "squash"}
REPO = "someorg/tiny-clip"


def _tiny_state(seed: int = 1) -> dict[str, torch.Tensor]:
    register_tiny_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-RN-quickgelu")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _write_model_files(folder: Path, state: dict[str, torch.Tensor] | None, fmt: str = "safetensors") -> Path:
    """open_clip's folder format: open_clip_config.json (model_cfg + preprocess_cfg) and the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": json.loads(TINY_CONFIG.read_text()), "preprocess_cfg": PREPROCESS_CFG}
    assert config["model_cfg"]["quick_gelu"] is True
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if state is not None:
        if fmt == "safetensors":
            save_file(state, str(folder / "open_clip_model.safetensors"))
        else:
            torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that both huggingface_hub (read at import) and a child process use; offline."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def _cache_repo(hub: Path, state: dict[str, torch.Tensor] | None) -> str:
    src = _write_model_files(hub.parent / "src", state)
    return fake_hf_cache(hub, REPO, {p.name: p.read_bytes() for p in src.iterdir()}).name  # the revision


def _logits(model: torch.nn.Module, preprocess, image: Path) -> torch.Tensor:
    """CLIP's image-text logits for one generated image against two captions."""
    text = open_clip.get_tokenizer("RN50")(["a photo of a dog.", "a cat"])
    x = preprocess(load_rgb(image)).unsqueeze(0)
    with torch.no_grad():
        img, txt, scale = model(x, text)
    return scale * img @ txt.T


def _assert_built_from_config(loaded, state: dict[str, torch.Tensor]) -> None:
    got = loaded.model.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)
    b = loaded.build
    assert b.activation == "QuickGELU" and "quick_gelu true" in b.activation_source
    assert (b.resize, b.crop, b.interpolation, b.resize_mode) == (64, 64, "bilinear", "squash")
    assert b.mean == tuple(PREPROCESS_CFG["mean"]) and b.std == tuple(PREPROCESS_CFG["std"])
    assert "open_clip_config.json" in b.preprocess_source
    norm = loaded.preprocess.transforms[-1]
    assert list(norm.mean) == PREPROCESS_CFG["mean"] and list(norm.std) == PREPROCESS_CFG["std"]


# --------------------------------------------------------------------------- parsing


def test_parse_hf_hub():
    spec = parse_spec("clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert spec == ModelSpec("clip", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert (spec.schema, spec.source) == ("hf-hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert spec.name == "clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert parse_spec("clip:RN50").schema is None


def test_parse_local_dir_resolves_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec("clip:local-dir:models/my-clip")
    assert spec == ModelSpec("clip", f"local-dir:{tmp_path.resolve() / 'models/my-clip'}")
    assert spec.source == str(tmp_path.resolve() / "models/my-clip")
    assert spec.name == "clip:local-dir:my-clip"  # stable whatever the working directory
    assert parse_spec(f"clip:local-dir:{tmp_path}/models/my-clip") == spec
    # '@' and '=' belong to the path when a folder of that name exists
    (tmp_path / "clip@v2=final").mkdir()
    assert parse_spec("clip:local-dir:clip@v2=final").source == str(tmp_path.resolve() / "clip@v2=final")


@pytest.mark.parametrize("bad, says", [
    ("clip:hf-hub:", "nothing after 'hf-hub:'"),
    ("clip:local-dir:", "nothing after 'local-dir:'"),
    ("clip:hf-hub:org/repo@main", "takes no @TAG or =FILE"),
    ("clip:hf-hub:org/repo=/w/x.safetensors", "takes no @TAG or =FILE"),
    ("clip:local-dir:/no/such/folder=/w/x.pt", "takes no @TAG or =FILE"),
    ("clip:local-dir:/no/such/folder@tag", "takes no @TAG or =FILE"),
    ("clip:hf-hub:just-a-name", "not a Hugging Face repo id"),
    ("clip:hf-hub:a/b/c", "not a Hugging Face repo id"),
    ("clip:hf-hub:-org/repo.", "not a Hugging Face repo id"),
    ("clip:hf-hub:org/re--po", "not a Hugging Face repo id"),
])
def test_parse_refusals_are_one_line(bad, says):
    with pytest.raises(UserError, match=re.escape(says)) as err:
        parse_spec(bad)
    assert says in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- local-dir


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_local_dir_is_built_as_open_clip_builds_it(tmp_path, fmt):
    state = _tiny_state()
    folder = _write_model_files(tmp_path / "my-clip", state, fmt)
    loaded = load_model(parse_spec(f"clip:local-dir:{folder}"))
    assert loaded.pretrained and loaded.missing_weights is None
    assert Path(loaded.weights_file).parent == folder and loaded.weights_file.endswith(fmt)
    assert loaded.spec.name == "clip:local-dir:my-clip"
    _assert_built_from_config(loaded, state)
    assert loaded.build.architecture == f"open_clip local-dir:{folder}"
    ref, _, ref_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    image = make_image(tmp_path / "x.jpg", size=(96, 72), seed=3)
    assert torch.equal(_logits(loaded.model, loaded.preprocess, image), _logits(ref.eval(), ref_preprocess, image))


def test_local_dir_zero_shot_equals_the_same_weights_as_a_file(tmp_path):
    """The zero-shot head and logits of clip:local-dir:DIR are those of clip:tiny-RN-quickgelu=DIR/weights."""
    folder = _write_model_files(tmp_path / "m", _tiny_state())
    classes = ClassSet.from_labels(["dog", "cat", "bald eagle"])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    by_dir = create_classifier(f"clip:local-dir:{folder}", templates="single")
    by_file = create_classifier(f"clip:tiny-RN-quickgelu={folder / 'open_clip_model.safetensors'}", templates="single")
    with torch.no_grad():
        assert torch.equal(by_dir.logits(x, classes), by_file.logits(x, classes))


def test_local_dir_through_inspect_and_classify(tmp_path, capsys):
    folder = _write_model_files(tmp_path / "my-clip", _tiny_state())
    spec = f"clip:local-dir:{folder}"
    assert main(["inspect", "-m", spec]) == 0
    out = capsys.readouterr().out
    assert "clip:local-dir:my-clip" in out and "QuickGELU" in out and "mean (0.25, 0.5, 0.75)" in out

    image = make_image(tmp_path / "dog.jpg", seed=5)
    assert main(["classify", str(image), "-m", spec, "--labels", "dog,cat", "--templates", "single", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["results"][0]["predictions"]["clip:local-dir:my-clip"]
    # reference: open_clip's own preprocessing of the folder, the same weights loaded as a file
    _, _, ref_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    ref = create_classifier(f"clip:tiny-RN-quickgelu={folder / 'open_clip_model.safetensors'}", templates="single")
    with torch.no_grad():
        probs = ref.logits(ref_preprocess(load_rgb(image)).unsqueeze(0), ClassSet.from_labels(["dog", "cat"]))
    probs = probs.softmax(-1)[0]
    assert {p["label"]: p["prob"] for p in preds} == pytest.approx(
        {"dog": probs[0].item(), "cat": probs[1].item()}, abs=1e-6)


def test_local_dir_missing_pieces_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="folder not found") as err:
        load_model(parse_spec(f"clip:local-dir:{tmp_path / 'nowhere'}"))
    assert str(tmp_path / "nowhere") in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    for allow_random in (False, True):  # random weights still need the config
        with pytest.raises(MissingWeightsError, match="has no open_clip_config.json") as err:
            load_model(parse_spec(f"clip:local-dir:{empty}"), allow_random=allow_random)
        assert ("--allow-random cannot stand in" in str(err.value)) == allow_random

    config_only = _write_model_files(tmp_path / "config-only", None)
    with pytest.raises(MissingWeightsError, match="open_clip_model.safetensors") as err:
        load_model(parse_spec(f"clip:local-dir:{config_only}"))
    msg = str(err.value)
    assert "open_clip_model.safetensors" in msg and "open_clip_pytorch_model.bin" in msg and "\n" not in msg

    image = make_image(tmp_path / "x.jpg")
    assert main(["classify", str(image), "-m", f"clip:local-dir:{config_only}", "--labels", "dog,cat"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "open_clip_model.safetensors" in err_lines[0]
    assert main(["classify", str(image), "-m", f"clip:local-dir:{config_only}", "--weights", str(image)]) == 2
    assert "makes no sense" in capsys.readouterr().err


def test_local_dir_allow_random_builds_the_config(tmp_path):
    folder = _write_model_files(tmp_path / "config-only", None)
    loaded = load_model(parse_spec(f"clip:local-dir:{folder}"), allow_random=True)
    assert not loaded.pretrained and loaded.weights_file is None
    assert loaded.missing_weights == "open_clip_model.safetensors"
    assert loaded.build.activation == "QuickGELU" and loaded.build.mean == tuple(PREPROCESS_CFG["mean"])
    assert "random init" in loaded.build.logit_scale


def test_local_dir_bad_config_or_weights_are_user_errors(tmp_path):
    state = _tiny_state()
    state.pop("visual.attnpool.c_proj.bias")
    folder = _write_model_files(tmp_path / "short", state)
    with pytest.raises(UserError, match="open_clip cannot build it") as err:
        load_model(parse_spec(f"clip:local-dir:{folder}"))
    assert "\n" not in str(err.value)
    (folder / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": PREPROCESS_CFG}))
    with pytest.raises(UserError, match="model_cfg"):
        load_model(parse_spec(f"clip:local-dir:{folder}"))


# --------------------------------------------------------------------------- hf-hub


def test_hf_hub_loads_from_the_cache(tmp_path, hf_cache):
    state = _tiny_state(seed=2)
    rev = _cache_repo(hf_cache, state)
    loaded = load_model(parse_spec(f"clip:hf-hub:{REPO}"))
    snapshot = hf_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / rev
    assert loaded.pretrained and loaded.weights_file == str(snapshot / "open_clip_model.safetensors")
    _assert_built_from_config(loaded, state)
    assert f"hf-hub:{REPO}" in loaded.build.preprocess_source and rev[:12] in loaded.build.preprocess_source
    ref, _, ref_preprocess = open_clip.create_model_and_transforms(f"hf-hub:{REPO}")
    image = make_image(tmp_path / "x.jpg", seed=4)
    assert torch.equal(_logits(loaded.model, loaded.preprocess, image), _logits(ref.eval(), ref_preprocess, image))


class _NetworkUsed(BaseException):
    """Not an Exception: huggingface_hub's retries and open_clip's fallbacks cannot swallow it."""


def test_hf_hub_never_goes_online_even_when_hf_hub_offline_is_unset(hf_cache, monkeypatch):
    _cache_repo(hf_cache, _tiny_state())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise _NetworkUsed(args)

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    loaded = load_model(parse_spec(f"clip:hf-hub:{REPO}"))
    assert loaded.pretrained
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored afterwards


def test_hf_hub_empty_cache_is_a_one_line_error(tmp_path, hf_cache, capsys):
    for allow_random in (False, True):
        with pytest.raises(MissingWeightsError, match=re.escape(f"hf download {REPO}")) as err:
            load_model(parse_spec(f"clip:hf-hub:{REPO}"), allow_random=allow_random)
        msg = str(err.value)
        assert "\n" not in msg and str(hf_cache) in msg and f"hf download {REPO}" in msg
        assert "open_clip_config.json" in msg and "open_clip_model.safetensors" in msg
        assert ("--allow-random cannot stand in" in msg) == allow_random
    image = make_image(tmp_path / "x.jpg")
    assert main(["classify", str(image), "-m", f"clip:hf-hub:{REPO}", "--labels", "dog,cat"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("clipcompare: error: ") and REPO in err_lines[0]


def test_hf_hub_config_without_weights(hf_cache):
    _cache_repo(hf_cache, None)
    with pytest.raises(MissingWeightsError, match=f"hf download {REPO}"):
        load_model(parse_spec(f"clip:hf-hub:{REPO}"))
    loaded = load_model(parse_spec(f"clip:hf-hub:{REPO}"), allow_random=True)
    assert not loaded.pretrained and loaded.build.activation == "QuickGELU"
    assert loaded.build.mean == tuple(PREPROCESS_CFG["mean"])


def test_local_dir_as_train_text_model(tmp_path):
    """train's frozen text tower may come from a folder; its checkpoint loads back (trained=PATH) with those weights."""
    from clipcompare.data.synthetic import make_coco
    from clipcompare.models.contrastive import load_trained
    from clipcompare.train.config import TrainConfig
    from clipcompare.train.main import train

    state = _tiny_state(seed=3)
    folder = _write_model_files(tmp_path / "text-clip", state)
    coco = make_coco(tmp_path / "coco", 20, 10, seed=0)
    out = tmp_path / "run"
    config = TrainConfig(out=str(out), coco=str(coco), train_size=20, val_size=10, epochs=1, batch_size=10,
                         image_model="resnet18", text_model=f"clip:local-dir:{folder}", image_size=32,
                         allow_random=True, workers=0, seed=0)
    train(config, command=["test"])
    run = json.loads((out / "run.json").read_text())
    assert run["random_weights"] == ["resnet18:IMAGENET1K_V1"]  # the folder's text weights were loaded
    model = load_trained(out / "checkpoints" / "latest.pt")
    ref = open_clip.create_model(f"local-dir:{folder}").eval()
    tokens = model.tokenizer(["a photo of a dog.", "a cat"])
    with torch.no_grad():
        got, want = model.encode_text(tokens, normalize=True), ref.encode_text(tokens, normalize=True)
    assert (got - want).abs().max() < 1e-6  # same weights and QuickGELU (GELU: 3.7e-3 apart)


def test_train_config_stores_a_local_dir_text_model_absolute(tmp_path, monkeypatch):
    """A trained checkpoint rebuilds its text tower from the folder's config, from any working directory."""
    from clipcompare.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    config = TrainConfig(out="run", text_model="clip:local-dir:models/mine")
    assert config.text_model == f"clip:local-dir:{tmp_path / 'models' / 'mine'}"
    assert TrainConfig.from_dict(config.as_dict()) == config
    assert TrainConfig(out="run", text_model="clip:ViT-B-32").text_model == "clip:ViT-B-32"
