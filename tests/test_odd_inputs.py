"""Odd inputs: each one handled (decoded, or recorded as a skip) or one line and exit 2.

Decoding choices under test (see data/decode.py and the README): RGB as PIL's ``convert("RGB")``
makes it, as torchvision's and open_clip's loaders do (alpha dropped, EXIF orientation not
applied), except 16-bit greyscale, which is scaled to 8 bits instead of clipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from clipcompare.cli import main
from clipcompare.data.decode import load_rgb
from clipcompare.evaluation import EvaluateOptions, evaluate
from helpers import make_image, make_image_folder

CLIP = "clip:tiny-ViT"


def _rng_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000; running as root ignores permissions, so then the refusal is simulated where
    the code meets it (PIL opening the file, os.scandir listing the folder)."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    import clipcompare.data.decode as decode

    target = str(path)
    if path.is_dir():
        real_scandir = os.scandir
        monkeypatch.setattr(os, "scandir", lambda p=".": _deny(p) if str(p) == target else real_scandir(p))
    else:
        real_open = decode.Image.open
        monkeypatch.setattr(decode.Image, "open", lambda p, *a, **k: _deny(p) if str(p) == target else real_open(p, *a, **k))


def _deny(path):
    raise PermissionError(13, "Permission denied", str(path))


# ------------------------------------------------------------------------------ decoding


def test_cmyk_palette_and_bilevel_convert_as_pil_does(tmp_path):
    rgb = Image.fromarray(_rng_rgb())
    cases = {
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.quantize(colors=16),
        "bilevel.png": rgb.convert("1"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        with Image.open(tmp_path / name) as raw:
            assert raw.mode == img.mode, name
            expected = np.asarray(raw.convert("RGB"))
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), expected), name
    # the palette image is its palette's colours, exactly
    pal = cases["palette.png"]
    lut = np.asarray(pal.getpalette()[: 16 * 3], dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "palette.png")), lut[np.asarray(pal)])


def test_alpha_is_dropped_keeping_the_stored_colour(tmp_path):
    """RGBA / LA / palette+transparency: the colour under a transparent pixel is kept, as
    PIL's convert("RGB") (and so torchvision's and open_clip's loaders) keeps it."""
    colour = _rng_rgb(seed=1)
    alpha = np.zeros(colour.shape[:2], dtype=np.uint8)
    alpha[:, ::2] = 255
    Image.fromarray(np.dstack([colour, alpha])).save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), colour)

    grey = colour[..., 0]
    Image.fromarray(np.dstack([grey, alpha])).save(tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as raw:
        assert raw.mode == "LA"
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "la.png")), np.repeat(grey[..., None], 3, axis=2))

    pal = Image.fromarray(colour).quantize(colors=8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pa.png", transparency=0)
    lut = np.asarray(pal.getpalette()[:24], dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "pa.png")), lut[np.asarray(pal)])


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode == "I;16"
        clipped = np.asarray(raw.convert("RGB"))
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(out, np.repeat(expected[..., None], 3, axis=2))
    assert (clipped == 255).mean() > 0.9 and (out == 255).mean() < 0.01  # what PIL's convert alone gives


