"""Conversion options (image.md §1) as one frozen bundle shared by the CLI, the engine and Airflow."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from overlaybd_provider.errors import OverlaybdError

if TYPE_CHECKING:
    from overlaybd_provider.engine.transfer.blobcache import BlobCache

__all__ = [
    "ALGORITHMS",
    "BLOCK_SIZES_KB",
    "FLATTEN_MARK",
    "OUTPUTS",
    "ConvertOptions",
    "FsType",
    "OptionsError",
    "check_block_size",
    "check_turbo_fstype",
    "parse_fstype",
    "parse_platforms",
]

ALGORITHMS = ("lz4", "zstd")
#: ZFile block sizes we write. 64 KiB is not offered: a block of incompressible data then stores
#: more than 65 536 bytes, which overlaybd's reader cannot read (its buffer is one block); it is
#: refused before any work rather than after the whole conversion.
BLOCK_SIZES_KB = (4, 8, 16, 32)
# Version of our layer output format; bump when the bytes written for the same input change, or
# when rows written by earlier versions must no longer be trusted. History:
#   1 - first release.
#   2 - same bytes, but every layer row is written only after the layer's uncompressed content was
#       checked against the config's diff_id; format-1 rows may be poisoned (docs/dedup.md).
CONVERTER_FORMAT = 2
#: marks the format id of flattened layers (``--flatten``: all layers of an image in one)
FLATTEN_MARK = "flat1"
# Version of our TurboOCIv1 output (meta blobs, and native layers inside a TurboOCI image, whose
# bytes depend on the TurboOCI lowers below them). 1 - first release.
TURBO_FORMAT = 1
#: what ``convert`` writes: native overlaybd, TurboOCIv1, or both from one download and one parse
OUTPUTS = ("overlaybd", "turbo-oci", "both")
# Mkfs options we implement, mapped to the ext4 writer's keyword (the ext4 profile is fixed
# otherwise; upstream's other mke2fs switches would silently change nothing here).
_MKFS_FLAGS = {"-N": "inodes_count", "-i": "inode_ratio", "-m": "reserved_percent"}


class OptionsError(OverlaybdError):
    """An invalid conversion option. Messages name the CLI flag; :meth:`for_frontend` names the
    operator argument / DAG param instead (``block_size_kb``, not ``--bs``)."""

    FIELDS = {"--algorithm": "algorithm", "--bs": "block_size_kb", "--vsize": "vsize_gb", "--fstype": "fstype",
              "--platform": "platforms", "--concurrency-limit": "concurrency_limit",
              "--turbo-oci-destination": "turbo_destination", "--turbo-oci": "format=turbo-oci",
              "--format": "format", "--flatten": "flatten"}

    def for_frontend(self, frontend: str) -> str:
        text = str(self)
        if frontend == "airflow":
            for flag, field_name in self.FIELDS.items():
                text = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", field_name, text)
        return text


@dataclass(frozen=True)
class FsType:
    """``--fstype TYPE[;MOUNT_OPTS[;MKFS_OPTS]]`` (upstream docs/MULTI_FS_SUPPORT.md)."""

    name: str = "ext4"
    mount_options: str | None = None
    mkfs_options: tuple[tuple[str, int], ...] = ()
    text: str = "ext4"

    @property
    def annotation(self) -> str | None:
        """Value of ``containerd.io/snapshot/overlaybd/blob-fs-type``, or None for plain ext4.

        Like ``ctr obdconv``, the whole ``--fstype`` text is passed when it carries options
        (the snapshotter splits it on ``;`` and mounts with the second field)."""
        return None if self.text == self.name else self.text

    def mkfs_kwargs(self) -> dict[str, int]:
        return dict(self.mkfs_options)


def _parse_mkfs(text: str) -> tuple[tuple[str, int], ...]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise OptionsError(f"--fstype mkfs options {text!r}: {exc}") from None
    result: dict[str, int] = {}
    i = 0
    while i < len(words):
        word = words[i]
        flag, value = (word[:2], word[2:]) if len(word) > 2 and word[:2] in _MKFS_FLAGS else (word, None)
        if flag not in _MKFS_FLAGS:
            raise OptionsError(
                f"--fstype mkfs option {word!r} is not supported (supported: -N COUNT, -i BYTES, -m PERCENT)"
            )
        if value is None:
            i += 1
            if i >= len(words):
                raise OptionsError(f"--fstype mkfs option {flag} needs a value")
            value = words[i]
        try:
            number = int(value)
        except ValueError:
            raise OptionsError(f"--fstype mkfs option {flag}: {value!r} is not an integer") from None
        if number < 0 or (flag == "-m" and number > 50) or (flag == "-i" and number < 1024):
            raise OptionsError(f"--fstype mkfs option {flag}: {number} is out of range")
        result[_MKFS_FLAGS[flag]] = number
        i += 1
    return tuple(sorted(result.items()))


def check_block_size(kb: int, flag: str = "--bs") -> None:
    """Refuse block sizes we do not write, before any work (64 KiB: see :data:`BLOCK_SIZES_KB`)."""
    if kb == 64:
        raise OptionsError(
            f"{flag} 64 is not offered: a 64 KiB block of incompressible data does not fit overlaybd's "
            f"65536-byte read buffer, so upstream's reader could not read the image; use {flag} 32 or less"
        )
    if kb not in BLOCK_SIZES_KB:
        raise OptionsError(f"{flag} {kb}: expected one of {', '.join(map(str, BLOCK_SIZES_KB))} (KiB)")


def parse_fstype(text: str) -> FsType:
    """Parse ``TYPE[;MOUNT_OPTS[;MKFS_OPTS]]``; only ext4 is supported."""
    parts = text.split(";")
    if len(parts) > 3:
        raise OptionsError(f"--fstype {text!r}: expected TYPE[;MOUNT_OPTS[;MKFS_OPTS]]")
    name = parts[0].strip()
    if name != "ext4":
        raise OptionsError(f"--fstype {name!r} is not supported (only ext4)")
    mount = parts[1] if len(parts) > 1 else None
    if mount is not None and any(c.isspace() for c in mount):
        raise OptionsError(f"--fstype mount options {mount!r} must be comma-separated, without spaces")
    mkfs = _parse_mkfs(parts[2]) if len(parts) > 2 else ()
    return FsType(name=name, mount_options=mount, mkfs_options=mkfs, text=text)


def check_turbo_fstype(fstype: str, output: str) -> None:
    """TurboOCI output is ext4 only for now: refuse ``--fstype erofs`` (any non-ext4) up front
    with one line saying so, before the generic "only ext4" message."""
    name = fstype.split(";", 1)[0].strip()
    if output != "overlaybd" and name != "ext4":
        raise OptionsError(f"--fstype {name} with --turbo-oci is not supported yet: TurboOCIv1 output is ext4 "
                           "only (erofs TurboOCI is the next step); drop --fstype or use native overlaybd output")


def parse_platforms(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--platform`` values (repeatable, comma lists) as sorted unique ``os/arch[/variant]``."""
    out: set[str] = set()
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            parts = item.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise OptionsError(f"--platform {item!r}: expected OS/ARCH[/VARIANT]")
            out.add(item)
    return tuple(sorted(out))


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that shapes a conversion. Fields that change output bytes are listed in
    :meth:`format_key`; the rest (work_dir, concurrency...) only change how we get there."""

    algorithm: str = "lz4"
    block_size_kb: int = 4
    vsize_gb: int = 64
    fstype: FsType = field(default_factory=FsType)
    oci: bool = False
    referrer: bool = False
    platforms: tuple[str, ...] = ()
    concurrency_limit: int = 4
    work_dir: Path | None = None
    reserve: bool = False
    no_upload: bool = False
    dump_manifest: bool = False
    output_json: Path | None = None
    # Local blob cache (engine/blobcache.py): None = $XDG_CACHE_HOME/overlaybd/blobs; max 0 disables it.
    blob_cache: Path | None = None
    blob_cache_max_bytes: int = 20 << 30
    #: every layer of an image in one overlaybd layer (its own format id and dedup rows)
    flatten: bool = False
    #: one of :data:`OUTPUTS`; ``both`` writes the TurboOCIv1 image to ``turbo_destination``
    output: str = "overlaybd"
    turbo_destination: str | None = None

    def blob_cache_store(self) -> BlobCache | None:
        """The :class:`~.blobcache.BlobCache` these options select, or None when disabled."""
        from overlaybd_provider.engine.transfer.blobcache import BlobCache, default_cache_dir

        if self.blob_cache_max_bytes <= 0:
            return None
        return BlobCache(self.blob_cache or default_cache_dir(), self.blob_cache_max_bytes)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise OptionsError(f"--algorithm {self.algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
        check_block_size(self.block_size_kb)
        if not 1 <= self.vsize_gb <= 16383:
            raise OptionsError(f"--vsize {self.vsize_gb}: expected 1..16383 GiB")
        if self.concurrency_limit < 1:
            raise OptionsError(f"--concurrency-limit {self.concurrency_limit}: must be >= 1")
        if self.output not in OUTPUTS:
            raise OptionsError(f"--format {self.output!r}: expected one of {', '.join(OUTPUTS)}")
        if (self.output == "both") != bool(self.turbo_destination):
            raise OptionsError("--turbo-oci-destination is needed for (and only with) output both")
        if self.flatten and self.output != "overlaybd":
            # a TurboOCIv1 meta layer maps the file data of exactly one source layer
            raise OptionsError("--flatten cannot be combined with --turbo-oci or --turbo-oci-destination: "
                               "a TurboOCIv1 layer indexes one source layer")
        if self.referrer and not self.oci:
            object.__setattr__(self, "oci", True)  # --referrer forces --oci (image.md §1)
        check_turbo_fstype(self.fstype if isinstance(self.fstype, str) else self.fstype.text, self.output)
        if isinstance(self.fstype, str):
            object.__setattr__(self, "fstype", parse_fstype(self.fstype))
        object.__setattr__(self, "platforms", parse_platforms(list(self.platforms)))

    @property
    def turbo(self) -> bool:
        """A TurboOCIv1 image is written (alone or next to the native one)."""
        return self.output != "overlaybd"

    def layer_format_id(self) -> str:
        """Identity of the layer-blob bytes these options produce (docs/dedup.md).

        Bump :data:`CONVERTER_FORMAT` whenever the writer's output bytes change; the compressor
        library version is part of it because compressor releases change compressed bytes."""
        mkfs = "".join(f",{k}={v}" for k, v in self.fstype.mkfs_options)
        flat = f"/{FLATTEN_MARK}" if self.flatten else ""
        return (
            f"obdpy{CONVERTER_FORMAT}/{self.algorithm}-{_compressor_version(self.algorithm)}"
            f"/{self.block_size_kb}k/v{self.vsize_gb}/{self.fstype.name}{mkfs}{flat}"
        )

    def manifest_format_id(self, layer_format: str | None = None) -> str:
        """Layer format plus what else shapes the manifest bytes (subject, fs-type annotation)."""
        extra = hashlib.sha256(f"{int(self.referrer)}|{self.fstype.annotation or ''}".encode()).hexdigest()[:12]
        return f"{layer_format or self.layer_format_id()}/m{extra}"

    def turbo_layer_format_id(self) -> str:
        """Format id of the layers of a TurboOCIv1 image (meta blobs, and native layers built on
        TurboOCI lowers): told apart from native rows in the same tables (docs/dedup.md). The
        meta blob and its gzip.meta are deflated by zlib-ng, so its version is part of it."""
        from zlib_ng import zlib_ng

        return self.layer_format_id().replace(f"obdpy{CONVERTER_FORMAT}/",
                                              f"obdpy{CONVERTER_FORMAT}-turbo{TURBO_FORMAT}"
                                              f"-zng{zlib_ng.ZLIBNG_VERSION}/", 1)


def _compressor_version(algorithm: str) -> str:
    if algorithm == "lz4":
        import lz4

        return lz4.library_version_string()
    import zstandard

    return ".".join(str(v) for v in zstandard.ZSTD_VERSION)
