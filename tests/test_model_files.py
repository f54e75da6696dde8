"""The model layer's seams: layering and the family registry, the download switch, bad weight files
(one line, exit 2, no pickled code run), one-line errors, and the trained model's architecture record."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import pytest
import torch

from clipcompare.cli import MAX_ERROR_CHARS, main
from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.spec import parse_spec

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = "clip:tiny-RN-quickgelu"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


# --------------------------------------------------------------------------- layering


def test_model_layer_loads_nothing_from_train_and_changes_no_logging():
    """Importing every model module pulls in no clipcompare.train module and installs no log filter."""
    code = (
        "import logging, sys\n"
        "import clipcompare.models, clipcompare.models.registry, clipcompare.models.loading\n"
        "import clipcompare.models.contrastive, clipcompare.models.clip_hub, clipcompare.models.weights\n"
        "import clipcompare.models.classifier, clipcompare.models.hashing\n"
        "print([m for m in sys.modules if m.startswith('clipcompare.train')], logging.getLogger().filters)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []"


def test_registry_has_a_loader_for_every_family_the_spec_parses():
    from clipcompare.models.registry import LOADERS, loader_for
    from clipcompare.models.spec import Family

    assert {key.partition(":")[0] for key in LOADERS} == set(typing.get_args(Family))
    assert loader_for(parse_spec("clip:hf-hub:org/repo")).__name__ == "load_clip_hub"
    assert loader_for(parse_spec("clip:RN50")).__name__ == "load_clip"
    assert loader_for(parse_spec("resnet50")).__name__ == "load_torchvision"


def test_open_clip_random_init_note_is_dropped_only_during_the_build(caplog):
    import logging

    from clipcompare.models.clip import quiet_random_init

    with caplog.at_level("WARNING"), quiet_random_init():
        logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    assert len(caplog.records) == 1 and not logging.getLogger().filters


# --------------------------------------------------------------------------- the download switch


@pytest.fixture
def no_sockets(monkeypatch):
    """Downloads off, and every connection attempt (and name lookup) recorded and refused."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("test: no network")

    monkeypatch.setenv("CLIPCOMPARE_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the switch alone must keep every loader off the net
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_offline_switch_gives_random_torchvision_weights_without_trying_the_network(no_sockets):
    from clipcompare.models.loading import load_model

    loaded = load_model(parse_spec("resnet18"), allow_random=True)
    assert not loaded.pretrained and loaded.missing_weights == "resnet18-f37072fd.pth"
    assert no_sockets == []


def test_offline_switch_without_allow_random_names_the_file(no_sockets, tmp_path, capsys):
    from clipcompare.models.loading import load_model
    from helpers import make_image

    with pytest.raises(MissingWeightsError, match=r"need resnet18-f37072fd\.pth .*put it at") as err:
        load_model(parse_spec("resnet18"))
    assert "\n" not in str(err.value) and no_sockets == []
    assert main(["classify", str(make_image(tmp_path / "x.jpg")), "-m", "resnet18"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "resnet18-f37072fd.pth" in lines[0]
    assert no_sockets == []


def test_offline_switch_covers_open_clip_tags(no_sockets, monkeypatch):
    import open_clip

    from clipcompare.models.loading import load_model

    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["mytag"])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"url": "https://x.invalid/tiny.pt",
                                                                            "hf_hub": "org/tiny/", "quick_gelu": True})
    loaded = load_model(parse_spec(f"{TINY}@mytag"), allow_random=True)
    assert not loaded.pretrained and loaded.missing_weights == "tiny.pt"
    assert no_sockets == []


@pytest.mark.parametrize(("value", "allowed"), [("", True), ("0", True), ("1", False), ("yes", False)])
def test_offline_switch_is_read_at_call_time(value, allowed, monkeypatch):
    from clipcompare.models.weights import downloads_allowed, require_network

    monkeypatch.setenv("CLIPCOMPARE_OFFLINE", value)
    assert downloads_allowed() is allowed
    if not allowed:
        with pytest.raises(OSError, match="downloads are off"):
            require_network("https://download.pytorch.org/models/x.pth")


