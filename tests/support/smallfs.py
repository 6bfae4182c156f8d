"""Tiny real filesystems for out-of-space tests: a size-limited tmpfs mounted for one test.

``small_fs(size, ro=False)`` (function-scoped factory fixture) mounts a tmpfs of ``size`` (as
``mount -o size=``, e.g. ``"1m"``) on a fresh directory and unmounts it at teardown, so writes
there fail with a real ``ENOSPC`` (or ``EROFS`` with ``ro=True``), not a mock. Mounting needs
root (CAP_SYS_ADMIN); without it the test is skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    mounted: list[Path] = []

    def mount(size: str, *, ro: bool = False) -> Path:
        where = tmp_path_factory.mktemp("smallfs")
        opts = f"size={size},mode=0755" + (",ro" if ro else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if os.geteuid() != 0 or "permission denied" in proc.stderr.lower():
                pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
            raise RuntimeError(f"mount tmpfs failed: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
