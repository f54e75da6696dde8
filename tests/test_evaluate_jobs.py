"""evaluate as a job: the run-directory lock, kills at the worst moments, --precision, torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipcompare.cli import main
from clipcompare.evaluation import EvaluateOptions, evaluate
from clipcompare.evaluation.metrics import top_column
from clipcompare.rundir import LOCK_NAME, RunLock
from helpers import interrupt_after_first_chunk, make_image_folder

RESNET = "resnet18"
CLIP = "clip:tiny-RN-quickgelu"
WNIDS = ["n01440764", "n01443537", "n02102040"]
SRC = Path(__file__).resolve().parents[1] / "src"


def options(out: Path, **kw) -> EvaluateOptions:
    base = dict(out=out, workers=0, templates="single", allow_random=True, progress=False, device="cpu")
    base.update(kw)
    return EvaluateOptions(**base)


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "-m", CLIP, "-d", f"imagenet={data}", "--out", str(out), "--allow-random", "--templates",
            "single", "--workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "4", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def run_files(out: Path) -> dict[str, object]:
    """Everything in a run directory except run.json's times: file names, predictions, metrics, skips."""
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    preds = {p.name: pd.read_parquet(p) for p in (out / "predictions").glob("*.parquet")}
    return {"names": names, "preds": preds, "metrics": json.loads((out / "metrics.json").read_text()),
            "status": json.loads((out / "run.json").read_text())["status"]}


def assert_same_run(a: Path, b: Path) -> None:
    fa, fb = run_files(a), run_files(b)
    assert fa["names"] == fb["names"] and fa["metrics"] == fb["metrics"] and fa["status"] == fb["status"] == "complete"
    assert fa["preds"].keys() == fb["preds"].keys()
    for name in fa["preds"]:
        pd.testing.assert_frame_equal(fa["preds"][name], fb["preds"][name])


def test_a_live_lock_refuses_with_one_line_and_a_stale_one_is_taken_over(tmp_path, capsys, caplog):
    data = make_image_folder(tmp_path / "d", WNIDS[:2], per_class=2)
    out = tmp_path / "run"
    with RunLock(out, "clipcompare evaluate"):  # a live owner: this process, through another open file
        assert main(cli_args(data, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {os.getpid()}" in err and "in use" in err
        assert not (out / "run.json").exists()  # nothing was written
    assert not (out / LOCK_NAME).exists()

    # a lock left by a process killed with -9: its file is there, nobody holds it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "since": "then"}) + "\n")
    assert main(cli_args(data, out)) == 0
    assert f"pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (out / LOCK_NAME).exists() and (out / "metrics.json").is_file()



def test_a_stale_lock_whose_pid_is_reused_by_a_live_process_is_taken_over(tmp_path, caplog):
    """The lock file names a pid that is alive on this host but is not the owner (a reused pid)."""
    import socket

    data = make_image_folder(tmp_path / "d", WNIDS[:2], per_class=2)
    out = tmp_path / "run"
    out.mkdir()
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": unrelated.pid, "host": socket.gethostname(),
                                                 "command": "clipcompare evaluate", "since": "then"}) + "\n")
        assert main(cli_args(data, out)) == 0
        assert unrelated.poll() is None  # it is alive, and was neither waited for nor harmed
    finally:
        unrelated.kill()
        unrelated.wait()
    assert f"pid {unrelated.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (out / LOCK_NAME).exists() and json.loads((out / "run.json").read_text())["status"] == "complete"



