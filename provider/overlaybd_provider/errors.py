"""Root of the exception hierarchy.

Every error a user can cause (bad input, registry refusal, corrupt blob...) derives from
:class:`OverlaybdError`; the CLI prints its message as one line and exits with status 2.
Each layer (formats, ext4, oci, engine) defines its own subclasses next to its code.
"""

from __future__ import annotations


class OverlaybdError(Exception):
    """An error caused by input or environment, reported to the user as one line."""
