"""``clipcompare inspect``: measured architecture comparison (parameters, stages, FLOPs, diff)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipcompare.cli.common import add_model_args, format_table, model_specs, print_json
from clipcompare.models.spec import DEFAULT_MODELS

if TYPE_CHECKING:  # the library imports torch; keep `--help` instant
    from clipcompare.architecture import InspectReport, ModelInspection, StructuralDiff



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser(
        "inspect",
        help="compare architectures: parameters, per-stage shapes and FLOPs, structural diff",
        description="Measure image towers (random init when weights are missing): parameter counts, "
        "a per-stage table (output shape and FLOPs for one image at the model's input size), "
        "a structural diff of ResNet-style towers and a ViT summary. FLOPs are counted by "
        "torch.utils.flop_counter.FlopCounterMode (2 x multiply-accumulates).",
    )
    add_model_args(p, DEFAULT_MODELS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Inspect the models and print tables (or JSON)."""
    from clipcompare.architecture import build_report

    report = build_report(model_specs(args))
    if args.json:
        print_json(report.to_dict())
    else:
        print("\n".join(render(report)))
    return 0


# --------------------------------------------------------------------------- text rendering


def _flops(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _model_lines(m: ModelInspection) -> list[str]:
    size = f"{m.image_size}×{m.image_size}"
    if m.params_text is not None:
        params = (f"{m.params_image:,} image tower; text side {m.params_text:,}; "
                  f"whole model {m.params_total:,}")
    else:
        params = f"{m.params_total:,}"
    lines = [
        f"{m.name} — {m.architecture}",
        f"  weights     {m.weights}",
        f"  parameters  {params}",
        f"  FLOPs       {_flops(m.flops)} per {size} image ({m.flops:,})",
    ]
    if m.build is not None:
        from clipcompare.models.build_info import BuildInfo

        b = BuildInfo(**m.build)
        lines.append(f"  activation  {b.activation} ({b.activation_source})")
        lines.append(f"  preprocess  {b.preprocess_text()}")
        if b.tokenizer:
            lines.append(f"  tokenizer   {b.tokenizer}")
    if m.vit is not None:
        v = m.vit
        tokens = f"{v.tokens} tokens ({v.grid}×{v.grid} patches{' + class token' if v.class_token else ''})"
        lines.append(
            f"  ViT         patch {v.patch_size}×{v.patch_size}, width {v.width}, {_plural(v.blocks, 'block')}, "
            f"{_plural(v.heads, 'head')}, MLP {v.mlp_dim}, output dim {v.output_dim}, {tokens}, "
            f"{'/'.join(v.activations)}"
        )
    lines.append("")
    rows = [
        # a stage that is one child of the same name (layer1) needs no modules column
        [s.name, "" if s.modules == [s.name] else " ".join(s.modules), f"{s.params:,}",
         _shape(s.output_shape), _flops(s.flops)]
        for s in m.stages
    ]
    rows.append(["total", "", f"{sum(s.params for s in m.stages):,}", "", _flops(sum(s.flops for s in m.stages))])
    lines += format_table(["stage", "modules", "params", f"output ({size})", "FLOPs"], rows,
                          [False, False, True, False, True], indent="  ")
    return lines


def _diff_lines(d: StructuralDiff) -> list[str]:
    lines = [f"Structural differences: {d.a} vs {d.b}"]
    width = max(len(d.a), len(d.b))
    for i, diff in enumerate(d.differences, 1):
        lines += [
            f"  {i}. {diff.aspect}",
            f"     {d.a.ljust(width)}  {diff.a}",
            f"     {d.b.ljust(width)}  {diff.b}",
        ]
    if not d.differences:
        lines.append("  none found")
    if d.same:
        lines.append(f"  same in both: {'; '.join(d.same)}")
    return lines


def _layer_count_lines(models: Sequence[ModelInspection]) -> list[str]:
    rows = [
        ["conv layers", *(str(m.layers.conv) for m in models)],
        ["linear layers*", *(str(m.layers.linear) for m in models)],
        ["attention layers", *(str(m.layers.attention) for m in models)],
        ["residual blocks", *(str(m.layers.blocks) for m in models)],
        ["norm layers", *(str(m.layers.norm) for m in models)],
        ["parameters", *(f"{m.layers.params:,}" for m in models)],
        ["FLOPs", *(_flops(m.layers.flops) for m in models)],
        ["input size", *(f"{m.image_size}×{m.image_size}" for m in models)],
    ]
    return [
        "Layer counts (image towers)",
        *format_table(["", *(m.name for m in models)], rows, [False, *([True] * len(models))], indent="  "),
        "  * nn.Linear modules, plus each nn.MultiheadAttention's packed q/k/v input projection",
    ]


def render(report: InspectReport) -> list[str]:
    """The human-readable report as lines (plain text, aligned columns)."""
    lines: list[str] = []
    for m in report.models:
        lines += [*_model_lines(m), ""]
    for d in report.diffs:
        lines += [*_diff_lines(d), ""]
    if len(report.models) > 1:
        lines += [*_layer_count_lines(report.models), ""]
    lines.append(f"Note: {report.flops_note}; one image (batch 1) at each model's input size.")
    return lines
