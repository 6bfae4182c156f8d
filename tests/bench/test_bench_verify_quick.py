"""``bench/verify.py --quick`` runs end to end: convert then verify each corpus image, table printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.timeout(600)
def test_verify_bench_quick_prints_convert_and_verify_times(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "verify.py"), "--quick", "--cache-dir", str(tmp_path / "cache"),
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:6] == ["case", "tar", "MB", "entries", "convert", "s"]
    rows = [ln for ln in lines[2:] if ln and not ln.startswith("(")]
    assert [r.split("  ")[0] for r in rows] == ["b-debian (3 layers)", "c-100k-files"]
    for row in rows:
        assert row.endswith("identical") and "(ok <= 300)" in row
