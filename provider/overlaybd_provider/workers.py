"""Child interpreters for CPU work that must not share the converter's GIL (block compression,
gzip/zstd decoding).

They are started with ``exec`` (``python -m MODULE``), never a bare ``fork()``: the converter often
runs threads (uploads, Airflow's task runner), and a forked child may inherit a lock another thread
held. The child sees this process's ``sys.path``, so it imports the same package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["env_choice", "live_children", "module_process", "spare_core"]

_children: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()


def module_process(module: str, args: Sequence[object] = (), **popen: Any) -> subprocess.Popen:
    """``python -m module args...`` with this interpreter and import path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env, **popen)
    _children.add(proc)
    return proc


def live_children() -> list[subprocess.Popen]:
    """Worker processes of this process still running (an operator's ``on_kill`` stops them)."""
    return [proc for proc in list(_children) if proc.poll() is None]


def spare_core() -> bool:
    """A worker process can run beside this one (POSIX, more than one CPU)."""
    return os.name == "posix" and (os.cpu_count() or 1) > 1


def env_choice(name: str) -> bool | None:
    """``1``/``0`` in the environment variable forces a worker on/off; anything else: ``None``."""
    value = os.environ.get(name)
    return value == "1" if value in ("0", "1") else None
