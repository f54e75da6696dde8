"""Structure of a ResNet-style tower: stem, how the stages downsample, head, blocks and widths."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from clipcompare.architecture.stages import stage_groups
from clipcompare.architecture.tree import as_int, is_attention, layer_names
from clipcompare.models.build_info import activation_names


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


def _conv_info(m: nn.Conv2d) -> ConvInfo:
    return ConvInfo(m.in_channels, m.out_channels, as_int(m.kernel_size), as_int(m.stride))


def _pool_info(m: nn.Module) -> PoolInfo | None:
    if isinstance(m, nn.MaxPool2d):
        return PoolInfo("max", as_int(m.kernel_size), as_int(m.stride))
    if isinstance(m, nn.AvgPool2d):
        return PoolInfo("avg", as_int(m.kernel_size), as_int(m.stride))
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
    for layer in layer_names(tower):
        for block in getattr(tower, layer):
            for name, m in block.named_modules():
                in_shortcut = name.split(".")[0] == "downsample"
                if isinstance(m, nn.Conv2d) and as_int(m.stride) > 1:
                    key = f"{as_int(m.kernel_size)}x{as_int(m.kernel_size)}"
                    target = shortcut if in_shortcut else main
                    target[key] = target.get(key, 0) + 1
                elif isinstance(m, nn.AvgPool2d) and as_int(m.stride) > 1:
                    if in_shortcut:
                        avg_shortcut += 1
                    else:
                        avg_main += 1
    return DownsampleSummary(main, shortcut, avg_main, avg_shortcut)


def _head_summary(tower: nn.Module, names: list[str]) -> HeadSummary:
    modules = [m for n in names for m in getattr(tower, n).modules()]
    for m in modules:
        if is_attention(m) and not isinstance(m, nn.MultiheadAttention):
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
    for layer in layer_names(tower):
        last_block = getattr(tower, layer)[-1]
        convs = [m for n, m in last_block.named_modules()
                 if isinstance(m, nn.Conv2d) and n.split(".")[0] != "downsample"]
        widths.append(convs[-1].out_channels if convs else 0)
    return widths


def resnet_summary(tower: nn.Module) -> ResNetSummary | None:
    """Structural summary of a ResNet-style tower, or None if it has no ``layerN`` children."""
    layers = layer_names(tower)
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
