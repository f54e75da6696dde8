"""``clipcompare robustness``: effective robustness of evaluate runs among ~1.6k published models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipcompare.cli.common import ensure_out_dir, format_table, int_at_least, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``robustness`` subcommand."""
    p = sub.add_parser(
        "robustness", help="effective robustness: your runs against ~1.6k published models per distribution shift",
        description="Place evaluate runs among the published accuracies of 1,556 timm ImageNet classifiers and "
        "121 open_clip zero-shot models on ImageNet-V2, -Sketch, -R, -A and ObjectNet. Per shift, a line is "
        "fitted through the standard (ImageNet-1k only) models in logit space; a model's effective robustness "
        "is how many points its shifted top-1 lies above it (Taori et al. 2020; CLIP Fig. 13). For -R and -A "
        "the x-axis is top-1 on the ImageNet val images of their 200 classes, which evaluate stores. Without "
        "RUN_DIR the published map alone.",
    )
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR",
                   help="evaluate --out directories (a folder of them stands for each)")
    p.add_argument("--transform", choices=("logit", "probit"), default="logit",
                   help="axis of the fit: logit (Taori et al., CLIP) or probit (Miller et al.) (default logit)")
    p.add_argument("--json", action="store_true", help="the whole map as JSON on stdout (per shift: fit, points)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write robustness.json and one PNG per shift here")
    p.add_argument("--bootstrap", type=int_at_least(0), default=1000, metavar="N",
                   help="bootstrap resamples of the 95%% band (default 1000; 0: no band)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap (default 0)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.errors import UserError
    from clipcompare.robustness import evaluate, expand_runs, read_run, summary_table

    ensure_out_dir(args.out)
    runs, problems = [], []
    for path in expand_runs(args.runs):
        try:
            runs.append(read_run(path))
        except UserError as exc:
            problems.append(str(exc))
    if problems and not runs:
        raise UserError("; ".join(problems))
    for problem in problems:
        print(f"clipcompare: warning: {problem} (left out)", file=sys.stderr)
    result = evaluate(runs, transform=args.transform, bootstrap=args.bootstrap, seed=args.seed)
    if args.json:
        print_json(result)
    else:
        header, rows, notes = summary_table(result)
        print(f"top-1 % on each shift (effective robustness: points above the {args.transform} line of the "
              "standard ImageNet-1k models)")
        for line in format_table(header, rows, [False, False] + [True] * (len(header) - 2), rule=True):
            print(line)
        for note in notes:
            print(f"  {note}")
    if args.out is not None:
        from clipcompare.robustness.plots import write_map

        written = write_map(result, args.out)
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr if args.json else sys.stdout)
    return 0
