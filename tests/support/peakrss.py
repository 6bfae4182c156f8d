"""Peak memory of work done in a child Python process, measured by the child itself.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the wrong number here: Linux keeps resource
usage across ``execve(2)`` (getrusage(2), NOTES) and, at exec, folds the high-water RSS of the
address space being replaced into the new program's counter. ``subprocess`` starts children
with ``vfork``, whose address space *is* the parent's, so a child of pytest starts with
``ru_maxrss`` = the pytest process's peak so far (any earlier test in the session that reached
290 MB makes every later child report >= 290 MB; ``os.wait4`` reports the same inflated value).
``VmHWM`` in ``/proc/self/status`` is the high-water mark of the child's own address space,
which exec created fresh: the child's real peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

#: prepended to the child's code: ``peak_rss_mb()`` (own peak) and ``inherited_maxrss_mb()``
PRELUDE = '''
def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def inherited_maxrss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
'''


def run_child(code: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``code`` (which prints a JSON object as its last line) in a fresh interpreter; returns
    that object plus ``peak_rss_mb`` (VmHWM at exit) and ``ru_maxrss_mb`` (for comparison)."""
    epilogue = (
        "\nimport json as _json, sys as _sys\n"
        "print(_json.dumps({'peak_rss_mb': peak_rss_mb(), 'ru_maxrss_mb': inherited_maxrss_mb()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + epilogue, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = {}
    for line in lines[-2:]:
        result.update(json.loads(line))
    result["stderr"] = proc.stderr
    return result
