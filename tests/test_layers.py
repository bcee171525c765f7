"""Enforce the package's dependency direction (SPEC section 1) with a pure-AST check.

A module may import only from its own layer or from layers listed before it.  The bare
``squidmesh`` package (``squidmesh/__init__.py``) is the public facade: it may import
anything, but no module inside the package may import it.  The pure layers (errors,
types, core) must not import database drivers, clocks, threads, the OS or I/O modules.

Every module under ``squidmesh/`` must belong to a layer; a new top-level module or
subpackage has to be added to ``LAYERS`` below before it can land.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "squidmesh"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Layer index -> module prefixes.  Lower layers must never import higher ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("squidmesh.errors", "squidmesh.types"),
    ("squidmesh.core",),
    ("squidmesh.analysis",),
    ("squidmesh.storage",),
    ("squidmesh.runtime",),
    # The parts ``Mesh`` is composed of (SPEC's "Mesh facade", split so that no part can
    # reach back into the Mesh): they see the runtime, never the Mesh.
    ("squidmesh.client", "squidmesh.operator", "squidmesh.async_api"),
    ("squidmesh.mesh", "squidmesh.deploy"),
    (
        "squidmesh.cli",
        "squidmesh.contrib",
        "squidmesh.testing",
        "squidmesh.__main__",
        "squidmesh.demo",
        "squidmesh.web",
    ),
)
PURE_LAYERS = frozenset({0, 1})
FORBIDDEN_IN_PURE = frozenset(
    {
        "sqlalchemy",
        "psycopg",
        "croniter",
        "threading",
        "time",
        "os",
        "socket",
        "asyncio",
        "subprocess",
        "sqlite3",
    }
)


@dataclass(frozen=True)
class Import:
    lineno: int
    # Absolute dotted name; for `from X import n` it is "X.n" (n may be a submodule).
    module: str
    # `import squidmesh` or `from squidmesh import <facade attribute>`.
    from_bare_package: bool = False


def layer_of(module: str) -> int | None:
    """Index of the layer owning ``module`` (longest matching prefix), else None."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package_parts) - 1:
        raise ValueError(f"relative import beyond top-level package in {module}")
    base = package_parts[: len(package_parts) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def imports_of(
    source: str, module: str, is_package: bool, known_modules: frozenset[str] = frozenset()
) -> list[Import]:
    """Every import in ``source`` (anywhere in the file), resolved to absolute names."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(
                    Import(node.lineno, alias.name, from_bare_package=alias.name == PACKAGE)
                )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                if base == PACKAGE:
                    candidate = f"{PACKAGE}.{alias.name}"
                    is_submodule = alias.name != "*" and (
                        candidate in known_modules or layer_of(candidate) is not None
                    )
                    found.append(
                        Import(
                            node.lineno,
                            candidate if is_submodule else PACKAGE,
                            from_bare_package=not is_submodule,
                        )
                    )
                elif alias.name == "*":
                    found.append(Import(node.lineno, base))
                else:
                    found.append(Import(node.lineno, f"{base}.{alias.name}"))
    return found


def check_module(
    source: str,
    module: str,
    is_package: bool,
    filename: str,
    known_modules: frozenset[str] = frozenset(),
) -> list[str]:
    """Layering violations of one module, as ``file:line: message`` strings."""
    if module == PACKAGE:
        return []  # the public facade may import anything
    own = layer_of(module)
    if own is None:
        return [
            f"{filename}:1: module {module} belongs to no layer; add it to LAYERS in "
            f"tests/test_layers.py"
        ]
    violations: list[str] = []
    for imp in imports_of(source, module, is_package, known_modules):
        where = f"{filename}:{imp.lineno}"
        if imp.from_bare_package:
            violations.append(
                f"{where}: {module} imports the bare `{PACKAGE}` package (the public facade); "
                f"import the defining submodule instead"
            )
            continue
        top = imp.module.split(".")[0]
        if top == PACKAGE:
            target = layer_of(imp.module)
            if target is not None and target > own:
                violations.append(
                    f"{where}: {module} (layer {own}) imports {imp.module} (layer {target})"
                )
        elif own in PURE_LAYERS and top in FORBIDDEN_IN_PURE:
            violations.append(f"{where}: {module} is in a pure layer and must not import {top}")
    return violations


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def check_tree(package_dir: Path = PACKAGE_DIR) -> tuple[list[str], int]:
    """(violations, number of modules checked) for every .py under ``package_dir``."""
    files = sorted(package_dir.rglob("*.py")) if package_dir.is_dir() else []
    names = {path: _module_name(path, package_dir) for path in files}
    known = frozenset(name for name, _ in names.values())
    violations: list[str] = []
    for path, (module, is_package) in names.items():
        rel = path.relative_to(package_dir.parent).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
            violations += check_module(source, module, is_package, rel, known)
        except SyntaxError as exc:
            violations.append(f"{rel}:{exc.lineno or 1}: cannot parse: {exc.msg}")
        except ValueError as exc:
            violations.append(f"{rel}:1: {exc}")
    return violations, len(files)


# --------------------------------------------------------------------------- tests


def test_package_respects_layers() -> None:
    # Tolerates a partial package: layers that do not exist yet simply have no modules.
    violations, _checked = check_tree()
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_checker_catches_upward_import() -> None:
    found = check_module(
        "from __future__ import annotations\n\nfrom squidmesh.storage import Store\n",
        "squidmesh.core.replay",
        False,
        "squidmesh/core/replay.py",
    )
    assert found == [
        "squidmesh/core/replay.py:3: squidmesh.core.replay (layer 1) imports "
        "squidmesh.storage.Store (layer 3)"
    ]


def test_checker_catches_forbidden_modules_in_pure_layers() -> None:
    source = "import sqlalchemy\nimport os.path\nfrom time import monotonic\nimport json\n"
    found = check_module(source, "squidmesh.core.history", False, "squidmesh/core/history.py")
    assert found == [
        "squidmesh/core/history.py:1: squidmesh.core.history is in a pure layer and must not "
        "import sqlalchemy",
        "squidmesh/core/history.py:2: squidmesh.core.history is in a pure layer and must not "
        "import os",
        "squidmesh/core/history.py:3: squidmesh.core.history is in a pure layer and must not "
        "import time",
    ]
    # The same imports are fine outside the pure layers.
    assert check_module(source, "squidmesh.storage.sql", False, "squidmesh/storage/sql.py") == []


def test_checker_resolves_relative_imports() -> None:
    # `from ..storage import x` inside squidmesh/core/replay.py is squidmesh.storage.x.
    found = check_module(
        "from ..storage import memory\nfrom . import history\nfrom .. import errors\n",
        "squidmesh.core.replay",
        False,
        "squidmesh/core/replay.py",
    )
    assert found == [
        "squidmesh/core/replay.py:1: squidmesh.core.replay (layer 1) imports "
        "squidmesh.storage.memory (layer 3)"
    ]
    # In a package's __init__, `.` is the package itself.
    found = check_module(
        "from .engine import Engine\nfrom ..mesh import Mesh\n",
        "squidmesh.runtime",
        True,
        "squidmesh/runtime/__init__.py",
    )
    assert found == [
        "squidmesh/runtime/__init__.py:2: squidmesh.runtime (layer 4) imports "
        "squidmesh.mesh.Mesh (layer 6)"
    ]


def test_checker_keeps_the_parts_of_mesh_below_it() -> None:
    # A part may not reach back into the Mesh, not even for a type (the stubs a mixin
    # used to declare under TYPE_CHECKING).
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from squidmesh.mesh import Mesh\n"
    )
    found = check_module(source, "squidmesh.operator", False, "squidmesh/operator.py")
    assert found == [
        "squidmesh/operator.py:3: squidmesh.operator (layer 5) imports "
        "squidmesh.mesh.Mesh (layer 6)"
    ]
    # The Mesh builds its parts.
    source = "from squidmesh.client import RunClient\nfrom squidmesh.async_api import AsyncPool\n"
    assert check_module(source, "squidmesh.mesh", False, "squidmesh/mesh.py") == []


def test_checker_forbids_importing_the_bare_package() -> None:
    for source in ("import squidmesh\n", "from squidmesh import Mesh\n", "from .. import step\n"):
        found = check_module(
            source, "squidmesh.runtime.engine", False, "squidmesh/runtime/engine.py"
        )
        assert len(found) == 1 and "bare `squidmesh` package" in found[0], (source, found)
    # Importing a submodule through the package is a normal layered import.
    assert (
        check_module(
            "from squidmesh import errors\n",
            "squidmesh.core.retry",
            False,
            "squidmesh/core/retry.py",
        )
        == []
    )
    # The facade itself may import anything.
    assert check_module("from squidmesh.cli import main\n", "squidmesh", True, "x") == []


def test_checker_flags_unassigned_and_allows_downward_imports() -> None:
    found = check_module("", "squidmesh.helpers", False, "squidmesh/helpers.py")
    assert found and "belongs to no layer" in found[0]
    downward = "from squidmesh.core import x\nfrom squidmesh.errors import E\nimport threading\n"
    assert check_module(downward, "squidmesh.runtime.worker", False, "w.py") == []
    assert layer_of("squidmesh.core.commands") == 1
    assert layer_of("squidmesh.testing.fake") == 7
    assert layer_of("squidmesh.corex") is None


def test_check_tree_walks_files(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from squidmesh.runtime import anything\n")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "bad.py").write_text("x = 1\nfrom ..storage import Store\n")
    (pkg / "errors.py").write_text("class E(Exception):\n    pass\n")
    violations, checked = check_tree(pkg)
    assert checked == 4
    assert violations == [
        "squidmesh/core/bad.py:2: squidmesh.core.bad (layer 1) imports "
        "squidmesh.storage.Store (layer 3)"
    ]
