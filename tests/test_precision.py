"""`clipcompare precision`: drift maths, weight bytes, unsupported combinations, CLI end to end.

Everything runs on CPU with tiny or toy models and a handful of timed runs.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from torch import nn

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.dtypes import dtype_support
from clipcompare.imagenet.classes import SEED_LABELS
from clipcompare.models.build_info import LoadedModel
from clipcompare.models.classifier import SupervisedClassifier
from clipcompare.models.spec import ModelSpec
from clipcompare.precision import (
    PrecisionConfig,
    evaluate,
    evaluate_model,
    generate_images,
    measure_latency,
    measure_peak_memory,
    prediction_drift,
    reset_rss_peak,
    timeline_from_snapshot,
    weight_bytes,
)
from clipcompare.runtime import steady_heap

# few, short timed runs: these tests check plumbing, not speed
FAST = dict(batch_sizes=(1, 2), warmup=1, min_runs=3, min_time_s=0.001, max_time_s=2.0)
FAST_ARGS = ["--batch-sizes", "1,2", "--warmup", "1", "--min-runs", "3", "--min-time", "0.001", "--max-time", "2"]


# --------------------------------------------------------------------------- drift


def test_drift_of_identical_logits_is_exactly_zero():
    logits = torch.randn(7, 10) * 5
    d = prediction_drift(logits, logits.clone())
    assert d.max_abs_prob_diff == 0.0 and d.mean_abs_prob_diff == 0.0
    assert d.kl_mean == 0.0 and d.kl_max == 0.0
    assert d.top1_agreement == 1.0 and d.top5_agreement == 1.0
    assert (d.images, d.classes, d.top5_k) == (7, 10, 5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def drift_by_hand(ref_logits, other_logits) -> dict[str, float]:
    """The drift statistics written out in numpy, image by image: |p - q| over all entries, KL(p ‖ q) with
    p the fp32 reference, and top-k agreement as equal *sets* of class indices."""
    r, o = np.asarray(ref_logits, dtype=np.float64), np.asarray(other_logits, dtype=np.float64)
    log_p, log_q = _log_softmax(r), _log_softmax(o)
    p, q = np.exp(log_p), np.exp(log_q)
    kl = [sum(p[i, c] * (log_p[i, c] - log_q[i, c]) for c in range(r.shape[1])) for i in range(len(r))]
    k = min(5, r.shape[1])
    same_set = [set(np.argsort(-r[i], kind="stable")[:k]) == set(np.argsort(-o[i], kind="stable")[:k])
                for i in range(len(r))]
    return dict(max_abs_prob_diff=np.abs(p - q).max(), mean_abs_prob_diff=np.abs(p - q).mean(),
                kl_mean=np.mean(kl), kl_max=np.max(kl), top1_agreement=np.mean(r.argmax(1) == o.argmax(1)),
                top5_agreement=np.mean(same_set))


def assert_drift_equals_hand(d, ref_logits, other_logits) -> None:
    want = drift_by_hand(ref_logits, other_logits)
    got = {key: getattr(d, key) if not isinstance(d, dict) else d[key] for key in want}
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 1000.0])
def test_drift_equals_a_hand_computation(scale):
    g = torch.Generator().manual_seed(1)
    ref, other = torch.randn(16, 10, generator=g) * scale, torch.randn(16, 10, generator=g) * scale
    d = prediction_drift(ref, other)
    assert_drift_equals_hand(d, ref.numpy(), other.numpy())
    assert (d.images, d.classes, d.top5_k) == (16, 10, 5)
    # KL has a direction: KL(fp32 ‖ other), not KL(other ‖ fp32), which differs on these logits
    reverse = drift_by_hand(other.numpy(), ref.numpy())
    assert d.kl_mean != pytest.approx(reverse["kl_mean"], rel=1e-3)


def test_top5_agreement_compares_sets_not_orders():
    """Rows 0-3 reorder their top 5 among themselves (same set: agree); rows 4-5 swap rank 5 with rank 6
    (another set: disagree, top-1 unchanged); rows 6-7 move the top class to the bottom."""
    ref = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]]).repeat(8, 1)
    other = ref.clone()
    other[0:4, :5] = torch.tensor([5.0, 9, 6, 8, 7])  # top-1 moves to class 1: the set stays {0..4}
    other[4:6, 4], other[4:6, 5] = 4.0, 5.0
    other[6:8, 0] = -1.0
    d = prediction_drift(ref, other)
    assert d.top5_agreement == 0.5 and d.top1_agreement == 2 / 8
    assert_drift_equals_hand(d, ref.numpy(), other.numpy())
    # fewer than 5 classes: k is the number of classes, so every row agrees on its (whole) set
    three = prediction_drift(ref[:, :3], ref[:, [2, 1, 0]])
    assert (three.top5_k, three.top5_agreement, three.top1_agreement) == (3, 1.0, 0.0)


def test_drift_of_half_precision_logits_is_small_but_measured():
    ref = torch.randn(8, 10) * 4
    d = prediction_drift(ref, ref.half().float())
    assert 0.0 < d.max_abs_prob_diff < 1e-2 and d.kl_mean >= 0.0
    assert d.top1_agreement == 1.0
    assert_drift_equals_hand(d, ref.numpy(), ref.half().float().numpy())


def test_drift_leaves_out_non_finite_rows():
    ref = torch.randn(4, 10)
    other = ref.clone()
    other[1, 3] = float("inf")
    other[2] += torch.linspace(0, 1, 10)
    d = prediction_drift(ref, other)
    assert d.nonfinite_images == 1 and d.images == 3
    kept = [0, 2, 3]
    assert_drift_equals_hand(d, ref[kept].numpy(), other[kept].numpy())


# --------------------------------------------------------------------------- weights


def _cast_bytes(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    import copy

    return weight_bytes(copy.deepcopy(model).to(dtype))


def test_half_and_bfloat16_weights_are_exactly_half(tiny_clip):
    fp32 = weight_bytes(tiny_clip.model)
    assert fp32["floating"] > 0
    for dtype in (torch.float16, torch.bfloat16):
        low = _cast_bytes(tiny_clip.model, dtype)
        assert low["floating"] * 2 == fp32["floating"]
        assert low["other"] == fp32["other"]


def test_integer_buffers_are_counted_apart():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    fp32 = weight_bytes(model)
    fp16 = _cast_bytes(model, torch.float16)
    assert fp16["floating"] * 2 == fp32["floating"]
    # BatchNorm's num_batches_tracked stays int64 under a cast
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fp16["other"] == fp32["other"] == 8 * n_bn


# --------------------------------------------------------------------------- measurement helpers


def test_latency_statistics_are_consistent():
    stats, notes = measure_latency(lambda: time.sleep(0.005), batch_size=4, device="cpu",
                                   warmup=1, min_runs=5, min_time_s=0.001, max_time_s=5.0)
    assert stats.runs >= 5 and not notes
    assert stats.min_ms >= 5.0 - 0.5
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.std_ms >= 0.0
    assert stats.throughput_ips == pytest.approx(4 / (stats.median_ms / 1e3))


def test_latency_time_cap_is_noted():
    stats, notes = measure_latency(lambda: time.sleep(0.02), batch_size=1, device="cpu",
                                   warmup=0, min_runs=100, min_time_s=0.001, max_time_s=0.05)
    assert 3 <= stats.runs < 100
    assert notes and "time cap" in notes[0]


def test_cpu_peak_memory_is_not_fooled_by_an_earlier_bigger_run():
    reason = reset_rss_peak()
    if reason is not None:
        pytest.skip(reason)

    def touch(mib: int):
        t = torch.ones(mib * 2**20 // 4)  # ones, not empty: pages must be written to become resident
        return float(t[-1])

    steady_heap()  # the harder case: freed memory stays with the process unless trimmed
    big = measure_peak_memory(lambda: touch(256), "cpu")
    small = measure_peak_memory(lambda: touch(48), "cpu")
    assert big.method == "VmHWM-VmRSS" and big.peak_inference_bytes >= 240 * 2**20
    assert 40 * 2**20 <= small.peak_inference_bytes < 128 * 2**20


def test_timeline_from_a_synthetic_snapshot():
    snapshot = {"device_traces": [[
        {"action": "segment_alloc", "size": 4096, "time_us": 0},
        {"action": "alloc", "size": 100, "time_us": 1000},
        {"action": "alloc", "size": 50, "time_us": 2000},
        {"action": "free_requested", "size": 100, "time_us": 3000},
        {"action": "free_completed", "size": 100, "time_us": 3000},
        {"action": "free_completed", "size": 50, "time_us": 5000},
    ]]}
    times, values = timeline_from_snapshot(snapshot, base_bytes=1000)
    assert times == [0.0, 1.0, 2.0, 4.0]
    assert values == [1100, 1150, 1050, 1000]


def test_dtype_support_never_raises():
    for dtype in ("fp32", "fp16", "bf16"):
        cpu = dtype_support(dtype, "cpu")
        assert cpu.supported
        assert cpu.native is not False or "emulated" in (cpu.note or "")
        cuda = dtype_support(dtype, "cuda")
        if not torch.cuda.is_available():
            assert not cuda.supported and "CUDA is not available" in cuda.note


def test_config_rejects_bad_values():
    from clipcompare.errors import UserError

    for kwargs, says in ((dict(dtypes=("fp8",)), "unknown dtype 'fp8'; choose from fp32, fp16, bf16"),
                         (dict(mode="fast"), "unknown mode 'fast'; choose from cast, autocast"),
                         (dict(batch_sizes=(0,)), "batch sizes must be positive integers"),
                         (dict(device="tpu"), "unknown device 'tpu'; choose from cpu, cuda")):
        with pytest.raises(UserError, match=re.escape(says)):
            PrecisionConfig(**kwargs)
    assert PrecisionConfig(dtypes=("half", "bfloat16", "fp16")).dtypes == ("fp16", "bf16")


# --------------------------------------------------------------------------- unsupported combinations


class _NoHalfNet(nn.Module):
    """A toy 1000-class CNN whose fp16 forward fails the way a missing CPU kernel does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16 or self.conv.weight.dtype == torch.float16:
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _toy_classifier() -> SupervisedClassifier:
    from torchvision import transforms

    torch.manual_seed(0)
    preprocess = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    loaded = LoadedModel(ModelSpec("torchvision", "toy"), _NoHalfNet().eval(), preprocess, pretrained=False)
    return SupervisedClassifier(loaded)


