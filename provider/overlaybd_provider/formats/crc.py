"""overlaybd's checksum: CRC-32C without the usual initial/final inversion (overlaybd-format.md).

It is what the x86 ``crc32`` instruction computes when chained from ``seed``; the ``crc32c``
package computes the standard (inverted) form, so we invert around it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

_MASK = 0xFFFFFFFF


def _load_crc32c() -> Callable[..., int]:
    """``crc32c.crc32c`` without running the package's ``__init__``, which imports
    ``importlib.metadata`` and ``argparse`` (for its version string and CLI): 20-40 ms of every
    converter and compressor process start. Falls back to the plain import."""
    try:
        spec = importlib.util.find_spec("crc32c")
        name = "crc32c._crc32c"
        if spec is not None and spec.submodule_search_locations and name not in sys.modules:
            for base in spec.submodule_search_locations:
                for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                    path = f"{base}/_crc32c{suffix}"
                    ext = importlib.util.spec_from_file_location(name, path)
                    if ext is None or ext.loader is None or not os.path.exists(path):
                        continue
                    module: Any = importlib.util.module_from_spec(ext)
                    ext.loader.exec_module(module)
                    sys.modules[name] = module
                    return module.crc32c
    except (ImportError, OSError, AttributeError):
        pass
    import crc32c

    return crc32c.crc32c


crc32c_std: Callable[..., int] = _load_crc32c()
"""The standard CRC-32C, ``crc32c_std(data, value=0)``."""


def crc32c_raw(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """Return ``CRC32C_RAW(data, seed)``; ``crc32c_raw(b"123456789") == 0x58E3FA20``."""
    return ~crc32c_std(data, ~seed & _MASK) & _MASK
