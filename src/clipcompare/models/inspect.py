"""Measured architecture comparison: parameters, per-stage shapes and FLOPs, structural diff.

Everything here is computed from the module trees and one forward pass, never written down by
hand: parameter counts from ``parameters()``, output shapes from forward hooks, FLOPs from
:class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per multiply-accumulate of
convolutions, matmuls and attention, and nothing for elementwise ops, norms or pooling).

For CLIP models the *image tower* (``model.visual``) is what is compared with a supervised
classifier; the text side's parameter count is reported separately.

Library code only returns data (dataclasses, ``to_dict()`` for JSON); ``clipcompare.cli.inspect_cmd``
prints it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clipcompare.models.build_info import LoadedModel, activation_names
from clipcompare.models.loading import load_model
from clipcompare.models.spec import ModelSpec

log = logging.getLogger(__name__)

FLOPS_NOTE = (
    "FLOPs as torch.utils.flop_counter.FlopCounterMode counts them: 2 × multiply-accumulates of "
    "convolutions, matmuls and attention; elementwise ops, norms and pooling count 0 "
    "(nn.MultiheadAttention's fused fast path is switched off so its matmuls are counted)"
)

_LAYER = re.compile(r"^layer(\d+)$")


# --------------------------------------------------------------------------- data


@dataclass
class Stage:
    """One row of the per-stage table."""

    name: str
    modules: list[str]
    params: int
    output_shape: list[int]
    flops: int


@dataclass
class LayerCounts:
    """Layer census of an image tower (for the side-by-side ResNet vs ViT table).

    ``linear`` counts ``nn.Linear`` modules plus one per ``nn.MultiheadAttention`` with a packed
    q/k/v input projection (``in_proj_weight``), which is a linear layer that is not a module.
    """

    conv: int
    linear: int
    attention: int
    blocks: int
    norm: int
    params: int
    flops: int


@dataclass
class ConvInfo:
    """A convolution as (in→out, k×k, stride)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int

    def describe(self) -> str:
        stride = f", stride {self.stride}" if self.stride > 1 else ""
        return f"{self.kernel}×{self.kernel} {self.in_channels}→{self.out_channels}{stride}"


@dataclass
class PoolInfo:
    """A pooling layer: ``kind`` is ``max``, ``avg`` or ``adaptive-avg``."""

    kind: str
    kernel: int
    stride: int

    def describe(self) -> str:
        if self.kind == "adaptive-avg":
            return "global average pool"
        name = "max pool" if self.kind == "max" else "average pool"
        return f"{name} {self.kernel}×{self.kernel} stride {self.stride}"


@dataclass
class StemSummary:
    """The convolutions and pooling before ``layer1``."""

    convs: list[ConvInfo]
    pools: list[PoolInfo]

    def describe(self) -> str:
        n = len(self.convs)
        kernels = {c.kernel for c in self.convs}
        kernel = f" {self.convs[0].kernel}×{self.convs[0].kernel}" if len(kernels) == 1 else ""
        chained = all(a.out_channels == b.in_channels for a, b in zip(self.convs, self.convs[1:]))
        if chained and n:
            channels = "→".join([str(self.convs[0].in_channels)] + [str(c.out_channels) for c in self.convs])
        else:
            channels = ", ".join(f"{c.in_channels}→{c.out_channels}" for c in self.convs)
        strides = [c.stride for c in self.convs]
        stride = f"stride {strides[0]}" if n == 1 else "strides " + "/".join(map(str, strides))
        if len(kernels) > 1:  # mixed kernels: list each conv in full
            convs = "; ".join(c.describe() for c in self.convs)
            text = f"{n} conv{'s' if n != 1 else ''} ({convs})"
        else:
            text = f"{n} conv{'s' if n != 1 else ''}{kernel} ({channels}, {stride})"
        if self.pools:
            text += ", then " + ", ".join(p.describe() for p in self.pools)
        return text


