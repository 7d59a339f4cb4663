"""The layering of DESIGN.md: checkout, devices, media and overlays never import server.

Imports only a type checker sees (under ``if TYPE_CHECKING:``) are allowed; every other
import, at module level or inside a function, counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("checkout", "devices", "media", "overlays")


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def server_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module in imported_modules(tree):
            if module == "server" or module.startswith("server."):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_no_lower_layer_imports_server():
    bad = [hit for package in PACKAGES for hit in server_imports(package)]
    assert not bad, "these modules import server/ (pass what they need in):\n" + "\n".join(bad)


def test_the_check_sees_function_level_imports():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from server.config import Settings\n"
        "def f():\n    from server.events import EventBus\n"
    )
    assert [m for _l, m in imported_modules(tree)] == ["typing", "server.events"]
