"""`clipcompare robustness`: the shipped reference table, the baseline fit, run points, the CLI."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from clipcompare.robustness.fit import EPSILON_PERCENT, fit_baseline, from_axis, to_axis
from clipcompare.robustness.reference import DATA_FILE, load_reference, timm_group

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
