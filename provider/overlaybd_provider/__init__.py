"""airflow-provider-overlaybd: convert OCI images to overlaybd, as a library, a CLI and an Airflow provider."""

from __future__ import annotations

from . import accel

__version__ = "0.1.0"

# Before any submodule is imported: the hot modules load compiled only when built from these sources.
accel.install()
