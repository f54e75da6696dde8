"""`clipcompare robustness`: the shipped reference table, the baseline fit, run points, the CLI."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest

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
