"""Builds the optional accelerator (``overlaybd_provider.accel``): Cython compiles the hot modules from
their own ``.py`` sources. Everything else is in pyproject.toml.

Each extension is optional: with no C compiler (or ``OVERLAYBD_ACCEL=0`` at build time) the install
succeeds with the pure-Python modules. ``build_ext`` records the sha256 of every source it compiled in
``overlaybd_provider/_accel_built.json``; at run time a compiled module is used only when that digest
matches the ``.py`` beside it (an edited source runs as Python until rebuilt).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PROVIDER = ROOT / "provider"


def _accel():
    spec = importlib.util.spec_from_file_location("_overlaybd_accel", PROVIDER / "overlaybd_provider" / "accel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ACCEL = _accel()


def _extensions() -> list:
    """One optional extension per accelerated module, its source the module's own ``.py`` (turned
    into C by :class:`BuildAccel` only when extensions are built, not for the metadata steps)."""
    if not ACCEL.enabled():
        return []
    from setuptools import Extension

    return [
        # no debug info: a third of the build time and 4x smaller files (tracebacks keep the .py lines)
        Extension(module, [str(ACCEL.source_path(PROVIDER, module).relative_to(ROOT))], optional=True,
                  extra_compile_args=["-g0"])
        for module in ACCEL.MODULES
    ]


def _cythonized(extensions: list) -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("overlaybd accelerator: Cython is not installed; the pure-Python modules will run")
        return []
    built = cythonize(
        extensions,
        build_dir="build/cython",
        force=True,  # the C of every module from these directives (a cached file may be from others)
        quiet=True,
        nthreads=os.cpu_count() or 1,
        # Python semantics exactly (the compiled module must behave as its fallback): annotations are
        # not C types, and no variable gets a type from its first value (Cython's "safe" inference
        # typed a bytearray whose strided slice then refused a bytes value that Python accepts).
        compiler_directives={"language_level": 3, "annotation_typing": False, "infer_types": False, "binding": True},
    )
    return built


class BuildAccel(build_ext):
    """``build_ext`` that turns the modules into C, compiles them on every core and writes the
    manifest of the sources it compiled in this run."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        if not self.extensions:
            return super().run()
        generated = {extension.name: extension.sources for extension in _cythonized(list(self.extensions))}
        # the same Extension objects (setuptools set attributes of its own on them), now from the C files
        self.extensions[:] = [extension for extension in self.extensions if extension.name in generated]
        for extension in self.extensions:
            extension.sources = generated[extension.name]
        started = time.time() - 1
        super().run()
        if not self.extensions:
            return None
        built = {}
        for extension in self.extensions:
            output = Path(self.get_ext_fullpath(extension.name))
            # only what this run compiled: a file left by an earlier build (its compile failed now,
            # optional) is not recorded, so it is never loaded for the current source
            if output.is_file() and output.stat().st_mtime >= started:
                built[extension.name] = ACCEL.source_digest(ACCEL.source_path(PROVIDER, extension.name))
        target = Path(self.get_ext_fullpath(ACCEL.MODULES[0])).parents[len(ACCEL.MODULES[0].split(".")) - 2]
        manifest = target / ACCEL.MANIFEST
        manifest.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")
        print(f"overlaybd accelerator: {len(built)}/{len(self.extensions)} modules compiled ({manifest})")
        return None


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildAccel})
