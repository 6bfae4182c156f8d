"""Where the time of one ``overlaybd apply-layer`` goes, per process and per kind of work (issue #16).

    .venv/bin/python bench/split.py [--quick] [--case b-debian|c-small|a-mixed|d-2GB] [--rate HZ]

Runs our converter under ``py-spy record --nonblocking --idle --threads --subprocesses`` (sampling
without stopping the processes, so it hardly slows them down, and it sees the compressor and decoder
processes too; it drops the samples it could not read consistently, so shares are what counts) and puts
every sample of every thread into one bucket: start-up (interpreter + imports), tar parse, ext4
metadata, data copy (tar → compressor ring), compression, CRC, the seal (blob write), sha256,
waits between processes, and for the worker processes the same plus "idle". Samples are wall
time (``--idle``): the converter column is its main thread and adds up to its wall time; the
seal's hashing thread is shown apart ("helper threads"), and the workers' waiting is "idle".

The converter runs its pure-Python modules here (``OVERLAYBD_ACCEL=0``): py-spy sees no Python frames
inside a compiled module, and its ``--native`` unwinding cannot sample without stopping the processes.
The split is that of the same code; the compiled build takes less time in the per-entry buckets.
"""

from __future__ import annotations

import argparse
import collections
import functools
import linecache
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cases
import corpus
from layertar import Layer

log = logging.getLogger(__name__)
PROVIDER = Path(__file__).resolve().parents[1] / "provider"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")

EXT4_META = {"changeset.py", "namespace.py", "fs.py", "inode.py", "directory.py", "htree.py", "dirhash.py",
             "dxedit.py", "alloc.py", "bitmap.py", "layout.py", "extent.py", "xattr.py", "mkfs.py"}
BUCKETS = ("start-up", "tar parse", "ext4 metadata", "data copy", "compression", "CRC", "spool write",
           "seal metadata", "seal write", "sha256", "wait: ring/acks", "decode", "idle", "other")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


@functools.lru_cache(maxsize=4096)
def _source(file: str, line: int) -> str:
    for base in (PROVIDER, Path(file).parent):
        path = base / file if not Path(file).is_absolute() else Path(file)
        text = linecache.getline(str(path), line)
        if text:
            return text.strip()
    return ""


def _parse(frame: str) -> tuple[str, str, int]:
    m = _FRAME.match(frame)
    if not m:
        return frame, "", 0
    return m["func"], m["file"], int(m["line"])


def bucket(frames: Sequence[str], worker: str) -> str:
    """The bucket of one sample; ``frames`` root first, ``worker`` "" (converter) / "compressor" / "decoder"."""
    parsed = [_parse(f) for f in frames]
    if any("importlib._bootstrap" in file for _func, file, _line in parsed[1:]):
        return "start-up"
    for func, file, line in reversed(parsed):
        name = Path(file).name
        text = _source(file, line) if file.startswith("overlaybd_provider") else ""
        if name == "zfile_codec.py" and "compress" in func:
            if "crc(" in text or "pack(" in text:
                return "CRC"
            if "comp(" in text or "multi_compress" in text:
                return "compression"
            return "compression"
        if name == "zfile_worker.py":
            if func == "read_exact":
                return "idle" if worker else "wait: ring/acks"
            if func == "pwrite_all":
                return "spool write"
            if func == "write_all":
                return "wait: ring/acks"
        if name == "zfile_spool.py":
            if func in ("CompressedSpool._recv_one", "CompressedSpool._reserve", "CompressedSpool.sync",
                        "CompressedSpool._acks_ready", "CompressedSpool._start_worker"):
                return "wait: ring/acks"
            if func in ("CompressedSpool.append_from", "CompressedSpool.append", "CompressedSpool._ring_pieces"):
                return "data copy"
            continue
        if name == "layerdecode.py":
            return "decode" if worker == "decoder" else "data copy"
        if name == "seal.py":
            if func == "_zranges" or func.startswith("_zranges"):
                return "seal metadata"
            if "h.update" in text:
                return "sha256"
            return "seal write"
        if name == "tarstream.py":
            if "readinto" in func or func == "_MemberData.read" or func == "TarReader.read":
                return "data copy"
            return "tar parse"
        if name == "fs.py" and func.startswith("Filesystem.write_data"):
            if "fill" in func or "write_blocks" in text or "readinto" in text:
                return "data copy"
            return "ext4 metadata"
        if name == "blockdev.py":
            if func in ("OverlayBlockDevice.write_blocks_from", "OverlayBlockDevice.write_blocks"):
                return "data copy"
            return "ext4 metadata"
        if name in EXT4_META:
            return "ext4 metadata"
    if any("seal-hash" in f for f in frames):
        return "sha256" if any("_WorkItem.run" in f for f in frames) else "idle"
    if any(f.startswith("thread (") and "MainThread" not in f for f in frames):
        return "idle"
    return "other"


