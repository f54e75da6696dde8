"""CLIP_benchmark webdatasets (``--dataset wds=``, ``retrieval --wds``), exported with CLIP_benchmark's own
exporter from generated folders: parity with the folder kinds, resume, skips, bad input."""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipcompare.cli import main
from clipcompare.data import build_dataset, parse_dataset_arg
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import prob_column, top_column
from helpers import fake_hf_cache, interrupt_after_first_chunk, make_image, make_image_folder

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
CLASSES = ["goldfish", "great white shark", "tench"]  # ImageNet names (so resnet takes part), folder order
TEMPLATES = ["a photo of a {c}.", "itap of a {c}."]


def _exporter():
    """CLIP_benchmark's exporter module (the one ``clip_benchmark_export_wds`` runs)."""
    from clip_benchmark import webdataset_builder

    return webdataset_builder


class _Listing(list):
    """(image, label) pairs with the ``classes``/``templates`` attributes the exporter writes out."""

    classes: list[str] = []
    templates: list[str] = []


def export_folder(folder: Path, out: Path, classes: list[str], max_count: int = 4) -> Path:
    """``convert_dataset`` over the folder's images in the folder kind's (sorted) order, files copied as they are."""
    wb = _exporter()
    items = _Listing((str(p), k) for k, c in enumerate(classes) for p in sorted((folder / c).iterdir()))
    items.classes, items.templates = list(classes), list(TEMPLATES)
    wb.convert_dataset(items, "test", str(out), transform=wb.path_to_bytes, max_count=max_count, verbose=False)
    return out


