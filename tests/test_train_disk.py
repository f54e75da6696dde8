"""`clipcompare train` when the disk or the run directory lets it down: one line, exit 2, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipcompare.cli import main

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a real ENOSPC)")


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from clipcompare.data.synthetic import make_coco

    return make_coco(tmp_path_factory.mktemp("coco"), 24, 8, seed=0)


def _args(coco: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--coco", str(coco), "--train-size", "16", "--val-size", "8", "--epochs", "2",
            "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--image-model", "resnet18",
            "--text-model", "clip:tiny-ViT", "--image-size", "32", "--allow-random", "--workers", "0",
            "--out", str(out), *extra]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("clipcompare: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_run_that_cannot_take_one_step_leaves_no_run_behind(coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(coco, out, "--batch-size", "64")) == 2
    assert "cannot fill one step" in _error(capsys)
    assert not (out / "run.json").exists()
    assert main(_args(coco, out)) == 0  # the same --out takes the corrected command: nothing is in the way


def test_disk_full_while_logging_a_step_is_one_line(coco, tmp_path, monkeypatch, capsys):
    import clipcompare.fileio as fileio

    out = tmp_path / "run"

    def open_(path, mode="r", *args, **kwargs):  # the kernel's own ENOSPC, from /dev/full
        return open("/dev/full" if Path(path).name == "steps.jsonl" else path, mode, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(fileio, "open", open_, raising=False)
        assert main(_args(coco, out)) == 2
    assert _error(capsys) == f"clipcompare: error: cannot write {out / 'log' / 'steps.jsonl'}: No space left on device"
    assert (out / "run.json").is_file() and not _temp_files(out)


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one_and_resumes(coco, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(".latest.pt.tmp"):
            saves.append(f)
            if len(saves) == 2:  # epoch 2's checkpoint meets a full disk: torch raises RuntimeError, not OSError
                return real_save(obj, "/dev/full", *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", save)
        assert main(_args(coco, out)) == 2
    line = _error(capsys)
    assert line.startswith(f"clipcompare: error: cannot write {out / 'checkpoints' / 'latest.pt'}: torch.save could "
                           "not write the file (is the disk full?)")
    assert not _temp_files(out)
    kept = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["training"]
    assert kept["epoch"] == 1  # epoch 1's checkpoint is whole
    assert main(_args(coco, out, "--resume")) == 0
    capsys.readouterr()
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["training"]["epoch"] == 2


def test_resume_over_a_log_that_is_not_ours(coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(coco, out, "--epochs", "1")) == 0
    capsys.readouterr()
    steps = out / "log" / "steps.jsonl"
    good = steps.read_text().splitlines()
    # lines that are JSON but not records of ours are dropped like a torn line, not a traceback
    steps.write_text("\n".join([*good, "[1, 2]", '{"no_step": 1}', '{"step": "x"}']) + "\n")
    assert main(_args(coco, out, "--epochs", "1", "--resume")) == 0
    capsys.readouterr()
    assert steps.read_text().splitlines() == good
    steps.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # not text at all: refused, and left as it was
    assert main(_args(coco, out, "--epochs", "1", "--resume")) == 2
    assert "is not a JSON-lines log" in _error(capsys)
    assert steps.read_bytes() == b"\x89PNG\r\n\x1a\n\xff\xfe"
