"""Structural diff of two ResNet-style towers (ResNet-50 vs CLIP RN50), aspect by aspect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipcompare.architecture.run import ModelInspection


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
