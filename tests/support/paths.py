"""Paths and command helpers shared by every test area."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def overlaybd_cli() -> list[str]:
    """Command prefix that runs our console script from the test interpreter's environment."""
    script = VENV_BIN / "overlaybd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "overlaybd_provider.cli.main"]


@pytest.fixture(scope="session")
def overlaybd_cmd() -> list[str]:
    return overlaybd_cli()


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/bootstrap.sh should have installed it")
    return path
