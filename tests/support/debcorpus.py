"""A realistic layer corpus from real Debian packages, for the ext4 writer's end-to-end tests.

``apt-get download`` fetches a fixed list of packages once into a cache directory
(``$OVERLAYBD_TEST_CACHE`` or ``~/.cache/overlaybd-tests``); each layer unpacks its
packages with ``dpkg-deb -x`` into a fresh directory and adds what dpkg's maintainer
scripts would have left (``/var/lib/dpkg/status`` and ``info/*.list|md5sums``, the
``cap_net_raw`` file capability of ``ping``, the ``/etc/ssl/certs`` links of
``update-ca-certificates``). :func:`write_layer_tar` turns such a directory plus synthetic
entries (whiteouts, opaque markers, hard links to lower files...) into a deterministic PAX
tar: entries in directory-walk order, real modes/uids/file mtimes, hard links as the
packages have them, no user/group names, directory mtimes pinned (``dpkg-deb -x`` leaves
the time of extraction on shared directories).

Needs ``apt-get`` with package lists (``scripts/bootstrap.sh`` runs ``apt-get update`` on a
fresh machine) and ``dpkg-deb``; run as root so ``dpkg-deb -x`` keeps owners (root:staff
``/var/local``).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LAYER1_PACKAGES = (
    "base-files", "libc6", "libgcc-s1", "libacl1", "libattr1", "libselinux1", "libpcre2-8-0",
    "libgmp10", "libcap2", "libtinfo6", "bash", "dash", "coreutils", "debianutils", "sed", "grep",
    "mawk", "perl-base", "tzdata",
)
# bash again: an upgrade re-ships every file of the package over layer 1's copies
LAYER2_PACKAGES = (
    "iputils-ping", "libcap2-bin", "ca-certificates", "libssl3", "openssl", "gzip", "tar",
    "findutils", "diffutils", "bash",
)

# VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = 1 << CAP_NET_RAW (13), no inheritable
# (linux/capability.h struct vfs_cap_data); what `setcap cap_net_raw+ep` writes
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000000 | 0x000001, 1 << 13, 0, 0, 0)
DIR_MTIME = 1_700_000_000
_APT_ENV = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def cache_dir() -> Path:
    root = os.environ.get("OVERLAYBD_TEST_CACHE") or Path.home() / ".cache" / "overlaybd-tests"
    path = Path(root) / "debs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_debs(packages: Iterable[str], cache: Path | None = None) -> dict[str, Path]:
    """{package: .deb path}; packages missing from the cache are downloaded in one apt-get call."""
    cache = cache or cache_dir()
    names = sorted(set(packages))
    found = {n: sorted(cache.glob(f"{n}_*.deb")) for n in names}
    missing = [n for n, hits in found.items() if not hits]
    if missing:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            proc = _apt_download(missing, tmp)
            if proc.returncode != 0 and os.geteuid() == 0:
                # no package lists yet (a machine where bootstrap had nothing to install)
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=_APT_ENV, check=False)
                proc = _apt_download(missing, tmp)
            if proc.returncode != 0:
                pytest.fail("apt-get download failed (has `apt-get update` run? scripts/bootstrap.sh "
                            f"does it on a fresh machine):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            for deb in Path(tmp).glob("*.deb"):
                os.replace(deb, cache / deb.name)
        found = {n: sorted(cache.glob(f"{n}_*.deb")) for n in names}
    out = {}
    for n, hits in found.items():
        if not hits:
            pytest.fail(f"apt-get download gave no .deb for {n}")
        out[n] = hits[-1]
    return out


def _apt_download(packages: Sequence[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *packages],
                          cwd=cwd, capture_output=True, text=True, env=_APT_ENV, check=False)


def _fsys_members(deb: Path) -> list[tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def _control(deb: Path) -> dict[str, bytes]:
    data = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            f = tf.extractfile(m) if m.isreg() else None
            if f is not None:
                out[m.name.removeprefix("./")] = f.read()
    return out


def _dpkg_list(members: Sequence[tarfile.TarInfo]) -> bytes:
    paths = []
    for m in members:
        p = "/" + m.name.removeprefix("./").rstrip("/")
        paths.append("/." if p == "/" else p)
    return "".join(p + "\n" for p in paths).encode()


def install_packages(debs: Mapping[str, Path], root: Path, status: dict[str, bytes]) -> dict[str, list[str]]:
    """``dpkg-deb -x`` every package into ``root`` and write what dpkg records for it.

    ``status`` collects {package: control stanza}; returns {package: [paths it ships]}.
    """
    shipped: dict[str, list[str]] = {}
    info = root / "var/lib/dpkg/info"
    for name in sorted(debs):
        deb = debs[name]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        members = _fsys_members(deb)
        shipped[name] = ["/" + m.name.removeprefix("./").rstrip("/") for m in members]
        control = _control(deb)
        fields = control["control"].decode()
        pkg = name + (":amd64" if "Multi-Arch: same" in fields else "")
        info.mkdir(parents=True, exist_ok=True)
        _write(info / f"{pkg}.list", _dpkg_list(members))
        for part in ("md5sums", "conffiles", "postinst", "prerm", "postrm", "preinst", "triggers"):
            if part in control:
                _write(info / f"{pkg}.{part}", control[part])
        head, _sep, rest = fields.partition("\n")
        status[name] = f"{head}\nStatus: install ok installed\n{rest.rstrip()}\n".encode()
    return shipped


def status_file(stanzas: Mapping[str, bytes]) -> bytes:
    return b"\n".join(stanzas[k] for k in sorted(stanzas))


def emulate_update_ca_certificates(root: Path) -> int:
    """/etc/ssl/certs/NAME.pem -> /usr/share/ca-certificates/mozilla/NAME.crt and the bundle."""
    src = root / "usr/share/ca-certificates/mozilla"
    certs = root / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    crts = sorted(src.glob("*.crt"))
    for crt in crts:
        link = certs / (crt.stem + ".pem")
        os.symlink(f"/usr/share/ca-certificates/mozilla/{crt.name}", link)
        os.utime(link, (DIR_MTIME, DIR_MTIME), follow_symlinks=False)
    _write(certs / "ca-certificates.crt", b"".join(crt.read_bytes() for crt in crts))
    return len(crts)


def _write(path: Path, data: bytes) -> None:
    """A file we make ourselves: pinned mtime (no wall clock in the corpus)."""
    path.write_bytes(data)
    os.utime(path, (DIR_MTIME, DIR_MTIME))


@dataclass
class Entry:
    """A synthetic tar member (whiteout, opaque marker, link, replacement...)."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DIR_MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def _walk_key(name: str) -> tuple[str, ...]:
    return tuple(name.strip("/").split("/"))


