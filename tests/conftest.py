"""Shared pytest set-up.

Fixtures from real upstream output live in ``../shared/fixtures`` (next to the checkout) or in
``$OVERLAYBD_SHARED``; tests that need them skip cleanly when that folder is absent. Small
fixtures we always need are copied under ``tests/data``.

Area-specific fixtures live in ``tests/support/*.py`` (real registry, MariaDB database,
e2fsprogs judge) and are loaded as plugins below.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DATA = Path(__file__).resolve().parent / "data"

pytest_plugins = [
    "support.paths",
    "support.fsjudge",
    "support.registry",
    "support.mariadb",
    "support.smallfs",
]


def pytest_configure(config: pytest.Config) -> None:
    """Keep the converter's local blob cache ($XDG_CACHE_HOME/overlaybd) out of the user's home:
    every test process and its children share one throw-away cache for the session."""
    if "OVERLAYBD_TEST_XDG_CACHE" not in os.environ:
        cache = tempfile.mkdtemp(prefix="overlaybd-test-xdg-")
        os.environ["OVERLAYBD_TEST_XDG_CACHE"] = cache
        os.environ["XDG_CACHE_HOME"] = cache
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


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
