"""``verify_image``: prove a converted overlaybd image holds exactly its source's files.

For every platform: the source layers are streamed into the OCI changeset model
(:mod:`.source`); the converted layers are opened as one LSMT stack with our reader and its
ext4 is checked structurally (:mod:`.fsck`) and walked against the model (:mod:`.compare`);
then, when e2fsprogs is installed (``fsck="auto"``) or required (``"always"``), ``e2fsck -fn``
judges a metadata-only export (:mod:`.e2fsck`). Memory stays bounded whatever the layer size:
the model keeps metadata and hashes, the walk reads through the stack reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.ext4.errors import LayerTarError
from overlaybd_provider.ext4.layerdecode import content_digest, decompressed
from overlaybd_provider.formats.lsmt_index import ZERO_UUID
from overlaybd_provider.formats.stack import LayerStack
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.verify import e2fsck as fsck_tool
from overlaybd_provider.verify.compare import ContentHashes, TreeComparer
from overlaybd_provider.verify.device import BlockDevice, ByteDevice
from overlaybd_provider.verify.errors import CorruptImageError, SourceLayerError, VerifyError
from overlaybd_provider.verify.ext4read import Ext4Reader
from overlaybd_provider.verify.findings import KEEP_DEFAULT, Findings
from overlaybd_provider.verify.fsck import Checker
from overlaybd_provider.verify.image import Image, open_image_layer, pair_images
from overlaybd_provider.verify.report import PlatformReport, VerifyReport
from overlaybd_provider.verify.source import SourceTree, link_groups

log = logging.getLogger(__name__)

FSCK_MODES = ("auto", "always", "never")


class SourceLayer(NamedTuple):
    """One source layer; plain ``(name, open, diff_id)`` tuples work as well."""

    name: str  # for messages
    open: Callable[[], AbstractContextManager[BinaryIO]]  # the blob stream: plain, gzip or zstd
    diff_id: str | None = None  # checked against the uncompressed content
    blob_digest: str | None = None  # what the stream is verified against at its end (plain tars)


@dataclass(frozen=True)
class VerifyOptions:
    platforms: tuple[str, ...] = ()
    fsck: str = "auto"
    sample: float = 1.0
    work_dir: Path | None = None
    keep: int = KEEP_DEFAULT
    e2fsck_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.fsck not in FSCK_MODES:
            raise VerifyError(f"--fsck must be one of {', '.join(FSCK_MODES)}, not {self.fsck!r}")
        if not 0 < self.sample <= 1:
            raise VerifyError(f"--sample must be a fraction in (0, 1], not {self.sample}")

    def as_dict(self) -> dict:
        return {"platforms": list(self.platforms), "fsck": self.fsck, "sample": self.sample}


def sampler(fraction: float) -> Callable[[bytes], bool] | None:
    """Deterministic choice of the files whose content is hashed: by a hash of the path."""
    if fraction >= 1:
        return None
    threshold = int(fraction * (1 << 64))
    return lambda path: int.from_bytes(hashlib.sha256(path).digest()[:8], "big") < threshold


def build_source(layers: Sequence[SourceLayer | tuple], sample: float = 1.0) -> SourceTree:
    tree = SourceTree(hash_content=sampler(sample))
    for name, opener, diff_id, *rest in layers:
        with opener() as raw:
            # the decoder hashes what it produces (on its own core for gzip/zstd); for a plain tar
            # the blob digest, checked when the stream ends, is the content digest
            stream, kind = decompressed(raw, digest=True, plain_digest=rest[0] if rest else None)
            try:
                tree.apply_layer(stream, name=name)
                got = content_digest(stream)
            except LayerTarError as exc:
                raise SourceLayerError(f"{name}: {exc}") from None
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
        if diff_id is not None and got != diff_id:
            raise SourceLayerError(f"{name}: uncompressed content has digest {got}, the config's diff_id is {diff_id}")
        log.debug("%s (%s): %d entries so far", name, kind, tree.entries)
    return tree


def chain_warnings(stack: LayerStack) -> list[str]:
    """overlaybd does not check the uuid chain; a broken one is worth a warning, not a failure."""
    out = []
    for below, above in itertools.pairwise(stack.layers):
        if above.parent_uuid != ZERO_UUID and above.parent_uuid != below.uuid:
            out.append(f"{above.name}: parent_uuid {above.parent_uuid} is not the uuid {below.uuid} of {below.name}")
    return out


def verify_layers(layers: Sequence[SourceLayer | tuple], device: ByteDevice, options: VerifyOptions | None = None, *,
                  platform: str = "", source_digest: str = "", image_digest: str = "") -> PlatformReport:
    """Verify a merged device (a layer stack, or a raw disk) against source layer tars.

    The image's pass 1 (and, without sampling, the hashing of every file's content in inode order)
    runs in a thread while the source model is built: building it mostly waits for the gzip/zstd
    decoder process. e2fsck then runs on the metadata export while the trees are compared."""
    options = options or VerifyOptions()
    started = time.monotonic()
    findings = Findings(options.keep)
    report = PlatformReport(platform, source_digest, image_digest, findings, layers=len(layers))
    dev = BlockDevice(device)
    try:
        reader = Ext4Reader(dev)
    except CorruptImageError as exc:
        build_source(layers, options.sample)  # the source must still be readable
        findings.problem(str(exc))
        report.structural = {"checked": False, "reason": str(exc)}
        report.seconds = time.monotonic() - started
        return report
    checker = Checker(reader, findings)
    hashes = ContentHashes(reader) if options.sample >= 1 else None
    scan = _Background(lambda: checker.scan(on_file=hashes))
    try:
        tree = build_source(layers, options.sample)
    finally:
        scan.join()
    t_source = time.monotonic() - started
    fsck_run = _start_e2fsck(dev, checker, options)
    try:
        stats = TreeComparer(reader, checker, findings, hashes).run(tree.root, link_groups(tree.root))
    except BaseException:
        if isinstance(fsck_run, fsck_tool.E2fsckRun):
            fsck_run.cancel()
        raise
    structural_problems = findings.counts.get("filesystem", 0)
    report.structural = {"checked": True, "problems": structural_problems, "limits": checker.limits,
                         "inodes_in_use": checker.inodes_in_use}
    report.e2fsck = _finish_e2fsck(fsck_run, findings)
    report.stats = {
        "paths": stats.paths, "files_hashed": stats.files_hashed, "bytes_hashed": stats.bytes_hashed,
        "source_entries": tree.entries, "source_bytes_hashed": tree.hashed_bytes, "sample": options.sample,
        "image_bytes_read": dev.bytes_read, "source_seconds": round(t_source, 3),
    }
    report.seconds = time.monotonic() - started
    return report


class _Background:
    """Run ``fn`` in a thread; :meth:`join` re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: BaseException | None = None

        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=target, name="verify-pass1", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _start_e2fsck(dev: BlockDevice, checker: Checker,
                  options: VerifyOptions) -> fsck_tool.E2fsckRun | fsck_tool.FsckResult:
    if options.fsck == "never":
        return fsck_tool.FsckResult(False, reason="--fsck never")
    binary = fsck_tool.find_e2fsck()
    if binary is None:
        if options.fsck == "always":
            raise VerifyError("--fsck always: e2fsck is not installed (install e2fsprogs)")
        return fsck_tool.FsckResult(False, reason="e2fsck not installed: structural checks only")
    return fsck_tool.E2fsckRun(dev, checker.export_runs, work_dir=options.work_dir, binary=binary,
                               timeout=options.e2fsck_timeout)


