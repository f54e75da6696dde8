"""The per-stage table: params, output shape and FLOPs of each stage from one forward pass."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clipcompare.architecture.flops import mha_fastpath_disabled
from clipcompare.architecture.tree import layer_names

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One row of the per-stage table."""

    name: str
    modules: list[str]
    params: int
    output_shape: list[int]
    flops: int


def stage_groups(tower: nn.Module) -> list[tuple[str, list[str]]]:
    """Split a tower's children into stages.

    ResNet-style (``layer1``.. children): children before ``layer1`` = stem, one stage per
    ``layerN``, children after the last = head. ViT-style (a ``transformer`` child): patch embed /
    transformer / head. timm's layouts: a ``stages`` child (ConvNeXt, RegNet, ...) gives one stage
    per ``stages.N``, a ``blocks`` child (ViT, DeiT, EVA) patch embed / blocks / head. Otherwise one
    stage per child.
    """
    names = [name for name, _ in tower.named_children()]
    layers = layer_names(tower)
    if layers:
        first, last = names.index(layers[0]), names.index(layers[-1])
        return [("stem", names[:first]), *[(n, [n]) for n in layers], ("head", names[last + 1:])]
    if "transformer" in names:
        i = names.index("transformer")
        return [("patch embed", names[:i]), ("transformer", ["transformer"]), ("head", names[i + 1:])]
    stages = getattr(tower, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
        i = names.index("stages")
        return [("stem", names[:i]), *[(f"stage{k + 1}", [f"stages.{k}"]) for k in range(len(stages))],
                ("head", names[i + 1:])]
    if isinstance(getattr(tower, "blocks", None), (nn.Sequential, nn.ModuleList)):
        i = names.index("blocks")
        return [("patch embed", names[:i]), ("blocks", ["blocks"]), ("head", names[i + 1:])]
    return [(n, [n]) for n in names]


def _shape(out: Any) -> list[int]:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return list(out[0].shape)
    return []


def measure_stages(tower: nn.Module, image_size: int = 224) -> tuple[list[Stage], int]:
    """Per-stage params, output shape and FLOPs from one forward pass of a 1×3×S×S input.

    One FlopCounterMode pass over the whole tower; forward hooks on the stage children take the
    running FLOP total before and after each child, so a stage's FLOPs are exactly what its
    modules executed. What runs outside any child (ViT's final ``@ proj``) and parameters held
    by the tower itself (class/positional embeddings) go to a ``top-level`` row, so the rows
    always sum to the tower's totals. Returns ``(stages, total_flops)``.
    """
    groups = stage_groups(tower)
    children = {name: tower.get_submodule(name) for _, names in groups for name in names}  # stages.N: dotted
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
