"""Every command example in README.md and docs/*.md is real: parsed by the real parsers, the cheap ones run.

Examples are the ``clipcompare ...`` lines (also behind ``torchrun ... -m clipcompare`` and
``python -m clipcompare``) and the ``benchmarks/*.py`` lines of the fenced code blocks. Each is
parsed with the parser the program itself builds (an unknown subcommand or flag fails); the ones
that need no data and no weights (``synsets``; ``inspect`` / ``classify`` with tiny models only) are
run as written, in a scratch directory where the image files they name are generated, and where
the docs show their output after a ``$`` prompt, that output is compared line by line (``...``
stands for any lines). Links between the pages must point at existing files and headings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from helpers import make_image

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARKS = ROOT / "benchmarks"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Example:
    """One command line of a code block: ``program`` is ``clipcompare`` or a benchmarks/ script."""

    page: str
    line: int
    program: str
    argv: tuple[str, ...]
    output: tuple[str, ...] | None  # the lines a `$` example shows after it, if any

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """Fenced blocks as (line number of their first line, lines)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def command_of(line: str) -> tuple[str, tuple[str, ...]] | None:
    """(program, argv) when the shell line runs clipcompare or a benchmark script, else None."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    if not tokens:
        return None
    if tokens[0] == "clipcompare":
        return "clipcompare", tuple(tokens[1:])
    for i, token in enumerate(tokens[:-1]):  # torchrun ... -m clipcompare, python -m clipcompare
        if token == "-m" and tokens[i + 1] == "clipcompare" and tokens[0].split("/")[-1] in {
                "torchrun", "python", "python3"}:
            return "clipcompare", tuple(tokens[i + 2:])
    if tokens[0].split("/")[-1] in {"python", "python3"} and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
        return tokens[1], tuple(tokens[2:])
    return None


def examples_in(path: Path) -> list[Example]:
    found = []
    page = path.relative_to(ROOT).as_posix()
    for start, lines in code_blocks(path.read_text(encoding="utf-8")):
        prompted = any(line.startswith("$ ") for line in lines)
        i = 0
        while i < len(lines):
            number, line = start + i, lines[i]
            i += 1
            if prompted:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            while line.rstrip().endswith("\\") and i < len(lines):  # continuation lines
                line = line.rstrip()[:-1] + " " + lines[i]
                i += 1
            command = command_of(line)
            if command is None:
                continue
            output = None
            if prompted:
                end = i
                while end < len(lines) and not lines[end].startswith("$ "):
                    end += 1
                output = tuple(lines[i:end])
                while output and not output[-1].strip():
                    output = output[:-1]
            found.append(Example(page, number, *command, output))
    return found


EXAMPLES = [e for page in PAGES for e in examples_in(page)]


def clipcompare_parser() -> argparse.ArgumentParser:
    from clipcompare.cli import build_parser

    return build_parser()


@cache
def benchmark_parser(script: str) -> argparse.ArgumentParser:
    """The script's own ``build_parser()``, imported the way `python benchmarks/x.py` runs it."""
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import goals.py from beside them
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def parse(example: Example) -> argparse.Namespace:
    """Parse with the real parser; an argparse error becomes a test failure naming the example."""
    assert "..." not in example.argv, f"{example.id}: '...' in an example: write it out in full"
    parser = clipcompare_parser() if example.program == "clipcompare" else benchmark_parser(example.program)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(example.argv))
    except SystemExit as exc:
        pytest.fail(f"{example.id}: `{example.program} {shlex.join(example.argv)}` does not parse "
                    f"(exit {exc.code}): {stderr.getvalue().strip()}")
    if example.program == "clipcompare":
        assert getattr(args, "run", None), f"{example.id}: no subcommand"
    return args


def test_the_docs_have_examples_of_every_command():
    from clipcompare.cli import COMMANDS

    readme = {e.argv[0] for e in EXAMPLES if e.page == "README.md" and e.program == "clipcompare"}
    assert set(COMMANDS) <= readme
    assert len(EXAMPLES) > 40


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_parses(example: Example):
    parse(example)


def test_an_unknown_flag_fails_the_check():
    """The check above can fail: a bogus flag on a real example, and on a benchmark example."""
    good = next(e for e in EXAMPLES if e.program == "clipcompare" and e.argv[0] == "evaluate")
    bench = next(e for e in EXAMPLES if e.program.startswith("benchmarks/") and e.program != "benchmarks/run_all.py")
    for example in (good, bench):
        parse(example)
        bogus = Example(example.page, example.line, example.program, (*example.argv, "--no-such-flag"), None)
        with pytest.raises(pytest.fail.Exception, match="(?s)does not parse.*unrecognized arguments: --no-such-flag"):
            parse(bogus)
    with pytest.raises(pytest.fail.Exception, match="(?s)does not parse.*invalid choice: 'evalute'"):
        parse(Example("x", 1, "clipcompare", ("evalute", "-d", "imagenet=/x", "-o", "y"), None))


