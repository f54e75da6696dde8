"""Captioned splits: the generated COCO layout, seed / Karpathy / captions-file splits, 5 captions, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcompare.data.coco import load_caption_splits
from clipcompare.data.synthetic import shape_captions
from clipcompare.errors import UserError
from helpers import make_karpathy_file


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from clipcompare.data.synthetic import make_coco

    return make_coco(tmp_path_factory.mktemp("coco"), 30, 12, seed=1)


def _copy(coco: Path, tmp_path: Path) -> Path:
    """A private copy for tests that edit or delete files."""
    return Path(shutil.copytree(coco, tmp_path / "coco"))


def _ann(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}.json").read_text())


def _write_ann(root: Path, split: str, doc: dict) -> None:
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(doc))


def test_generated_coco_layout_and_captions_describe_the_image(coco):
    for folder, n in (("train2014", 30), ("val2014", 12)):
        doc = _ann(coco, folder)
        assert len(doc["images"]) == n and len(doc["annotations"]) == 5 * n
        for im in doc["images"]:
            assert im["file_name"] == f"COCO_{folder}_{im['id']:012d}.jpg"
            assert (coco / folder / im["file_name"]).is_file()
    train_ids = {im["id"] for im in _ann(coco, "train2014")["images"]}
    assert not train_ids & {im["id"] for im in _ann(coco, "val2014")["images"]}
    caps = shape_captions("red", "circle", "left")
    assert len(set(caps)) == 5 and all("red" in c and "circle" in c and "left" in c for c in caps)


def test_seed_split_sizes_draw_and_determinism(coco):
    s = load_caption_splits(coco, train_size=10, val_size=4)
    assert len(s.train) == 10 and len(s.val) == 4 and s.test is None
    assert all(p.startswith("train2014/") for p in s.train.paths) and all(p.startswith("val2014/") for p in s.val.paths)
    assert all(len(c) == 5 for c in s.train.captions)
    # the documented draw: ids sorted, default_rng(seed).permutation, first N
    ids = sorted(im["id"] for im in _ann(coco, "train2014")["images"])
    expect = [str(ids[i]) for i in np.random.default_rng(0).permutation(len(ids))[:10]]
    assert list(s.train.image_ids) == expect
    assert load_caption_splits(coco, train_size=10, val_size=4) == s
    bigger = load_caption_splits(coco, train_size=20, val_size=4)
    assert bigger.train.image_ids[:10] == s.train.image_ids  # a smaller N is a prefix of a larger one
    other = load_caption_splits(coco, train_size=10, val_size=4, seed=1)
    assert other.train.image_ids != s.train.image_ids
    d = s.description
    assert d["kind"] == "seed" and d["seed"] == 0 and "default_rng(seed).permutation" in d["draw"]
    assert d["splits"]["train"]["asked"] == 10
    assert d["splits"]["train"]["got"] == 10 and d["splits"]["train"]["candidates"] == 30
    json.dumps(d)  # stored in run.json as is
    texts, owner = s.val.flat_captions()
    assert len(texts) == 20 and owner == [i for i in range(4) for _ in range(5)]
    assert texts[5:10] == list(s.val.captions[1])


def test_captions_match_annotation_file_order(coco):
    s = load_caption_splits(coco, val_size=12, which=("val",))
    assert s.train is None and len(s.val) == 12
    doc = _ann(coco, "val2014")
    for image_id, caps in zip(s.val.image_ids, s.val.captions):
        assert list(caps) == [a["caption"] for a in doc["annotations"] if a["image_id"] == int(image_id)]


def test_more_and_fewer_than_five_captions(coco, tmp_path):
    root = _copy(coco, tmp_path)
    doc = _ann(root, "val2014")
    ids = sorted(im["id"] for im in doc["images"])
    long_id, short_id = ids[0], ids[1]
    doc["annotations"] += [{"image_id": long_id, "id": 10_000 + k, "caption": f"extra {k}"} for k in range(2)]
    short_caps = [a for a in doc["annotations"] if a["image_id"] == short_id][:2]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != short_id] + short_caps
    _write_ann(root, "val2014", doc)

    dropped = load_caption_splits(root, val_size=11, which=("val",))
    assert str(short_id) not in dropped.val.image_ids and len(dropped.val) == 11
    got = dict(zip(dropped.val.image_ids, dropped.val.captions))
    assert not any(c.startswith("extra") for c in got[str(long_id)])  # first 5 in file order kept
    split = dropped.description["splits"]["val"]
    assert split["more_than_5_captions"] == 1 and split["fewer_than_5_captions"] == 1 and split["candidates"] == 11
    with pytest.raises(UserError, match="asked for 12 images but .* has 11"):
        load_caption_splits(root, val_size=12, which=("val",))

    cycled = load_caption_splits(root, val_size=12, which=("val",), short_captions="cycle")
    caps = dict(zip(cycled.val.image_ids, cycled.val.captions))[str(short_id)]
    a, b = (c["caption"] for c in short_caps)
    assert caps == (a, b, a, b, a)
    assert "repeated" in cycled.description["fewer_than_5_captions"]


def test_missing_images_are_skipped_and_counted(coco, tmp_path):
    root = _copy(coco, tmp_path)
    full = load_caption_splits(root, val_size=12, which=("val",))
    for p in full.val.paths[:3]:
        (root / p).unlink()
    s = load_caption_splits(root, val_size=12, which=("val",))
    assert len(s.val) == 9 and s.val.paths == full.val.paths[3:]
    d = s.description["splits"]["val"]
    assert d["missing_images"] == 3 and d["got"] == 9 and d["drawn"] == 12 and d["missing_examples"] == list(full.val.paths[:3])


def test_karpathy_split(coco, tmp_path):
    file = make_karpathy_file(coco, tmp_path / "dataset_coco.json")
    s = load_caption_splits(coco, split=f"karpathy={file}", which=("train", "val", "test"))
    assert (len(s.train), len(s.val), len(s.test)) == (30 + 4, 4, 4)  # train = train + restval
    assert s.test.name == "test" and all(p.startswith("val2014/") for p in s.test.paths)
    assert list(s.test.image_ids) == sorted(s.test.image_ids, key=int)  # no size: every image, by cocoid
    assert not set(s.val.image_ids) & set(s.test.image_ids)
    only_test = load_caption_splits(coco, split=f"karpathy={file}", which=("test",))
    assert only_test.val is None and only_test.test == s.test and only_test["test"] == s.test
    small = load_caption_splits(coco, split=f"karpathy={file}", which=("train",), train_size=5)
    assert len(small.train) == 5
    assert s.description["kind"] == "karpathy" and "restval" in s.description["karpathy_splits"]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_captions_file(coco, tmp_path, fmt):
    s = load_caption_splits(coco, val_size=12, which=("val",))
    rows = [(p, c) for p, caps in zip(s.val.paths, s.val.captions) for c in caps]
    rows.append((s.val.paths[0], "a sixth caption"))
    rows.insert(1, (s.val.paths[0], "a caption quoted over\ntwo lines, with a comma"))
    file = tmp_path / f"caps.{fmt}"
    if fmt == "jsonl":
        file.write_text("".join(json.dumps({"image": p, "caption": c}) + "\n" for p, c in rows))
    else:
        sep = "\t" if fmt == "tsv" else ","
        file.write_text(f"filepath{sep}title\n" + "".join(f'{p}{sep}"{c}"\n' for p, c in rows))
    # paths relative to --coco ROOT when given
    got = load_caption_splits(coco, captions_file=file, which=("val",))
    assert len(got.val) == 12 and got.description["kind"] == "captions"
    expect = dict(zip(s.val.paths, s.val.captions))
    expect[s.val.paths[0]] = (rows[0][1], "a caption quoted over two lines, with a comma", *expect[s.val.paths[0]][1:4])
    assert dict(zip(got.val.paths, got.val.captions)) == expect
    assert got.description["splits"]["val"]["more_than_5_captions"] == 1
    # training: val = first fifth of the draw, train = the rest, disjoint
    both = load_caption_splits(coco, captions_file=file)
    assert (len(both.val), len(both.train)) == (2, 10) and not set(both.val.paths) & set(both.train.paths)
    held = load_caption_splits(coco, captions_file=file, which=("val",), val_size=2)
    assert held.val == both.val  # retrieval with the same --val-size sees the held-out images


def test_captions_file_relative_to_its_folder_and_one_caption_per_image(coco, tmp_path):
    link = tmp_path / "val2014"
    link.symlink_to(coco / "val2014")
    names = sorted(p.name for p in link.iterdir())[:3]
    file = tmp_path / "one.csv"
    file.write_text("filepath,title\n" + "".join(f"val2014/{n},caption of {n}\n" for n in names))
    with pytest.raises(UserError, match="none of its 3 images has 5 captions.*--short-captions cycle"):
        load_caption_splits(captions_file=file, which=("val",))
    s = load_caption_splits(captions_file=file, which=("val",), short_captions="cycle")
    assert s.val.root == tmp_path and len(s.val) == 3 and all(len(set(c)) == 1 for c in s.val.captions)


@pytest.mark.parametrize("case, pattern", [
    ("no_root", "--coco ROOT is required"),
    ("missing_root", "does not exist"),
    ("missing_ann", "COCO annotation file not found: .*captions_val2014.json"),
    ("bad_json", "is not valid JSON"),
    ("bad_keys", "malformed COCO annotation file"),
    ("too_many", "asked for 13 images but"),
    ("empty", "has no images"),
    ("bad_split", "expected 'seed' or 'karpathy=FILE'"),
    ("karpathy_missing", "Karpathy split file not found"),
    ("karpathy_bad", "malformed Karpathy split file"),
    ("seed_test", "train and val splits only"),
    ("zero_size", "--val-size must be at least 1"),
    ("csv_header", "the header must name an image column"),
    ("csv_fields", "line 3: expected 2 comma-separated fields"),
    ("jsonl_bad", "line 1: not JSON"),
    ("jsonl_keys", "line 1: needs string keys"),
    ("all_missing", "none of the 12 images exists"),
])
def test_bad_input_is_one_clear_line(coco, tmp_path, case, pattern):
    root = _copy(coco, tmp_path)
    kw: dict = {"coco": root, "which": ("val",), "val_size": 12}
    if case == "no_root":
        kw["coco"] = None
    elif case == "missing_root":
        kw["coco"] = tmp_path / "nope"
    elif case == "missing_ann":
        (root / "annotations" / "captions_val2014.json").unlink()
    elif case == "bad_json":
        (root / "annotations" / "captions_val2014.json").write_text("{not json")
    elif case == "bad_keys":
        _write_ann(root, "val2014", {"images": [{"id": 1}], "annotations": []})
    elif case == "too_many":
        kw["val_size"] = 13
    elif case == "empty":
        _write_ann(root, "val2014", {"images": [], "annotations": []})
    elif case == "bad_split":
        kw["split"] = "random"
    elif case == "karpathy_missing":
        kw["split"] = f"karpathy={tmp_path / 'none.json'}"
    elif case == "karpathy_bad":
        (tmp_path / "k.json").write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "val"}]}))
        kw["split"] = f"karpathy={tmp_path / 'k.json'}"
    elif case == "seed_test":
        kw["which"] = ("test",)
    elif case == "zero_size":
        kw["val_size"] = 0
    elif case == "csv_header":
        (tmp_path / "c.csv").write_text("path,text\na.jpg,hi\n")
        kw["captions_file"] = tmp_path / "c.csv"
    elif case == "csv_fields":
        (tmp_path / "c.csv").write_text("filepath,title\na.jpg,hi\nb.jpg\n")
        kw["captions_file"] = tmp_path / "c.csv"
    elif case == "jsonl_bad":
        (tmp_path / "c.jsonl").write_text("{oops\n")
        kw["captions_file"] = tmp_path / "c.jsonl"
    elif case == "jsonl_keys":
        (tmp_path / "c.jsonl").write_text(json.dumps({"file": "a.jpg", "caption": "hi"}) + "\n")
        kw["captions_file"] = tmp_path / "c.jsonl"
    elif case == "all_missing":
        shutil.rmtree(root / "val2014")
    with pytest.raises(UserError, match=pattern) as info:
        load_caption_splits(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("split", [True, False], ids=["open_clip-transform", "plain-callable"])
def test_encode_images_skips_undecodable_images(coco, tmp_path, split):
    """Retrieval's image side: an undecodable file is skipped and reported, the others are encoded
    in order, equal to the model on each image's own preprocess (the open_clip transform takes the
    threaded, batched-normalise path; a plain callable runs per image)."""
    import torchvision.transforms as T
    from PIL import Image

    from clipcompare.retrieval import encode_images

    root = _copy(coco, tmp_path)
    s = load_caption_splits(root, val_size=5, which=("val",))
    (root / s.val.paths[2]).write_bytes(b"not a jpeg")
    if split:
        preprocess = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                                T.ToTensor(), T.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])
    else:
        def preprocess(im):
            return torch.from_numpy(np.array(im.resize((32, 32)))).permute(2, 0, 1).float() / 255

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model.encode_image = model.forward
    emb, kept, skipped = encode_images(model, s.val, preprocess, batch_size=2)
    assert kept == [0, 1, 3, 4] and skipped == [2]
    with torch.no_grad():
        ref = torch.stack([model(preprocess(Image.open(root / s.val.paths[i]).convert("RGB"))[None])[0]
                           for i in kept])
    torch.testing.assert_close(emb, torch.nn.functional.normalize(ref, dim=-1), rtol=0, atol=1e-6)
