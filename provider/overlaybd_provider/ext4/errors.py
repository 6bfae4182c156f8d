"""Errors raised by the ext4 package.

Shared by every ext4 module (directories, xattrs, inodes, apply...): add new subclasses here
rather than redefining a root per module, so callers can catch :class:`Ext4Error` once.
"""

from __future__ import annotations

from overlaybd_provider.errors import OverlaybdError


class Ext4Error(OverlaybdError):
    """Something in an ext4 image (or destined for one) is invalid."""


class DirectoryCorruptError(Ext4Error):
    """A directory block does not parse (bad rec_len, name_len, dx root/node...)."""


class DirectoryLimitError(Ext4Error):
    """A directory entry or a whole directory does not fit ext4's limits (name length, htree size)."""


class XattrError(Ext4Error):
    """Extended attributes are corrupt on disk or do not fit the inode plus one xattr block."""


class LayerTarError(Ext4Error):
    """The layer tar (or its gzip/zstd wrapper) is truncated, corrupt or unsupported."""


class DiffIdMismatchError(LayerTarError):
    """The uncompressed layer is not what the image config's ``diff_id`` says (a lying source)."""
