"""Dataset kinds: scanning, targets, ClassSets, and the errors for folders that do not match their kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipcompare.data import DATASET_KINDS, build_dataset, load_datasets, parse_dataset_arg
from clipcompare.data.decode import DecodedImages, collate
from clipcompare.errors import UserError
from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES, imagenet_classes, index_of_wnid
from helpers import make_image, make_image_folder

WNIDS = ["n01440764", "n01443537", "n02102040"]  # tench, goldfish, English springer


def wnid(index: int) -> str:
    return imagenet_classes()[index].wnid


def test_registry_has_every_kind():
    assert set(DATASET_KINDS) == {"imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "folder",
                                  "wds", "objectnet"}


def test_imagenet_wnid_folders_keep_full_classset(image_folder):
    ds = build_dataset(parse_dataset_arg(f"imagenet={image_folder}"))
    assert len(ds.classes) == 1000 and ds.classes.imagenet_indices == tuple(range(1000))
    assert len(ds) == 12 and ds.classes_present == 3
    for s in ds.samples:
        assert s.target == index_of_wnid(s.path.split("/")[0])
    assert [s.path for s in ds.samples] == sorted(s.path for s in ds.samples)


def test_imagenet_sketch_is_wnid_folders(image_folder):
    ds = build_dataset(parse_dataset_arg(f"imagenet-sketch={image_folder}"))
    assert len(ds.classes) == 1000 and len(ds) == 12


@pytest.mark.parametrize(("kind", "indices"), [("imagenet-r", IMAGENET_R_INDICES), ("imagenet-a", IMAGENET_A_INDICES)])
def test_200_class_subsets(tmp_path, kind, indices):
    make_image_folder(tmp_path, [wnid(indices[0]), wnid(indices[7])], per_class=1)
    ds = build_dataset(parse_dataset_arg(f"{kind}={tmp_path}"))
    assert len(ds.classes) == 200
    assert ds.classes.imagenet_indices == tuple(indices)
    assert [s.target for s in ds.samples] == [0, 7]  # index within the 200, not the ImageNet index


def test_imagenet_r_rejects_a_class_outside_its_200(tmp_path):
    outside = next(i for i in range(1000) if i not in IMAGENET_R_INDICES)
    make_image_folder(tmp_path, [wnid(IMAGENET_R_INDICES[0]), wnid(outside)], per_class=1)
    with pytest.raises(UserError, match="not ImageNet-R class wnids"):
        build_dataset(parse_dataset_arg(f"imagenet-r={tmp_path}"))


def test_imagenet_v2_index_folders(tmp_path):
    make_image_folder(tmp_path, ["0", "10", "999"], per_class=2)
    ds = build_dataset(parse_dataset_arg(f"imagenet-v2={tmp_path}"))
    assert len(ds.classes) == 1000
    assert [s.target for s in ds.samples] == [0, 0, 10, 10, 999, 999]


@pytest.mark.parametrize("bad", ["n01440764", "1000", "007", "-1"])
def test_imagenet_v2_rejects_other_folder_names(tmp_path, bad):
    make_image_folder(tmp_path, ["0", bad], per_class=1)
    with pytest.raises(UserError, match="0..999"):
        build_dataset(parse_dataset_arg(f"imagenet-v2={tmp_path}"))


def test_extensions_case_insensitive_and_limit_per_class(tmp_path):
    for k, suffix in enumerate([".JPG", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".Png"]):
        make_image(tmp_path / WNIDS[0] / f"{k}{suffix}", seed=k)
    (tmp_path / WNIDS[0] / "notes.txt").write_text("not an image")
    ds = build_dataset(parse_dataset_arg(f"imagenet={tmp_path}"))
    assert len(ds) == 7
    limited = build_dataset(parse_dataset_arg(f"imagenet={tmp_path}"), limit_per_class=2)
    assert [s.path for s in limited.samples] == [f"{WNIDS[0]}/0.JPG", f"{WNIDS[0]}/1.jpeg"]


def test_folder_kind_with_plain_names_skips_supervised(tmp_path):
    make_image_folder(tmp_path, ["blorp", "zzyzx"], per_class=1)
    ds = build_dataset(parse_dataset_arg(f"folder={tmp_path}"))
    assert ds.classes.names == ("blorp", "zzyzx") and ds.classes.imagenet_indices is None
    assert ds.notes  # the supervised model will be skipped, and metrics.json says so


def test_folder_kind_with_wnid_folders_maps_to_imagenet(image_folder):
    ds = build_dataset(parse_dataset_arg(f"folder={image_folder}"))
    assert ds.classes.imagenet_indices == (0, 1, index_of_wnid("n02102040"))
    assert ds.classes.names[0] == "tench"  # prompts use CLIP's class name, not the wnid


def test_folder_kind_mapping_file(tmp_path):
    data = make_image_folder(tmp_path / "d", ["a", "b", "c"], per_class=1)
    mapping = tmp_path / "map.tsv"
    mapping.write_text("# folder -> class\na\ttench\nb\tn01443537\nc\tgoldfish\n")
    ds = build_dataset(parse_dataset_arg(f"folder={data}:{mapping}"))
    # two folders name the same class: they share one target
    assert ds.classes.names == ("tench", "goldfish") and ds.classes.imagenet_indices == (0, 1)
    assert [s.target for s in ds.samples] == [0, 1, 1]


def test_folder_kind_json_mapping_to_free_labels(tmp_path):
    data = make_image_folder(tmp_path / "d", ["x1", "x2"], per_class=1)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"x1": "red bicycle", "x2": "blue kettle"}))
    ds = build_dataset(parse_dataset_arg(f"folder={data}:{mapping}"))
    assert ds.classes.names == ("red bicycle", "blue kettle") and ds.classes.imagenet_indices is None


def test_folder_mapping_must_cover_every_folder(tmp_path):
    data = make_image_folder(tmp_path / "d", ["a", "b"], per_class=1)
    mapping = tmp_path / "map.tsv"
    mapping.write_text("a\ttench\n")
    with pytest.raises(UserError, match="missing from"):
        build_dataset(parse_dataset_arg(f"folder={data}:{mapping}"))


def test_duplicate_kinds_get_distinct_names(image_folder):
    a, b = load_datasets([f"imagenet={image_folder}", f"imagenet={image_folder}"])
    assert (a.name, b.name) == ("imagenet", "imagenet-2")


@pytest.mark.parametrize(
    ("arg", "layout", "message"),
    [
        ("imagenet={root}/nope", None, "does not exist"),
        ("imagenet={root}", [], "no class folders"),
        ("imagenet={root}", ["n01440764", "not_a_wnid"], "not ImageNet class wnids"),
        ("imagenet={root}", ["n01440764", "n01443537:empty"], "no images"),
        ("imagenet-v2={root}", ["0", "dog"], "0..999"),
        ("folder={root}:{root}/missing.tsv", ["a"], "mapping file not found"),
        ("imagenet-x={root}", ["n01440764"], "unknown kind"),
        ("imagenet", None, "KIND=PATH"),
    ],
)
def test_validation_errors_exit_2_with_one_line(tmp_path, capsys, arg, layout, message):
    from clipcompare.cli import main

    root = tmp_path / "data"
    root.mkdir()
    for entry in layout or []:
        name, _, empty = entry.partition(":")
        if empty:
            (root / name).mkdir()
            (root / name / "readme.txt").write_text("no images here")
        else:
            make_image(root / name / "a.jpg")
    code = main(["evaluate", "-m", "resnet18", "--dataset", arg.format(root=root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing started


def test_decoded_images_return_reasons_instead_of_raising(tmp_path):
    good = make_image(tmp_path / "good.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("definitely not a JPEG")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    paths = ["good.jpg", "empty.jpg", "text.jpg", "cut.jpg"]
    items = DecodedImages(tmp_path, paths, [lambda im: __import__("torch").zeros(3, 4, 4)])
    batch = collate([items[i] for i in range(len(paths))])
    assert batch.positions.tolist() == [0] and batch.tensors[0].shape == (1, 3, 4, 4)
    assert [p for p, _ in batch.failures] == [1, 2, 3]
    assert "truncated" in batch.failures[2][1]


def test_data_package_stays_out_of_path_parsing_for_existing_colon_paths(tmp_path):
    odd = tmp_path / "with:colon"
    make_image_folder(odd, ["a"], per_class=1)
    spec = parse_dataset_arg(f"folder={odd}")
    assert spec.root == Path(odd) and spec.option is None


def test_no_data_module_imports_the_model_layer():
    # data/ sits below models/ (DESIGN.md): ClassSet lives in clipcompare.classes so datasets can name
    # their classes without loading models/; checked in a fresh interpreter, where nothing else is loaded.
    code = ("import importlib, pkgutil, sys, clipcompare.data\n"
            "for m in pkgutil.iter_modules(clipcompare.data.__path__):\n"
            "    importlib.import_module('clipcompare.data.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('clipcompare.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
