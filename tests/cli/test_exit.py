"""The console scripts end with ``exit_now``: no interpreter teardown, but nothing a normal exit does
for the program is lost (buffered output, exit handlers, a thread still at work, the status)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_exit_now_flushes_output_runs_exit_handlers_and_keeps_the_status() -> None:
    done = _run("""
        import atexit, sys, tempfile, pathlib
        from overlaybd_provider.cli.main import exit_now
        keep = tempfile.TemporaryDirectory()  # removed by its finalizer at exit
        print(keep.name)
        atexit.register(lambda: print("handler ran"))
        sys.stdout.write("buffered, no newline")
        sys.stderr.write("to stderr")
        exit_now(3)
        print("never")
    """)
    assert done.returncode == 3
    name, rest = done.stdout.split("\n", 1)
    assert rest == "buffered, no newlinehandler ran\n"
    assert done.stderr == "to stderr"
    assert not Path(name).exists()


def test_exit_now_waits_for_a_thread_still_running() -> None:
    done = _run("""
        import threading, time
        from overlaybd_provider.cli.main import exit_now
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
        exit_now(0)
    """)
    assert (done.returncode, done.stdout) == (0, "thread finished\n")


def test_console_script_output_and_status_survive_a_pipe(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar"
    done = subprocess.run([sys.executable, "-c", "from overlaybd_provider.cli.main import main; main()",
                           "apply-layer", str(missing), str(tmp_path / "out.blob")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("overlaybd: error: ") and "missing.tar" in done.stderr
    one = tmp_path / "one.tar"
    with tarfile.open(one, "w") as tf:
        tf.addfile(tarfile.TarInfo("f"))
    done = subprocess.run([sys.executable, "-c", "from overlaybd_provider.cli.main import main; main()",
                           "apply-layer", str(one), str(tmp_path / "out.blob")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{tmp_path / 'out.blob'}: sha256:")
