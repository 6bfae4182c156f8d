"""``overlaybd verify``: check a converted image's filesystem and compare it with its source.

Public API::

    verify_image(source, destination, VerifyOptions(...), src_registry=..., dst_registry=...) -> VerifyReport
    verify_layers([(name, opener, diff_id), ...], device, VerifyOptions(...)) -> PlatformReport

See docs/verify.md for what is checked, how, and the limits.
"""

from __future__ import annotations

from overlaybd_provider.verify.report import PlatformReport, VerifyReport
from overlaybd_provider.verify.run import FSCK_MODES, VerifyOptions, verify_image, verify_layers

__all__ = ["FSCK_MODES", "PlatformReport", "VerifyOptions", "VerifyReport", "verify_image", "verify_layers"]