# --------------------------------------------------------------------------- bad weight files


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    marker = folder / "PAYLOAD_RAN"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "corrupt":  # a real torch.save file, cut in half
        torch.save({"w": torch.ones(64)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "pickle":  # protocol 4: torch warns about it before refusing, a warning that must not show
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    elif kind == "fake-torchscript":  # a torch.save zip with a payload, dressed up with a code/ folder
        torch.save({"w": _Payload(marker)}, path)
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(f"{path.stem}/code/__torch__.py", "")
    return path


KINDS = ("empty", "random", "corrupt", "pickle", "fake-torchscript")
FORMS = {
    "clip": lambda f: ["inspect", "-m", f"{TINY}={f}"],
    "clip --weights": lambda f: ["inspect", "-m", TINY, "--weights", str(f)],
    "torchvision": lambda f: ["inspect", "-m", f"resnet18={f}"],
    "trained": lambda f: ["inspect", "-m", f"trained={f}"],
    "precision": lambda f: ["precision", "-m", f"{TINY}={f}", "--dtypes", "fp32", "--batch-sizes", "1"],
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_weights_file_is_one_line_and_runs_no_pickle(kind, form, tmp_path, capsys):
    bad = _bad_file(kind, tmp_path)
    assert main(FORMS[form](bad)) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"clipcompare: error: cannot read weights file {bad}: "
    assert lines[0].startswith(prefix) and lines[0][len(prefix):].strip(), lines[0]
    assert not (tmp_path / "PAYLOAD_RAN").exists()


@pytest.mark.parametrize("spec", [f"{TINY}={{}}", "trained={}"])
def test_pickle_payload_through_the_cli_prints_no_warning(spec, tmp_path):
    """A real interpreter, so torch's warnings would reach stderr: only the error line does."""
    bad = _bad_file("pickle", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "clipcompare", "inspect", "-m", spec.format(bad)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipcompare: error: cannot read weights file {bad}: "), \
        proc.stderr
    assert "weights-only unpickler" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_a_fitting_file_of_the_wrong_architecture_is_a_mismatch_not_unreadable(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save({"visual.nothing": torch.ones(2)}, path)
    assert main(["inspect", "-m", f"{TINY}={path}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"clipcompare: error: {path} does not match tiny-RN-quickgelu: ")


# --------------------------------------------------------------------------- one-line errors


def test_every_user_error_is_printed_as_one_line(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise UserError("first paragraph\n\n  second paragraph " + "x" * 1000)

    monkeypatch.setattr("clipcompare.architecture.run.load_model", fail)
    assert main(["inspect", "-m", "resnet18"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipcompare: error: first paragraph second paragraph xxx")
    assert len(lines[0]) == len("clipcompare: error: ") + MAX_ERROR_CHARS and lines[0].endswith("…")


@pytest.mark.parametrize(("exc", "reason"), [
    (EOFError(), "EOFError"),
    (RuntimeError("short\nsecond line"), "short"),
    (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
                  "internal miniz error. If you are seeing this error, there is a high likelihood that your checkpoint "
                  "file is corrupted."),
     "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    (pickle.UnpicklingError(
        "Weights only load failed. This file can still be loaded, to do so you have two options\n\n"
        "(1) In PyTorch 2.6, we changed the default value ...\n"
        "Please file an issue with the following so that we can make `weights_only=True` compatible with your use "
        "case: WeightsUnpickler error: Unsupported operand 149\n\nCheck the documentation of torch.load."),
     "not a plain tensor file, refused by torch's weights-only unpickler (Unsupported operand 149)"),
])
def test_error_reason_is_one_informative_line(exc, reason):
    from clipcompare.models.weights import error_reason

    assert error_reason(exc) == reason


# --------------------------------------------------------------------------- the trained model's record


def _tiny_trained(learn_temperature: bool):
    from clipcompare.models.contrastive import Architecture, build_untrained

    arch = Architecture(image_arch="resnet18", text_model=TINY, quick_gelu=True, embed_dim=64, image_size=32,
                        learn_temperature=learn_temperature)
    torch.manual_seed(1)
    model = build_untrained(arch)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not the init value: the checkpoint's must be the one loaded
    return arch, model


def _same_outputs(a, b) -> None:
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = a.tokenizer(["a red circle", "a blue square"])
    with torch.no_grad():
        for x, y in zip(a.eval()(img, tokens), b.eval()(img, tokens)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_checkpoint_stores_the_architecture_record_and_loads_from_it_alone(tmp_path):
    from clipcompare.models.contrastive import CHECKPOINT_FORMAT, load_trained, read_checkpoint
    from clipcompare.train.checkpoint import save_checkpoint

    arch, model = _tiny_trained(learn_temperature=False)
    path = tmp_path / "ckpt.pt"
    # the training config is stored for people; loading must not need it
    save_checkpoint(path, model, {"unrelated": "settings"})
    ckpt = read_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["architecture"] == arch.to_dict()
    loaded = load_trained(path)
    assert loaded.architecture == arch and loaded.visual.image_size == 32
    assert "logit_scale" in dict(loaded.named_buffers())  # fixed temperature: a buffer, as trained
    _same_outputs(model, loaded)


def test_format_1_checkpoint_derives_its_record_from_its_config(tmp_path):
    from clipcompare.models.contrastive import LEGACY_CHECKPOINT_FORMAT, load_trained

    arch, model = _tiny_trained(learn_temperature=True)
    path = tmp_path / "old.pt"
    config = {"image_model": "resnet18:IMAGENET1K_V1", "text_model": TINY, "embed_dim": None, "image_size": 32,
              "fixed_temperature": False, "epochs": 4}
    torch.save({"format": LEGACY_CHECKPOINT_FORMAT, "config": config, "quick_gelu": True,
                "model": {k: v.detach() for k, v in model.state_dict().items()}}, path)
    loaded = load_trained(path)
    assert loaded.architecture == arch
    _same_outputs(model, loaded)


def test_a_damaged_architecture_record_is_one_line(tmp_path):
    from clipcompare.models.contrastive import load_trained, save_record

    _, model = _tiny_trained(learn_temperature=True)
    record = save_record(model)
    record["architecture"]["embed_dim"] = "64"
    path = tmp_path / "bad.pt"
    torch.save(record, path)
    with pytest.raises(UserError, match="architecture record is not one clipcompare writes"):
        load_trained(path)
