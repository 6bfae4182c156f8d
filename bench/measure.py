"""Timing and peak-RSS of one command in a fresh child process, and medians over several runs.

Peak RSS comes from ``os.wait4``: the kernel's ``ru_maxrss`` of exactly that child (and the
grandchildren it waited for), so concurrent or earlier runs never pollute it, unlike
``getrusage(RUSAGE_CHILDREN)`` which keeps the maximum over every child ever reaped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
#: seconds after which one command is killed; bench scripts lower it with --timeout
DEFAULT_TIMEOUT = 1800.0


class MissingCommand(RuntimeError):
    """The converter does not offer the sub-command (or option) a benchmark needs yet."""


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_mb: float
    #: user + system CPU seconds of the process: far less sensitive than wall time to other load
    cpu_seconds: float
    returncode: int
    stderr: str


@dataclass
class Sample:
    """Median wall time over ``runs`` and the highest peak RSS seen in any of them."""

    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def max_rss_mb(self) -> float:
        return max(r.max_rss_mb for r in self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)


class CommandFailed(RuntimeError):
    def __init__(self, cmd: Sequence[str], run: Run) -> None:
        tail = "\n".join(run.stderr.strip().splitlines()[-5:])
        super().__init__(f"exit {run.returncode}: {' '.join(map(str, cmd))}\n{tail}")
        self.run = run


def build_label() -> str:
    """What ``overlaybd --version`` says of the build measured (the accelerator state included)."""
    try:
        done = subprocess.run([*overlaybd_cli(), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"overlaybd --version failed: {exc}"
    return (done.stdout or done.stderr).strip().splitlines()[-1] if (done.stdout or done.stderr).strip() else "?"


def overlaybd_cli() -> list[str]:
    """The console script of the interpreter running the benchmark (normally ``.venv/bin/overlaybd``).

    ``$OVERLAYBD_BENCH_CLI`` (a shell-quoted command) overrides it, e.g. to measure another build.
    """
    override = os.environ.get("OVERLAYBD_BENCH_CLI")
    if override:
        return shlex.split(override)
    script = VENV_BIN / "overlaybd"
    if script.exists():
        return [str(script)]
    found = shutil.which("overlaybd")
    if found:
        return [found]
    return [sys.executable, "-m", "overlaybd_provider.cli.main"]


def ensure_bytecode() -> None:
    """Compile the package's modules once, as ``pip install`` does: with ``PYTHONDONTWRITEBYTECODE``
    set (some shells and CI set it) an editable checkout would otherwise recompile every module in
    every converter and worker process, ~0.08 s of CPU each, which no installed copy pays."""
    import compileall

    import overlaybd_provider

    compileall.compile_dir(Path(overlaybd_provider.__file__).parent, quiet=1)


def require_subcommand(name: str, *options: str) -> None:
    """Raises :class:`MissingCommand` with a clear message unless ``overlaybd NAME --help`` lists ``options``."""
    proc = subprocess.run([*overlaybd_cli(), name, "--help"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MissingCommand(f"`overlaybd {name}` is not available yet (exit {proc.returncode})")
    missing = [opt for opt in options if opt not in proc.stdout]
    if missing:
        raise MissingCommand(f"`overlaybd {name}` has no option {', '.join(missing)} yet")


def run_once(cmd: Sequence[str | os.PathLike], *, cwd: Path | None = None, check: bool = True,
             timeout: float | None = None) -> Run:
    """Runs ``cmd`` to completion in a fresh process; wall time and that process's peak RSS.

    A command still running after ``timeout`` seconds is killed and reported as failed (a hung
    converter must not hang the benchmark).
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            timed_out = True
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    proc.stderr.close()
    stderr = b"".join(chunks).decode(errors="replace")
    if timed_out:
        stderr += f"\nbench: killed after {timeout:.0f} s (timeout)"
    run = Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, proc.returncode, stderr)
    if check and run.returncode != 0:
        raise CommandFailed(cmd, run)
    return run


def sample(make_cmds: Callable[[int], Sequence[Sequence[str | os.PathLike]]], repeat: int,
           *, before: Callable[[int], None] | None = None) -> Sample:
    """``repeat`` runs; run *i* executes the commands ``make_cmds(i)`` in sequence and counts as one.

    Several commands per run (e.g. the three layers of a stacked image) add their times; the peak
    RSS is that of the largest. ``before(i)`` prepares a run outside the timed part.
    """
    result = Sample()
    for i in range(repeat):
        if before is not None:
            before(i)
        runs = [run_once(cmd) for cmd in make_cmds(i)]
        result.runs.append(Run(sum(r.seconds for r in runs), max(r.max_rss_mb for r in runs),
                               sum(r.cpu_seconds for r in runs), 0, runs[-1].stderr))
    return result


def startup_seconds(repeat: int = 3) -> float:
    """Median time of ``overlaybd --version``: the fixed cost inside every measured command."""
    return statistics.median(run_once([*overlaybd_cli(), "--version"]).seconds for _ in range(repeat))
