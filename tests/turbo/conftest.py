"""Fixtures of the TurboOCIv1 tests: upstream fixtures, upstream's reader as a judge, CLI helpers.

``obd_export`` runs ``/work/shared/oracle/bin/obd-export`` — overlaybd's own ``image_file.cpp``
layer opening (fs meta + ``new_gzfile(target, gzip.meta)`` + ``open_warpfile_ro``) — and skips
the test cleanly when the oracle is absent or does not start on this machine.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def upstream_turbo(fixtures_dir: Path) -> Path:
    d = fixtures_dir / "upstream-turbo"
    if not d.is_dir():
        pytest.skip("fixtures/upstream-turbo is not available")
    return d


@pytest.fixture(scope="session")
def upstream_features(fixtures_dir: Path) -> Path:
    d = fixtures_dir / "upstream-features"
    if not (d / "feat1.tar.gz").is_file():
        pytest.skip("fixtures/upstream-features is not available")
    return d


@pytest.fixture(scope="session")
def oracle_bin(shared_dir: Path) -> Path:
    b = shared_dir / "oracle" / "bin"
    exe = b / "obd-export"
    if not exe.is_file():
        pytest.skip("the upstream reader oracle (obd-export) is not available")
    probe = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    if "usage" not in (probe.stdout + probe.stderr).lower():
        pytest.skip(f"obd-export does not start here: {(probe.stderr or probe.stdout)[-300:]}")
    return b


@pytest.fixture(scope="session")
def obd_export(oracle_bin: Path):
    """``obd_export(raw, [layer specs])``: upstream's reader writes the merged disk (fails the
    test if upstream cannot open a layer). Specs: a native blob path, or
    ``turbo-blob:META.tar.gz,SOURCE`` for a TurboOCIv1 layer."""

    def run(raw: Path, layers: Sequence[str | Path]) -> str:
        proc = subprocess.run([str(oracle_bin / "obd-export"), str(raw), *map(str, layers)],
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            pytest.fail(f"upstream's reader refused the stack (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout + proc.stderr

    return run


@pytest.fixture
def cli(overlaybd_cmd: list[str]):
    """Run ``overlaybd ARGS`` (text mode)."""

    def run(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*overlaybd_cmd, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, check=False)

    return run


def turbo_spec(meta: Path, source: Path, prefix: str = "turbo:") -> str:
    return f"{prefix}{meta},{source}"


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line starting ``overlaybd: error:``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("overlaybd: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
