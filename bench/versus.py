"""Side by side with upstream (issue #16): our ``overlaybd apply-layer`` and upstream's C++ tools on
the same layer tars, in the same run, interleaved, best of ``--runs``.

    .venv/bin/python bench/versus.py [--runs N] [--quick] [--big] [--profile]

Upstream is ``$OVERLAYBD_SHARED/oracle/bin/oracle-convert.sh`` (``overlaybd-create`` →
``overlaybd-apply`` → ``overlaybd-commit -z -t``: the userspace convertor's path, LZ4 4 KiB);
without it the upstream columns stay empty. Cases (bench/corpus.py):

  b-debian     the 3-layer Debian image, stacked (ours: three ``apply-layer`` runs, each on the
               blobs below; upstream: one ``oracle-convert.sh`` of the three tars), and each layer
  c-small      100 000 small files in 100 directories
  a-mixed      ~300 MB, half random, half text
  d-2GB        only with --big

Each figure is the best (fastest) of ``--runs``: ours and upstream alternate, so both see the
same machine. Peak RSS is the largest process of each (``os.wait4``), sizes are the blobs.
The 1-minute load average is printed beside every case: the machine has 2 cores, and a figure
measured under a load above ~1.5 is not a result. ``--profile`` adds where our time goes
(bench/split.py, needs py-spy).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cases
import corpus
import measure as measure_mod
from layertar import Layer
from measure import CommandFailed, MissingCommand, run_once

log = logging.getLogger(__name__)
MB = 1_000_000
RSS_LIMIT_MB = 300
#: ours / upstream time targets of issue #16 (the per-layer rows are informative)
TIME_TARGETS = {"b-debian": 0.5, "c-small": 0.7, "d-2GB": 0.5}
SIZE_TARGET = 1.0


def oracle_script() -> Path | None:
    shared = Path(os.environ.get("OVERLAYBD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    script = shared / "oracle/bin/oracle-convert.sh"
    return script if script.is_file() else None


@dataclass
class Side:
    """One converter's figures for one case: per-layer times of every run, peak RSS, blob sizes."""

    runs: list[list[float]] = field(default_factory=list)
    rss_mb: float = 0.0
    sizes: list[int] = field(default_factory=list)
    failed: str = ""

    def best(self) -> float | None:
        return min(sum(r) for r in self.runs) if self.runs else None

    def best_layer(self, i: int) -> float | None:
        return min(r[i] for r in self.runs) if self.runs else None


def run_ours(layers: Sequence[Layer], out: Path, side: Side) -> None:
    blobs = [out / f"ours-{i + 1}.blob" for i in range(len(layers))]
    for blob in blobs:
        blob.unlink(missing_ok=True)
    times = []
    for i, layer in enumerate(layers):
        run = run_once(cases.apply_cmd(layer, blobs[i], blobs[:i], "lz4", 4))
        times.append(run.seconds)
        side.rss_mb = max(side.rss_mb, run.max_rss_mb)
    side.runs.append(times)
    side.sizes = [b.stat().st_size for b in blobs]


def run_upstream(script: Path, layers: Sequence[Layer], out: Path, side: Side) -> None:
    """``oracle-convert.sh`` once for the stack; per-layer times from when it reports each layer."""
    updir = out / "upstream"
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", str(script), *(str(layer.path) for layer in layers), str(updir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    marks = [start]
    for line in proc.stdout:
        if line.startswith("oracle-convert: layer "):
            marks.append(time.perf_counter())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    if proc.returncode != 0 or len(marks) != len(layers) + 1:
        side.failed = f"FAILED: oracle-convert.sh exit {proc.returncode}: {''.join(err).strip()[-300:]}"
        return
    side.runs.append([b - a for a, b in itertools.pairwise(marks)])
    side.rss_mb = max(side.rss_mb, usage.ru_maxrss / 1024)
    side.sizes = [(updir / f"layer-{i + 1}.blob").stat().st_size for i in range(len(layers))]


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Result:
    case: str
    layers: list[Layer]
    ours: Side
    upstream: Side | None
    load: list[float]


def measure_case(case: str, layers: list[Layer], work: Path, runs: int, script: Path | None) -> Result:
    out = work / case
    out.mkdir(parents=True, exist_ok=True)
    ours, theirs = Side(), (Side() if script is not None else None)
    loads = []
    for layer in layers:
        cases.proxy.warm(layer.path)
    for _ in range(runs):
        loads.append(load_average())
        try:
            run_ours(layers, out, ours)
        except (CommandFailed, MissingCommand) as exc:
            ours.failed = cases.failure_note(exc)
            break
        if theirs is not None and not theirs.failed:
            run_upstream(script, layers, out, theirs)  # type: ignore[arg-type]
    log.info("bench: %s: ours %s s, upstream %s s (load %.1f)", case, _fmt(ours.best()),
             _fmt(theirs.best() if theirs else None), max(loads))
    return Result(case, layers, ours, theirs, loads)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = ("case", "tar MB", "ours s", "upstream s", "ratio", "ours RSS", "up RSS", "ours MB", "up MB",
           "size ratio", "load", "targets")


