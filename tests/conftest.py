"""Shared pytest set-up.

Fixtures from real upstream output live in ``../shared/fixtures`` (next to the checkout) or in
``$OVERLAYBD_SHARED``; tests that need them skip cleanly when that folder is absent. Small
fixtures we always need are copied under ``tests/data``.

Area-specific fixtures live in ``tests/support/*.py`` (real registry, MariaDB database,
e2fsprogs judge) and are loaded as plugins below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DATA = Path(__file__).resolve().parent / "data"

pytest_plugins = [
    "support.paths",
    "support.fsjudge",
    "support.registry",
    "support.mariadb",
]


def shared_root() -> Path:
    return Path(os.environ.get("OVERLAYBD_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "fixtures").is_dir():
        pytest.skip(f"upstream fixtures not available at {root}")
    return root


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"