def test_exif_orientation_is_not_applied(tmp_path):
    """The stored pixels are used, as torchvision's and open_clip's loaders use them."""
    img = Image.fromarray(_rng_rgb(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "rotated.jpg") as raw:
        assert raw.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(raw).size == (20, 40)  # what a viewer shows
        stored = np.asarray(raw.convert("RGB"))
    out = load_rgb(tmp_path / "rotated.jpg")
    assert out.size == (40, 20) and np.array_equal(np.asarray(out), stored)


# ------------------------------------------------------------------- one evaluate run, many odd files


@pytest.fixture
def odd_folder(tmp_path, monkeypatch):
    """Two classes named with spaces and non-ASCII; good images in odd modes and names, plus files
    that must be skipped (over the pixel limit, unreadable, a symlink loop) and folder loops."""
    root = tmp_path / "data"
    a, b = root / "café crème", root / "dog house"
    make_image_folder(root, [a.name, b.name], per_class=2, size=(60, 50))
    Image.fromarray(_rng_rgb(50, 60)).convert("CMYK").save(a / "cmyk image.jpg")
    Image.fromarray(_rng_rgb(50, 60, seed=2)).quantize(colors=8).save(a / "ünïcödé 日本.png")
    Image.fromarray(np.dstack([_rng_rgb(50, 60, seed=3), np.full((50, 60), 128, np.uint8)])).save(b / "alpha.png")
    Image.fromarray((np.arange(3000, dtype=np.uint16).reshape(50, 60) * 20)).save(b / "deep 16.png")
    # Pillow's limit lowered so small files stand for huge ones: 8000 px is over it (only warned
    # about by Pillow itself), 40000 px over twice it (refused by Pillow)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    make_image(a / "big.png", size=(100, 80))
    make_image(b / "huge.jpg", size=(200, 200))
    _make_unreadable(make_image(b / "locked.jpg", size=(60, 50)), monkeypatch)
    (b / "loop.jpg").symlink_to("loop.jpg")
    # folder loops: a class's link to itself and to the root, and a top-level link to the root
    (a / "again").symlink_to(".", target_is_directory=True)
    (a / "up").symlink_to("..", target_is_directory=True)
    (root / "all").symlink_to(".", target_is_directory=True)
    return root


def test_evaluate_handles_odd_files_and_keeps_everything(tmp_path, odd_folder):
    out = tmp_path / "run"
    opts = EvaluateOptions(out=out, templates="single", allow_random=True, progress=False, device="cpu", workers=0)
    result = evaluate([CLIP], [f"folder={odd_folder}"], opts)
    ds = result.datasets[0]
    assert ds.classes.names == ("café crème", "dog house")  # the root link 'all' is not a class
    predicted = pq.read_table(out / "predictions" / f"{ds.name}.parquet").column("path").to_pylist()
    assert predicted == [
        "café crème/cmyk image.jpg", "café crème/img_0.JPEG", "café crème/img_1.JPEG", "café crème/ünïcödé 日本.png",
        "dog house/alpha.png", "dog house/deep 16.png", "dog house/img_0.JPEG", "dog house/img_1.JPEG",
    ]
    skipped = {r["path"]: r["reason"] for r in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    assert sorted(skipped) == ["café crème/big.png", "dog house/huge.jpg", "dog house/locked.jpg", "dog house/loop.jpg"]
    assert skipped["café crème/big.png"].startswith("DecompressionBombError: 100x80 = 8000 pixels exceeds")
    assert skipped["dog house/huge.jpg"].startswith("DecompressionBombError")
    assert skipped["dog house/locked.jpg"].startswith("PermissionError")
    assert skipped["dog house/loop.jpg"].startswith("OSError")  # too many levels of symbolic links
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    entry = metrics["datasets"][ds.name]
    assert entry["n_files"] == 12 and entry["skipped"]["count"] == 4
    assert entry["models"][CLIP]["n"] == 8
    assert {k: v["n"] for k, v in entry["models"][CLIP]["per_class"].items()} == {"café crème": 4, "dog house": 4}
    assert entry["skipped"]["by_error"] == {"DecompressionBombError": 2, "PermissionError": 1, "OSError": 1}

    # the same command again: everything is already there, nothing is lost or redone
    before = (out / "predictions" / f"{ds.name}.parquet").read_bytes()
    again = evaluate([CLIP], [f"folder={odd_folder}"], opts)
    assert (out / "predictions" / f"{ds.name}.parquet").read_bytes() == before
    assert again.metrics["datasets"][ds.name]["models"][CLIP] == entry["models"][CLIP]


def test_unlistable_folder_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    root = make_image_folder(tmp_path / "data", ["cat", "dog"], per_class=1)
    _make_unreadable(root / "dog", monkeypatch)
    try:
        code = main(["evaluate", "-d", f"folder={root}", "-m", CLIP, "--allow-random", "--out", str(tmp_path / "run")])
    finally:
        (root / "dog").chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot list" in err[0] and "dog" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [
    ["evaluate", "-d", "folder=DATA", "-m", CLIP, "--allow-random"],
    ["precision", "-m", CLIP, "--dtypes", "fp32", "--batch-sizes", "1", "--max-images", "1"],
    ["demo", "-m", CLIP, "--photos", "1"],
    ["retrieval", "-m", CLIP, "--coco", "DATA", "--allow-random"],  # refused before the data is read
])
def test_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys, command):
    root = make_image_folder(tmp_path / "data", ["cat", "dog"], per_class=1)
    out = tmp_path / "results.txt"
    out.write_text("earlier results\n")
    argv = [a.replace("DATA", str(root)) for a in command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]
    assert out.read_text() == "earlier results\n"


