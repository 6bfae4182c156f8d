"""Random damage to metadata blocks never crashes verify, and never passes what e2fsck rejects.

Bytes of the superblock, group descriptors, bitmaps, inode tables, directory, extent and xattr
blocks of an exported image are overwritten at random (fixed seeds); verify reads the damaged raw
disk through :class:`RawImage` with structural checks only. Every trial must end in a report or
an ``OverlaybdError`` (e.g. an unreadable superblock), never in another exception; and when
``e2fsck -fn`` finds the damaged disk inconsistent, verify must report something too.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.verify.device import BlockDevice, RawImage
from overlaybd_provider.verify.ext4read import Ext4Reader
from overlaybd_provider.verify.findings import Findings
from overlaybd_provider.verify.fsck import Checker
from overlaybd_provider.verify.run import VerifyOptions, verify_layers
from support.fsjudge import e2fsck, export_stack
from support.obdimages import layer_blobs


@pytest.fixture(scope="module")
def clean_raw(feature_images, tmp_path_factory) -> tuple[Path, list[int]]:
    _src, dst = feature_images
    raw = tmp_path_factory.mktemp("robust") / "clean.raw"
    export_stack(layer_blobs(dst), raw)
    reader = Ext4Reader(BlockDevice(RawImage(raw)))
    checker = Checker(reader, Findings())
    checker.scan()
    dev = BlockDevice(RawImage(raw))
    meta = sorted({b for start, n in checker.export_runs for b in range(start, start + min(n, 64))
                   if dev.block(b).count(0) < 4096})  # blocks that carry something
    return raw, meta


@pytest.mark.parametrize("seed", range(8))
def test_random_metadata_damage_is_reported_not_crashed_on(feature_tars, clean_raw, tmp_path: Path, seed: int) -> None:
    raw, meta = clean_raw
    rng = random.Random(seed)
    damaged = tmp_path / "damaged.raw"
    if shutil.which("cp"):
        subprocess.run(["cp", "--sparse=always", str(raw), str(damaged)], check=True)
    blocks = rng.sample(meta, 3) + ([rng.choice([0, 1])] if seed % 3 == 0 else [])
    fd = os.open(damaged, os.O_RDWR)
    try:
        for b in blocks:
            for _ in range(rng.choice([1, 8, 64])):
                os.pwrite(fd, bytes([rng.randrange(256)]), b * 4096 + rng.randrange(4096))
    finally:
        os.close(fd)
    layers = [(t.name, (lambda t=t: t.open("rb")), None) for t in feature_tars]
    rc, text = e2fsck(damaged)
    try:
        report = verify_layers(layers, RawImage(damaged), VerifyOptions(fsck="never"))
    except OverlaybdError as exc:
        assert "\n" not in str(exc)
        return
    if rc != 0:
        assert report.findings.total > 0, (blocks, text)
