"""The evaluation loop with tiny random models on generated images: outputs, masking, skips, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipcompare.classes import ClassSet
from clipcompare.data import build_dataset, parse_dataset_arg
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import prob_column, top_column
from clipcompare.imagenet.classes import IMAGENET_R_INDICES, imagenet_classes
from clipcompare.models.classifier import create_classifier
from helpers import interrupt_after_first_chunk, make_image, make_image_folder

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
WNIDS = ["n01440764", "n01443537", "n02102040"]
R_WNIDS = [imagenet_classes()[i].wnid for i in IMAGENET_R_INDICES[:3]]


def options(out: Path, **kw) -> EvaluateOptions:
    base = dict(out=out, workers=0, templates="single", allow_random=True, progress=False, device="cpu")
    base.update(kw)
    return EvaluateOptions(**base)


def add_broken_images(root: Path) -> list[str]:
    """A truncated JPEG, a zero-byte file and a text file named .jpg; returns their relative paths."""
    good = make_image(root / WNIDS[0] / "zz_source.jpg", seed=99)
    data = good.read_bytes()
    good.unlink()
    (root / WNIDS[0] / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / WNIDS[1] / "empty.jpg").write_bytes(b"")
    (root / WNIDS[2] / "text.jpg").write_text("this is not a JPEG\n")
    return [f"{WNIDS[0]}/cut.jpg", f"{WNIDS[1]}/empty.jpg", f"{WNIDS[2]}/text.jpg"]


@pytest.fixture(scope="module")
def classifiers():
    torch.manual_seed(0)
    return {
        RESNET: create_classifier(RESNET, allow_random=True),
        CLIP: create_classifier(CLIP, allow_random=True, templates="single"),
    }


def test_imagenet_r_masks_both_models_to_200_classes(tmp_path, classifiers):
    make_image_folder(tmp_path, R_WNIDS[:1], per_class=2)
    ds = build_dataset(parse_dataset_arg(f"imagenet-r={tmp_path}"))
    assert ds.classes == ClassSet.imagenet(IMAGENET_R_INDICES)
    from PIL import Image

    images = [Image.open(tmp_path / s.path).convert("RGB") for s in ds.samples]
    with torch.inference_mode():
        for clf in classifiers.values():
            x = torch.stack([clf.preprocess(im) for im in images])
            logits = clf.logits(x, ds.classes)
            assert logits.shape == (2, 200)
        # CLIP: the head is built for exactly those 200 classes; each of its columns is the class's own
        # normalised text embedding, so it equals the matching column of the 1000-class head
        clip = classifiers[CLIP]
        x = torch.stack([clip.preprocess(im) for im in images])
        head, full_head = clip.head(ds.classes), clip.head(ClassSet.imagenet())
        assert head.shape == (64, 200) and full_head.shape == (64, 1000)
        torch.testing.assert_close(head, full_head[:, list(IMAGENET_R_INDICES)], rtol=0, atol=1e-6)
        feats = clip.model.encode_image(x)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        scale = clip.model.logit_scale.exp()
        torch.testing.assert_close(clip.logits(x, ds.classes), scale * feats @ head, rtol=0, atol=1e-5)
        torch.testing.assert_close(clip.logits(x, ds.classes),
                                   (scale * feats @ full_head)[:, list(IMAGENET_R_INDICES)], rtol=0, atol=1e-4)
        sup = classifiers[RESNET]
        x = torch.stack([sup.preprocess(im) for im in images])
        full = sup.model(x)
        assert full.shape == (2, 1000)
        torch.testing.assert_close(sup.logits(x, ds.classes), full[:, list(IMAGENET_R_INDICES)])


def test_run_writes_parquet_metrics_and_run_json(tmp_path):
    data = make_image_folder(tmp_path / "r", R_WNIDS, per_class=2)
    out = tmp_path / "run"
    result = evaluate([RESNET, CLIP], [f"imagenet-r={data}"], options(out, batch_size=4))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions", "run.json"]
    assert [p.name for p in (out / "predictions").iterdir()] == ["imagenet-r.parquet"]

    df = pd.read_parquet(out / "predictions" / "imagenet-r.parquet")
    assert list(df["path"]) == [f"{w}/img_{k}.JPEG" for w in R_WNIDS for k in range(2)]
    assert list(df["target"]) == [0, 0, 1, 1, 2, 2]  # indices within the 200 ImageNet-R classes
    names = result.models
    for name in names:
        top, prob = np.stack(df[top_column(name)]), np.stack(df[prob_column(name)])
        assert top.shape == prob.shape == (6, 5) and top.max() < 200
        assert np.all(np.diff(prob, axis=1) <= 0) and np.all(prob.sum(axis=1) <= 1 + 1e-5)

    # the stored top-5 are softmax top-5 of the 200 masked logits, recomputed here image by image
    from PIL import Image

    torch.manual_seed(0)
    ref = create_classifier(RESNET, allow_random=True)  # evaluate seeds random inits the same way
    classes = ClassSet.imagenet(IMAGENET_R_INDICES)
    with torch.inference_mode():
        x = torch.stack([ref.preprocess(Image.open(data / p).convert("RGB")) for p in df["path"]])
        p, i = ref.logits(x, classes).softmax(-1).topk(5)
    assert (np.stack(df[top_column(names[0])]) == i.numpy()).all()
    np.testing.assert_allclose(np.stack(df[prob_column(names[0])]), p.numpy(), rtol=1e-4, atol=1e-6)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    entry = metrics["datasets"]["imagenet-r"]
    assert entry["n_images"] == 6 and entry["n_classes"] == 200 and entry["skipped"]["count"] == 0
    for name in names:
        m = entry["models"][name]
        assert m["top1"] == pytest.approx(float((np.stack(df[top_column(name)])[:, 0] == df["target"]).mean()))
    assert len(entry["comparisons"]) == 1

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["start_time"] and run["end_time"]
    assert [m["name"] for m in run["models"]] == names and all(len(m["fingerprint"]) == 16 for m in run["models"])
    assert {"torch", "open_clip", "clipcompare"} <= set(run["versions"])
    from importlib import metadata
    # the optional libraries are recorded by their installed version (TorchCodec decodes --decode gpu)
    assert run["versions"]["torchcodec"] == metadata.version("torchcodec")
    assert run["datasets"][0]["kind"] == "imagenet-r"


@pytest.mark.parametrize("workers", [0, 2])
def test_broken_images_are_skipped_and_counted(tmp_path, workers):
    data = make_image_folder(tmp_path / "d", WNIDS, per_class=2)
    broken = add_broken_images(data)
    out = tmp_path / "run"
    result = evaluate([CLIP], [f"imagenet={data}"], options(out, workers=workers, batch_size=3))
    df = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    assert len(df) == 6 and not set(broken) & set(df["path"])
    lines = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == sorted(broken)
    assert all(r["reason"] and r["dataset"] == "imagenet" for r in lines)
    entry = result.metrics["datasets"]["imagenet"]
    assert entry["skipped"]["count"] == 3 and result.metrics["skipped_images"] == 3
    assert entry["n_images"] == 6 and entry["n_files"] == 9


def test_resume_after_interrupt_gives_identical_results(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "d", WNIDS, per_class=3)
    opts = dict(batch_size=2, chunk_size=1)  # a part file per batch
    full = evaluate([RESNET, CLIP], [f"imagenet={data}"], options(tmp_path / "full", **opts))

    out = tmp_path / "resumed"
    interrupt_after_first_chunk(monkeypatch,
                                lambda: evaluate([RESNET, CLIP], [f"imagenet={data}"], options(out, **opts)))
    parts = out / "predictions" / "imagenet.parts"
    assert [p.name for p in parts.iterdir()] == ["part-00000.parquet"]
    assert not (out / "predictions" / "imagenet.parquet").exists()
    # leftovers of a kill -9: a torn temp file and an unreadable part
    (parts / ".part-00001.parquet.tmp").write_bytes(b"PAR1 torn")
    (parts / "part-00007.parquet").write_bytes(b"garbage")

    resumed = evaluate([RESNET, CLIP], [f"imagenet={data}"], options(out, **opts))
    a = pd.read_parquet(tmp_path / "full" / "predictions" / "imagenet.parquet")
    b = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    assert len(b) == 9 and b["path"].is_unique
    pd.testing.assert_frame_equal(a, b)
    assert not parts.exists()
    assert resumed.metrics == full.metrics
    run = json.loads((out / "run.json").read_text())
    assert len(run["resumed_at"]) == 1 and run["status"] == "complete"


def test_cli_summary_skips_supervised_on_non_imagenet_folder_and_guards_resume(tmp_path, capsys):
    from clipcompare.cli import main

    imagenet = make_image_folder(tmp_path / "in", WNIDS[:2], per_class=2)
    plain = make_image_folder(tmp_path / "plain", ["blorp", "zzyzx"], per_class=2)
    out = tmp_path / "run"
    argv = ["evaluate", "-m", RESNET, "-m", CLIP, "-d", f"imagenet={imagenet}", "-d", f"folder={plain}",
            "--out", str(out), "--allow-random", "--templates", "single", "--workers", "0", "--no-progress",
            "--device", "cpu", "--channels-last"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines()]
    assert rows[0][:3] == ["dataset", "model", "images"]
    assert [r[:2] for r in rows[1:4]] == [["imagenet", "resnet18:IMAGENET1K_V1"], ["imagenet", CLIP], ["folder", CLIP]]
    assert "folder: note:" in text

    metrics = json.loads((out / "metrics.json").read_text())
    folder = metrics["datasets"]["folder"]
    assert list(folder["models"]) == [CLIP] and any("skipped" in n for n in folder["notes"])
    assert list(pd.read_parquet(out / "predictions" / "folder.parquet").columns) == [
        "path", "target", top_column(CLIP), prob_column(CLIP)]

    before = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    assert main(argv) == 0  # the same command again: nothing left to do, same results
    capsys.readouterr()
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "predictions" / "imagenet.parquet"))

    other = [a if a != CLIP else "clip:tiny-ViT" for a in argv]
    assert main(other) == 2
    err = capsys.readouterr().err.strip()
    assert "different settings" in err and len(err.splitlines()) == 1


@pytest.mark.slow  # a subprocess, killed, and a 90-image run
def test_kill_9_mid_run_then_resume(tmp_path):
    """A real SIGKILL between chunks: the same command finishes with the uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_image_folder(tmp_path / "d", WNIDS, per_class=30, size=(48, 40))
    args = ["-m", CLIP, "-d", f"imagenet={data}", "--allow-random", "--workers", "0", "--no-progress",
            "--device", "cpu", "--batch-size", "2", "--chunk-size", "2", "--templates", "single"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipcompare", "evaluate", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "predictions" / "imagenet.parts"
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("part-*.parquet"))) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (out / "predictions" / "imagenet.parquet").exists():
        pytest.skip("the run finished before it could be killed")
    from clipcompare.cli import main

    assert main(["evaluate", *args, "--out", str(out)]) == 0  # the same command, in-process to save start-up
    ref = evaluate([CLIP], [f"imagenet={data}"], options(tmp_path / "ref", batch_size=2))
    got = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    assert len(got) == 90 and got["path"].is_unique
    pd.testing.assert_frame_equal(got, pd.read_parquet(ref.out / "predictions" / "imagenet.parquet"))


def test_default_workers_decode_inline_on_cpu(monkeypatch):
    """On CPU the forward passes use every core, so decoding stays in the main process."""
    from clipcompare.cli.evaluate_cmd import default_workers

    assert default_workers("cpu") == 0
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert default_workers(None) == 0
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert default_workers("cuda") == 7
    assert default_workers(None) == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the 8 cores
    assert default_workers("cuda") == 3