def options(out: Path, **kw) -> EvaluateOptions:
    base = dict(out=out, workers=0, templates="single", allow_random=True, progress=False, device="cpu")
    base.update(kw)
    return EvaluateOptions(**base)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("wds")
    folder = make_image_folder(base / "folder", CLASSES, per_class=3)
    return folder, export_folder(folder, base / "wds", CLASSES)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_layout_read_as_exported(exported):
    folder, wds = exported
    assert (wds / "test" / "nshards.txt").read_text().strip() == "3"  # 9 samples, 4 per shard
    ds = build_dataset(parse_dataset_arg(f"wds={wds}"))
    assert [s.path for s in ds.samples] == [f"test/{k // 4}.tar/s{k:07d}" for k in range(9)]
    assert [s.target for s in ds.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.classes.names == tuple(CLASSES) and ds.classes.imagenet_indices == (1, 2, 0)
    assert ds.classes.templates == ("a photo of a {}.", "itap of a {}.")
    # the image bytes are the folder's files, byte for byte
    files = [p for c in CLASSES for p in sorted((folder / c).iterdir())]
    assert [ds.reader.open(s.path).read() for s in ds.samples] == [p.read_bytes() for p in files]
    # torchrun: whole shards per rank (shard k to rank k % 2)
    assert ds.rank_share(np.arange(9), 0, 2) == [0, 1, 2, 3, 8]
    assert ds.rank_share(np.arange(9), 1, 2) == [4, 5, 6, 7]
    assert build_dataset(parse_dataset_arg(f"wds={wds}"), limit_per_class=1).samples == (
        ds.samples[0], ds.samples[3], ds.samples[6])


def test_evaluate_wds_equals_folder_image_by_image(exported, tmp_path):
    folder, wds = exported
    result = evaluate([RESNET, CLIP], [f"wds={wds}", f"folder={folder}"], options(tmp_path / "run", batch_size=4))
    a = pd.read_parquet(tmp_path / "run" / "predictions" / "wds.parquet")
    b = pd.read_parquet(tmp_path / "run" / "predictions" / "folder.parquet")
    assert len(a) == len(b) == 9 and list(a["target"]) == list(b["target"])
    assert list(a["path"]) == [f"test/{k // 4}.tar/s{k:07d}" for k in range(9)]
    for model in result.models:  # both models, the supervised one too
        assert (np.stack(a[top_column(model)]) == np.stack(b[top_column(model)])).all()
        np.testing.assert_array_equal(np.stack(a[prob_column(model)]), np.stack(b[prob_column(model)]))
    m = result.metrics["datasets"]
    assert m["wds"]["models"] == m["folder"]["models"]
    assert m["wds"]["kind"] == "wds" and m["wds"]["skipped"]["count"] == 0


def test_dataset_templates_are_used_when_asked(exported, tmp_path):
    from clipcompare.models.classifier import create_classifier
    from clipcompare.zeroshot import build_head

    _, wds = exported
    ds = build_dataset(parse_dataset_arg(f"wds={wds}"))
    clf = create_classifier(CLIP, allow_random=True, templates="dataset")
    expected = build_head(clf.model, clf.tokenizer, list(ds.classes.names), ["a photo of a {}.", "itap of a {}."])
    np.testing.assert_allclose(clf.head(ds.classes).numpy(), expected.numpy(), atol=1e-6)


def test_interrupted_run_resumes_to_the_same_predictions(exported, tmp_path, monkeypatch):
    _, wds = exported
    full = tmp_path / "full"
    evaluate([CLIP], [f"wds={wds}"], options(full, batch_size=2))
    part = tmp_path / "part"
    interrupt_after_first_chunk(monkeypatch, lambda: evaluate([CLIP], [f"wds={wds}"],
                                                              options(part, batch_size=2, chunk_size=2)))
    assert len(pd.read_parquet(next((part / "predictions" / "wds.parts").iterdir()))) == 2
    evaluate([CLIP], [f"wds={wds}"], options(part, batch_size=2, chunk_size=2))
    pd.testing.assert_frame_equal(pd.read_parquet(full / "predictions" / "wds.parquet"),
                                  pd.read_parquet(part / "predictions" / "wds.parquet"))


def _write_shard(path: Path, members: list[tuple[str, bytes]], cut: int | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if cut is None else raw[:cut])


def _hand_made(root: Path, tmp: Path) -> Path:
    """One shard: 2 good samples, one without an image, one without a label, one undecodable image."""
    jpg = make_image(tmp / "a.jpg").read_bytes()
    png = make_image(tmp / "b.png", seed=3).read_bytes()
    _write_shard(root / "test" / "0.tar", [
        ("k0.jpg", jpg), ("k0.cls", b"0"),
        ("k1.cls", b"1"),
        ("k2.png", png),
        ("k3.webp", b"not an image"), ("k3.cls", b"2"),
        ("k4.png", png), ("k4.cls", b"2\n"),
    ])
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_bad_samples_are_skipped_and_counted(tmp_path):
    wds = _hand_made(tmp_path / "wds", tmp_path)
    result = evaluate([CLIP], [f"wds={wds}"], options(tmp_path / "run"))
    entry = result.metrics["datasets"]["wds"]
    assert entry["n_files"] == 5 and entry["skipped"]["count"] == 3 and entry["n_images"] == 2
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert {s["path"]: s["reason"].split(":")[0] for s in skipped} == {
        "test/0.tar/k1": "ValueError", "test/0.tar/k2": "ValueError", "test/0.tar/k3": "UnidentifiedImageError"}
    assert "no image" in next(s["reason"] for s in skipped if s["path"] == "test/0.tar/k1")
    assert "no .cls label" in next(s["reason"] for s in skipped if s["path"] == "test/0.tar/k2")
    assert list(pd.read_parquet(tmp_path / "run" / "predictions" / "wds.parquet")["path"]) == ["test/0.tar/k0", "test/0.tar/k4"]


def _one_line_error(argv, capsys) -> str:
    code, err = _cli(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("clipcompare: error: "), err
    return err


def test_bad_sets_are_one_line_errors_and_keep_what_was_predicted(exported, tmp_path, capsys):
    import shutil

    _, good = exported
    wds = tmp_path / "wds"
    shutil.copytree(good, wds)
    out = tmp_path / "run"
    argv = ["evaluate", "-m", CLIP, "-d", f"wds={wds}", "--out", str(out), "--allow-random", "--templates",
            "single", "--no-progress", "--device", "cpu"]
    assert _cli(argv, capsys)[0] == 0
    before = (out / "predictions" / "wds.parquet").read_bytes()
    shard = wds / "test" / "1.tar"
    data = shard.read_bytes()

    shard.write_bytes(data[:3000])  # cut inside the second image
    assert "is truncated" in _one_line_error(argv, capsys)
    # cut at a member boundary: no end-of-archive marker
    shard.write_bytes(data[: data.index(b"s0000005.cls") // 512 * 512])
    assert "is truncated" in _one_line_error(argv, capsys)
    shard.write_bytes(b"<html>not found</html>" * 40)
    assert "is not a readable tar file" in _one_line_error(argv, capsys)
    shard.write_bytes(data)
    (wds / "test" / "nshards.txt").write_text("4\n")
    assert "says 4 shards but '3.tar' is missing" in _one_line_error(argv, capsys)
    (wds / "test" / "nshards.txt").unlink()
    assert "no test/nshards.txt" in _one_line_error(argv, capsys)
    assert "(not a CLIP_benchmark webdataset" in _one_line_error(argv, capsys)
    assert (out / "predictions" / "wds.parquet").read_bytes() == before  # nothing already predicted is lost

    split = ["--split", "train"]
    (wds / "test" / "nshards.txt").write_text("3\n")
    assert "no train/nshards.txt (splits here: test" in _one_line_error(argv[:-2] + split + argv[-2:], capsys)


def test_class_ids_out_of_range_and_missing_classnames(tmp_path, capsys):
    wds = _hand_made(tmp_path / "wds", tmp_path)
    (wds / "classnames.txt").write_text("goldfish\ntench\n")  # 2 classes; k3, k4 say class 2
    argv = ["evaluate", "-m", CLIP, "-d", f"wds={wds}", "--out", str(tmp_path / "run"), "--allow-random"]
    err = _one_line_error(argv, capsys)
    assert "class id(s) not in 0..1 (classnames.txt has 2 classes): 'test/0.tar/k3.cls=2', 'test/0.tar/k4.cls=2'" in err
    (wds / "classnames.txt").unlink()
    assert "no classnames.txt" in _one_line_error(argv, capsys)


def test_hf_dataset_from_the_local_cache_only(exported, tmp_path, monkeypatch):
    from huggingface_hub import constants

    _, good = exported
    files = {str(p.relative_to(good)): p.read_bytes() for p in sorted(good.rglob("*")) if p.is_file()}
    snapshot = fake_hf_cache(tmp_path / "hub", "clip-benchmark/wds_tiny", files, kind="datasets")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ds = build_dataset(parse_dataset_arg("wds=hf://datasets/clip-benchmark/wds_tiny"))
    assert len(ds) == 9 and ds.root == snapshot
    from clipcompare.errors import UserError

    with pytest.raises(UserError, match="not in the local Hugging Face cache; where there is network, fetch it with: "
                                        "huggingface-cli download --repo-type dataset clip-benchmark/wds_other"):
        build_dataset(parse_dataset_arg("wds=hf://datasets/clip-benchmark/wds_other"))


def test_retrieval_wds_equals_captions_file(exported, tmp_path, capsys):
    wb = _exporter()
    images = [make_image(tmp_path / "img" / f"{k}.jpg", seed=k) for k in range(6)]
    captions = [[f"picture {k} caption {j}" for j in range(5)] for k in range(6)]
    with (tmp_path / "caps.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows([str(p), c] for p, caps in zip(images, captions) for c in caps)
    wb.convert_retrieval_dataset(list(zip(map(str, images), captions)), "test", str(tmp_path / "wds"),
                                 transform=wb.path_to_bytes, max_count=4, verbose=False)
    capsys.readouterr()  # the exporter prints its count whatever verbose says
    common = ["-m", CLIP, "--allow-random", "--device", "cpu", "--json", "--batch-size", "4"]
    assert main(["retrieval", "--wds", str(tmp_path / "wds"), *common]) == 0
    by_wds = json.loads(capsys.readouterr().out)
    assert main(["retrieval", "--captions", str(tmp_path / "caps.csv"), *common]) == 0
    by_file = json.loads(capsys.readouterr().out)
    keys = [f"{side}_retrieval_recall@{k}" for side in ("text", "image") for k in (1, 5, 10)]
    assert [by_wds["results"][0][k] for k in keys] == [by_file["results"][0][k] for k in keys]
    assert by_wds["results"][0]["images"] == 6 and by_wds["results"][0]["captions"] == 30
    # a classification set given to retrieval, and the other way round: one line each
    assert "not 'retrieval'" in _one_line_error(["retrieval", "--wds", str(exported[1]), *common], capsys)
    err = _one_line_error(["evaluate", "-m", CLIP, "-d", f"wds={tmp_path / 'wds'}", "--out", str(tmp_path / "r"),
                           "--allow-random"], capsys)
    assert "use clipcompare retrieval --wds" in err
    # --val-size/--seed draw from the shards as from any source; --on (a COCO split) is refused
    from clipcompare.data.coco import load_wds_captions

    whole = load_wds_captions(tmp_path / "wds").test
    drawn = load_wds_captions(tmp_path / "wds", val_size=4, seed=3).test
    assert list(drawn.paths) == [whole.paths[i] for i in np.random.default_rng(3).permutation(6)[:4]]
    assert [drawn.captions[drawn.paths.index(p)] for p in drawn.paths] == [
        whole.captions[whole.paths.index(p)] for p in drawn.paths]
    assert main(["retrieval", "--wds", str(tmp_path / "wds"), "--val-size", "4", "--seed", "3", *common]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["images"] == 4
    assert "pass a smaller --val-size" in _one_line_error(["retrieval", "--wds", str(tmp_path / "wds"),
                                                          "--val-size", "7", *common], capsys)
    assert "--on picks a COCO split" in _one_line_error(["retrieval", "--wds", str(tmp_path / "wds"), "--on", "val",
                                                        *common], capsys)
    assert main(["retrieval", "--wds", str(tmp_path / "wds"), "--on", "test", *common]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["images"] == 6


def test_dataset_argument_split_suffix():
    assert parse_dataset_arg("wds=/no/such:train").option == "train"
    assert parse_dataset_arg("wds=/no/such").option is None
    hf = parse_dataset_arg("wds=hf://datasets/clip-benchmark/wds_vtab-cifar10")
    assert hf.option is None and str(hf.root) == "hf:/datasets/clip-benchmark/wds_vtab-cifar10"
    assert parse_dataset_arg("wds=hf://datasets/clip-benchmark/wds_vtab-cifar10:train").option == "train"


@pytest.mark.slow  # torchrun: two ranks over gloo
def test_torchrun_ranks_take_whole_shards_and_equal_one_process(exported, tmp_path):
    import os
    import subprocess

    _, wds = exported
    full = evaluate([CLIP], [f"wds={wds}"], options(tmp_path / "full", batch_size=2))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clipcompare",
           "evaluate", "-m", CLIP, "-d", f"wds={wds}", "--out", str(out), "--allow-random", "--templates", "single",
           "--no-progress", "--device", "cpu", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=180, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "predictions" / "wds.parquet"),
                                  pd.read_parquet(full.out / "predictions" / "wds.parquet"))
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["world_size"] == 2 and run["throughput"]["wds"]["images"] == 9


def test_clip_benchmark_imagenet_names_map_to_imagenet():
    """CLIP_benchmark's own ImageNet class names (repeats like 'missile', lemmas like 'crane') map one to one."""
    from importlib.resources import files

    from clipcompare.data.wds import imagenet_indices_of
    from clipcompare.imagenet.classes import IMAGENET_R_INDICES

    names = json.loads(files("clip_benchmark.datasets").joinpath("en_classnames.json").read_text())["imagenet1k"]
    assert imagenet_indices_of(names) == tuple(range(1000))
    assert imagenet_indices_of([names[i] for i in IMAGENET_R_INDICES]) == tuple(IMAGENET_R_INDICES)
    assert imagenet_indices_of(["missile", "tench"]) is None  # 'missile' names two ImageNet classes
    assert imagenet_indices_of(["goldfish", "tench"]) == (1, 0)


def test_a_copy_of_imagenet_r_counts_as_imagenet_r_on_the_robustness_map(tmp_path):
    from clipcompare.imagenet.classes import IMAGENET_R_INDICES, imagenet_classes
    from clipcompare.robustness.runs import read_run

    classes = imagenet_classes()
    wds = tmp_path / "wds_imagenet-r"
    jpg = make_image(tmp_path / "a.jpg").read_bytes()
    _write_shard(wds / "test" / "0.tar", [("k0.jpg", jpg), ("k0.cls", b"0"), ("k1.jpg", jpg), ("k1.cls", b"1")])
    (wds / "test" / "nshards.txt").write_text("1\n")
    (wds / "classnames.txt").write_text("".join(classes[i].clip_name + "\n" for i in IMAGENET_R_INDICES))
    imagenet = make_image_folder(tmp_path / "in", [classes[i].wnid for i in IMAGENET_R_INDICES[:2]], per_class=1)
    result = evaluate([CLIP], [f"imagenet={imagenet}", f"wds={wds}"], options(tmp_path / "run"))
    assert result.metrics["datasets"]["wds"]["stands_for"] == "imagenet-r"
    [point] = read_run(tmp_path / "run").points
    assert point.shift == "imagenet-r" and point.id_top1 is not None  # x: the clean 200-class top-1
    # the same files under another name are a plain wds set
    (tmp_path / "wds_imagenet-r").rename(tmp_path / "mine")
    assert build_dataset(parse_dataset_arg(f"wds={tmp_path / 'mine'}")).stands_for is None


def test_shards_are_read_alike_by_worker_processes_and_the_gpu_decode_reader(exported):
    """The reader pickles into DataLoader workers, and ``--decode gpu``'s file reader gets the same bytes."""
    import pickle

    import torch
    from torchvision.transforms.functional import pil_to_tensor

    from clipcompare.data.decode import DecodedImages, batch_loader
    from clipcompare.data.gpu_decode import EncodedImages

    folder, wds = exported
    ds = build_dataset(parse_dataset_arg(f"wds={wds}"))
    files = build_dataset(parse_dataset_arg(f"folder={folder}"))
    paths = [s.path for s in ds.samples]
    copy = pickle.loads(pickle.dumps(ds.reader))
    assert [copy.open(p).read() for p in paths] == [ds.reader.open(p).read() for p in paths]
    inline = list(batch_loader(DecodedImages(ds.root, paths, [pil_to_tensor], ds.reader), 4, workers=0))
    workers = list(batch_loader(DecodedImages(ds.root, paths, [pil_to_tensor], ds.reader), 4, workers=1))
    assert [b.positions.tolist() for b in workers] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    for a, b in zip(inline, workers):
        assert torch.equal(a.tensors[0], b.tensors[0]) and not a.failures and not b.failures
    enc_w = EncodedImages(ds.root, paths, [], ds.reader)
    enc_f = EncodedImages(files.root, [s.path for s in files.samples], [])
    for i in range(len(paths)):
        assert torch.equal(enc_w[i][1], enc_f[i][1])  # the JPEG bytes the device decoder gets


def test_another_split_on_the_same_out_is_refused(exported, tmp_path, monkeypatch, capsys):
    """Keys repeat across splits (0.tar/s0000000 in each): an unfinished test run is not resumed as train."""
    import shutil

    _, good = exported
    wds = tmp_path / "wds"
    shutil.copytree(good, wds)
    shutil.copytree(wds / "test", wds / "train")
    out = tmp_path / "run"
    interrupt_after_first_chunk(monkeypatch, lambda: evaluate([CLIP], [f"wds={wds}"],
                                                              options(out, batch_size=2, chunk_size=2)))
    monkeypatch.undo()
    argv = ["evaluate", "-m", CLIP, "-d", f"wds={wds}", "--out", str(out), "--allow-random", "--templates",
            "single", "--no-progress", "--device", "cpu"]
    err = _one_line_error([*argv, "--split", "train"], capsys)
    assert f"holds a run with different settings (datasets: wds={wds}:test then, wds={wds}:train now)" in err
    assert json.loads((out / "run.json").read_text())["datasets"][0]["option"] == "test"
    ds = build_dataset(parse_dataset_arg(f"wds={wds}:train"))
    assert ds.samples[0].path == "train/0.tar/s0000000" and ds.option == "train"


def test_labels_that_are_no_integer_are_skipped_and_counted(tmp_path, capsys):
    wds = _hand_made(tmp_path / "wds", tmp_path)
    png = make_image(tmp_path / "c.png", seed=5).read_bytes()
    _write_shard(wds / "test" / "1.tar", [("k5.png", png), ("k5.cls", "²".encode()),
                                          ("k6.png", png), ("k6.cls", b"--5"), ("k7.png", png), ("k7.cls", b"1"),
                                          ("k8.png", png), ("k8.cls", "٣".encode()), ("k9.png", png),
                                          ("k9.cls", b"+1"), ("ka.png", png), ("ka.cls", b"1_0")])
    (wds / "test" / "nshards.txt").write_text("2\n")
    result = evaluate([CLIP], [f"wds={wds}"], options(tmp_path / "run"))
    entry = result.metrics["datasets"]["wds"]
    assert entry["n_files"] == 11 and entry["skipped"]["count"] == 8 and entry["n_images"] == 3
    skipped = {s["path"]: s["reason"] for s in map(json.loads, (tmp_path / "run" / "skipped.jsonl").read_text()
                                                   .splitlines())}
    assert "the .cls label '²' is not a class id" in skipped["test/1.tar/k5"]
    assert "the .cls label '--5' is not a class id" in skipped["test/1.tar/k6"]
    # int() would read these three as class ids; only plain digits are
    assert all("is not a class id" in skipped[f"test/1.tar/{k}"] for k in ("k8", "k9", "ka"))
    (wds / "test" / "nshards.txt").write_text("²\n")
    argv = ["evaluate", "-m", CLIP, "-d", f"wds={wds}", "--out", str(tmp_path / "run2"), "--allow-random"]
    assert "expected a number of shards >= 1, got '²'" in _one_line_error(argv, capsys)


def test_clip_benchmark_objectnet_is_not_counted_as_objectnet(tmp_path):
    """No ImageNet ids in its class names, and its images keep the frame objectnet= crops: its own set."""
    wds = tmp_path / "wds_objectnet"
    jpg = make_image(tmp_path / "a.jpg").read_bytes()
    _write_shard(wds / "test" / "0.tar", [("k0.jpg", jpg), ("k0.cls", b"0")])
    (wds / "test" / "nshards.txt").write_text("1\n")
    (wds / "classnames.txt").write_text("".join(f"object {k}\n" for k in range(113)))
    ds = build_dataset(parse_dataset_arg(f"wds={wds}"))
    assert ds.stands_for is None and ds.benchmark == "wds" and ds.classes.imagenet_indices is None
    assert any("not counted as objectnet" in n and "objectnet=PATH" in n for n in ds.notes)
