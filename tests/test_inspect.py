"""``clipcompare inspect``: exact parameter counts, stage shapes, FLOPs, structural diff, CLI.

Full-size architectures are built once per session with random weights (offline); the tiny
shipped configs cover the machinery where no real count is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipcompare import architecture as arch
from clipcompare.models.build_info import LoadedModel
from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from clipcompare.models.towers import image_tower

RESNET50_PARAMS = 25_557_032
RN50_IMAGE_PARAMS = 38_316_896
RN50_TOTAL_PARAMS = 102_007_137
VITB32_IMAGE_PARAMS = 87_849_216
VITB32_TOTAL_PARAMS = 151_277_313


def _load(text: str) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(parse_spec(text), allow_random=True)


def _whole_forward_flops(tower: torch.nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), arch.mha_fastpath_disabled(), counter:
        tower(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def resnet50() -> LoadedModel:
    return _load("resnet50")


@pytest.fixture(scope="session")
def clip_rn50() -> LoadedModel:
    return _load("clip:RN50")


@pytest.fixture(scope="session")
def clip_vitb32() -> LoadedModel:
    return _load("clip:ViT-B-32")


@pytest.fixture(scope="session")
def full_report(resnet50, clip_rn50, clip_vitb32) -> arch.InspectReport:
    return arch.build_report([resnet50, clip_rn50, clip_vitb32])


@pytest.fixture(scope="session")
def r50(full_report) -> arch.ModelInspection:
    return full_report.models[0]


@pytest.fixture(scope="session")
def rn50(full_report) -> arch.ModelInspection:
    return full_report.models[1]


@pytest.fixture(scope="session")
def vit(full_report) -> arch.ModelInspection:
    return full_report.models[2]


@pytest.fixture(scope="session")
def tiny_rn(tiny_clip) -> LoadedModel:
    return tiny_clip


@pytest.fixture(scope="session")
def tiny_vit() -> LoadedModel:
    return _load("clip:tiny-ViT")


# --------------------------------------------------------------------------- machinery (tiny)


def test_tiny_rn_stages_sum_and_flops(tiny_rn):
    m = arch.inspect_loaded(tiny_rn)
    assert m.image_size == 64  # the tower's own input size, not 224
    assert [s.name for s in m.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(s.params for s in m.stages) == m.params_image == arch.count_params(tiny_rn.model.visual)
    assert m.params_text == m.params_total - m.params_image > 0
    assert m.stages[-1].output_shape == [1, 64]  # embed_dim of the tiny config
    whole = _whole_forward_flops(tiny_rn.model.visual, 64)
    assert m.flops == whole == sum(s.flops for s in m.stages) > 0
    assert m.resnet is not None and m.vit is None
    assert m.resnet.head.kind == "attention pooling"
    assert m.resnet.blocks == [1, 1, 1, 1]


def test_tiny_vit_summary_and_top_level_row(tiny_vit):
    m = arch.inspect_loaded(tiny_vit)
    assert m.resnet is None and m.vit is not None
    v = m.vit
    assert (v.patch_size, v.width, v.blocks, v.grid, v.tokens) == (16, 64, 2, 4, 17)
    # class/positional embeddings and the final projection belong to the tower itself
    top = m.stages[-1]
    assert top.name == "top-level" and "proj" in top.modules and top.output_shape == [1, 64]
    assert sum(s.params for s in m.stages) == m.params_image
    assert m.flops == sum(s.flops for s in m.stages) == _whole_forward_flops(tiny_vit.model.visual, 64)


def test_mha_fastpath_restored(tiny_vit):
    before = torch.backends.mha.get_fastpath_enabled()
    arch.inspect_loaded(tiny_vit)
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_stage_groups_generic_split():
    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3)
            self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1))
            self.layer2 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1))
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(4, 2)

    assert arch.stage_groups(Toy()) == [
        ("stem", ["a"]), ("layer1", ["layer1"]), ("layer2", ["layer2"]), ("head", ["pool", "fc"]),
    ]


# --------------------------------------------------------------------------- exact counts (full size)


@pytest.mark.slow
def test_parameter_counts(r50, rn50, vit):
    assert r50.params_image == r50.params_total == RESNET50_PARAMS and r50.params_text is None
    assert rn50.params_image == RN50_IMAGE_PARAMS
    assert rn50.params_total == RN50_TOTAL_PARAMS
    assert rn50.params_text == RN50_TOTAL_PARAMS - RN50_IMAGE_PARAMS == 63_690_241
    assert vit.params_image == VITB32_IMAGE_PARAMS
    assert vit.params_total == VITB32_TOTAL_PARAMS


@pytest.mark.slow
def test_stage_shapes_at_224(r50, rn50):
    expected = {
        "stem": [1, 64, 56, 56], "layer1": [1, 256, 56, 56], "layer2": [1, 512, 28, 28],
        "layer3": [1, 1024, 14, 14], "layer4": [1, 2048, 7, 7],
    }
    assert {s.name: s.output_shape for s in r50.stages} == {**expected, "head": [1, 1000]}
    assert {s.name: s.output_shape for s in rn50.stages} == {**expected, "head": [1, 1024]}
    assert r50.stages[0].modules == ["conv1", "bn1", "relu", "maxpool"]
    assert r50.stages[-1].modules == ["avgpool", "fc"]
    assert rn50.stages[0].modules[-1] == "avgpool" and rn50.stages[-1].modules == ["attnpool"]


@pytest.mark.slow
def test_stage_params_sum_to_total(r50, rn50, vit):
    for m in (r50, rn50, vit):
        assert sum(s.params for s in m.stages) == m.params_image


@pytest.mark.slow
def test_flops_match_whole_forward(r50, rn50, vit, resnet50, clip_rn50, clip_vitb32):
    for m, loaded in ((r50, resnet50), (rn50, clip_rn50), (vit, clip_vitb32)):
        whole = _whole_forward_flops(image_tower(loaded.model), 224)
        assert m.flops == whole == sum(s.flops for s in m.stages)
    # torch counts 2 FLOPs per MAC: ResNet-50's well-known ~4.09 GMACs
    assert r50.flops == 8_178_368_512
    # ViT attention is counted (the fused MHA fast path would hide ~2.9 GFLOPs)
    assert vit.flops > 8e9


@pytest.mark.slow
def test_structural_diff(full_report, r50, rn50):
    (diff,) = full_report.diffs  # the ViT has no layerN stages, so only one ResNet pair
    assert (diff.a, diff.b) == (r50.name, rn50.name)
    assert diff.aspects == ["stem", "downsampling", "head"]  # activation/blocks/widths agree
    a, b = r50.resnet, rn50.resnet
    # stem: one 7x7 stride-2 conv + max pool vs three 3x3 convs 3->32->32->64 + average pool
    assert [(c.in_channels, c.out_channels, c.kernel, c.stride) for c in a.stem.convs] == [(3, 64, 7, 2)]
    assert [(c.in_channels, c.out_channels, c.kernel) for c in b.stem.convs] == [(3, 32, 3), (32, 32, 3), (32, 64, 3)]
    assert [p.kind for p in a.stem.pools] == ["max"] and [p.kind for p in b.stem.pools] == ["avg"]
    # downsampling: strided 3x3 (main) and 1x1 (shortcut) convs vs AvgPool2d in both paths
    assert a.downsampling.strided_convs_main == {"3x3": 3}
    assert a.downsampling.strided_convs_shortcut == {"1x1": 3}
    assert a.downsampling.avgpools == 0 and b.downsampling.strided_convs == 0
    assert b.downsampling.avgpool_main == 3 and b.downsampling.avgpool_shortcut == 3
    assert (a.downsampling.method, b.downsampling.method) == ("strided convolution", "average pooling")
    # head: global average pool + fc 2048->1000 vs attention pooling with q/k/v/c, 2048->1024
    assert a.head.kind == "global average pool + linear" and (a.head.in_dim, a.head.out_dim) == (2048, 1000)
    assert b.head.kind == "attention pooling" and b.head.projections == ["q", "k", "v", "c"]
    assert (b.head.in_dim, b.head.out_dim, b.head.heads) == (2048, 1024, 32)
    assert a.activations == b.activations == ["ReLU"]
    assert a.blocks == b.blocks == [3, 4, 6, 3]


@pytest.mark.slow
def test_vit_summary_and_layer_counts(vit, rn50):
    v = vit.vit
    assert (v.patch_size, v.width, v.blocks, v.heads) == (32, 768, 12, 12)
    assert (v.output_dim, v.grid, v.tokens, v.mlp_dim) == (512, 7, 50, 3072)
    assert vit.layers.conv == 1 and vit.layers.attention == 12 and vit.layers.blocks == 12
    assert rn50.layers.conv == 55 and rn50.layers.attention == 1 and rn50.layers.blocks == 16
    assert vit.layers.linear == 12 * 4  # in_proj (packed q/k/v), out_proj, c_fc, c_proj


@pytest.mark.slow
def test_report_to_dict_is_json(full_report):
    d = json.loads(json.dumps(full_report.to_dict()))
    assert [m["params_image"] for m in d["models"]] == [RESNET50_PARAMS, RN50_IMAGE_PARAMS, VITB32_IMAGE_PARAMS]
    assert d["models"][2]["vit"]["patch_size"] == 32


# --------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_json_default_models(capsys):
    from clipcompare.cli import main

    assert main(["inspect", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    r50, rn50 = d["models"]
    assert r50["name"] == "resnet50:IMAGENET1K_V1" and rn50["name"] == "clip:RN50@openai"
    assert r50["params_total"] == RESNET50_PARAMS
    assert (rn50["params_image"], rn50["params_text"], rn50["params_total"]) == (
        RN50_IMAGE_PARAMS, RN50_TOTAL_PARAMS - RN50_IMAGE_PARAMS, RN50_TOTAL_PARAMS)
    assert [s["output_shape"] for s in r50["stages"]][-1] == [1, 1000]
    assert [x["aspect"] for x in d["diffs"][0]["differences"]] == ["stem", "downsampling", "head"]
    assert r50["pretrained"] is False
    assert r50["weights"] == "random init (resnet50-0676ba61.pth not found)"
    assert rn50["weights"] == "random init (RN50.pt not found)"
    assert "FlopCounterMode" in d["flops_note"]


@pytest.mark.slow
def test_cli_text_output(capsys, monkeypatch, resnet50, clip_rn50, clip_vitb32):
    from clipcompare.cli import main

    # reuse the session's models instead of building them again (specs as parsed may still lack
    # the CLIP tag the loader resolves, so match on family and architecture)
    built = {(m.spec.family, m.spec.arch): m for m in (resnet50, clip_rn50, clip_vitb32)}
    monkeypatch.setattr("clipcompare.architecture.run.load_model", lambda spec, **_: built[(spec.family, spec.arch)])
    assert main(["inspect", "--model", "resnet50", "--model", "clip:RN50", "--model", "clip:ViT-B-32"]) == 0
    out = capsys.readouterr().out
    assert "weights     random init (resnet50-0676ba61.pth not found)" in out
    assert "random init (RN50.pt not found)" in out
    assert "25,557,032" in out and "102,007,137" in out and "63,690,241" in out and "87,849,216" in out
    assert "Structural differences: resnet50:IMAGENET1K_V1 vs clip:RN50@openai" in out
    assert "attention pooling" in out and "average-pool downsampling" in out
    assert "patch 32×32, width 768, 12 blocks, 12 heads" in out
    assert "Layer counts (image towers)" in out
    assert "[1, 2048, 7, 7]" in out


def test_cli_bad_spec_is_one_line_error(capsys):
    from clipcompare.cli import main

    assert main(["inspect", "--model", "clip:"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipcompare: error:") and len(err.strip().splitlines()) == 1
