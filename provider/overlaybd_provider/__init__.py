"""airflow-provider-overlaybd: convert OCI images to overlaybd, as a library, a CLI and an Airflow provider."""

from __future__ import annotations

__version__ = "0.1.0"