def _record_drift_inputs(patch) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fp32, other) logits each drift in a run was computed from, in call order (fp32 first)."""
    import clipcompare.precision.run as run_module

    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def recording(reference_logits, other_logits):
        calls.append((reference_logits.float().numpy().copy(), other_logits.float().numpy().copy()))
        return prediction_drift(reference_logits, other_logits)

    patch.setattr(run_module, "prediction_drift", recording)
    return calls


def _toy_run(**overrides):
    config = PrecisionConfig(**{**FAST, **overrides})
    return evaluate_model(
        _toy_classifier(), classes=ClassSet.from_labels(SEED_LABELS), pil_images=generate_images(3, size=(40, 40)),
        config=config, support={d: dtype_support(d, config.device) for d in config.dtypes},
    )


def test_a_kernel_that_raises_becomes_a_note_and_the_rest_is_measured(monkeypatch):
    drift_inputs = _record_drift_inputs(monkeypatch)
    result = _toy_run()
    by = {r.dtype: r for r in result.results}
    half = by["fp16"]
    assert half.status == "unsupported"
    assert any("not implemented for 'Half'" in n for n in half.notes)
    assert half.weight_bytes * 2 == by["fp32"].weight_bytes  # still reported
    assert half.batches == [] and half.drift is None
    for name in ("fp32", "bf16"):
        r = by[name]
        assert r.status == "ok"
        assert [b.batch_size for b in r.batches] == [1, 2]
        assert all(b.latency.median_ms > 0 for b in r.batches)
    assert by["fp32"].drift.max_abs_prob_diff == 0.0
    # the bf16 drift is the hand computation on the fp32 and bf16 logits of the 3 images (fp16 never ran)
    (fp32_ref, fp32_again), (bf16_ref, bf16_logits) = drift_inputs
    assert np.array_equal(fp32_ref, fp32_again) and np.array_equal(bf16_ref, fp32_ref)
    assert fp32_ref.shape == (3, 10) and not np.array_equal(bf16_logits, fp32_ref)
    assert_drift_equals_hand(by["bf16"].drift, fp32_ref, bf16_logits)
    assert any("random weights" in n for n in result.notes)


def test_autocast_keeps_fp32_weights():
    result = _toy_run(mode="autocast", dtypes=("fp32", "bf16"))
    fp32, bf16 = result.results
    assert bf16.weight_bytes == fp32.weight_bytes
    assert bf16.status == "ok" and bf16.drift is not None
    assert any("autocast keeps fp32 weights" in n for n in bf16.notes)


def test_compile_failure_is_noted_and_eager_is_measured(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no backend today")

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = _toy_run(dtypes=("fp32",), compile=True, batch_sizes=(1,))
    (fp32,) = result.results
    assert fp32.status == "ok" and fp32.batches[0].latency is not None
    assert any("torch.compile failed" in n for n in fp32.notes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_note_not_an_exception():
    report = evaluate(["clip:tiny-RN-quickgelu"], PrecisionConfig(device="cuda", **FAST))
    (model,) = report["models"]
    assert [r["dtype"] for r in model["results"]] == ["fp32", "fp16", "bf16"]
    for r in model["results"]:
        assert r["status"] == "unsupported"
        assert any("CUDA is not available" in n for n in r["notes"])
        assert r["weight_bytes"] > 0 and r["batches"] == []
    fp32, fp16, _ = model["results"]
    assert fp16["weight_bytes"] * 2 == fp32["weight_bytes"]


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One end-to-end run of the command on a tiny CLIP, all three dtypes, JSON + plot written."""
    out = tmp_path_factory.mktemp("precision")
    argv = ["precision", "-m", "clip:tiny-RN-quickgelu", "--dtypes", "fp32,fp16,bf16", *FAST_ARGS, "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        drift_inputs = _record_drift_inputs(patch)
        rc = main(argv)
    return rc, out, drift_inputs


def test_cli_writes_json_and_plot(cli_run):
    rc, out, drift_inputs = cli_run
    assert rc == 0
    report = json.loads((out / "precision.json").read_text())
    (model,) = report["models"]
    assert model["model"].startswith("clip:tiny-RN-quickgelu")
    assert model["build"]["activation"] == "QuickGELU" and model["build"]["crop"] == 64
    by = {r["dtype"]: r for r in model["results"]}
    assert set(by) == {"fp32", "fp16", "bf16"}
    assert by["fp32"]["drift"]["max_abs_prob_diff"] == 0.0 and by["fp32"]["drift"]["kl_mean"] == 0.0
    for r in by.values():
        assert r["status"] in ("ok", "partial")
        assert [b["batch_size"] for b in r["batches"]] == [1, 2]
        for b in r["batches"]:
            lat = b["latency"]
            assert lat["runs"] >= 3 and 0 < lat["median_ms"] <= lat["p90_ms"] + 1e-9
            assert lat["minor_faults_per_run"] is None or lat["minor_faults_per_run"] >= 0
            assert b["memory"]["peak_inference_bytes"] is None or b["memory"]["peak_inference_bytes"] >= 0
    # each dtype's drift in the JSON is the hand computation on the logits it was computed from: fp32's
    # against itself, then fp16's and bf16's against fp32's, on the 8 generated images
    assert [r["dtype"] for r in model["results"]] == ["fp32", "fp16", "bf16"] and len(drift_inputs) == 3
    fp32_logits = drift_inputs[0][0]
    assert fp32_logits.shape == (8, 10)  # the 10 seed classes
    for r, (ref, other) in zip(model["results"], drift_inputs):
        assert np.array_equal(ref, fp32_logits)
        assert_drift_equals_hand(r["drift"], ref, other)
    assert by["fp16"]["weight_bytes"] * 2 == by["fp32"]["weight_bytes"]
    assert by["bf16"]["weight_bytes"] * 2 == by["fp32"]["weight_bytes"]
    assert report["files"]["plot"] == "precision.png"
    assert report["images"] == {"source": "generated", "count": 8}
    assert report["environment"]["threads"] >= 1 and report["environment"]["allocator"]

    from PIL import Image

    with Image.open(out / "precision.png") as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


def test_cli_human_output_and_json_flag(capsys, tmp_path):
    from helpers import make_image

    for i in range(2):
        make_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    rc = main(["precision", "-m", "clip:tiny-RN-quickgelu", "--dtypes", "fp32,bf16", "--batch-sizes", "1",
               "--warmup", "0", "--min-runs", "3", "--min-time", "0.001", "--images", str(tmp_path / "imgs"), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"]["count"] == 2 and report["images"]["source"].endswith("imgs")

    from clipcompare.cli.precision_cmd import format_report

    text = format_report(report)
    assert "== clip:tiny-RN-quickgelu" in text and "drift vs fp32 on 2 images" in text
    assert "median ms" in text and "peak mem" in text


@pytest.mark.parametrize("flags, word", [
    (["--dtypes", "fp8"], "fp8"),
    (["--dtypes", "fp32,int8"], "int8"),
    (["--batch-sizes", "0"], "positive"),
    (["--batch-sizes", "eight"], "positive"),
    (["--mode", "fast"], "fast"),
    (["--device", "tpu"], "tpu"),
    (["--min-runs", "-1"], "at least 1"),
    (["--warmup", "-1"], "at least 0"),
])
def test_bad_flag_values_exit_2_with_one_line(capsys, flags, word):
    with pytest.raises(SystemExit, match="^2$") as exc:
        main(["precision", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err


def test_missing_image_dir_is_a_one_line_user_error(capsys, tmp_path):
    rc = main(["precision", "-m", "clip:tiny-RN-quickgelu", "--images", str(tmp_path / "nope")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a directory" in err
