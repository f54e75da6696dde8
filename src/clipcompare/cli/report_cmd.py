"""`clipcompare report`: run directories of evaluate / precision / train as one HTML page (or Markdown)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipcompare.cli.common import int_at_least
from clipcompare.rundir import GALLERY_PER_CLASS, GALLERY_TOTAL


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = sub.add_parser(
        "report", help="one self-contained HTML report (plots, galleries) from run directories",
        description="Build one HTML file from any mix of run directories written by `evaluate --out`, "
        "`precision --out` and `train`: accuracy tables and plots, per-class comparisons, calibration, "
        "mistake severity, galleries of images only one model gets right, latency/memory plots, training "
        "curves. Every plot and thumbnail is embedded, so the page opens offline and requests nothing. "
        "A directory that holds run directories (e.g. runs/demo) stands for all of them.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories, in the order to show them")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default report.html)")
    p.add_argument("--markdown", action="store_true",
                   help="also write a Markdown report (same name, .md) with its PNGs in <name>_files/ beside it")
    p.add_argument("--title", default="clipcompare report", help="the page title")
    p.add_argument("--gallery-per-class", type=int_at_least(1), default=GALLERY_PER_CLASS, metavar="N",
                   help=f"thumbnails per true class in a gallery (default {GALLERY_PER_CLASS})")
    p.add_argument("--gallery-size", type=int_at_least(0), default=GALLERY_TOTAL, metavar="N",
                   help=f"thumbnails per gallery at most (default {GALLERY_TOTAL})")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.errors import UserError
    from clipcompare.report import ReportOptions, build_report, write_html, write_markdown

    # checked before any run is read: a bad --out costs nothing and leaves nothing behind
    markdown = args.out.with_suffix(".md")
    if args.markdown and markdown == args.out:
        raise UserError(f"--out {args.out}: --markdown writes the Markdown to {markdown} beside the HTML; "
                        f"give --out the HTML's name (e.g. {args.out.with_suffix('.html')})")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; name the HTML file to write (e.g. {args.out / 'report.html'})")
    if args.markdown and markdown.is_dir():
        raise UserError(f"--markdown writes {markdown}, which is a directory; choose another --out")
    options = ReportOptions(gallery_per_class=args.gallery_per_class, gallery_total=args.gallery_size)
    report = build_report(args.runs, options, title=args.title)
    if report.random_weights:
        names = ", ".join(sorted({m for m, _ in report.random_weights}))
        print(f"note: {names} ran with random weights; the report says their numbers mean nothing")
    if args.markdown:
        print(f"wrote {write_markdown(report, args.out.with_suffix('.md'))}")
    print(f"wrote {write_html(report, args.out)}")
    return 0
