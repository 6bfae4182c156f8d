"""Airflow operators: one per conversion stage, plus one that runs them all in a single task."""

from __future__ import annotations

from overlaybd_provider.operators.convert import OverlaybdConvertOperator
from overlaybd_provider.operators.stages import (
    Ext4LayerBuildOperator,
    OverlaybdPullOperator,
    OverlaybdPushOperator,
    OverlaybdRecordOperator,
    ZFileCompressOperator,
)
from overlaybd_provider.operators.verify import OverlaybdVerifyOperator, OverlaybdVerifyStageOperator

__all__ = [
    "Ext4LayerBuildOperator",
    "OverlaybdConvertOperator",
    "OverlaybdPullOperator",
    "OverlaybdPushOperator",
    "OverlaybdRecordOperator",
    "OverlaybdVerifyOperator",
    "OverlaybdVerifyStageOperator",
    "ZFileCompressOperator",
]
