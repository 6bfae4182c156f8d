"""Package layering of ``oci`` (docs/architecture.md): it knows HTTP and files, never the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import overlaybd_provider

PACKAGE = Path(overlaybd_provider.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return found


def test_oci_never_imports_the_cli_or_higher_layers() -> None:
    higher = ("cli", "engine", "hooks", "operators", "ext4", "formats")
    bad = {
        f"{path.relative_to(PACKAGE)} -> {name}"
        for path in sorted((PACKAGE / "oci").rglob("*.py"))
        for name in _imports(path)
        if any(name == f"overlaybd_provider.{h}" or name.startswith(f"overlaybd_provider.{h}.") for h in higher)
    }
    assert bad == set()