def _finish_e2fsck(run: fsck_tool.E2fsckRun | fsck_tool.FsckResult, findings: Findings) -> fsck_tool.FsckResult:
    result = run.wait() if isinstance(run, fsck_tool.E2fsckRun) else run
    for line in result.problems:
        findings.problem(f"e2fsck: {line}")
    if result.exit_code and not result.problems:
        findings.problem(f"e2fsck: exit status {result.exit_code}")
    return result


def verify_image(source: str, destination: str, options: VerifyOptions | None = None, *,
                 src_registry: RegistryOptions | None = None,
                 dst_registry: RegistryOptions | None = None) -> VerifyReport:
    """Verify the overlaybd image ``destination`` against the OCI image ``source`` (every
    platform of an index, or those in ``options.platforms``)."""
    options = options or VerifyOptions()
    src = Image(source, src_registry)
    try:
        dst = Image(destination, dst_registry)
    except BaseException:
        src.close()
        raise
    try:
        pairs = pair_images(src.images(options.platforms), dst.images(options.platforms), source)
        if options.work_dir is not None:
            Path(options.work_dir).mkdir(parents=True, exist_ok=True)
        reports = []
        for s, d in pairs:
            if len(s.layers) != len(s.diff_ids):
                raise VerifyError(f"{source}: manifest {s.digest} has {len(s.layers)} layers but its config "
                                  f"lists {len(s.diff_ids)} diff_ids")
            if not d.layers:
                raise VerifyError(f"{destination}: manifest {d.digest} has no layers")
            with tempfile.TemporaryDirectory(prefix="overlaybd-verify-", dir=options.work_dir) as tmp, \
                    contextlib.ExitStack() as opened:
                fetch = dst.fetcher(Path(tmp))
                sizes = {desc.digest: desc.size for desc in s.layers}  # TurboOCI targets are source layers
                files = [opened.enter_context(open_image_layer(i, desc, fetch, fetch_target=src.fetcher(Path(tmp)),
                                                               sizes=sizes, spool_dir=tmp))
                         for i, desc in enumerate(d.layers)]
                stack = LayerStack([f.lsmt for f in files], check_chain=False)
                layers: list[SourceLayer] = [
                    SourceLayer(f"{source} layer {i + 1} ({desc.digest[:19]})", partial(src.layer_stream, desc),
                                diff_id, desc.digest)
                    for i, (desc, diff_id) in enumerate(zip(s.layers, s.diff_ids, strict=True))]
                report = verify_layers(layers, stack, options, platform=d.platform, source_digest=s.digest,
                                       image_digest=d.digest)
                report.structural["warnings"] = chain_warnings(stack)
            reports.append(report)
        return VerifyReport(source, destination, reports, options.as_dict())
    except OverlaybdError:
        raise
    except OSError as exc:
        raise VerifyError(f"verify: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": ")) from None
    finally:
        src.close()
        dst.close()
