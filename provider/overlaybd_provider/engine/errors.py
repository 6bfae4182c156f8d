"""Errors of the conversion engine."""

from __future__ import annotations

from overlaybd_provider.errors import OverlaybdError


class EngineError(OverlaybdError):
    """A conversion that cannot proceed (unsupported source, inconsistent image...)."""


class StageError(EngineError):
    """A stage called out of order or on a staging directory it does not recognise."""
