"""Entry point of the ``overlaybd`` (and ``obdconv``) console scripts.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds a parser whose ``func`` default takes the parsed
namespace and returns an exit status. Errors derived from :class:`OverlaybdError` are
printed as one line (no traceback) with exit status 2, and so is an ``OSError`` saying the disk
is full, over quota or read-only (``errors.storage_error``) that no layer below named a path for.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from overlaybd_provider import __version__
from overlaybd_provider.errors import OverlaybdError, storage_error
from overlaybd_provider.malloc import keep_large_buffers

# Sub-command modules, in the order they appear in --help. A module missing here is skipped
# so that a partially installed tree still offers the commands it has.
SUBCOMMAND_MODULES = (
    "inspect",
    "export",
    "zfile",
    "apply",
    "convert",
    "verify",
)


#: the sub-command each module registers: a command line naming one imports only its module
COMMAND_MODULES = {"inspect": "inspect", "export": "export", "zfile": "zfile", "apply-layer": "apply",
                   "convert": "convert"}


class _VersionAction(argparse.Action):
    """``--version``: the version and the accelerator state (computed only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and the accelerator state")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from overlaybd_provider import accel

        print(f"overlaybd {__version__} ({accel.summary()})")
        parser.exit(0)


class _AcceleratorAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from overlaybd_provider import accel

        parser.exit(accel.report(require=True))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or of sub-command ``only`` alone (saves importing the
    others: a conversion process starts faster)."""
    parser = argparse.ArgumentParser(
        prog="overlaybd",
        description="Convert OCI images to overlaybd and inspect overlaybd layers.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "--accelerator", action=_AcceleratorAction,
        help="print which hot modules run compiled (exit 1 when any runs as pure Python) and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in (COMMAND_MODULES[only],) if only in COMMAND_MODULES else SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"overlaybd_provider.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"overlaybd_provider.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    keep_large_buffers()
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    from overlaybd_provider.oci.redact import install_redaction

    install_redaction(*logging.getLogger().handlers)  # whatever logs a URL or a header: no secrets
    install_redaction()
    try:
        return int(args.func(args) or 0)
    except OverlaybdError as exc:
        print(f"overlaybd: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        storage = storage_error(exc)  # disk full / quota / read-only where no path was attached
        if storage is None:
            raise
        print(f"overlaybd: error: {storage}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("overlaybd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def exit_now(status: int) -> NoReturn:
    """End the program with ``status`` once its work is done: exit handlers run and the standard
    streams are flushed, but the interpreter is not torn down object by object (~20 ms of every
    run, a sixth of a one-file ``apply-layer``). With another thread still running (nothing of
    ours, by then) it is the ordinary ``sys.exit``, which waits for it. ``run`` is the in-process
    entry; this is for the console scripts only."""
    if threading.active_count() > 1:
        sys.exit(status)
    atexit._run_exitfuncs()  # what the interpreter would run first: logging, temp dirs, coverage
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # as the interpreter exits when flushing stdout fails
    os._exit(status)


def main() -> NoReturn:
    exit_now(run())


def obdconv_main() -> NoReturn:
    """``obdconv SRC DST [options]``: the upstream-compatible alias of ``overlaybd convert``."""
    exit_now(run(["convert", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
