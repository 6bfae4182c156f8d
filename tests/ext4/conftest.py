"""Fixtures of the ext4 writer tests: build layers with ``apply_layer`` and judge the stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from overlaybd_provider.ext4.apply import ApplyResult, apply_layer

from .judge import Image, assert_clean, export_stack, make_tar


class StackBuilder:
    """Applies layers one after another (each on the previous blobs) and exports the stack."""

    def __init__(self, tmp: Path, lowers: list[Path] | None = None) -> None:
        self.tmp = tmp
        self.blobs: list[Path] = list(lowers or [])
        self.results: list[ApplyResult] = []

    def apply(self, layer: list[dict] | bytes | Path, *, vsize_gb: int = 1, **kw) -> ApplyResult:
        n = len(self.blobs)
        if isinstance(layer, list):
            layer = make_tar(layer)
        if isinstance(layer, bytes):
            path = self.tmp / f"layer{n}.tar"
            path.write_bytes(layer)
            layer = path
        out = self.tmp / f"layer{n}.blob"
        res = apply_layer(self.blobs, layer, out, vsize_gb=vsize_gb, **kw)
        self.blobs.append(out)
        self.results.append(res)
        return res

    def image(self, *, check: bool = True) -> Image:
        raw = export_stack(self.blobs, self.tmp / f"stack{len(self.blobs)}.raw")
        if check:
            assert_clean(raw)
        return Image(raw, self.tmp)


@pytest.fixture
def stack(tmp_path: Path) -> StackBuilder:
    return StackBuilder(tmp_path)
