"""Errors raised while reading or writing overlaybd container formats.

Every message is one line naming the file (or stream), what is wrong and, where it applies,
the byte offset, so that the CLI can print it as-is.
"""

from __future__ import annotations

from overlaybd_provider.errors import OverlaybdError


class FormatError(OverlaybdError):
    """Root of the format errors: the input is not a valid overlaybd container."""


class InputFileError(FormatError):
    """An input file cannot be opened (missing, a directory, no permission)."""


class TruncatedError(FormatError):
    """The file ends before a structure it declares."""


class BadMagicError(FormatError):
    """A header or trailer does not carry the expected magic or flags."""


class ChecksumError(FormatError):
    """A header digest, jump-table CRC or block CRC does not match."""


class CorruptBlockError(FormatError):
    """A ZFile block has an impossible stored length or does not decompress to the expected size."""


class BadIndexError(FormatError):
    """An LSMT index entry breaks the ordering/range rules of lsmt.md §3."""


class UnsupportedError(FormatError):
    """A valid but unsupported feature (algorithm, block size, dictionary...)."""


class BlockTooLargeError(FormatError):
    """A compressed block would not fit overlaybd's 64 KiB read buffer (zfile.md §5)."""


class StackError(FormatError):
    """Layers cannot be stacked: too many, or a broken uuid/parent_uuid chain."""
