"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clipcompare.errors import UserError


def add_model_args(p: argparse.ArgumentParser, default: tuple[str, ...]) -> None:
    """``--model SPEC`` (repeatable) and ``--weights PATH`` (for a single model)."""
    p.add_argument(
        "--model", "-m", dest="models", action="append", metavar="SPEC",
        help=f"model spec, repeatable (default: {' '.join(default)}); e.g. resnet50:IMAGENET1K_V2, "
        "clip:ViT-B-32, clip:RN50=/path/RN50.pt",
    )
    p.add_argument("--weights", type=Path, metavar="PATH", help="local weights file for the (single) --model")
    p.set_defaults(default_models=default)


def model_specs(args: argparse.Namespace) -> list:
    """Parsed specs from ``--model``/``--weights``; ``--weights`` applies to exactly one model."""

    from clipcompare.models.spec import parse_spec

    texts = args.models or list(args.default_models)
    specs = [parse_spec(t) for t in texts]
    if args.weights is not None:
        if len(specs) != 1:
            raise UserError("--weights needs exactly one --model")
        if specs[0].path is not None:
            raise UserError(f"--model {texts[0]} names its weights file already; drop --weights")
        # the same as typing NAME=FILE: a tag in the spec says whose weights the file holds
        # (clip:RN50@yfcc15m, resnet50:IMAGENET1K_V2), and parse_spec owns that grammar
        specs = [parse_spec(f"{texts[0]}={args.weights}")]
    return specs


def ensure_out_dir(path: Path | None) -> None:
    """Create ``--out DIR`` now, before any work, so a bad path costs nothing already computed."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create it ({exc.strerror or exc})") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (argparse turns the error into one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool], *, indent: str = "",
    rule: bool = False,
) -> list[str]:
    """Plain aligned columns: ``right[i]`` right-aligns column i (numbers); ``rule`` dashes under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return (indent + "  ".join(parts)).rstrip()

    lines = [line(header)]
    if rule:
        lines.append(line(["-" * w for w in widths]))
    return lines + [line(r) for r in rows]


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def label_list(text: str) -> list[str]:
    """An argparse ``type``: comma-separated labels, at least one, none twice (case-insensitive).

    An empty list would otherwise fall back to the default classes, and a label given twice would be
    scored as two classes splitting its probability.
    """
    labels = csv_list(text)
    if not labels:
        raise argparse.ArgumentTypeError(f"no labels in {text!r}")
    seen: dict[str, str] = {}
    for label in labels:
        if label.casefold() in seen:
            raise argparse.ArgumentTypeError(f"{label!r} is given twice (as {seen[label.casefold()]!r} before)")
        seen[label.casefold()] = label
    return labels


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
