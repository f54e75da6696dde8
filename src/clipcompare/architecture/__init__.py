"""Measured architecture comparison: parameters, per-stage shapes and FLOPs, structural diff.

Everything here is computed from the module trees and one forward pass, never written down by
hand: parameter counts from ``parameters()``, output shapes from forward hooks, FLOPs from
:class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per multiply-accumulate of
convolutions, matmuls and attention, and nothing for elementwise ops, norms or pooling).

The package follows the measurement: :mod:`.tree` (reading module trees), :mod:`.counts`
(parameters, layer census), :mod:`.flops` (how FLOPs are counted), :mod:`.stages` (the per-stage
table), :mod:`.resnet` and :mod:`.vit` (structural summaries), :mod:`.diff` (ResNet vs ResNet) and
:mod:`.run` (every model, every pair). Library code only returns data (dataclasses, ``to_dict()``
for JSON); ``clipcompare.cli.inspect_cmd`` prints it.
"""

from clipcompare.architecture.counts import LayerCounts, count_layers, count_params
from clipcompare.architecture.diff import Difference, StructuralDiff, diff_resnets
from clipcompare.architecture.flops import FLOPS_NOTE, mha_fastpath_disabled
from clipcompare.architecture.resnet import ResNetSummary, resnet_summary
from clipcompare.architecture.run import (
           InspectReport,
           ModelInspection,
           build_report,
           inspect_loaded,
           inspect_models,
           weights_note,
)
from clipcompare.architecture.stages import Stage, measure_stages, stage_groups
from clipcompare.architecture.vit import ViTSummary, vit_summary

__all__ = ["FLOPS_NOTE", "Difference", "InspectReport", "LayerCounts", "ModelInspection", "ResNetSummary", "Stage",
           "StructuralDiff", "ViTSummary", "build_report", "count_layers", "count_params", "diff_resnets",
           "inspect_loaded", "inspect_models", "measure_stages", "mha_fastpath_disabled", "resnet_summary",
           "stage_groups", "vit_summary", "weights_note"]