def rows_of(result: Result, quick: bool) -> list[list[str]]:
    """The case's row (all layers) and, for stacks, one row per layer."""
    ours, up = result.ours, result.upstream
    up_ok = up is not None and not up.failed and up.runs
    out = []
    n = len(result.layers)
    views = [(result.case, None)] + ([(f"  layer {i + 1}", i) for i in range(n)] if n > 1 else [])
    for name, i in views:
        layers = result.layers if i is None else [result.layers[i]]
        mine = ours.best() if i is None else ours.best_layer(i)
        theirs = (up.best() if i is None else up.best_layer(i)) if up_ok else None  # type: ignore[union-attr]
        my_size = (sum(ours.sizes) if i is None else ours.sizes[i]) if ours.sizes else None
        up_size = (sum(up.sizes) if i is None else up.sizes[i]) if up_ok else None  # type: ignore[union-attr]
        ratio = mine / theirs if mine and theirs else None
        size_ratio = my_size / up_size if my_size and up_size else None
        checks = []
        if i is None:
            if ours.failed:
                checks.append(ours.failed)
            if up is not None and up.failed:
                checks.append(up.failed)
            if up is None:
                checks.append("no oracle-convert.sh: upstream not measured")
            target = TIME_TARGETS.get(result.case)
            if not quick and target is not None and ratio is not None:
                checks.append(f"{'ok' if ratio <= target else 'MISS'} time <= {target}x")
            if not quick and size_ratio is not None:
                checks.append(f"{'ok' if size_ratio <= SIZE_TARGET else 'MISS'} size <= {SIZE_TARGET}x")
            if not quick and ours.runs:
                checks.append(f"{'ok' if ours.rss_mb <= RSS_LIMIT_MB else 'MISS'} RSS <= {RSS_LIMIT_MB} MB")
        out.append([name, f"{sum(layer.tar_bytes for layer in layers) / MB:.0f}", _fmt(mine), _fmt(theirs),
                    _fmt(ratio), _fmt(ours.rss_mb if i is None and ours.runs else None, ".0f"),
                    _fmt(up.rss_mb if i is None and up_ok else None, ".0f"),  # type: ignore[union-attr]
                    _fmt(my_size / MB if my_size else None, ".1f"), _fmt(up_size / MB if up_size else None, ".1f"),
                    _fmt(size_ratio, ".3f"), _fmt(max(result.load) if i is None and result.load else None, ".1f"),
                    "; ".join(checks)])
    return out


def format_table(results: list[Result], quick: bool) -> str:
    body = [list(COLUMNS)] + [row for r in results for row in rows_of(r, quick)]
    widths = [max(len(row[i]) for row in body) for i in range(len(COLUMNS) - 1)]
    lines = []
    for k, cells in enumerate(body):
        line = "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=False)))
        lines.append(f"{line}  {cells[-1]}".rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus.add_cache_args(parser)
    parser.add_argument("--runs", type=int, default=3, help="runs per case and side (best of); --quick: 1")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", action="append", default=None, help="case to run (repeat): b-debian, c-small, ...")
    parser.add_argument("--profile", action="store_true", help="also print where our time goes (py-spy)")
    parser.add_argument("--timeout", type=float, default=None, help="kill one command after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measure_mod.DEFAULT_TIMEOUT = args.timeout or (120.0 if args.quick else measure_mod.DEFAULT_TIMEOUT)
    try:
        cases.check_apply_layer()
    except MissingCommand as exc:
        print(f"bench: {exc}; nothing to measure", file=sys.stderr)
        return 3
    data = corpus.build_corpus(args.cache_dir, quick=args.quick, big=args.big)
    script = oracle_script()
    if script is None:
        print("bench: no oracle-convert.sh ($OVERLAYBD_SHARED/oracle/bin): upstream columns left empty",
              file=sys.stderr)
    todo = [("b-debian", list(data.debian)), ("c-small", [data.small]), ("a-mixed", [data.mixed])]
    if data.big is not None:
        todo.append(("d-2GB", [data.big]))
    if args.only:
        todo = [(c, layers) for c, layers in todo if c in args.only]
    runs = 1 if args.quick else args.runs
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-versus-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for case, layers in todo:
            results.append(measure_case(case, layers, work, runs, script))
        print(format_table(results, args.quick))
        print(f"(best of {runs}, ours and upstream alternating; times include process start-up: "
              f"{measure_mod.startup_seconds():.2f} s per `overlaybd` run; load = highest 1-minute load average "
              f"seen at the start of a run; MB = {MB:,} bytes)")
        print(f"(ours: {measure_mod.build_label()})")
        if args.profile:
            import split as split_mod  # bench/split.py

            for case, layers in todo:
                print(split_mod.profile_text(case, layers, work / "profile"))
    failed = any(r.ours.failed for r in results)
    missed = not args.quick and any("MISS" in row[-1] for r in results for row in rows_of(r, args.quick))
    return 1 if failed else (4 if missed else 0)


if __name__ == "__main__":
    sys.exit(main())
