"""Errors of the conversion engine."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from overlaybd_provider.errors import OverlaybdError

if TYPE_CHECKING:
    from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan


class EngineError(OverlaybdError):
    """A conversion that cannot proceed (unsupported source, inconsistent image...)."""


class StageError(EngineError):
    """A stage called out of order or on a staging directory it does not recognise."""


def relabel_layer_error(exc: OverlaybdError, image: ImagePlan, layer: LayerPlan,
                        source: str | os.PathLike[str]) -> OverlaybdError:
    """The same error naming the image, the layer and its source digest instead of the scratch
    path of its source file (an image has many layers: the one line must say which)."""
    why = str(exc).replace(f"{source}: ", "").replace(str(source), layer.source_digest)
    try:
        return type(exc)(f"[{image.label}] layer {layer.index} ({layer.source_digest[:19]}): {why}")
    except TypeError:
        return exc
