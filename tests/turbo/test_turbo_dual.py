"""One pass, two layers (``ext4.dual``): the native blob and the TurboOCI meta blob built from one
inflate + one tar parse are byte-identical to the separate builds, layer over layer."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import pytest
from overlaybd_provider.ext4.apply import apply_to_stack
from overlaybd_provider.ext4.dual import apply_both_to_stack
from overlaybd_provider.ext4.errors import DiffIdMismatchError
from overlaybd_provider.ext4.turbo import apply_turbo_to_stack
from overlaybd_provider.formats.blob import open_layer
from overlaybd_provider.formats.stack import LayerStack
from overlaybd_provider.formats.turbo import open_turbo_layer

from .imagesrc import OCI_GZIP, OCI_TAR, compress, feature_tars


def _sparse_tar() -> bytes:
    """A GNU sparse member (data not contiguous in the tar: both layers need its expanded bytes)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "sparse.img"
        with open(f, "wb") as out:
            out.write(b"head" * 1024)
            out.seek(8 << 20)
            out.write(b"tail" * 1024)
        out_tar = Path(d) / "s.tar"
        subprocess.run(["tar", "--sparse", "--format=gnu", "-C", d, "-cf", str(out_tar), "sparse.img"], check=True)
        return out_tar.read_bytes()


@pytest.mark.parametrize("media_type", [OCI_GZIP, OCI_TAR])
def test_one_pass_equals_separate_builds(tmp_path: Path, media_type: str) -> None:
    tars = feature_tars()
    tars.append(_sparse_tar())
    sources = []
    for i, tar in enumerate(tars):
        p = tmp_path / f"src{i}"
        p.write_bytes(compress(tar, media_type))
        sources.append(p)
    with contextlib.ExitStack() as ctx:
        nlow: list = []
        tlow: list = []
        for i, (src, tar) in enumerate(zip(sources, tars, strict=True)):
            diff = "sha256:" + hashlib.sha256(tar).hexdigest()
            digest = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
            nstack = LayerStack(nlow, check_chain=False) if nlow else None
            tstack = LayerStack(tlow, check_chain=False) if tlow else None
            sep_n, sep_t = tmp_path / f"n{i}", tmp_path / f"t{i}"
            with open(src, "rb") as f, open(sep_n, "w+b") as out:
                a = apply_to_stack(nstack, f, out, diff_id=diff)
            with open(src, "rb") as f, open(sep_t, "wb") as out:
                b = apply_turbo_to_stack(tstack, f, out, source_media_type=media_type, diff_id=diff,
                                         expected_digest=digest)
            with (open(src, "rb") as f, open(tmp_path / f"dn{i}", "w+b") as n_out,
                  open(tmp_path / f"dt{i}", "wb") as t_out):
                both = apply_both_to_stack(nstack, tstack, f, n_out, t_out, source_media_type=media_type,
                                           diff_id=diff, expected_digest=digest, expected_size=src.stat().st_size)
            assert both.native.digest == a.digest, f"layer {i}: native bytes differ"
            assert both.turbo.digest == b.digest, f"layer {i}: turbo bytes differ"
            assert both.turbo.annotations == b.annotations and both.turbo.diff_id == b.diff_id
            nlow.append(ctx.enter_context(open_layer(sep_n)).lsmt)
            tlow.append(ctx.enter_context(open_turbo_layer(sep_t, src)).lsmt)


def test_one_pass_checks_the_diff_id_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(compress(feature_tars()[0], OCI_GZIP))
    n_out, t_out = io.BytesIO(), io.BytesIO()
    with open(src, "rb") as f, pytest.raises(DiffIdMismatchError):
        apply_both_to_stack(None, None, f, n_out, t_out, source_media_type=OCI_GZIP, diff_id="sha256:" + "0" * 64)
    assert n_out.getvalue() == b"" and t_out.getvalue() == b""


@pytest.mark.parametrize("media_type", [OCI_GZIP])
def test_inflate_worker_gives_the_in_process_bytes(tmp_path: Path, monkeypatch, media_type: str) -> None:
    """``formats.gzworker``: the child-process inflate (a source of 4 MiB and more) writes the same
    meta blob and gzip.meta as the in-process one, and keeps the error classes."""
    import gzip
    import random
    import tarfile

    from overlaybd_provider.formats.gzcheckpoint import GzipSourceError, NotTurboCapable

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("a/random.bin", random.Random(3).randbytes(3 << 20)), ("a/text", b"text\n" * 50000)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    tar = buf.getvalue()  # 3 MiB of random data: several spans
    src = tmp_path / "src.tar.gz"
    src.write_bytes(compress(tar, media_type))
    assert src.stat().st_size > 1 << 20
    diff = "sha256:" + hashlib.sha256(tar).hexdigest()
    digests = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("OVERLAYBD_GZ_WORKER", mode)
        with open(src, "rb") as f, open(tmp_path / f"meta{mode}", "wb") as out:
            res = apply_turbo_to_stack(None, f, out, source_media_type=media_type, diff_id=diff)
        digests[mode] = (res.digest, res.gzip_spans, res.diff_id, res.target_digest)
    assert digests["0"][1] > 1
    assert digests["0"] == digests["1"]
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    bad = bytearray(src.read_bytes())
    for i in range(len(bad) // 2, len(bad) // 2 + 64):
        bad[i] ^= 0x5A
    (tmp_path / "bad.gz").write_bytes(bytes(bad))
    with open(tmp_path / "bad.gz", "rb") as f, pytest.raises(GzipSourceError, match="corrupt gzip data"):
        apply_turbo_to_stack(None, f, io.BytesIO(), source_media_type=media_type)
    (tmp_path / "two.gz").write_bytes(src.read_bytes() + gzip.compress(b"x" * 1024))
    with open(tmp_path / "two.gz", "rb") as f, pytest.raises(NotTurboCapable, match="more than one member"):
        apply_turbo_to_stack(None, f, io.BytesIO(), source_media_type=media_type)
