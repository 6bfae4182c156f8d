"""The two images of a verification: manifests, configs and layers, fetched by digest and verified.

Registry and OCI-layout references are the same to this module (``oci.store``). Every manifest
and config is checked against its digest; source layers are streamed (``VerifyingReader``
checks the blob digest at EOF, ``source.SourceTree`` the uncompressed ``diff_id``); converted
layers are downloaded into the work directory (verified before they are renamed into place),
or, in an OCI layout, hashed where they lie and opened in place.

:func:`open_image_layer` is the one place that turns a converted layer descriptor into a
readable LSMT layer: TurboOCI layers (which read file data from the original source blob named
by their ``turbo-oci/target-digest`` annotation) are opened there too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.formats.blob import open_layer
from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.digest import check, digest_file, verify_bytes
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.mediatypes import is_image_manifest, is_index
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.store import open_store
from overlaybd_provider.verify.errors import UnsupportedImageError, VerifyError

MAX_CONFIG = 4 << 20
ATTESTATION_KEY = "vnd.docker.reference.type"
TURBO_ANNOTATION_PREFIX = "containerd.io/snapshot/overlaybd/turbo-oci/"
Fetch = Callable[[str, int], Path]


@dataclass
class ImageSide:
    """One platform's manifest: its layers (bottom first) and the config's diff_ids."""

    platform: str
    digest: str
    layers: list[Descriptor]
    diff_ids: list[str]


class Image:
    """An opened reference (registry or ``oci:`` layout)."""

    def __init__(self, text: str, options: RegistryOptions | None) -> None:
        self.text = text
        self.store, self.ref = open_store(text, options or RegistryOptions())

    def close(self) -> None:
        self.store.close()

    def _manifest(self, digest: str, size: int | None = None) -> tuple[bytes, str]:
        data, media_type, _ = self.store.get_manifest(digest)
        data = bytes(data)
        verify_bytes(data, digest, size, what=f"{self.text}: manifest")
        return data, media_type

    def _config(self, desc: Descriptor) -> dict[str, Any]:
        if desc.size > MAX_CONFIG:
            raise VerifyError(f"{self.text}: config {desc.digest} is {desc.size} bytes (limit {MAX_CONFIG})")
        with self.store.open_blob(desc.digest, desc.size) as reader:
            raw = reader.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise VerifyError(f"{self.text}: config {desc.digest} is not JSON") from None
        if not isinstance(doc, dict):
            raise VerifyError(f"{self.text}: config {desc.digest} is not a JSON object")
        return doc

    def images(self, platforms: tuple[str, ...] = ()) -> list[ImageSide]:
        """The platform images of the reference (an index's children, or the one manifest)."""
        top = self.store.resolve(self.ref.target)
        data, media_type = self._manifest(top.digest, top.size)
        if is_index(media_type):
            children = json.loads(data).get("manifests") or []
            out = []
            for child in children:
                desc = Descriptor.from_dict(child)
                if (desc.annotations or {}).get(ATTESTATION_KEY) == "attestation-manifest":
                    continue
                plat = str(desc.platform) if desc.platform else ""
                if platforms and not _matches(plat, platforms):
                    continue
                out.append(self._image(desc.digest, desc.size, plat))
            if not out:
                raise VerifyError(f"{self.text}: no manifest matches --platform {','.join(platforms) or '(any)'}")
            return out
        if not is_image_manifest(media_type):
            raise VerifyError(f"{self.text}: {top.digest} has media type {media_type!r}, not an image")
        image = self._image(top.digest, top.size, "", data)
        if platforms and not _matches(image.platform, platforms):
            raise VerifyError(f"{self.text}: image platform {image.platform} does not match --platform")
        return [image]

    def _image(self, digest: str, size: int | None, platform: str, data: bytes | None = None) -> ImageSide:
        if data is None:
            data, media_type = self._manifest(digest, size)
            if not is_image_manifest(media_type):
                raise VerifyError(f"{self.text}: manifest {digest} has media type {media_type!r}")
        doc = json.loads(data)
        try:
            config = Descriptor.from_dict(doc["config"])
            layers = [Descriptor.from_dict(d) for d in doc.get("layers") or []]
        except (KeyError, TypeError, AttributeError):
            raise VerifyError(f"{self.text}: manifest {digest} has no valid config/layers") from None
        cfg = self._config(config)
        diff_ids = list((cfg.get("rootfs") or {}).get("diff_ids") or [])
        if not platform and cfg.get("os") and cfg.get("architecture"):
            platform = f"{cfg['os']}/{cfg['architecture']}" + (f"/{cfg['variant']}" if cfg.get("variant") else "")
        return ImageSide(platform, digest, layers, diff_ids)

    # -- blobs ---------------------------------------------------------------------------------
    @contextmanager
    def layer_stream(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """The blob as a stream, digest and size verified when it has been read to the end."""
        reader = self.store.open_blob(desc.digest, desc.size)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def fetcher(self, work: Path) -> Fetch:
        """``fetch(digest, size) -> local path`` of a verified blob."""

        def fetch(digest: str, size: int) -> Path:
            if isinstance(self.store, LayoutStore):
                path = self.store.blob_path(digest)
                if not path.is_file():
                    raise VerifyError(f"{self.text}: blob {digest} is missing from the layout")
                got, got_size = digest_file(path, digest.partition(":")[0])
                check(digest, _Fixed(got), got_size, size, what=f"{self.text}: blob")
                return path
            dest = work / digest.replace(":", "-")
            if not dest.exists():
                self.store.fetch_blob(digest, dest, size)
            return dest

        return fetch


class _Fixed:
    """A finished hash, for ``oci.digest.check``."""

    def __init__(self, digest: str) -> None:
        self._hex = digest.partition(":")[2]

    def hexdigest(self) -> str:
        return self._hex


def _matches(platform: str, wanted: tuple[str, ...]) -> bool:
    return any(platform == w or platform.startswith(w + "/") for w in wanted)


def pair_images(src: list[ImageSide], dst: list[ImageSide], src_text: str) -> list[tuple[ImageSide, ImageSide]]:
    """Each converted image with the source image of the same platform."""
    if len(src) == 1 and len(dst) == 1:
        return [(src[0], dst[0])]
    by_platform = {s.platform: s for s in src}
    pairs = []
    for d in dst:
        s = by_platform.get(d.platform)
        if s is None:
            raise VerifyError(f"{src_text}: no source image for platform {d.platform or '(unknown)'}")
        pairs.append((s, d))
    return pairs


def open_image_layer(index: int, desc: Descriptor, fetch: Fetch, *, fetch_target: Fetch | None = None,
                     sizes: Mapping[str, int] | None = None, spool_dir: str | None = None) -> Any:
    """A converted layer as an LSMT reader: a native overlaybd blob (tar → ZFile → LSMT), or a
    TurboOCIv1 layer — its meta blob plus the original source blob named by the
    ``turbo-oci/target-digest`` annotation, from which it reads file data (fetched from the
    converted image's store, else with ``fetch_target``: the source image's; ``sizes`` gives
    the target's size when the source image lists it)."""
    annotations = desc.annotations or {}
    name = f"layer {index + 1} ({desc.digest[:19]})"
    if any(k.startswith(TURBO_ANNOTATION_PREFIX) for k in annotations):
        from overlaybd_provider.formats.turbo import ANN_TARGET_DIGEST, open_turbo_layer

        target = annotations.get(ANN_TARGET_DIGEST)
        if not target:
            raise UnsupportedImageError(f"{name} is a TurboOCI layer without a {ANN_TARGET_DIGEST} annotation")
        meta = fetch(desc.digest, desc.size)
        size = (sizes or {}).get(target)
        try:
            source = fetch(target, size)  # type: ignore[arg-type]
        except (OverlaybdError, OSError):
            if fetch_target is None:
                raise
            source = fetch_target(target, size)  # type: ignore[arg-type]
        layer = open_turbo_layer(meta, source, spool_dir=spool_dir)
        layer.lsmt.name = name
        return layer
    path = fetch(desc.digest, desc.size)
    return open_layer(path, name=name)