@dataclass
class DownsampleSummary:
    """How the residual stages halve the resolution.

    Counts are split between the main path and the shortcut (modules under a ``downsample``
    child). Kernel keys are ``"3x3"``-style strings; only layers with stride > 1 count, so CLIP's
    stride-1 ``AvgPool2d(1)`` in ``layer1``'s shortcut does not.
    """

    strided_convs_main: dict[str, int]
    strided_convs_shortcut: dict[str, int]
    avgpool_main: int
    avgpool_shortcut: int

    @property
    def strided_convs(self) -> int:
        return sum(self.strided_convs_main.values()) + sum(self.strided_convs_shortcut.values())

    @property
    def avgpools(self) -> int:
        return self.avgpool_main + self.avgpool_shortcut

    @property
    def method(self) -> str:
        if self.avgpools and not self.strided_convs:
            return "average pooling"
        if self.strided_convs and not self.avgpools:
            return "strided convolution"
        return "mixed" if self.avgpools else "none"

    def describe(self) -> str:
        def convs(counts: dict[str, int]) -> str:
            text = " + ".join(
                f"{n} strided {k.replace('x', '×')} conv{'s' if n != 1 else ''}" for k, n in counts.items()
            )
            return text or "no strided convs"

        def pools(n: int) -> str:
            return f"{n} strided AvgPool2d" if n else "no AvgPool2d"

        if self.method == "strided convolution":
            return (
                f"strided convolutions: {convs(self.strided_convs_main)} (main path) "
                f"+ {convs(self.strided_convs_shortcut)} (shortcut)"
            )
        if self.method == "average pooling":
            return (
                f"average-pool downsampling (anti-aliased): {pools(self.avgpool_main)} (main path) "
                f"+ {pools(self.avgpool_shortcut)} (shortcut), no strided convs"
            )
        if self.method == "none":
            return "no downsampling in the residual stages"
        return (
            f"mixed: {convs(self.strided_convs_main)} + {pools(self.avgpool_main)} (main path), "
            f"{convs(self.strided_convs_shortcut)} + {pools(self.avgpool_shortcut)} (shortcut)"
        )


@dataclass
class HeadSummary:
    """What turns the last feature map into the output vector."""

    kind: str  # "global average pool + linear" | "attention pooling"
    module: str  # class name of the pooling module
    in_dim: int
    out_dim: int
    projections: list[str] = field(default_factory=list)  # attention pooling: ["q", "k", "v", "c"]
    heads: int | None = None

    def describe(self) -> str:
        if self.kind == "attention pooling":
            heads = f", {self.heads} heads" if self.heads else ""
            return (
                f"attention pooling ({self.module}{heads}): {'/'.join(self.projections)} projections, "
                f"{self.in_dim}→{self.out_dim}"
            )
        return f"{self.kind.replace('linear', 'Linear')} {self.in_dim}→{self.out_dim}"


@dataclass
class ResNetSummary:
    """Structure of a ResNet-style tower (``layer1``..``layerN`` children)."""

    stem: StemSummary
    downsampling: DownsampleSummary
    head: HeadSummary
    activations: list[str]
    blocks: list[int]
    widths: list[int]


@dataclass
class ViTSummary:
    """Shape of a ViT image tower (open_clip ``VisionTransformer`` layout)."""

    image_size: int
    patch_size: int
    width: int
    blocks: int
    heads: int
    mlp_dim: int
    output_dim: int
    grid: int
    tokens: int
    class_token: bool
    activations: list[str]


@dataclass
class Difference:
    """One aspect in which two towers differ."""

    aspect: str
    a: str
    b: str


@dataclass
class StructuralDiff:
    """Aspects compared between two ResNet-style towers."""

    a: str
    b: str
    differences: list[Difference]
    same: list[str]

    @property
    def aspects(self) -> list[str]:
        return [d.aspect for d in self.differences]


@dataclass
class ModelInspection:
    """Everything measured for one model."""

    name: str
    family: str
    architecture: str
    pretrained: bool
    weights: str
    image_size: int
    params_image: int
    params_text: int | None
    params_total: int
    flops: int
    stages: list[Stage]
    layers: LayerCounts
    resnet: ResNetSummary | None = None
    vit: ViTSummary | None = None
    build: dict[str, Any] | None = None  # LoadedModel.build: activation, logit scale, preprocessing


@dataclass
class InspectReport:
    """The result of ``clipcompare inspect``."""

    models: list[ModelInspection]
    diffs: list[StructuralDiff]
    flops_note: str = FLOPS_NOTE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def image_tower(model: nn.Module) -> nn.Module:
    """The image encoder: ``model.visual`` for CLIP, the model itself for a classifier."""
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, nn.Module) else model


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


def _as_int(value: int | Sequence[int]) -> int:
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


def _native_image_size(loaded: LoadedModel) -> int:
    """The input size the tower was built for: CLIP's ``visual.image_size``, else 224."""
    size = getattr(image_tower(loaded.model), "image_size", None)
    return _as_int(size) if size is not None else 224


def _layer_names(tower: nn.Module) -> list[str]:
    return [name for name, _ in tower.named_children() if _LAYER.match(name)]