def test_a_model_given_twice_or_two_files_of_one_name_exit_2(tmp_path, capsys):
    """Before any model loads: the same spec twice, and two different files whose display names clash."""
    data = make_image_folder(tmp_path / "d", ["n01440764"], per_class=1)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.pth").write_bytes(b"")
    cases = {
        ("resnet18", "resnet18"): "the same model is given twice: resnet18",
        (f"resnet18={tmp_path / 'a' / 'w.pth'}", f"resnet18={tmp_path / 'b' / 'w.pth'}"):
            "two models would both be called resnet18=w.pth",
    }
    for models, expected in cases.items():
        args = ["evaluate", "-d", f"imagenet={data}", "--out", str(tmp_path / "out"), "--allow-random"]
        code = main([*args, *(a for m in models for a in ("-m", m))])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "out").exists()  # refused before anything was written


def _exit_code(argv: list[str]) -> int:
    """main's return value, or argparse's exit status for a usage error."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(("args", "expected"), [
    (["classify", "IMG", "--labels", ""], "argument --labels: no labels in ''"),
    (["classify", "IMG", "--labels", " , "], "argument --labels: no labels in ' , '"),
    (["classify", "IMG", "--labels", "dog,cat,Dog"], "argument --labels: 'Dog' is given twice (as 'dog' before)"),
    (["classify", "IMG", "--labels", "tench,n01440764", "--allow-random"],
     "--labels: 'n01440764' and 'tench' name the same ImageNet class"),
    (["precision", "--labels", "", "-m", CLIP], "argument --labels: no labels in ''"),
    (["evaluate", "-d", "folder=DATA", "-m", CLIP, "--out", "OUT", "--workers", "-1"],
     "argument --workers: must be at least 0, got -1"),
])
def test_inputs_once_silently_accepted_are_one_line_exit_2(tmp_path, capsys, args, expected):
    """An empty label list (was: all 1000 ImageNet classes), a label or class twice (was: scored twice),
    --workers -1 (was: taken as 0)."""
    root = make_image_folder(tmp_path / "data", ["cat", "dog"], per_class=1)
    img = next(root.rglob("*.JPEG"))
    argv = [str(img) if a == "IMG" else a.replace("DATA", str(root)).replace("OUT", str(tmp_path / "out")) for a in args]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("map.tsv", "cat\ttench\ndog\tgoldfish\n# again\ncat\tgoldfish\n", "map.tsv:4: folder 'cat' is listed twice (first on line 1)"),
    ("map.json", '{"cat": "tench", "dog": "goldfish", "cat": "goldfish"}', "map.json lists folder 'cat' twice"),
])
def test_a_mapping_file_listing_a_folder_twice_is_one_line_exit_2(tmp_path, capsys, name, text, expected):
    root = make_image_folder(tmp_path / "data", ["cat", "dog"], per_class=1)
    mapping = tmp_path / name
    mapping.write_text(text)
    out = tmp_path / "out"
    assert main(["evaluate", "-d", f"folder={root}:{mapping}", "-m", CLIP, "--allow-random", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()
