"""The three-layer Debian image of the corpus tests (issue #3), built from real packages.

* layer 1 — a base system: libc, bash, dash, coreutils, perl-base (hard-linked ``perl``),
  tzdata (hundreds of symlinks), base-files (setgid ``root:staff`` ``/var/local``), dpkg's
  records, ``/etc/passwd`` & co and the ``/etc/localtime`` symlink a postinst makes;
* layer 2 — installs more into the same directories: ping with its ``cap_net_raw``
  capability xattr, gzip (hard-linked ``gunzip``/``uncompress``), openssl, ca-certificates
  with the ``/etc/ssl/certs`` links (many > 59 bytes: block symlinks), and re-installs
  bash over layer 1 (every bash file overwritten, ``/etc/bash.bashrc`` changed);
* layer 3 — deletes and replaces: whiteouts of files (one name of a hard-linked pair each
  way round) and of a directory tree, two opaque directories refilled in the same layer, a
  file replaced by a directory, a directory tree by a file and by a symlink, a symlink by
  a file and by a hard link to a lower file, a hard link to a lower file under implied parents, a
  metadata-only change of a lower directory, a whiteout of a name that does not exist.

:func:`build_debian_image` writes the three layers (deterministically: same .debs → same
bytes) as registries serve them: a plain tar, a gzip'd tar with ``./`` names, a zstd'd tar.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from support.debcorpus import (
    CAP_NET_RAW_EP,
    DIR_MTIME,
    LAYER1_PACKAGES,
    LAYER2_PACKAGES,
    Entry,
    compress,
    emulate_update_ca_certificates,
    fetch_debs,
    fresh_dir,
    install_packages,
    status_file,
    write_layer_tar,
)

PASSWD = (b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
          b"bin:x:2:2:bin:/bin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = b"root:x:0:\ndaemon:x:1:\nbin:x:2:\nshadow:x:42:\nstaff:x:50:\nnogroup:x:65534:\n"
SHADOW = b"root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"


@dataclass
class DebianImage:
    tars: list[Path]
    roots: list[Path]
    ping: str  # archive path of ping ("bin/ping")
    perl_links: tuple[str, str]  # perl-base's hard-linked pair, tar order (regular, link)
    gzip_links: tuple[str, str]  # gzip's pair
    cert_links: int  # /etc/ssl/certs/*.pem symlinks made in layer 2
    perl_dir: str  # "usr/lib/<triplet>/perl-base", replaced by a file in layer 3


def hardlink_pairs(root: Path) -> list[tuple[str, ...]]:
    """Groups of archive paths sharing an inode under ``root``, each sorted like the tar walk."""
    groups: dict[int, list[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = Path(dirpath, n)
            st = p.lstat()
            if st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(str(p.relative_to(root)))
    return sorted(tuple(sorted(g, key=lambda s: tuple(s.split("/")))) for g in groups.values())


def _pair(root: Path, wanted: str) -> tuple[str, str]:
    for group in hardlink_pairs(root):
        if any(os.path.basename(p) == wanted for p in group) and len(group) == 2:
            return group[0], group[1]
    raise AssertionError(f"no hard-linked pair with {wanted} under {root}")


def _meta(root: Path, rel: str) -> dict:
    st = (root / rel).lstat()
    return {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}


def build_debian_image(work: Path) -> DebianImage:
    debs = fetch_debs(LAYER1_PACKAGES + LAYER2_PACKAGES)
    status: dict[str, bytes] = {}

    l1 = fresh_dir(work / "root1")
    install_packages({n: debs[n] for n in LAYER1_PACKAGES}, l1, status)
    extra1 = [
        Entry("etc/passwd", data=PASSWD),
        Entry("etc/group", data=GROUP),
        Entry("etc/shadow", data=SHADOW, mode=0o640, gid=42),
        Entry("etc/hostname", data=b"corpus\n"),
        Entry("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/Etc/UTC", mode=0o777),
        Entry("var/lib/dpkg/status", data=status_file(status)),
    ]
    tar1 = write_layer_tar(work / "layer1.tar", l1, extra1, root_entry=True, dir_mtime=DIR_MTIME + 1)

    l2 = fresh_dir(work / "root2")
    install_packages({n: debs[n] for n in LAYER2_PACKAGES}, l2, status)
    certs = emulate_update_ca_certificates(l2)
    ping = next(p for p in ("bin/ping", "usr/bin/ping") if (l2 / p).is_file())
    bashrc = (l2 / "etc/bash.bashrc").read_bytes() + b"\n# corpus: layer 2 edit\nexport HISTCONTROL=ignoreboth\n"
    extra2 = [
        Entry("etc/bash.bashrc", data=bashrc, mtime=DIR_MTIME + 2),
        Entry("var/lib/dpkg/status", data=status_file(status)),
    ]
    tar2 = write_layer_tar(work / "layer2.tar", l2, extra2, xattrs={ping: {"security.capability": CAP_NET_RAW_EP}},
                           dir_mtime=DIR_MTIME + 2, prefix="./")

    perl = _pair(l1, "perl")
    gz = _pair(l2, "uncompress")
    del status["perl-base"]
    utc = (l1 / "usr/share/zoneinfo/Etc/UTC").read_bytes()
    perl_dir = str(next(l1.glob("usr/lib/*/perl-base")).relative_to(l1))
    t3 = DIR_MTIME + 3
    extra3 = [
        # whiteouts: the link name of one pair, the regular-file name of the other
        Entry(_whiteout(perl[1])),
        Entry(_whiteout(gz[0])),
        Entry("usr/share/.wh.man"),  # a directory tree made by both lower layers
        Entry("usr/bin/.wh.no-such-file"),
        # opaque directories, refilled in this layer
        Entry("usr/share/zoneinfo/.wh..wh..opq"),
        Entry("usr/share/zoneinfo/Etc/", tarfile.DIRTYPE, mode=0o755, mtime=t3),
        Entry("usr/share/zoneinfo/Etc/UTC", data=utc, mtime=t3),
        Entry("usr/share/zoneinfo/UTC", tarfile.SYMTYPE, linkname="Etc/UTC", mode=0o777, mtime=t3),
        Entry("usr/share/doc/.wh..wh..opq"),
        Entry("usr/share/doc/README.layer3", data=b"docs removed to save space\n", mtime=t3),
        # replacements
        Entry(perl_dir, data=b"perl-base was removed\n", mtime=t3),
        Entry("etc/issue.net/", tarfile.DIRTYPE, mode=0o750, mtime=t3),
        Entry("etc/issue.net/banner", data=b"authorised use only\n", mode=0o600, mtime=t3),
        Entry("etc/localtime", data=utc, mtime=t3),
        Entry("sbin", tarfile.SYMTYPE, linkname="usr/sbin", mode=0o777, mtime=t3),  # usrmerge-style
        Entry("bin/sh", tarfile.LNKTYPE, linkname="bin/dash", **_meta(l1, "bin/dash")),
        Entry("usr/local/bin/bash-hl", tarfile.LNKTYPE, linkname="bin/bash", **_meta(l2, "bin/bash")),
        Entry("etc/passwd", data=PASSWD + b"app:x:1000:1000::/home/app:/bin/bash\n", mtime=t3),
        Entry("var/lib/dpkg/status", data=status_file(status), mtime=t3),
        Entry("var/local/", tarfile.DIRTYPE, mode=0o2770, gid=50, mtime=t3),
        Entry("opt/app/lib/deep/file.txt", data=b"x" * 5000, uid=1000, gid=1000, mtime=t3),
        Entry("opt/app/lib/deep/link-to-file", tarfile.LNKTYPE, linkname="opt/app/lib/deep/file.txt",
              uid=1000, gid=1000, mtime=t3),
    ]
    extra3 += [Entry(f"var/lib/dpkg/info/.wh.perl-base.{part}") for part in ("list", "md5sums")]
    tar3 = write_layer_tar(work / "layer3.tar", None, extra3)
    return DebianImage([tar1, compress(tar2, "gzip"), compress(tar3, "zstd")], [l1, l2], ping, perl, gz, certs,
                       perl_dir)


def _whiteout(path: str) -> str:
    head, _sep, base = path.rpartition("/")
    return f"{head}/.wh.{base}" if head else f".wh.{base}"