def stage_groups(tower: nn.Module) -> list[tuple[str, list[str]]]:
    """Split a tower's children into stages.

    ResNet-style (``layer1``.. children): children before ``layer1`` = stem, one stage per
    ``layerN``, children after the last = head. ViT-style (a ``transformer`` child): patch embed /
    transformer / head. Otherwise one stage per child.
    """
    names = [name for name, _ in tower.named_children()]
    layers = _layer_names(tower)
    if layers:
        first, last = names.index(layers[0]), names.index(layers[-1])
        return [("stem", names[:first]), *[(n, [n]) for n in layers], ("head", names[last + 1:])]
    if "transformer" in names:
        i = names.index("transformer")
        return [("patch embed", names[:i]), ("transformer", ["transformer"]), ("head", names[i + 1:])]
    return [(n, [n]) for n in names]


def _shape(out: Any) -> list[int]:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return list(out[0].shape)
    return []


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn off ``nn.MultiheadAttention``'s fused inference fast path for the duration.

    In eval mode under ``no_grad`` the fast path runs one fused op that FlopCounterMode has no
    formula for, so a ViT's attention would silently count 0 FLOPs (5.9 instead of 8.8 GFLOPs for
    ViT-B/32). The unfused path computes the same thing with countable matmuls.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def measure_stages(tower: nn.Module, image_size: int = 224) -> tuple[list[Stage], int]:
    """Per-stage params, output shape and FLOPs from one forward pass of a 1×3×S×S input.

    One FlopCounterMode pass over the whole tower; forward hooks on the stage children take the
    running FLOP total before and after each child, so a stage's FLOPs are exactly what its
    modules executed. What runs outside any child (ViT's final ``@ proj``) and parameters held
    by the tower itself (class/positional embeddings) go to a ``top-level`` row, so the rows
    always sum to the tower's totals. Returns ``(stages, total_flops)``.
    """
    groups = stage_groups(tower)
    children = dict(tower.named_children())
    flops: dict[str, int] = {name: 0 for name, _ in groups}
    last_output: dict[str, list[int]] = {}  # a stage's output is that of its last child to run
    counter = FlopCounterMode(display=False)
    before: dict[str, int] = {}
    handles = []

    def hooks(stage: str, child: str):
        def pre(_mod: nn.Module, _inp: Any) -> None:
            before[child] = counter.get_total_flops()

        def post(_mod: nn.Module, _inp: Any, out: Any) -> None:
            flops[stage] += counter.get_total_flops() - before.pop(child)
            last_output[stage] = _shape(out)

        return pre, post

    for stage, names in groups:
        for name in names:
            pre, post = hooks(stage, name)
            handles.append(children[name].register_forward_pre_hook(pre))
            handles.append(children[name].register_forward_hook(post))
    param = next(tower.parameters(), None)
    x = torch.zeros(1, 3, image_size, image_size,
                    dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad(), mha_fastpath_disabled(), counter:
            out = tower(x)
    finally:
        for h in handles:
            h.remove()
        tower.train(was_training)
    total = counter.get_total_flops()
    unsupported = counter.get_unsupported_ops() if hasattr(counter, "get_unsupported_ops") else {}
    if unsupported:
        log.warning("FlopCounterMode has no formula for %s; their FLOPs are not counted", dict(unsupported))

    seen: set[int] = set()  # shared parameters are counted in the first stage that holds them

    def params_of(modules: Iterable[nn.Module]) -> int:
        n = 0
        for m in modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n

    stages = [
        Stage(name, names, params_of(children[n] for n in names),
              last_output.get(name, []), flops[name])
        for name, names in groups
    ]
    own = [(n, p) for n, p in tower.named_parameters(recurse=False) if id(p) not in seen]
    rest_flops = total - sum(flops.values())
    if own or rest_flops:
        stages.append(Stage("top-level", [n for n, _ in own], sum(p.numel() for _, p in own), _shape(out), rest_flops))
    return stages, total


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj"))


def count_layers(tower: nn.Module, flops: int) -> LayerCounts:
    """Conv/linear/attention/norm layers, residual blocks and params of an image tower."""
    conv = linear = attention = norm = 0
    for m in tower.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            conv += 1
        elif isinstance(m, nn.Linear):
            linear += 1
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            norm += 1
        if _is_attention(m):
            attention += 1
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
                linear += 1  # packed q/k/v projection: a linear layer that is not a module
    layers = _layer_names(tower)
    if layers:
        blocks = sum(len(getattr(tower, n)) for n in layers)
    else:
        resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        blocks = len(resblocks) if resblocks is not None else 0
    return LayerCounts(conv, linear, attention, blocks, norm, count_params(tower), flops)


# --------------------------------------------------------------------------- structure


def _conv_info(m: nn.Conv2d) -> ConvInfo:
    return ConvInfo(m.in_channels, m.out_channels, _as_int(m.kernel_size), _as_int(m.stride))


def _pool_info(m: nn.Module) -> PoolInfo | None:
    if isinstance(m, nn.MaxPool2d):
        return PoolInfo("max", _as_int(m.kernel_size), _as_int(m.stride))
    if isinstance(m, nn.AvgPool2d):
        return PoolInfo("avg", _as_int(m.kernel_size), _as_int(m.stride))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return PoolInfo("adaptive-avg", 1, 1)
    return None


def _stem_summary(tower: nn.Module, names: list[str]) -> StemSummary:
    convs: list[ConvInfo] = []
    pools: list[PoolInfo] = []
    for name in names:
        for m in getattr(tower, name).modules():
            if isinstance(m, nn.Conv2d):
                convs.append(_conv_info(m))
            elif (pool := _pool_info(m)) is not None:
                pools.append(pool)
    return StemSummary(convs, pools)


def _downsample_summary(tower: nn.Module) -> DownsampleSummary:
    main: dict[str, int] = {}
    shortcut: dict[str, int] = {}
    avg_main = avg_shortcut = 0
    for layer in _layer_names(tower):
        for block in getattr(tower, layer):
            for name, m in block.named_modules():
                in_shortcut = name.split(".")[0] == "downsample"
                if isinstance(m, nn.Conv2d) and _as_int(m.stride) > 1:
                    key = f"{_as_int(m.kernel_size)}x{_as_int(m.kernel_size)}"
                    target = shortcut if in_shortcut else main
                    target[key] = target.get(key, 0) + 1
                elif isinstance(m, nn.AvgPool2d) and _as_int(m.stride) > 1:
                    if in_shortcut:
                        avg_shortcut += 1
                    else:
                        avg_main += 1
    return DownsampleSummary(main, shortcut, avg_main, avg_shortcut)


def _head_summary(tower: nn.Module, names: list[str]) -> HeadSummary:
    modules = [m for n in names for m in getattr(tower, n).modules()]
    for m in modules:
        if _is_attention(m) and not isinstance(m, nn.MultiheadAttention):
            projs = [(n.removesuffix("_proj"), c) for n, c in m.named_children()
                     if isinstance(c, nn.Linear) and n.endswith("_proj")]
            canonical = "qkvc"
            projs.sort(key=lambda nc: canonical.index(nc[0]) if nc[0] in canonical else len(canonical))
            out = dict(projs).get("c", projs[-1][1])
            return HeadSummary("attention pooling", type(m).__name__, m.q_proj.in_features, out.out_features,
                               [n for n, _ in projs], getattr(m, "num_heads", None))
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    pools = [p for m in modules if (p := _pool_info(m)) is not None]
    pool = pools[0].describe() if pools else "none"
    pool_module = next((type(m).__name__ for m in modules if _pool_info(m) is not None), "none")
    if linears:
        return HeadSummary(f"{pool} + linear", pool_module, linears[0].in_features, linears[-1].out_features)
    return HeadSummary(pool, pool_module, 0, 0)


def _widths(tower: nn.Module) -> list[int]:
    """Output channels of each ``layerN`` (last main-path conv of its last block)."""
    widths = []
    for layer in _layer_names(tower):
        last_block = getattr(tower, layer)[-1]
        convs = [m for n, m in last_block.named_modules()
                 if isinstance(m, nn.Conv2d) and n.split(".")[0] != "downsample"]
        widths.append(convs[-1].out_channels if convs else 0)
    return widths


def resnet_summary(tower: nn.Module) -> ResNetSummary | None:
    """Structural summary of a ResNet-style tower, or None if it has no ``layerN`` children."""
    layers = _layer_names(tower)
    if not layers:
        return None
    groups = dict(stage_groups(tower))
    return ResNetSummary(
        stem=_stem_summary(tower, groups["stem"]),
        downsampling=_downsample_summary(tower),
        head=_head_summary(tower, groups["head"]),
        activations=activation_names(tower),
        blocks=[len(getattr(tower, n)) for n in layers],
        widths=_widths(tower),
    )


def vit_summary(tower: nn.Module) -> ViTSummary | None:
    """Patch size, width, depth, heads, output dim and token count of an open_clip ViT tower."""
    resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    conv = getattr(tower, "conv1", None)
    if resblocks is None or not isinstance(conv, nn.Conv2d):
        return None
    attn = next(m for m in resblocks[0].modules() if isinstance(m, nn.MultiheadAttention))
    mlp = [m for m in resblocks[0].modules() if isinstance(m, nn.Linear) and m is not attn.out_proj]
    patch = _as_int(conv.kernel_size)
    image = _as_int(getattr(tower, "image_size", 224))
    grid = image // patch
    class_token = getattr(tower, "class_embedding", None) is not None
    proj = getattr(tower, "proj", None)
    output_dim = getattr(tower, "output_dim", None) or (proj.shape[1] if proj is not None else conv.out_channels)
    return ViTSummary(
        image_size=image, patch_size=patch, width=conv.out_channels, blocks=len(resblocks),
        heads=attn.num_heads, mlp_dim=mlp[0].out_features if mlp else 0, output_dim=int(output_dim),
        grid=grid, tokens=grid * grid + int(class_token), class_token=class_token,
        activations=activation_names(tower),
    )


def diff_resnets(a: ModelInspection, b: ModelInspection) -> StructuralDiff:
    """Compare the structural summaries of two ResNet-style towers aspect by aspect."""
    if a.resnet is None or b.resnet is None:
        raise ValueError("diff_resnets needs two ResNet-style towers")
    ra, rb = a.resnet, b.resnet
    differences: list[Difference] = []
    same: list[str] = []

    def compare(aspect: str, va: Any, vb: Any, da: str, db: str) -> None:
        if va == vb:
            same.append(f"{aspect} {da}")
        else:
            differences.append(Difference(aspect, da, db))

    compare("stem", ra.stem, rb.stem, ra.stem.describe(), rb.stem.describe())
    compare("downsampling", ra.downsampling, rb.downsampling,
            ra.downsampling.describe(), rb.downsampling.describe())
    compare("head", ra.head, rb.head, ra.head.describe(), rb.head.describe())
    compare("activation", ra.activations, rb.activations, ", ".join(ra.activations), ", ".join(rb.activations))
    compare("blocks per stage", ra.blocks, rb.blocks, "/".join(map(str, ra.blocks)), "/".join(map(str, rb.blocks)))
    compare("stage widths", ra.widths, rb.widths, "/".join(map(str, ra.widths)), "/".join(map(str, rb.widths)))
    return StructuralDiff(a.name, b.name, differences, same)


# --------------------------------------------------------------------------- entry points


def weights_note(loaded: LoadedModel) -> str:
    """``pretrained (file)`` or ``random init (file not found)``."""
    if loaded.pretrained:
        return f"pretrained ({os.path.basename(loaded.weights_file)})" if loaded.weights_file else "pretrained"
    missing = loaded.missing_weights
    return f"random init ({missing} not found)" if missing else "random init (no pretrained weights)"


def inspect_loaded(loaded: LoadedModel, image_size: int | None = None) -> ModelInspection:
    """Measure one loaded model (its image tower for CLIP) at ``image_size`` (default: native)."""
    size = image_size or _native_image_size(loaded)
    tower = image_tower(loaded.model)
    stages, flops = measure_stages(tower, size)
    params_total = count_params(loaded.model)
    params_image = count_params(tower)
    is_clip = tower is not loaded.model
    cls = type(tower)
    origin = cls.__module__.split(".")[0]
    return ModelInspection(
        name=loaded.spec.name,
        family=loaded.spec.family,
        architecture=f"{origin} {cls.__name__}" + (" (image tower)" if is_clip else ""),
        pretrained=loaded.pretrained,
        weights=weights_note(loaded),
        image_size=size,
        params_image=params_image,
        params_text=params_total - params_image if is_clip else None,
        params_total=params_total,
        flops=flops,
        stages=stages,
        layers=count_layers(tower, flops),
        resnet=resnet_summary(tower),
        vit=vit_summary(tower),
        build=loaded.build.to_dict() if loaded.build is not None else None,
    )


def build_report(models: Sequence[ModelSpec | LoadedModel], image_size: int | None = None) -> InspectReport:
    """Inspect each model (specs are loaded with random init when weights are missing) and diff
    every pair of ResNet-style towers."""
    inspections = []
    for item in models:
        loaded = item if isinstance(item, LoadedModel) else load_model(item, allow_random=True)
        log.info("inspecting %s", loaded.spec.name)
        inspections.append(inspect_loaded(loaded, image_size))
    resnets = [m for m in inspections if m.resnet is not None]
    diffs = [diff_resnets(a, b) for i, a in enumerate(resnets) for b in resnets[i + 1:]]
    return InspectReport(inspections, diffs)


def inspect_models(models: Sequence[ModelSpec | LoadedModel], image_size: int | None = None) -> dict[str, Any]:
    """:func:`build_report` as a JSON-ready dict."""
    return build_report(models, image_size).to_dict()
