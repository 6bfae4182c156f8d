"""Errors of ``overlaybd verify``: the verification could not be carried out (exit status 2).

Differences between image and source are not errors: they are the report (exit status 1).
"""

from __future__ import annotations

from overlaybd_provider.errors import OverlaybdError


class VerifyError(OverlaybdError):
    """The verification cannot run: bad reference, unreadable source layer, unsupported image."""


class SourceLayerError(VerifyError):
    """A source layer tar cannot be modelled (corrupt tar, unsupported entry, bad diff_id)."""


class UnsupportedImageError(VerifyError):
    """The converted image uses a layer kind or an ext4 feature this reader does not know."""


class CorruptImageError(VerifyError):
    """The converted image's device holds no readable ext4 (a finding, not a failure to run)."""
