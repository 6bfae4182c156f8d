"""Fixtures of the formats tests: the always-available hello-world layer and CLI helpers."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
HELLO_BLOB = DATA / "hello-world-overlaybd.blob"
HELLO_INDEX = DATA / "hello-world-lsmt-index.json"
HELLO_DIGEST = "022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"
HELLO_ZFILE_SHA256 = "37b0ba86de2513f006690d25611d15e5aaa232f42aa31e4f0b896cd10ed186e1"
HELLO_LSMT_SHA256 = "39195424aa10572fe002262190877b4306a66be9c62c8f1594141b01dc79c2ea"
HELLO_FILE_SHA256 = "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
BASE_LSMT_SHA256 = "799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7"


@pytest.fixture(scope="session")
def hello_blob() -> Path:
    return HELLO_BLOB


@pytest.fixture(scope="session")
def hello_index() -> list[list[int]]:
    return json.loads(HELLO_INDEX.read_text())["entries"]


@pytest.fixture(scope="session")
def base_layer(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The legacy ``ext4_64`` ZFile, extracted from its .tar.gz."""
    import tarfile

    out = tmp_path_factory.mktemp("baselayer") / "ext4_64"
    with gzip.open(fixtures_dir / "baselayer" / "ext4_64.tar.gz") as gz, tarfile.open(fileobj=gz) as tar:
        member = tar.extractfile("ext4_64")
        assert member is not None
        with open(out, "wb") as f:
            shutil.copyfileobj(member, f)
    return out


@pytest.fixture
def cli(overlaybd_cmd: list[str]):
    """Run ``overlaybd ARGS``; returns the CompletedProcess (text mode)."""

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*overlaybd_cmd, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
        )

    return run


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line starting ``overlaybd: error:``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("overlaybd: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
