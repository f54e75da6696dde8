"""The package's layers hold: data → models → tasks → report → cli, arrows pointing down only.

Checked statically (every import statement, including those inside functions, so a lazy import cannot
hide a reversed arrow) and at run time for the rule the issue names: importing ``clipcompare.models``
loads nothing from ``clipcompare.train``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clipcompare"
TASKS = ("architecture", "evaluation", "precision", "retrieval", "train", "robustness", "explain", "classify")
# package (or module) → what it must never import
FORBIDDEN = {
    "data": ("models", *TASKS, "report", "cli"),
    "imagenet": ("data", "models", *TASKS, "report", "cli"),
    "models": (*TASKS, "report", "cli"),
    "report": ("cli",),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("clipcompare")}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        layer = _top(module)
        for name in sorted(_imports(path)):
            target = _top(name)
            if target in FORBIDDEN.get(layer, ()):
                bad.append(f"{module} imports {name}")
            if target == "cli" and layer not in ("cli", "__main__"):
                bad.append(f"{module} imports {name} (nothing imports the CLI)")
    return bad


def test_layers_hold():
    assert _violations() == []


def test_checker_sees_a_reversed_arrow(tmp_path, monkeypatch):
    """The check can fail: a data module importing the model layer inside a function is caught."""
    fake = tmp_path / "clipcompare"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "x.py").write_text("def f():\n    from clipcompare.models.spec import parse_spec\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _violations() == ["clipcompare.data.x imports clipcompare.models.spec",
                             "clipcompare.data.x imports clipcompare.models.spec.parse_spec"]


@pytest.mark.parametrize("package, forbidden", [("clipcompare.models", "clipcompare.train"),
                                                ("clipcompare.data", "clipcompare.models")])
def test_importing_a_layer_loads_nothing_above_it(package, forbidden):
    """Every module of the package imported in a fresh interpreter: none of ``forbidden`` is loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
