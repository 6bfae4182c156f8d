"""The CLI boundary: a full disk (or quota, or read-only filesystem) is one line and exit 2.

Every case runs against a real, tiny tmpfs (``support.smallfs``): ENOSPC and EROFS come from
the kernel, not from a mock, while downloading, building, writing an OCI layout or an output.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.imagegen import write_image
from support.paths import overlaybd_cli

HELLO_BLOB = Path(__file__).resolve().parents[1] / "data" / "hello-world-overlaybd.blob"
NOSPACE = "overlaybd: error: no space left on device writing "


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*overlaybd_cli(), *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, **(env or {})})


def _one_line(proc: subprocess.CompletedProcess[str], prefix: str, *, progress: bool = False) -> str:
    """Exit 2 and one error line, no traceback (``progress``: after convert's progress lines)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and (progress or len(lines) == 1), proc.stderr
    assert lines[-1].startswith(prefix) and not any(x.startswith("overlaybd: ") for x in lines[:-1]), proc.stderr
    return lines[-1]


def _noise(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)  # incompressible: the blob is as big as the data


def _tar(tmp_path: Path, size: int) -> Path:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("data.bin")
        ti.size = size
        tf.addfile(ti, io.BytesIO(_noise(size)))
    path = tmp_path / "layer.tar"
    path.write_bytes(bio.getvalue())
    return path


@pytest.mark.parametrize("worker", ["0", "1"])  # file data compressed inline, or by the worker process
def test_apply_layer_disk_full(tmp_path: Path, small_fs, worker: str) -> None:
    full = small_fs("1m")
    out = full / "out.blob"
    line = _one_line(_cli("apply-layer", _tar(tmp_path, 12 << 20), out, env={"OVERLAYBD_SPOOL_WORKER": worker}),
                     NOSPACE)
    assert line == f"{NOSPACE}{out}"
    assert list(full.iterdir()) == []  # no temporary output or spool left behind


def test_apply_layer_read_only_output(tmp_path: Path, small_fs) -> None:
    ro = small_fs("1m", ro=True)
    out = ro / "out.blob"
    line = _one_line(_cli("apply-layer", _tar(tmp_path, 4096), out), "overlaybd: error: ")
    assert line == f"overlaybd: error: read-only file system writing {out}"


def test_export_disk_full(small_fs) -> None:
    full = small_fs("1m")
    out = full / "hello.raw"
    assert _one_line(_cli("export", out, HELLO_BLOB), NOSPACE) == f"{NOSPACE}{out}"
    assert list(full.iterdir()) == []


def test_zfile_disk_full(small_fs) -> None:
    full = small_fs("256k")
    out = full / "again.blob"
    assert _one_line(_cli("zfile", "--algorithm", "zstd", HELLO_BLOB, out), NOSPACE) == f"{NOSPACE}{out}"
    assert list(full.iterdir()) == []


@pytest.fixture
def image(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_image(src, "v1", [{"etc/a": b"small"}, {"data/noise": _noise(6 << 20)}])
    return src


def test_convert_work_dir_full(tmp_path: Path, small_fs, image: Path) -> None:
    """The download and the build of the 6 MiB layer cannot fit a 2 MiB work dir."""
    work = small_fs("2m")
    line = _one_line(_cli("convert", f"oci:{image}:v1", f"oci:{tmp_path / 'dst'}:obd", "--db-url", "none",
                          "--work-dir", work, "--blob-cache", "none"), NOSPACE, progress=True)
    assert line.removeprefix(NOSPACE).startswith(str(work) + "/"), line


def test_convert_destination_full(tmp_path: Path, small_fs, image: Path) -> None:
    dst = small_fs("2m")
    line = _one_line(_cli("convert", f"oci:{image}:v1", f"oci:{dst / 'layout'}:obd", "--db-url", "none",
                          "--work-dir", tmp_path / "work", "--blob-cache", "none"), NOSPACE,
                     progress=True)
    assert line.removeprefix(NOSPACE).startswith(str(dst / "layout" / "blobs" / "sha256") + "/"), line
    assert not [p for p in (dst / "layout").rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
