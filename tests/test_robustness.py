"""`clipcompare robustness`: the shipped reference table, the baseline fit, run points, the CLI."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from clipcompare.cli import main
from clipcompare.robustness import evaluate, read_run, summary_table
from clipcompare.robustness.fit import EPSILON_PERCENT, fit_baseline, from_axis, to_axis
from clipcompare.robustness.reference import DATA_FILE, load_reference, timm_group
from clipcompare.robustness.runs import RunData

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model, group", [
    ("resnet50.tv_in1k", "standard"),
    ("resnet50.tv2_in1k", "standard"),
    ("resnet50.a1_in1k", "standard"),
    ("deit_base_distilled_patch16_224.fb_in1k", "standard"),
    ("convnext_atto.d2_in1k", "standard"),
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", "more data"),
    ("resnet50.fb_swsl_ig1b_ft_in1k", "more data"),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", "more data"),
    ("convnextv2_tiny.fcmae_ft_in1k", "more data"),
    ("tf_efficientnet_b0.ns_jft_in1k", "more data"),
    ("hgnetv2_b0.ssld_stage1_in22k_in1k", "more data"),
    ("convnext_xxlarge.clip_laion2b_soup_ft_in1k", "more data"),
    ("vit_so400m_patch14_siglip_378.webli_ft_in1k", "more data"),
    ("eva02_large_patch14_448.mim_m38m_ft_in22k_in1k", "more data"),
])
def test_group_rule_on_named_rows_of_the_real_table(model, group):
    table = load_reference().set_index("model")
    assert f"timm:{model}" in table.index  # a real published row, not an invented name
    assert timm_group(model) == group
    assert table.loc[f"timm:{model}", "group"] == group


def test_shipped_table_names_rows_by_spec_with_published_values():
    table = load_reference().set_index("model")
    assert table.loc["timm:resnet50.tv_in1k", ["imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r"]].tolist() \
        == [76.156, 63.19, 24.064, 36.157]
    rn50 = table.loc["clip:RN50@openai"]
    assert (rn50["group"], rn50["imagenet"], rn50["imagenet-sketch"], rn50["objectnet"]) == \
        ("zero-shot", 59.82, 35.44, 41.41)
    # a weight published at two resolutions: the smaller (timm's default) plain, the other @SIZE
    assert table.loc["timm:convnext_atto.d2_in1k", "img_size"] == 224
    assert not table.loc["timm:convnext_atto.d2_in1k@288", "primary"]
    assert table.index.is_unique
    assert set(table["group"]) == {"standard", "more data", "zero-shot"}
    assert (table["group"] == "zero-shot").sum() == 121 and (table["source"] == "timm").sum() == 1556


def _reference_dir() -> Path | None:
    for candidate in (REPO.parent / "shared" / "reference", REPO.parent.parent / "shared" / "reference"):
        if (candidate / "timm" / "results-imagenet.csv").is_file():
            return candidate
    return None


@pytest.mark.skipif(_reference_dir() is None, reason="the published tables (../shared/reference) are not here")
def test_shipped_table_is_what_the_build_script_makes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("build_reference", REPO / "scripts" / "build_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "data" / "reference.csv.gz"
    out.parent.mkdir()
    monkeypatch.setattr(module, "DATA_FILE", out)
    assert module.main([str(_reference_dir())]) == 0
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(DATA_FILE.read_bytes())


# --------------------------------------------------------------------------- the fit


def _standard_rows(shift: str, x_column: str = "imagenet"):
    table = load_reference()
    rows = table[(table["group"] == "standard") & table["primary"]].dropna(subset=[x_column, shift])
    return rows[x_column].to_numpy(), rows[shift].to_numpy(), rows["model"].tolist()


@pytest.mark.parametrize("shift", ["imagenet-v2", "imagenet-sketch"])
def test_fit_equals_polyfit_in_logit_space_on_shipped_rows(shift):
    x, y, names = _standard_rows(shift)
    fit = fit_baseline(x, y, names, bootstrap=0)
    p = x / 100
    q = y / 100
    slope, intercept = np.polyfit(np.log(p / (1 - p)), np.log(q / (1 - q)), 1)
    assert fit.slope == pytest.approx(slope, rel=1e-10) and fit.intercept == pytest.approx(intercept, rel=1e-10)
    assert len(fit.models) == len(names) > 500


def test_probit_fit_equals_normal_equations():
    x, y, names = _standard_rows("imagenet-v2")
    fit = fit_baseline(x, y, names, transform="probit", bootstrap=0)
    inv = NormalDist().inv_cdf
    design = np.column_stack([[inv(v / 100) for v in x], np.ones(len(x))])
    target = np.array([inv(v / 100) for v in y])
    slope, intercept = np.linalg.solve(design.T @ design, design.T @ target)
    assert (fit.slope, fit.intercept) == (pytest.approx(slope, rel=1e-9), pytest.approx(intercept, rel=1e-9))


def test_published_figures_clip_is_effectively_robust_resnet50_is_on_the_line():
    table = load_reference().set_index("model")
    x, y, names = _standard_rows("imagenet-sketch")
    fit = fit_baseline(x, y, names, bootstrap=0)
    rn50, clip = table.loc["timm:resnet50.tv_in1k"], table.loc["clip:RN50@openai"]
    rho_resnet = fit.effective_robustness([rn50["imagenet"]], [rn50["imagenet-sketch"]])[0]
    rho_clip = fit.effective_robustness([clip["imagenet"]], [clip["imagenet-sketch"]])[0]
    assert abs(rho_resnet) < 3
    assert rho_clip > 10


def test_bootstrap_band_is_seeded_and_holds_the_line():
    x, y, names = _standard_rows("imagenet-v2")
    a = fit_baseline(x, y, names, bootstrap=200, seed=3)
    b = fit_baseline(x, y, names, bootstrap=200, seed=3)
    c = fit_baseline(x, y, names, bootstrap=200, seed=4)
    np.testing.assert_array_equal(a.band_lo, b.band_lo)
    assert not np.array_equal(a.band_lo, c.band_lo)
    line = a.predict(a.band_x)
    assert np.all(a.band_lo <= line + 1e-9) and np.all(line <= a.band_hi + 1e-9)
    assert np.all(a.band_hi - a.band_lo < 2)  # ~1,000 models pin the line within a couple of points


def test_zero_and_hundred_percent_are_clipped_not_nan():
    fit = fit_baseline([0.0, 50.0, 100.0, 80.0], [0.0, 30.0, 100.0, 60.0], list("abcd"), bootstrap=50)
    assert fit.clipped == 4 and np.isfinite([fit.slope, fit.intercept]).all()
    assert np.isfinite(fit.band_lo).all() and np.isfinite(fit.band_hi).all()
    rho = fit.effective_robustness([0.0, 100.0], [0.0, 100.0])
    assert np.isfinite(rho).all()
    assert to_axis([0.0])[0] == pytest.approx(np.log(EPSILON_PERCENT / (100 - EPSILON_PERCENT)))
    assert from_axis(to_axis([0.0, 37.5, 100.0]))[1] == pytest.approx(37.5)


# --------------------------------------------------------------------------- run directories, the map, the CLI

SUP, ZS = "resnet50:IMAGENET1K_V1", "clip:RN50@openai"


def make_run(root: Path, datasets: dict[str, dict[str, dict]], random: tuple[str, ...] = (),
             status: str = "complete") -> Path:
    """A finished evaluate run directory as evaluate writes it: run.json, metrics.json, predictions/."""
    root.mkdir(parents=True)
    (root / "predictions").mkdir()
    models = list(dict.fromkeys(m for d in datasets.values() for m in d))
    (root / "run.json").write_text(json.dumps({
        "settings": {"datasets": [{"name": k, "kind": k} for k in datasets]}, "status": status,
        "models": [{"name": m, "pretrained": m not in random} for m in models]}))
    (root / "metrics.json").write_text(json.dumps({"datasets": {
        kind: {"kind": kind, "models": models_} for kind, models_ in datasets.items()}}))
    return root


def standard_run(root: Path) -> Path:
    return make_run(root, {
        "imagenet": {SUP: {"top1": 0.75, "subset_top1": {"imagenet-r": {"top1": 0.9, "n": 10},
                                                         "imagenet-a": {"top1": 0.8, "n": 10}}},
                     ZS: {"top1": 0.6, "subset_top1": {"imagenet-r": {"top1": 0.85, "n": 10},
                                                       "imagenet-a": {"top1": 0.0, "n": 10}}}},
        "imagenet-v2": {SUP: {"top1": 0.63}, ZS: {"top1": 0.53}},
        "imagenet-sketch": {SUP: {"top1": 0.25}, ZS: {"top1": 0.35}},
        "imagenet-r": {SUP: {"top1": 0.4}, ZS: {"top1": 1.0}},
        "imagenet-a": {SUP: {"top1": 0.02}, ZS: {"top1": 0.0}},
    }, random=(ZS,))


def _point(view, model, run=None):
    return next(p for p in view["points"] if p["model"] == model and p.get("run") == run)


def test_run_points_equal_its_metrics_json(tmp_path):
    run = read_run(standard_run(tmp_path / "run"))
    result = evaluate([run], bootstrap=0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["datasets"]
    for kind, x_of in (("imagenet-sketch", lambda m: metrics["imagenet"]["models"][m]["top1"]),
                       ("imagenet-r", lambda m: metrics["imagenet"]["models"][m]["subset_top1"]["imagenet-r"]["top1"]),
                       ("imagenet-a", lambda m: metrics["imagenet"]["models"][m]["subset_top1"]["imagenet-a"]["top1"])):
        view = result["shifts"][kind]
        for model in (SUP, ZS):
            p = _point(view, model, str(run.path))
            assert p["group"] == "your runs" and p["random_weights"] == (model == ZS)
            assert p["id_top1"] == pytest.approx(100 * x_of(model))
            assert p["ood_top1"] == pytest.approx(100 * metrics[kind]["models"][model]["top1"])
            fit = view["fit"]
            x = np.clip(p["id_top1"], EPSILON_PERCENT, 100 - EPSILON_PERCENT) / 100
            expected = 100 / (1 + np.exp(-(fit["slope"] * np.log(x / (1 - x)) + fit["intercept"])))
            assert p["effective_robustness"] == pytest.approx(p["ood_top1"] - expected, abs=2e-3)
    # 0% and 100% in a run: finite, no NaN anywhere in the JSON
    assert _point(result["shifts"]["imagenet-a"], ZS, str(run.path))["effective_robustness"] is not None
    json.dumps(result, allow_nan=False)
    avg = _point(result["average"], SUP, str(run.path))
    assert (avg["id_top1"], avg["ood_top1"]) == (75.0, pytest.approx(100 * np.mean([0.63, 0.25, 0.4, 0.02])))
    assert avg["effective_robustness"] is not None


def test_run_without_imagenet_lists_points_with_the_reason(tmp_path):
    path = make_run(tmp_path / "run", {"imagenet-sketch": {SUP: {"top1": 0.25}}})
    run = read_run(path)
    p = _point(evaluate([run], bootstrap=0)["shifts"]["imagenet-sketch"], SUP, str(path))
    assert (p["id_top1"], p["ood_top1"], p["effective_robustness"]) == (None, 25.0, None)
    assert "no imagenet dataset" in p["reason"] and run.notes


def test_old_run_without_the_200_class_x_axis_says_so(tmp_path):
    path = make_run(tmp_path / "run", {"imagenet": {SUP: {"top1": 0.75}}, "imagenet-r": {SUP: {"top1": 0.4}},
                                       "imagenet-v2": {SUP: {"top1": 0.6}}})
    result = evaluate([read_run(path)], bootstrap=0)
    r = _point(result["shifts"]["imagenet-r"], SUP, str(path))
    assert r["id_top1"] is None and "200-class" in r["reason"]
    assert _point(result["shifts"]["imagenet-v2"], SUP, str(path))["id_top1"] == 75.0
    avg = _point(result["average"], SUP, str(path))
    assert avg["effective_robustness"] is None and "ImageNet-Sketch, ImageNet-A" in avg["reason"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    running = make_run(tmp_path / "running", {"imagenet": {SUP: {"top1": 0.7}}}, status="running")
    cases = [(tmp_path / "missing", "no such run directory"), (tmp_path / "plain", "not an evaluate run"),
             (running, "still in progress")]
    for path, message in cases:
        assert main(["robustness", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    # one usable run among bad ones: shown, the others one warning line each
    good = standard_run(tmp_path / "good")
    assert main(["robustness", str(good), str(tmp_path / "plain"), "--bootstrap", "0"]) == 0
    out, err = capsys.readouterr()
    assert "not an evaluate run" in err and err.count("\n") == 1
    lines = out.splitlines()
    assert lines[3].startswith(SUP) and lines[4].startswith(ZS) and "random weights" in lines[4]
    assert lines[5].startswith("timm:resnet50.tv_in1k") and lines[6].startswith("clip:RN50@openai")


def test_cli_json_and_out_dir(tmp_path, capsys):
    good = standard_run(tmp_path / "good")
    assert main(["robustness", str(good), "--json", "--bootstrap", "20", "--transform", "probit",
                 "--out", str(tmp_path / "out")]) == 0
    doc = json.loads(capsys.readouterr().out)
    sketch = doc["shifts"]["imagenet-sketch"]
    assert sketch["fit"]["transform"] == "probit" and len(sketch["fit"]["models"]) == sketch["fit"]["n_models"] > 900
    assert set(sketch["points"][0]) >= {"model", "group", "id_top1", "ood_top1", "effective_robustness"}
    assert json.loads((tmp_path / "out" / "robustness.json").read_text()) == doc
    from PIL import Image

    for name in ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet", "average"):
        assert Image.open(tmp_path / "out" / f"{name}.png").size[0] > 500


def test_labels_of_crowded_points_do_not_overlap():
    from clipcompare.robustness.plots import _pyplot, place_labels

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    points = [{"id_top1": 50 + 0.3 * i, "ood_top1": 40 + 0.2 * i} for i in range(8)]
    anns = place_labels(ax, [(p, f"model number {i}", 8) for i, p in enumerate(points)])
    from matplotlib.text import Text

    fig.canvas.draw()
    boxes = [Text.get_window_extent(a) for a in anns]  # the label's text, not its leader line
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    plt.close(fig)


def test_empty_map_without_runs_is_the_published_map():
    result = evaluate([], bootstrap=0)
    assert result["runs"] == [] and all(p["group"] != "your runs" for p in result["average"]["points"])
    assert result["shifts"]["objectnet"]["fit"] is None and len(result["shifts"]["objectnet"]["points"]) == 121
    assert isinstance(RunData, type)


def test_report_gets_a_robustness_section_for_an_evaluate_run_with_shifts(tmp_path):
    from clipcompare.report import build_report, render_html
    from clipcompare.robustness import summary_table

    run = standard_run(tmp_path / "run")
    only_imagenet = make_run(tmp_path / "plain", {"imagenet": {SUP: {"top1": 0.7}}})
    report = build_report([run, only_imagenet])
    assert [s.kind for s in report.sections] == ["evaluate", "robustness", "evaluate"]
    section = report.sections[1]
    table = next(b for b in section.blocks if getattr(b, "role", "") == "robustness")
    header, rows, _ = summary_table(evaluate([read_run(run)]))
    assert table.columns == header and [[c.text for c in r] for r in table.rows] == rows
    figures = [b.title for b in section.blocks if b.kind == "figure"]
    assert figures[:4] == ["ImageNet-V2", "ImageNet-Sketch", "ImageNet-R", "ImageNet-A"]
    assert figures[4].startswith("average over")
    assert 'data-kind="robustness"' in render_html(report)


def test_report_of_a_saved_map_shows_its_table_and_plots(tmp_path, capsys):
    from clipcompare.report import build_report

    run = standard_run(tmp_path / "run")
    assert main(["robustness", str(run), "--bootstrap", "10", "--out", str(tmp_path / "map")]) == 0
    capsys.readouterr()
    (section,) = build_report([tmp_path / "map"]).sections
    assert section.kind == "robustness" and section.random_weights == [ZS]
    doc = json.loads((tmp_path / "map" / "robustness.json").read_text())
    header, rows, _ = summary_table(doc)
    table = next(b for b in section.blocks if getattr(b, "role", "") == "robustness")
    assert [[c.text for c in r] for r in table.rows] == rows
    # the run has no ObjectNet point: only its shifts (and the average) are drawn
    titles = [b.title for b in section.blocks if b.kind == "figure"]
    assert titles[:4] == ["ImageNet-V2", "ImageNet-Sketch", "ImageNet-R", "ImageNet-A"] and len(titles) == 5


def test_a_run_of_a_landmark_model_is_labelled_once_as_yours(monkeypatch):
    """A run named like a published landmark (clip:RN50@openai) is labelled as the run, and the landmark
    circle and label go to the published row only."""
    import clipcompare.robustness.plots as plots

    view = {"label": "ImageNet-Sketch", "fit": None, "points": [
        {"model": "clip:RN50@openai", "group": "your runs", "id_top1": 25.0, "ood_top1": 25.0,
         "random_weights": True, "run": "/r"},
        {"model": "clip:RN50@openai", "group": "zero-shot", "id_top1": 59.8, "ood_top1": 35.4},
        {"model": "timm:resnet50.tv_in1k", "group": "standard", "id_top1": 76.2, "ood_top1": 24.1},
    ]}
    seen: list[tuple[str, float]] = []
    place = plots.place_labels

    def spy(ax, labels):
        seen.extend((text, point["id_top1"]) for point, text, _ in labels)
        return place(ax, labels)

    monkeypatch.setattr(plots, "place_labels", spy)
    assert plots.view_figure(view).startswith(b"\x89PNG")
    assert sorted(seen) == [("clip:RN50@openai", 59.8), ("clip:RN50@openai (random)", 25.0),
                            ("timm:resnet50.tv_in1k", 76.2)]
