"""`clipcompare train`: learning on generated COCO data, exact counts, SIGKILL resume, torchrun, trained=PATH.

Tiny models throughout (resnet18 at 32 px, the tiny open_clip text tower, random weights); the
generated captions describe the drawn shapes, so a short run can learn them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clipcompare.train.config import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(image_model="resnet18", text_model="clip:tiny-ViT", image_size=32, allow_random=True, workers=0)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from clipcompare.data.synthetic import make_coco

    return make_coco(tmp_path_factory.mktemp("coco"), 200, 60, seed=0)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipcompare", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=600)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    from clipcompare.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(coco, tmp_path_factory):
    """One short run shared by the tests that read its outputs."""
    from clipcompare.train.main import train

    out = tmp_path_factory.mktemp("runs") / "learn"
    config = TrainConfig(out=str(out), coco=str(coco), train_size=200, val_size=60, epochs=4, batch_size=25,
                         lr=2e-3, warmup=2, cache_images=True, seed=0, **TINY)
    return out, train(config, command=["test"])


def test_short_run_lifts_recall_far_above_chance(trained_run):
    out, summary = trained_run
    chance = 1 / 60
    rows = {r["role"]: r for r in json.loads((out / "retrieval.json").read_text())["rows"]}
    assert set(rows) == {"start", "trained", "reference"}
    start, trained = rows["start"], rows["trained"]
    assert start["images"] == trained["images"] == 60 and trained["captions"] == 300
    # the untrained head is near chance; training lifts both directions far above it
    assert (start["text_retrieval_recall@1"] + start["image_retrieval_recall@1"]) / 2 < 4 * chance
    assert trained["text_retrieval_recall@1"] > 5 * chance
    assert trained["image_retrieval_recall@1"] > 5 * chance
    assert trained["image_retrieval_recall@10"] > start["image_retrieval_recall@10"] + 0.2
    epochs = _lines(out / "log" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == list(range(4))
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["text_retrieval_recall@1"] == pytest.approx(trained["text_retrieval_recall@1"])


def test_run_directory_layout(trained_run):
    out, summary = trained_run
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "train" and run["finished"] and run["random_weights"] == ["resnet18:IMAGENET1K_V1", "clip:tiny-ViT"]
    assert run["counts"]["trainable"] == 11_176_512 + 295_488 + 1  # backbone + head + temperature
    assert run["settings"]["batch_size"] == 25 and run["split"]
    steps = _lines(out / "log" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 4 * 8 + 1))  # 200 images / 25 = 8 steps per epoch
    assert set(steps[0]) == {"epoch", "step", "loss", "lr", "temperature", "images_per_s"}
    assert all(0 < s["temperature"] <= 100 for s in steps)
    examples = json.loads((out / "retrieval_examples.json").read_text())
    assert len(examples) == 5 and all(len(e["top5"]) == 5 and (Path(e["root"]) / e["image"]).is_file() for e in examples)
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["config"]["epochs"] == 4
    assert len(list((out / "cache").glob("*.u8"))) == 2


def test_trained_checkpoint_is_a_model_spec(trained_run, tmp_path, capsys):
    """trained=PATH loads with open_clip's interface and works zero-shot in classify."""
    from clipcompare.models.classifier import ClipClassifier, create_classifier
    from clipcompare.models.contrastive import load_trained, read_checkpoint
    from clipcompare.models.loading import load_model
    from clipcompare.models.spec import parse_spec
    from clipcompare.zeroshot import encode_prompts

    out, _ = trained_run
    path = out / "checkpoints" / "latest.pt"
    spec = parse_spec(f"trained={path}")
    assert spec.family == "trained" and spec.name == "trained=learn/latest.pt"
    loaded = load_model(spec)
    model = loaded.model
    # the same weights as the training model's final state
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    again = load_trained(path)
    tokenizer = again.tokenizer
    assert again.architecture.image_size == read_checkpoint(path)["config"]["image_size"] == 32
    tokens = tokenizer(["a red circle at the top", "a blue square"])
    img = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(img), again.encode_image(img))
    with torch.no_grad():
        feats_i, feats_t, scale = model(img, tokens)
        torch.testing.assert_close(feats_t, torch.nn.functional.normalize(model.encode_text(tokens), dim=-1))
    assert float(scale) == pytest.approx(float(model.logit_scale.detach().exp()))
    # the zero-shot code's trimmed text path finds the frozen tower and agrees with the full forward
    torch.testing.assert_close(encode_prompts(model, tokenizer, ["a red circle"]),
                               encode_prompts(model, tokenizer, ["a red circle"], trim=False), atol=1e-5, rtol=0)
    clf = create_classifier(spec)
    assert isinstance(clf, ClipClassifier)
    import numpy as np

    from clipcompare.data.synthetic import shape_image

    image = tmp_path / "shape.png"
    shape_image(np.random.default_rng(0), "red", "circle", "left", (64, 64)).save(image)
    code, out, err = _main(capsys, "classify", str(image), "--labels", "red circle,blue square", "--templates",
                           "single", "-m", f"trained={path}", "--json")
    assert code == 0, err
    preds = json.loads(out)["results"][0]["predictions"]["trained=learn/latest.pt"]
    assert {p["label"] for p in preds} == {"red circle", "blue square"}
    assert sum(p["prob"] for p in preds) == pytest.approx(1, abs=1e-4)
    # evaluate: zero-shot over a folder whose class names are captions' words
    folder = tmp_path / "shapes"
    rng = np.random.default_rng(1)
    for colour, shape in (("red", "circle"), ("blue", "square")):
        (folder / f"{colour} {shape}").mkdir(parents=True)
        for k in range(3):
            shape_image(rng, colour, shape, "left", (64, 64)).save(folder / f"{colour} {shape}" / f"{k}.png")
    code, out_text, err = _main(capsys, "evaluate", "-m", f"trained={path}", "-d", f"folder={folder}",
                                "--out", str(tmp_path / "eval"), "--templates", "single", "--workers", "0",
                                "--no-progress", "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "trained=learn/latest.pt" in json.dumps(metrics) and "folder" in out_text
    code, out_text, err = _main(capsys, "inspect", "-m", f"trained={path}", "--json")
    assert code == 0, err
    assert json.loads(out_text)["models"][0]["params_image"] == 11_176_512 + 295_488


def test_retrieval_command_reproduces_the_trained_row(trained_run, coco, capsys):
    """`clipcompare retrieval -m trained=PATH` on the same split gives the run's own final recalls."""
    out, _ = trained_run
    code, stdout, err = _main(capsys, "retrieval", "-m", f"trained={out / 'checkpoints' / 'latest.pt'}",
                              "--coco", str(coco), "--val-size", "60", "--device", "cpu", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    row = doc["results"][0]
    trained = next(r for r in json.loads((out / "retrieval.json").read_text())["rows"] if r["role"] == "trained")
    for key in ("text_retrieval_recall@1", "text_retrieval_recall@5", "image_retrieval_recall@1",
                "image_retrieval_recall@10"):
        assert row[key] == pytest.approx(trained[key]), key


@pytest.mark.slow  # subprocesses: a killed run and its resume
def test_resume_after_sigkill_is_bitwise_identical(coco, tmp_path, capsys):
    from clipcompare.train.loop import KILL_ENV
    from clipcompare.train.main import train

    base = TrainConfig(out=str(tmp_path / "whole"), coco=str(coco), train_size=32, val_size=16, epochs=2,
                       batch_size=8, accum_freq=1, lr=1e-3, warmup=1, save_every=2, seed=3, **TINY)
    train(base, command=["test"])
    killed = tmp_path / "killed"
    args = ["train", "--coco", str(coco), "--train-size", "32", "--val-size", "16", "--epochs", "2",
            "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--save-every", "2", "--seed", "3",
            "--image-model", "resnet18", "--text-model", "clip:tiny-ViT", "--image-size", "32",
            "--allow-random", "--workers", "0", "--out", str(killed)]
    res = _cli(*args, env={**_env(), KILL_ENV: "7"})  # epoch 1, step 3 of 4: the last checkpoint is step 6
    assert res.returncode == -9, res.stderr[-2000:]
    assert len(_lines(killed / "log" / "steps.jsonl")) == 7
    state = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)["training"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)
    # a different setting is refused with one line
    code, _, err = _main(capsys, *[a if a != "1e-3" else "2e-3" for a in args], "--resume")
    assert code == 2 and err.count("\n") == 1 and "lr: 0.001 → 0.002" in err
    train(replace(base, out=str(killed), resume=True), command=["test"])
    a = torch.load(tmp_path / "whole" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for x, y in zip(a["training"]["optimizer"]["state"].values(), b["training"]["optimizer"]["state"].values()):
        assert torch.equal(x["exp_avg"], y["exp_avg"])
    steps_a = _lines(tmp_path / "whole" / "log" / "steps.jsonl")
    steps_b = _lines(killed / "log" / "steps.jsonl")
    assert [s["step"] for s in steps_b] == list(range(1, 9))  # the steps redone after the kill logged once
    assert [s["loss"] for s in steps_a] == [s["loss"] for s in steps_b]


def _ddp_args(coco: Path, out: Path) -> list[str]:
    """A 2-epoch training run: 40 images / 2 processes / 8 per batch = 2 steps per epoch, checkpoint every step."""
    return ["train", "--coco", str(coco), "--train-size", "40", "--val-size", "16", "--epochs", "2",
            "--batch-size", "8", "--warmup", "1", "--save-every", "1", "--image-model", "resnet18",
            "--text-model", "clip:tiny-ViT", "--image-size", "32", "--allow-random", "--workers", "0",
            "--out", str(out)]


def _torchrun(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clipcompare", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=600)


@pytest.fixture(scope="module")
def ddp_run(coco, tmp_path_factory) -> Path:
    """An uninterrupted 2-process gloo run."""
    out = tmp_path_factory.mktemp("ddp") / "whole"
    res = _torchrun(_ddp_args(coco, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("parameters: trainable") == 1
    return out


@pytest.mark.slow  # torchrun: two processes over gloo
def test_torchrun_two_processes_gloo(ddp_run):
    run = json.loads((ddp_run / "run.json").read_text())
    assert run["world_size"] == 2 and run["finished"]
    # 2 steps per epoch, each seeing 16 images, logged once
    steps = _lines(ddp_run / "log" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert len(_lines(ddp_run / "log" / "epochs.jsonl")) == 2
    assert (ddp_run / "checkpoints" / "latest.pt").is_file() and (ddp_run / "retrieval.json").is_file()


@pytest.mark.slow  # torchrun, killed and resumed
def test_torchrun_run_killed_and_resumed_is_bitwise_identical(coco, ddp_run, tmp_path, capsys):
    """Both processes SIGKILLed after step 3 (epoch 1, step 1); resumed by torchrun with the same N, the
    run ends with the uninterrupted run's weights and losses. Another N is refused with one line."""
    from clipcompare.train.loop import KILL_ENV

    killed = tmp_path / "killed"
    res = _torchrun(_ddp_args(coco, killed), env={KILL_ENV: "3"})
    assert res.returncode != 0
    state = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)["training"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 3)
    code, _, err = _main(capsys, *_ddp_args(coco, killed), "--resume")  # one process, not two
    assert code == 2 and err.count("\n") == 1 and "trained by 2 process(es), this job has 1" in err
    res = _torchrun([*_ddp_args(coco, killed), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(ddp_run / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    steps_a, steps_b = _lines(ddp_run / "log" / "steps.jsonl"), _lines(killed / "log" / "steps.jsonl")
    assert [s["step"] for s in steps_b] == [1, 2, 3, 4]
    assert [s["loss"] for s in steps_a] == [s["loss"] for s in steps_b]
    assert json.loads((killed / "run.json").read_text())["resumed"]


def _trainer(precision: str = "fp32", accum_freq: int = 1, seed: int = 0):
    """A Trainer on a backbone without batch statistics (conv, ReLU, pool): 8 images, 8 cached captions."""
    import numpy as np
    from open_clip.loss import ClipLoss
    from torch import nn

    from clipcompare.models.contrastive import Architecture, ContrastiveModel, ImageTower
    from clipcompare.train.distributed import DistInfo
    from clipcompare.train.loop import Trainer

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    arch = Architecture(image_arch="toy", text_model="none", quick_gelu=False, embed_dim=6, image_size=8,
                        learn_temperature=True)
    model = ContrastiveModel(ImageTower(backbone, 8, 6, image_size=8), nn.Identity(), False, architecture=arch)
    text = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    return Trainer(model, model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5),
                   torch.amp.GradScaler("cpu", enabled=False), lambda step: 0.5, ClipLoss(), text,
                   np.arange(8), torch.device("cpu"), DistInfo(), precision=precision, accum_freq=accum_freq)


def test_accumulated_step_equals_one_big_batch():
    """--accum-freq 2 with 4 images each makes the update of one batch of 8 (open_clip's feature caching:
    the contrastive batch is the whole step), unlike two separate 4-image losses would."""
    import numpy as np

    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    captions = np.zeros(8, dtype=np.int64)  # image i uses caption offset[i] + 0 = i
    before = {k: v.clone() for k, v in _trainer().model.state_dict().items()}
    whole, accum, halves = _trainer(), _trainer(accum_freq=2), _trainer()
    out_whole = whole.step([(torch.arange(8), pixels)], captions, 0)
    out_accum = accum.step([(torch.arange(4), pixels[:4]), (torch.arange(4, 8), pixels[4:])], captions, 0)
    halves.step([(torch.arange(4), pixels[:4])], captions, 0)  # what accumulating per-micro-batch losses
    halves.step([(torch.arange(4, 8), pixels[4:])], captions, 1)  # would train instead
    assert out_whole["images"] == out_accum["images"] == 8
    assert out_accum["loss"] == pytest.approx(out_whole["loss"], abs=1e-6)
    a, b, c = whole.model.state_dict(), accum.model.state_dict(), halves.model.state_dict()
    assert any(not torch.equal(a[k], before[k]) for k in a)  # the step changed the weights
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def test_bf16_step_on_cpu_follows_fp32():
    """A bf16-autocast step (the CPU path of --precision bf16) gives the fp32 loss to bf16 accuracy
    and keeps fp32 master weights."""
    import numpy as np

    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    captions = np.zeros(8, dtype=np.int64)
    fp32, bf16 = _trainer(), _trainer("bf16")
    before = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    l32 = fp32.step([(torch.arange(8), pixels)], captions, 0)["loss"]
    l16 = bf16.step([(torch.arange(8), pixels)], captions, 0)["loss"]
    assert l16 == pytest.approx(l32, rel=1e-2) and l16 != l32
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    a, b = fp32.model.state_dict(), bf16.model.state_dict()
    for k in a:  # each tensor's update within 5% of the fp32 update (bf16 keeps ~3 significant digits)
        da, db = a[k] - before[k], b[k] - before[k]
        assert (da - db).norm() <= 0.05 * da.norm(), k


def test_bad_inputs_exit_2_with_one_line(coco, tmp_path, capsys):
    def error(*args: str) -> str:
        code, _, err = _main(capsys, *args)
        lines = [ln for ln in err.splitlines() if ln.startswith("clipcompare: error:")]
        assert code == 2 and len(lines) == 1, err
        return lines[0]

    assert "--coco" in error("train", "--out", str(tmp_path / "r"))
    assert "--train-size" in error("train", "--coco", str(coco), "--out", str(tmp_path / "r2"), "--allow-random")
    assert "no run" in error("train", "--coco", str(coco), "--train-size", "20", "--val-size", "10",
                             "--out", str(tmp_path / "r3"), "--resume")
    assert "--embed-dim" in error("train", "--coco", str(coco), "--train-size", "20", "--val-size", "10",
                                  "--out", str(tmp_path / "r4"), "--image-model", "resnet18",
                                  "--text-model", "clip:tiny-ViT", "--embed-dim", "512", "--allow-random")
    from clipcompare.rundir import RunLock

    with RunLock(tmp_path / "busy", "clipcompare train"):  # a live job owns this run directory
        assert "in use by clipcompare train" in error("train", "--coco", str(coco), "--train-size", "20",
                                                      "--val-size", "10", "--out", str(tmp_path / "busy"),
                                                      "--allow-random", "--image-model", "resnet18",
                                                      "--text-model", "clip:tiny-ViT")
    assert "checkpoint not found" in error("inspect", "-m", "trained=" + str(tmp_path / "missing.pt"))
    assert "trained=PATH" in error("inspect", "-m", "trained")


@pytest.mark.slow
def test_reference_model_counts_exact(tmp_path):
    """ResNet-50 + head with the ViT-B/32 text tower, built with random weights: the reference's counts."""
    import open_clip

    from clipcompare.train.model import build_model, parameter_counts

    config = TrainConfig(out=str(tmp_path), allow_random=True, fixed_temperature=True)
    counts = parameter_counts(build_model(config).model)
    assert (counts["backbone"], counts["head"], counts["trainable"]) == (23_508_032, 5_245_440, 28_753_472)
    clip = open_clip.create_model("ViT-B-32")
    text = sum(p.numel() for p in clip.parameters()) - sum(p.numel() for p in clip.visual.parameters()) - 1
    assert counts["frozen"] == text == 63_428_096
    learnt = parameter_counts(build_model(replace(config, fixed_temperature=False)).model)
    assert learnt["trainable"] == 28_753_473 and learnt["temperature"] == 1


def test_image_cache_is_exact_and_skips_corrupt_images(tmp_path):
    """--cache-images serves exactly the decoded+resized pixels; an undecodable file is skipped and counted."""
    from clipcompare.data.decode import load_rgb
    from clipcompare.models.contrastive import Normalize, Preprocess, ResizeToUint8
    from clipcompare.train.images import PixelSource
    from helpers import make_image

    paths = [f"{k}.jpg" for k in range(5)]
    for k, p in enumerate(paths):
        make_image(tmp_path / "img" / p, size=(40 + 7 * k, 30), seed=k)
    (tmp_path / "img" / "2.jpg").write_bytes(b"not a jpeg")
    requests = [[4, 2, 0], [1, 3]]
    plain = PixelSource("val", tmp_path / "img", paths, 24)
    cached = PixelSource("val", tmp_path / "img", paths, 24, cache_dir=tmp_path / "cache")
    assert cached.valid_indices() == [0, 1, 3, 4] and set(cached.failed) == {2}
    for (pa, xa), (pb, xb) in zip(plain.batches(requests), cached.batches(requests)):
        assert pa.tolist() == pb.tolist() and torch.equal(xa, xb)
        for pos, pixels in zip(pa.tolist(), xa):
            assert torch.equal(pixels, ResizeToUint8(24)(load_rgb(tmp_path / "img" / paths[pos])))
    assert set(plain.failed) == {2}
    reopened = PixelSource("val", tmp_path / "img", paths, 24, cache_dir=tmp_path / "cache", build_cache=False)
    assert reopened.valid_indices() == [0, 1, 3, 4]
    # the trained model's preprocess is the same resize followed by the normalisation
    img = load_rgb(tmp_path / "img" / "0.jpg")
    assert torch.equal(Preprocess(24)(img), Normalize()(ResizeToUint8(24)(img)))