def run_cost(example: Example) -> str | None:
    """``fast`` when the example runs offline in seconds (``synsets``; ``inspect`` / ``classify`` with
    tiny models only), ``slow`` for an ``inspect`` of built-in full-size architectures whose output the
    docs show, None when it needs data or weights (it is still parsed)."""
    if example.program != "clipcompare" or not example.argv:
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = clipcompare_parser().parse_args(list(example.argv))
    except SystemExit:
        return None  # test_example_parses reports it
    command, models = example.argv[0], getattr(args, "models", None) or []
    if command == "synsets":
        return "fast"
    if models and all(m.startswith("clip:tiny-") for m in models) and (
            command == "inspect" or (command == "classify" and args.allow_random)):
        return "fast"
    if command == "inspect" and example.output is not None and not any("=" in m for m in models):
        return "slow"  # random init of full-size towers: ~15 s of CPU
    return None


RUNNABLE = [pytest.param(e, id=e.id, marks=[pytest.mark.slow] if run_cost(e) == "slow" else [])
            for e in EXAMPLES if run_cost(e)]
_RESULTS: dict[tuple[str, ...], tuple[int, str]] = {}  # README and docs/ show some commands twice


def matches(documented: tuple[str, ...], actual: list[str]) -> bool:
    """Line-by-line equality, where a documented line ``...`` (any indent) stands for any lines."""
    if not documented:
        return not actual
    head, rest = documented[0], documented[1:]
    if head.strip() == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and actual[0].rstrip() == head.rstrip() and matches(rest, actual[1:])


@pytest.mark.parametrize("example", RUNNABLE)
def test_example_runs_as_written(example: Example, tmp_path, monkeypatch, capsys):
    from clipcompare.cli import main

    args = parse(example)
    if example.argv not in _RESULTS:
        monkeypatch.chdir(tmp_path)
        for k, name in enumerate(str(p) for p in getattr(args, "images", [])):
            if name.lower().endswith(IMAGE_SUFFIXES):
                make_image(tmp_path / name, seed=k)
            elif name.endswith("/"):
                for j in range(2):
                    make_image(tmp_path / name / f"img_{j}.jpg", seed=10 * k + j)
        code = main(list(example.argv))
        _RESULTS[example.argv] = code, capsys.readouterr().out
    code, out = _RESULTS[example.argv]
    assert code == 0, f"{example.id}: exit {code}"
    assert out.strip(), f"{example.id}: printed nothing"
    if example.output is not None:
        assert matches(example.output, out.splitlines()), (
            f"{example.id}: the documented output differs from what it prints:\n{out}")


def test_the_output_check_can_fail():
    assert matches(("a", "...", "d"), ["a", "b", "c", "d"])
    assert not matches(("a", "...", "d"), ["a", "b", "c", "e"])
    assert not matches(("a", "b"), ["a", "b", "c"])


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
                continue
            if anchor:
                headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken


@cache
def run_all_module():
    """benchmarks/run_all.py as a module (its SCRIPTS, HERE, main)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_texts_name_goals_not_issue_numbers():
    for path in [ROOT / "Makefile", *BENCHMARKS.glob("*.py")]:
        assert not re.search(r"\bissues? \d", path.read_text(encoding="utf-8"), re.I), path.name
    for script in run_all_module().SCRIPTS:  # what `make bench` runs: each says its goals in --help
        description = benchmark_parser(f"benchmarks/{script}").description
        assert re.match(r"Goals?: .*(>=|within)", description), (script, description)


def _fake_benchmarks(root: Path) -> dict[str, str]:
    scripts = {
        "a.py": "print('figures a'); print('goal MISSED: a is fast'); raise SystemExit(1)",
        "b.py": "print('figures b'); print('goal met: b is fast')",
        "c.py": "raise SystemExit(3)",
        "d.py": "print('goal met: d1'); print('goal MISSED: d2 is fast'); raise SystemExit(1)",
    }
    for name, code in scripts.items():
        (root / name).write_text(code + "\n")
    return scripts


def test_run_all_runs_every_benchmark_and_lists_each_missed_goal(tmp_path, monkeypatch, capsys):
    run_all = run_all_module()
    assert {"evaluate_speed.py", "precision_latency.py", "train_speed.py"} <= set(run_all.SCRIPTS)

    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "SCRIPTS", tuple(_fake_benchmarks(tmp_path)))
    assert run_all.main([]) == 1
    out = capsys.readouterr().out
    assert "figures a" in out and "figures b" in out  # b ran after a's miss
    summary = out[out.index("\ngoals missed"):].splitlines()[1:]
    assert summary == ["goals missed (3):", "  a.py: a is fast",
                       "  c.py: exited with status 3 without a 'goal MISSED:' line", "  d.py: d2 is fast"]

    monkeypatch.setattr(run_all, "SCRIPTS", ("b.py",))
    assert run_all.main([]) == 0
    assert capsys.readouterr().out.endswith("every goal met\n")

