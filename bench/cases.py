"""Apply-layer cases shared by bench/apply.py and bench/convert.py.

A case is a stack of layer tars applied bottom-up with ``overlaybd apply-layer``, each on the blobs
of the layers below it (``--lower``), timed as the sum of the per-layer commands and compared with
the limit proxy (bench/proxy.py) of the same tars.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import proxy
from layertar import Layer
from measure import CommandFailed, MissingCommand, ensure_bytecode, overlaybd_cli, require_subcommand, sample
from report import Row

log = logging.getLogger(__name__)

UPSTREAM_RATIO = 281 / 316  # upstream's lz4 4 KiB blob / tar on its 316 MB mixed layer


def apply_cmd(layer: Layer, out: Path, lowers: Sequence[Path], algorithm: str, bs_kb: int) -> list[str]:
    cmd = [*overlaybd_cli(), "apply-layer"]
    for lower in lowers:
        cmd += ["--lower", str(lower)]
    return [*cmd, str(layer.path), str(out), "--algorithm", algorithm, "--bs", str(bs_kb)]


def check_apply_layer() -> None:
    ensure_bytecode()
    require_subcommand("apply-layer", "--lower", "--algorithm", "--bs")


def _refused_block_size(exc: CommandFailed) -> bool:
    """True when the writer refused 64 KiB blocks of incompressible data (spec zfile.md §5)."""
    text = str(exc).lower()
    return "32" in text and ("65536" in text or "64 kib" in text or "block" in text)


def run_stack(case: str, layers: Sequence[Layer], workdir: Path, *, algorithm: str, bs_kb: int,
              repeat: int, proxy_repeat: int = 1) -> tuple[Row, list[Path]]:
    """Applies ``layers`` bottom-up ``repeat`` times; returns the row and the blobs of the last run.

    A 64 KiB run the writer refuses (random data stores more than 64 KiB per block) is measured
    at 32 KiB instead and says so in the row.
    """
    out_dir = workdir / f"{case}-{algorithm}-{bs_kb}k"
    note = ""
    try:
        return _measure(case, layers, out_dir, algorithm, bs_kb, repeat, proxy_repeat, note)
    except CommandFailed as exc:
        if bs_kb == 64 and _refused_block_size(exc):
            note = "64K refused by the writer (zfile.md §5): measured at 32K"
            return _measure(case, layers, out_dir, algorithm, 32, repeat, proxy_repeat, note)
        raise


def _measure(case: str, layers: Sequence[Layer], out_dir: Path, algorithm: str, bs_kb: int, repeat: int,
             proxy_repeat: int, note: str) -> tuple[Row, list[Path]]:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    blobs = [out_dir / f"{i}-{layer.name}.blob" for i, layer in enumerate(layers)]

    def cmds(_: int) -> list[list[str]]:
        return [apply_cmd(layer, blobs[i], blobs[:i], algorithm, bs_kb) for i, layer in enumerate(layers)]

    def clean(_: int) -> None:
        for blob in blobs:
            blob.unlink(missing_ok=True)

    for layer in layers:
        proxy.warm(layer.path)
    result = sample(cmds, repeat, before=clean)
    floors = [proxy.best_of(layer.path, proxy_repeat, algorithm=algorithm, block_size=bs_kb * 1024)
              for layer in layers]
    row = Row(case=case, algo=algorithm, bs=f"{bs_kb}K", runs=repeat, seconds=result.seconds,
              tar_bytes=sum(layer.tar_bytes for layer in layers), entries=sum(layer.entries for layer in layers),
              max_rss_mb=result.max_rss_mb, out_bytes=sum(b.stat().st_size for b in blobs),
              proxy_seconds=sum(f.seconds for f in floors), cpu_seconds=result.cpu_seconds,
              proxy_cpu_seconds=sum(f.cpu_seconds for f in floors), note=note)
    return row, blobs


def failure_note(exc: Exception) -> str:
    """One line for the table: the missing command, or the last line the failing command printed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if isinstance(exc, MissingCommand) or len(lines) < 2:
        return f"FAILED: {lines[0] if lines else type(exc).__name__}"
    return f"FAILED: {lines[-1]}"


def failed_row(case: str, algorithm: str, bs_kb: int, exc: Exception) -> Row:
    """A row that records why a case could not be measured instead of aborting the whole table."""
    return Row(case=case, algo=algorithm, bs=f"{bs_kb}K", note=failure_note(exc))