def _pax_xattrs(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    return {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}


def write_layer_tar(out: Path, root: Path | None = None, extra: Sequence[Entry] = (), *,
                    xattrs: Mapping[str, Mapping[str, bytes]] | None = None, root_entry: bool = False,
                    dir_mtime: int = DIR_MTIME, prefix: str = "") -> Path:
    """A PAX layer tar of ``root``'s tree plus ``extra`` entries, in directory-walk order.

    ``xattrs`` maps an archive path ("bin/ping") to the xattrs its header carries. An
    ``extra`` entry with the same name as a file from ``root`` replaces it. ``prefix``
    ("./", as ``tar -C dir .`` writes) goes before every member name.
    """
    xattrs = xattrs or {}
    extras = {e.name: e for e in extra}
    names: list[str] = []
    if root is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for n in dirnames + filenames:
                names.append(n if rel == "." else f"{rel}/{n}")
    names = sorted(set(names) | set(extras), key=_walk_key)
    with open(out, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                                              encoding="utf-8", errors="surrogateescape") as tf:
        if root_entry:
            ti = tarfile.TarInfo("./")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, dir_mtime
            tf.addfile(ti)
        for name in names:
            if name in extras:
                _add_entry(tf, extras[name], prefix)
                continue
            path = root / name
            ti = tf.gettarinfo(str(path), arcname=prefix + name)  # hard links: later names become LNKTYPE
            ti.uname = ti.gname = ""
            ti.mtime = dir_mtime if ti.isdir() else int(os.lstat(path).st_mtime)
            if name in xattrs:
                ti.pax_headers.update(_pax_xattrs(xattrs[name]))
            if ti.isreg():
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
    return out


def _add_entry(tf: tarfile.TarFile, e: Entry, prefix: str = "") -> None:
    ti = tarfile.TarInfo(prefix + e.name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = e.type, e.mode, e.uid, e.gid, e.mtime, e.linkname
    ti.devmajor, ti.devminor = e.dev
    ti.pax_headers.update(_pax_xattrs(e.xattrs))
    if e.type == tarfile.REGTYPE:
        ti.size = len(e.data)
        tf.addfile(ti, io.BytesIO(e.data))
    else:
        tf.addfile(ti)


def compress(tar: Path, algorithm: str) -> Path:
    """``tar`` gzip'd (no name, mtime 0) or zstd'd next to it, as registries serve layers."""
    if algorithm == "gzip":
        out = tar.with_name(tar.name + ".gz")
        with open(tar, "rb") as src, open(out, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        import zstandard

        out = tar.with_name(tar.name + ".zst")
        with open(tar, "rb") as src, open(out, "wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    return out


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