def _process_kind(frames: Sequence[str]) -> tuple[str, list[str]]:
    """(process kind, the frames of the sampled thread) of one py-spy stack."""
    procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
    last = frames[procs[-1]] if procs else ""
    kind = "compressor" if "zfile_worker" in last else "decoder" if "layerdecode" in last else ""
    rest = list(frames[procs[-1] + 1:] if procs else frames)
    pid = re.match(r"process (\d+)", last)
    tid = re.match(r"thread \((\d+)\)", rest[0]) if rest else None
    if not kind and pid and tid and pid[1] != tid[1]:
        kind = "helper threads"  # the seal's hashing thread (and any other) of the converter
    return kind, rest


def split(raw: Path) -> dict[str, collections.Counter[str]]:
    """{process kind: Counter(bucket -> samples)} from a py-spy raw (collapsed) file."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        kind, frames = _process_kind(stack.split(";"))
        out[kind or "converter"][bucket(frames, kind)] += int(count)
    return out


def record(cmd: Sequence[str], raw: Path, rate: int) -> float:
    """Runs ``cmd`` under py-spy into ``raw``; returns the wall seconds."""
    spy = py_spy()
    if spy is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    start = time.perf_counter()
    subprocess.run([spy, "record", "--nonblocking", "--idle", "--threads", "--subprocesses", "-r", str(rate), "-f", "raw",
                    "-o", str(raw), "--", *cmd], check=True, capture_output=True,
                   env={**os.environ, "OVERLAYBD_ACCEL": "0"})  # see the module doc
    return time.perf_counter() - start


def profile_layers(layers: Sequence[Layer], work: Path, rate: int = 250
                   ) -> tuple[dict[str, collections.Counter[str]], float]:
    """Profile ``apply-layer`` of each layer (stacked on the blobs below); buckets added up, and
    the wall seconds of the commands."""
    work.mkdir(parents=True, exist_ok=True)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wall = 0.0
    blobs = [work / f"p-{i + 1}.blob" for i in range(len(layers))]
    for i, layer in enumerate(layers):
        blobs[i].unlink(missing_ok=True)
        raw = work / f"p-{i + 1}.raw"
        wall += record(cases.apply_cmd(layer, blobs[i], blobs[:i], "lz4", 4), raw, rate)
        for kind, counts in split(raw).items():
            total[kind].update(counts)
    return total, wall


def format_split(case: str, counts: dict[str, collections.Counter[str]], wall: float) -> str:
    """Shares of each process's samples; the converter's seconds are its share of the wall time."""
    kinds = [k for k in ("converter", "helper threads", "compressor", "decoder") if k in counts]
    lines = [f"where the time goes: {case}, {wall:.2f} s wall under py-spy (% of each thread's wall-clock samples; "
             "converter s = share x wall)",
             f"{'bucket':<16}{'converter s':>12}" + "".join(f"{k:>16}" for k in kinds)]
    conv = max(1, sum(counts["converter"].values()))
    for b in BUCKETS:
        if not any(counts[k][b] for k in kinds):
            continue
        cells = "".join(f"{100 * counts[k][b] / max(1, sum(counts[k].values())):>15.0f}%" for k in kinds)
        lines.append(f"{b:<16}{wall * counts['converter'][b] / conv:>12.2f}{cells}")
    lines.append(f"{'samples':<16}{'':>12}" + "".join(f"{sum(counts[k].values()):>16}" for k in kinds))
    return "\n".join(lines)


def profile_text(case: str, layers: Sequence[Layer], work: Path, rate: int = 250) -> str:
    try:
        counts, wall = profile_layers(layers, work / case, rate)
        return format_split(case, counts, wall)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        return f"where the time goes: {case}: not measured ({exc})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus.add_cache_args(parser)
    parser.add_argument("--case", action="append", default=None, help="b-debian, c-small, a-mixed, d-2GB (repeat)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if py_spy() is None:
        print("bench: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 3
    cases.check_apply_layer()
    data = corpus.build_corpus(args.cache_dir, quick=args.quick, big=args.big)
    todo = {"b-debian": list(data.debian), "c-small": [data.small], "a-mixed": [data.mixed]}
    if data.big is not None:
        todo["d-2GB"] = [data.big]
    with tempfile.TemporaryDirectory(prefix="bench-split-", dir=args.workdir) as tmp:
        for case in args.case or ["b-debian", "c-small"]:
            if case not in todo:
                print(f"bench: case {case} needs {'--big' if case == 'd-2GB' else 'one of ' + ', '.join(todo)}",
                      file=sys.stderr)
                return 2
            print(profile_text(case, todo[case], Path(tmp), args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
