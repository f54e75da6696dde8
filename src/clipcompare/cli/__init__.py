"""Command-line entry point: the only place that parses arguments and prints for people.

Each subcommand lives in its own module under ``clipcompare.cli`` with ``register(subparsers)``;
heavy imports (torch, open_clip) happen inside the command, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from clipcompare import __version__
from clipcompare.errors import UserError

# subcommand modules, in the order `--help` lists them (the pipeline's order)
COMMANDS: tuple[str, ...] = (
    "inspect", "synsets", "classify", "evaluate", "robustness", "retrieval", "precision", "train", "explain", "report",
    "demo",
)


# an error message longer than this is cut (with "…"): a line a terminal shows whole, give or take
MAX_ERROR_CHARS = 500


def one_line(message: str, kind: str = "error") -> str:
    """``message`` as one line: its lines joined, runs of whitespace collapsed, cut at
    :data:`MAX_ERROR_CHARS`; ``kind`` (the exception's type) when it says nothing.

    Every UserError the CLI prints passes through here, so a library's multi-paragraph message
    (torch's weights-only notes...) can never spread over several lines of stderr."""
    text = " ".join(message.split()) or kind
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1].rstrip() + "…"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="clipcompare",
        description="Compare a supervised ImageNet ResNet-50 with CLIP: architecture, zero-shot "
        "accuracy under distribution shift, precision, contrastive fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        module = importlib.import_module(f"clipcompare.cli.{name}_cmd")
        module.register(sub)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    # open_clip logs "No pretrained weights loaded" at WARNING for every random init we ask for
    logging.getLogger("root").setLevel(max(level, logging.DEBUG))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"clipcompare: error: {one_line(str(exc), type(exc).__name__)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clipcompare: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `clipcompare ... | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return 0
