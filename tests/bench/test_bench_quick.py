"""The benchmark scripts run end to end in --quick mode (tiny corpus, one run) and print their table.

They drive the real ``overlaybd`` console script, a real ``docker-registry`` and ``skopeo``; the
corpus and all outputs go to ``tmp_path``. Takes ~30-60 s on 2 cores.
"""

from __future__ import annotations

import re
import shutil
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


@pytest.mark.timeout(300)
def test_versus_bench_quick_prints_ours_beside_upstream(tmp_path: Path) -> None:
    """bench/versus.py: every case with our time, size and RSS; upstream's columns filled when
    the oracle is present (then both blobs exist and the ratio is ours / upstream)."""
    proc = _run("versus.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case"))
    assert lines[header].split() == ["case", "tar", "MB", "ours", "s", "upstream", "s", "ratio", "ours", "RSS", "up",
                                     "RSS", "ours", "MB", "up", "MB", "size", "ratio", "load", "targets"]
    rows = {line.split()[0] if not line.startswith("  ") else line.strip()[:7]: line.split()
            for line in lines[header + 2:] if line.strip() and not line.startswith("(")}
    assert {"b-debian", "c-small", "a-mixed", "layer 1", "layer 2", "layer 3"} <= set(rows)
    oracle = (Path(__import__("os").environ.get("OVERLAYBD_SHARED", BENCH.parents[1] / "shared"))
              / "oracle/bin/oracle-convert.sh").is_file()
    for case in ("b-debian", "c-small", "a-mixed"):
        cells = rows[case]
        assert float(cells[2]) > 0 and float(cells[5]) > 0 and float(cells[7]) > 0  # ours s, ours RSS, ours MB
        if oracle:
            ours, theirs, ratio = float(cells[2]), float(cells[3]), float(cells[4])
            # the table rounds both times to 0.01 s: the ratio of the rounded cells is only that close
            assert theirs > 0.005 and (ours - 0.005) / (theirs + 0.005) - 0.005 <= ratio
            assert ratio <= (ours + 0.005) / (theirs - 0.005) + 0.005
            assert float(cells[9]) == pytest.approx(float(cells[7]) / float(cells[8]), abs=0.01)
        else:
            assert cells[3] == "-" and "no oracle-convert.sh" in " ".join(cells)


def test_split_puts_samples_in_the_right_bucket() -> None:
    """bench/split.py: py-spy frames → buckets (per process kind), independent of line numbers."""
    sys.path.insert(0, str(BENCH))
    try:
        import split
    finally:
        sys.path.remove(str(BENCH))
    conv = 'process 10:"overlaybd apply-layer"'
    main = "thread (10): MainThread"
    codec = "overlaybd_provider/formats/zfile_codec.py"
    raw = "\n".join([
        f"{conv};{main};apply_tar (overlaybd_provider/ext4/changeset.py:400);_parse_plain (overlaybd_provider/ext4/tarstream.py:210) 7",
        f"{conv};{main};apply_tar (overlaybd_provider/ext4/changeset.py:400);put_inode (overlaybd_provider/ext4/fs.py:136) 5",
        f"{conv};{main};<module> (overlaybd:3);_find_and_load (<frozen importlib._bootstrap>:1176) 3",
        f"{conv};{main};seal_blob (overlaybd_provider/ext4/seal.py:150) 2",
        f"{conv};thread (11): seal-hash_0;_worker (concurrent/futures/thread.py:83);_WorkItem.run (concurrent/futures/thread.py:58) 4",
        f'{conv};process 12:"python -m overlaybd_provider.formats.zfile_worker 7";thread (12): MainThread;'
        f"serve (overlaybd_provider/formats/zfile_worker.py:50);read_exact (overlaybd_provider/formats/zfile_worker.py:25) 9",
        f'{conv};process 12:"python -m overlaybd_provider.formats.zfile_worker 7";thread (12): MainThread;'
        f"serve (overlaybd_provider/formats/zfile_worker.py:54);BatchCompressor.compress ({codec}:60) 6",
    ])
    path = BENCH / ".split-test.raw"
    try:
        path.write_text(raw + "\n")
        counts = split.split(path)
    finally:
        path.unlink(missing_ok=True)
    assert counts["converter"] == {"tar parse": 7, "ext4 metadata": 5, "start-up": 3, "seal write": 2}
    assert counts["helper threads"] == {"sha256": 4}
    assert counts["compressor"] == {"idle": 9, "compression": 6}
    text = split.format_split("x", counts, 1.0)
    assert "tar parse" in text and "compressor" in text


@pytest.mark.timeout(300)
def test_instructions_counts_the_converter_that_writes_the_layer(tmp_path: Path) -> None:
    """bench/instructions.py: one count of the converter process, and the digest of the blob it wrote
    under valgrind is the one a plain ``apply-layer`` of the same cut tar writes."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    proc = subprocess.run([sys.executable, str(BENCH / "instructions.py"), "--quick", "--cache-dir",
                           str(tmp_path / "cache"), "--entries", "100"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"^small-first100\.tar: (\d+\.\d+) G instructions in the converter, (sha256:[0-9a-f]{64})$",
                      proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    assert 0.1 < float(match.group(1)) < 20
    cut = next((tmp_path / "cache").rglob("small-first100.tar"))
    plain = subprocess.run([str(Path(sys.executable).parent / "overlaybd"), "apply-layer", str(cut),
                            str(tmp_path / "plain.blob")], capture_output=True, text=True, check=True)
    assert match.group(2) in plain.stdout
    assert "accelerator" in proc.stdout
