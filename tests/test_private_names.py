"""No private name crosses a module boundary inside the package (pure-AST check).

A name starting with one underscore is a module's own business: another module may not
import it (``from m import _x``, ``import m._x``) nor reach it through an object
(``mesh._engine``), unless the module reaching for it defines that name itself (a class
of the module touching another instance of itself). Seams between modules are public,
typed names, so the type checker and the layering test see every dependency.

The few names of other libraries that are private by spelling only (Django's
``Model._meta``, ``sys._getframe``, argparse's parser internals) are listed, as are
any crossing not yet removed (with what is left to do).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "squidmesh"

#: underscore names of other libraries, public by their documentation
FOREIGN = frozenset({"_meta", "_getframe", "_actions", "_SubParsersAction"})

#: (module, name): crossings still in the code base, each with why (none left).
KNOWN: frozenset[tuple[str, str]] = frozenset()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_here(tree: ast.AST) -> set[str]:
    """Underscore names this module defines: functions, classes, attributes it assigns
    (``self._x = ...``, class-level ``_x: T``), module-level names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _private(n)}


def crossings(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, name)`` of each private name ``module`` takes from another module."""
    tree = ast.parse(source)
    own = _defined_here(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            found += [(node.lineno, p) for p in parts if _private(p)]
            found += [(node.lineno, a.name) for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found += [(node.lineno, p) for p in alias.name.split(".") if _private(p)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in FOREIGN:
                continue
            found.append((node.lineno, node.attr))
    return [(line, name) for line, name in found if (module, name) not in KNOWN]


def test_no_private_name_crosses_a_module() -> None:
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = path.relative_to(PACKAGE_DIR.parent).as_posix()
        for line, name in crossings(path.read_text(), module):
            problems.append(f"{module}:{line}: {name}")
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_every_known_crossing_still_exists() -> None:
    # A crossing removed from the code must leave the list too.
    for module, name in KNOWN:
        tree = ast.parse((PACKAGE_DIR.parent / module).read_text())
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert name in used, f"{module} no longer uses {name}: drop it from KNOWN"


def test_the_check_sees_imports_and_attribute_reaches() -> None:
    source = (
        "from squidmesh.runtime.engine import _Slot\n"
        "from squidmesh.analysis import _source\n"
        "import squidmesh._hidden.mod\n"
        "class Own:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def peer(self, other):\n"
        "        return other._mine + self._also\n"
        "def reach(mesh):\n"
        "    return mesh._engine\n"
    )
    assert crossings(source, "squidmesh/x.py") == [
        (1, "_Slot"),
        (2, "_source"),
        (3, "_hidden"),
        (10, "_engine"),
    ]