@pytest.mark.parametrize("out_exists", [True, False])
def test_out_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys, out_exists):
    """Read-only simulated in-process: os.open of the lock file (or os.mkdir of --out) raises EROFS, as a
    read-only mount does (the tests run as root, who ignores permission bits)."""
    import errno

    data = make_image_folder(tmp_path / "d", WNIDS[:2], per_class=2)
    out = tmp_path / "ro" / "run"
    if out_exists:
        out.mkdir(parents=True)
    real_open, real_mkdir = os.open, os.mkdir

    def read_only(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(tmp_path / "ro")):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", read_only(real_open))
    monkeypatch.setattr(os, "mkdir", read_only(real_mkdir))
    assert main(cli_args(data, out)) == 2
    err = capsys.readouterr().err
    assert err == f"clipcompare: error: --out {out}: cannot write there (Read-only file system)\n"
    assert out.is_dir() == out_exists and (not out_exists or not any(out.iterdir()))


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_with_decode_workers_then_the_same_command_continues_at_once(tmp_path, caplog):
    """A real SIGKILL of `evaluate --workers 2`: its orphaned DataLoader workers (alive for seconds
    more) must not keep the run lock, so the same command, run at once, takes it over and finishes."""
    import signal
    import time

    data = make_image_folder(tmp_path / "d", WNIDS, per_class=20, size=(48, 40))
    out = tmp_path / "killed"
    args = [*cli_args(data, out, "--chunk-size", "2", "--batch-size", "2")]
    args[args.index("--workers") + 1] = "2"
    proc = subprocess.Popen([sys.executable, "-m", "clipcompare", *args], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / "predictions" / "imagenet.parts"
    deadline = time.monotonic() + 240
    while not (parts.is_dir() and any(parts.glob("part-*.parquet"))) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -9, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    try:
        # the test is only worth something while the orphans live (a DataLoader worker notices its
        # parent's death within 5 s): they did keep the lock before the fork hook closed their copy
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        assert (out / LOCK_NAME).exists()
        assert main(args) == 0
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert f"pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
    got = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    assert len(got) == 60 and got["path"].is_unique
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and not (out / LOCK_NAME).exists()


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from clipcompare import fileio
    from clipcompare.evaluation import store

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    where = sys.argv[1]
    if where == "merge":  # the merged Parquet is written, its parts not yet removed
        store.remove_parts = lambda parts: die()
    elif where == "merge-half":  # some parts removed, then killed
        def remove_one(parts):
            sorted(Path(parts).iterdir())[0].unlink()
            die()
        store.remove_parts = remove_one
    elif where == "metrics":  # half of metrics.json in its temp file
        original = store.atomic_write_bytes
        def torn(path, data):
            if Path(path).name == "metrics.json":
                with fileio.atomic_path(Path(path)) as tmp:
                    tmp.write_bytes(data[: len(data) // 2])
                    die()
            original(path, data)
        store.atomic_write_bytes = torn
    from clipcompare.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """A folder (with one unreadable file) and the run an uninterrupted evaluate makes of it."""
    root = tmp_path_factory.mktemp("kill")
    data = make_image_folder(root / "d", WNIDS, per_class=3)
    (data / WNIDS[0] / "broken.jpg").write_bytes(b"not an image")
    # chunk size 2: several part files, so "merge-half" leaves some behind
    assert main(cli_args(data, root / "ref", "--chunk-size", "2")) == 0
    return data, root / "ref"


@pytest.mark.slow  # a subprocess per kill point
@pytest.mark.parametrize("where", ["merge", "merge-half", "metrics"])
def test_sigkill_during_merge_or_metrics_write_then_resume(tmp_path, where, uninterrupted):
    data, ref = uninterrupted
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, where, *cli_args(data, out, "--chunk-size", "2")],
                          env=env(), capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (out / LOCK_NAME).exists() and not (out / "metrics.json").exists()
    if where.startswith("merge"):
        assert (out / "predictions" / "imagenet.parquet").is_file()
        assert any((out / "predictions" / "imagenet.parts").iterdir())
    else:
        assert (out / ".metrics.json.tmp").is_file()
    assert main(cli_args(data, out, "--chunk-size", "2")) == 0  # the same command continues (stale lock)
    assert_same_run(ref, out)



def _disk_full(monkeypatch, where: str) -> None:
    """Make one write of evaluate meet a full disk, in-process: the part file (pyarrow), metrics.json
    (its temp file half written), the run lock's record, or skipped.jsonl (appended to /dev/full, a
    real ENOSPC from the kernel)."""
    import errno
    import pathlib

    import pyarrow.parquet

    def full(path) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if where == "part":
        original, calls = pyarrow.parquet.write_table, []

        def write_table(table, path, *args, **kwargs):
            if Path(path).name.startswith(".part-"):
                calls.append(path)
                if len(calls) == 3:  # two parts flushed, the third meets a full disk half-way
                    Path(path).write_bytes(b"PAR1 torn")
                    raise full(path)
            return original(table, path, *args, **kwargs)
        monkeypatch.setattr(pyarrow.parquet, "write_table", write_table)
    elif where == "metrics":
        original_write = pathlib.Path.write_bytes

        def write_bytes(self, data):
            if self.name == ".metrics.json.tmp":
                original_write(self, data[: len(data) // 2])
                raise full(self)
            return original_write(self, data)
        monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    elif where == "lock":
        def pwrite(fd, data, offset):
            raise full("the lock file")
        monkeypatch.setattr(os, "pwrite", pwrite)
    else:
        original_open = pathlib.Path.open

        def open_(self, mode="r", *args, **kwargs):
            if self.name == "skipped.jsonl" and mode == "a":
                return open("/dev/full", mode, *args, **kwargs)
            return original_open(self, mode, *args, **kwargs)
        monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize("where", ["lock", "part", "metrics", "skipped"])
def test_disk_full_is_one_line_keeps_what_was_flushed_and_the_same_command_resumes(tmp_path, monkeypatch, capsys,
                                                                                  where, uninterrupted):
    data, ref = uninterrupted
    out = tmp_path / "full"
    args = cli_args(data, out, "--chunk-size", "2")
    if where == "skipped" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with monkeypatch.context() as patched:
        _disk_full(patched, where)
        assert main(args) == 2
    written = {"part": out / "predictions" / "imagenet.parts" / "part-00002.parquet", "metrics": out / "metrics.json",
               "skipped": out / "skipped.jsonl", "lock": out / LOCK_NAME}[where]
    assert capsys.readouterr().err == f"clipcompare: error: cannot write {written}: No space left on device\n"
    assert not list(out.rglob("*.tmp")) and not (out / LOCK_NAME).exists()  # no temp file, no lock left
    if where == "part":  # the parts flushed before are kept
        assert sorted(p.name for p in written.parent.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    if where == "metrics":
        assert (out / "predictions" / "imagenet.parquet").is_file() and not written.exists()
    if where == "lock":
        assert list(out.iterdir()) == []  # refused before anything was written
    assert main(args) == 0  # the same command, with room again, finishes the run
    assert_same_run(ref, out)


@pytest.mark.slow  # four runs of a 224-pixel ResNet-18 over 1000 classes, three in emulated fp16/bf16
def test_precision_is_recorded_binds_the_run_and_warns_when_emulated(tmp_path, monkeypatch, caplog, capsys):
    data = make_image_folder(tmp_path / "d", WNIDS, per_class=3)
    fp32 = evaluate([RESNET, CLIP], [f"imagenet={data}"], options(tmp_path / "fp32"))
    bf16 = evaluate([RESNET, CLIP], [f"imagenet={data}"], options(tmp_path / "bf16", precision="bf16"))
    run = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert run["options"]["precision"] == "bf16" and run["settings"]["precision"] == "bf16"
    assert "precision" not in json.loads((tmp_path / "fp32" / "run.json").read_text())["settings"]
    a = pd.read_parquet(tmp_path / "fp32" / "predictions" / "imagenet.parquet")
    b = pd.read_parquet(tmp_path / "bf16" / "predictions" / "imagenet.parquet")
    for name in fp32.models:  # the same images, other numbers: bf16 keeps ~3 significant digits
        pa_, pb = np.stack(a[f"prob5[{name}]"]), np.stack(b[f"prob5[{name}]"])
        assert not np.array_equal(pa_, pb) and np.abs(pa_ - pb).max() < 0.05
    assert bf16.options["precision"] == "bf16"

    # resuming with another precision would mix two sets of numbers in one file
    assert main(cli_args(data, tmp_path / "bf16", "-m", RESNET, "--precision", "fp16")) == 2
    assert "precision" in capsys.readouterr().err

    # a CPU without native fp16: evaluate says so in the log, run.json and the summary
    monkeypatch.setattr("clipcompare.dtypes.cpu_flags", lambda: frozenset({"avx2"}))
    assert main(cli_args(data, tmp_path / "fp16", "--precision", "fp16")) == 0
    text = capsys.readouterr().out
    assert "precision fp16" in text and "emulated" in text and "emulated" in caplog.text
    assert "emulated" in json.loads((tmp_path / "fp16" / "run.json").read_text())["options"]["precision_note"]
    assert main(["classify", str(next((data / WNIDS[0]).iterdir())), "-m", CLIP, "--allow-random", "--labels",
                 "tench,goldfish", "--templates", "single", "--precision", "bf16"]) == 0
    assert "precision: bf16" in capsys.readouterr().out


@pytest.mark.slow  # torchrun: two ranks over gloo
def test_torchrun_two_ranks_resume_a_one_process_run(tmp_path, monkeypatch):
    """Half a run by one process, finished by 2 torchrun ranks (gloo): identical to one process throughout."""
    data = make_image_folder(tmp_path / "d", WNIDS, per_class=5, size=(48, 40))
    (data / WNIDS[1] / "broken.jpg").write_bytes(b"not an image")
    full = evaluate([CLIP], [f"imagenet={data}"], options(tmp_path / "full", batch_size=4, chunk_size=4))

    out = tmp_path / "run"
    interrupt_after_first_chunk(monkeypatch, lambda: evaluate([CLIP], [f"imagenet={data}"],
                                                              options(out, batch_size=4, chunk_size=4)))

    args = cli_args(data, out, "--chunk-size", "4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clipcompare", *args]
    proc = subprocess.run(cmd, env=env(), capture_output=True, timeout=120, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results in") == 1  # only rank 0 prints the summary
    got = pd.read_parquet(out / "predictions" / "imagenet.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(full.out / "predictions" / "imagenet.parquet"))
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(full.metrics))
    assert [json.loads(x)["path"] for x in (out / "skipped.jsonl").read_text().splitlines()] == [
        f"{WNIDS[1]}/broken.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions", "run.json", "skipped.jsonl"]
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["world_size"] == 2 and run["throughput"]["imagenet"]["ranks"] == 2
    # 16 files: the first chunk (4) and broken.jpg (in the second batch) were stored before the interrupt
    assert run["throughput"]["imagenet"]["images"] == 16 - 4 - 1
    assert top_column(CLIP) in got.columns


def test_distributed_helpers_without_torchrun_are_a_one_process_group(monkeypatch):
    import torch

    from clipcompare import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.distributed and distributed.is_main() and not distributed.is_initialized()
    distributed.barrier()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.gather_objects(3) == [3]
    distributed.cleanup()


def test_cuda_memory_formats_timed_once_and_kept_on_resume(monkeypatch):
    """On CUDA with no --[no-]channels-last each model's format is timed, except where the resumed
    run's run.json names it already; the flag, or a CPU, fixes it untimed; the choice is then applied
    by name (CUDA stands in by its device object and the timing function: neither runs a kernel here)."""
    import dataclasses

    import torch

    from clipcompare.evaluation import devices
    from clipcompare.models.classifier import create_classifier

    torch.manual_seed(0)
    clfs = [create_classifier(m, allow_random=True, templates="single") for m in ("resnet18", "clip:tiny-RN-quickgelu")]
    names = [c.name for c in clfs]
    timed = []
    monkeypatch.setattr(devices, "fastest_memory_format",
                        lambda clf, batch, device: timed.append(clf.name) or torch.channels_last)
    opts, cuda = EvaluateOptions(out=Path("unused")), torch.device("cuda")
    chosen = devices.choose_formats(clfs, opts, cuda, {names[0]: "contiguous", "gone": "channels_last"})
    assert chosen == {names[0]: "contiguous", names[1]: "channels_last"} and timed == [names[1]]
    assert devices.choose_formats(clfs, opts, torch.device("cpu")) == dict.fromkeys(names, "contiguous")
    assert devices.choose_formats(clfs, dataclasses.replace(opts, channels_last=False), cuda) == dict.fromkeys(
        names, "contiguous")
    assert devices.choose_formats(clfs, dataclasses.replace(opts, channels_last=True), cuda) == dict.fromkeys(
        names, "channels_last")
    assert timed == [names[1]]  # the flag is never second-guessed by a timing
    assert devices.apply_formats(clfs, chosen) == [torch.contiguous_format, torch.channels_last]
    conv = next(m for m in clfs[1].model.visual.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
