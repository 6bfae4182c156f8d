"""Root of the exception hierarchy.

Every error a user can cause (bad input, registry refusal, corrupt blob...) derives from
:class:`OverlaybdError`; the CLI prints its message as one line and exits with status 2.
Each layer (formats, ext4, oci, engine) defines its own subclasses next to its code.
"""

from __future__ import annotations


class OverlaybdError(Exception):
    """An error caused by input or environment, reported to the user as one line.

    ``retryable`` says whether running the same thing again may succeed: False (the default) for
    what only a change of input or configuration fixes (bad reference, auth refused, not found,
    a corrupt or lying source, invalid options); True for transient trouble (a registry that is
    down or overloaded, a lost database connection). Orchestrators fail the first kind at once
    and retry the second."""

    retryable: bool = False
