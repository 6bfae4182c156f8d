"""The benchmark scripts run end to end in --quick mode (tiny corpus, one run) and print their table.

They drive the real ``overlaybd`` console script, a real ``docker-registry`` and ``skopeo``; the
corpus and all outputs go to ``tmp_path``. Takes ~30-60 s on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
COLUMNS = ("case", "algo", "bs", "runs", "seconds", "cpu s", "MB/s", "files/s", "peak RSS MB", "out MB",
           "out/tar", "proxy s", "ours/proxy", "cpu ratio", "targets")


def _run(script: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--cache-dir", str(tmp_path / "cache"),
         "--workdir", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=300,
    )


def _table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["case", "algo"])
    rows: dict[str, list[str]] = {}
    for line in lines[header + 2 :]:
        if not line.strip() or line.startswith("("):
            break
        rows.setdefault(line.split("  ")[0].strip(), []).append(line)
    return rows


@pytest.mark.timeout(300)
def test_convert_bench_quick_prints_every_case(tmp_path: Path) -> None:
    proc = _run("convert.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("case"))
    assert header.split("  ") and all(col in header for col in COLUMNS)
    rows = _table_rows(proc.stdout)
    for case in ("a-mixed", "b-debian", "c-small", "registry cold", "registry cache hit",
                 "registry shared-all-but-last", "last layer alone (apply-layer)", "layout cold (oci: → oci:)"):
        assert case in rows, f"{case} missing from:\n{proc.stdout}"
    assert len(rows["a-mixed"]) == 4  # lz4|zstd x 4K|64K
    assert "FAILED" not in proc.stdout
    assert "MB/s" in proc.stdout and "start-up" in proc.stdout


@pytest.mark.timeout(300)
def test_apply_bench_quick_measures_both_layers(tmp_path: Path) -> None:
    proc = _run("apply.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _table_rows(proc.stdout)
    assert set(rows) == {"realistic-1layer", "c-100k-files"}
    for (line,) in rows.values():
        cells = line.split()
        assert float(cells[4]) > 0  # seconds of the lz4 4K run (column 'seconds')


def test_proxy_stores_exactly_the_zfile_blocks(tmp_path: Path) -> None:
    """The proxy's output is the ZFile block area (compressed || CRC32C_RAW) our writer produces."""
    import hashlib
    import io

    from overlaybd_provider.formats.zfile import ZFileWriter

    sys.path.insert(0, str(BENCH))
    try:
        import proxy
    finally:
        sys.path.remove(str(BENCH))
    data = (b"hello overlaybd " * 70_000) + bytes(range(256)) * 4000 + b"tail"
    tar = tmp_path / "x.tar"
    tar.write_bytes(data)
    for algorithm in ("lz4", "zstd"):
        out = io.BytesIO()
        writer = ZFileWriter(out, algorithm=algorithm, block_size=4096, threads=1)
        writer.write(data)
        info = writer.close()
        blocks = out.getvalue()[512 : info.index_offset]
        result = proxy.limit_proxy(tar, algorithm=algorithm, block_size=4096)
        assert result.out_bytes == len(blocks)
        assert result.digest == hashlib.sha256(blocks).hexdigest()
        assert result.seconds > 0 and result.cpu_seconds > 0
