"""The library's layers: CONTRIBUTING.md's architecture table is the truth, and every import follows it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from digitlib.config import repo_root

ROOT = repo_root()
PACKAGE = ROOT / "digitlib"


def documented_layers() -> dict[str, int]:
    """{module: layer} from the table in CONTRIBUTING.md's "Architecture" section."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text[text.index("## Architecture"):]
    section = section[: section.index("\n## ", 1)]
    layers = {}
    for number, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.MULTILINE):
        for module in re.findall(r"`(\w+)`", modules):
            layers[module] = int(number)
    return layers


def imports_of(path: Path) -> set[str]:
    """The digitlib modules ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__"))


def test_every_module_has_a_layer():
    assert sorted(documented_layers()) == MODULES


def test_modules_import_only_from_earlier_layers():
    layers = documented_layers()
    upward = [f"{module} (layer {layers[module]}) imports {imported} (layer {layers[imported]})"
              for module in MODULES for imported in sorted(imports_of(PACKAGE / f"{module}.py"))
              if imported in layers and layers[imported] >= layers[module]]
    assert upward == []


def test_no_private_name_is_imported_across_modules():
    private = [f"{path.stem}: from .{node.module} import {alias.name}"
               for path in PACKAGE.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and node.level == 1
               for alias in node.names if alias.name.startswith("_") and not alias.name.endswith("__")]
    assert private == []
