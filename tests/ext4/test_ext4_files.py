"""Files, directories, symlinks, devices, metadata: one scenario per feature, judged by e2fsprogs."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile

from .judge import d, f


def test_regular_files_and_metadata(stack) -> None:
    big = os.urandom(300_001)
    stack.apply([
        d("etc", mtime=1000),
        f("etc/hello", b"hi\n" * 1000, mode=0o4755, uid=70000, gid=1 << 31, mtime=1600000000),
        f("bin/big", big, mode=0o755),
        f("empty", b"", mode=0o600),
        f("ns", b"x", pax_headers={"mtime": "1700000000.75"}),
        f("neg", b"x", pax_headers={"mtime": "-1.25"}),
    ])
    img = stack.image()
    st = img.stat("/etc/hello")
    assert stat.S_IMODE(st.mode) == 0o4755 and st.uid == 70000 and st.gid == 1 << 31
    assert st.mtime == st.atime == st.ctime == 1600000000 and st.size == 3000 and st.links == 1
    assert st.flags & 0x80000 and st.version == 3
    assert img.cat("/etc/hello") == b"hi\n" * 1000
    assert img.cat("/bin/big") == big
    assert img.stat("/empty").size == 0 and img.stat("/empty").blockcount == 0
    ns = img.stat("/ns")
    assert (ns.mtime, ns.mtime_ns) == (1700000000, 750000000)
    neg = img.stat("/neg")
    assert (neg.mtime, neg.mtime_ns) == (-2, 750000000)
    etc = img.stat("/etc")
    assert etc.mtime == 1000 and etc.links == 2
    root = img.stat("/")
    assert root.mtime == 0 and root.links == 5  # ., .., lost+found, etc, bin
    assert img.stat("/bin").mtime == 0 and stat.S_IMODE(img.stat("/bin").mode) == 0o755


def test_symlinks_inline_and_block(stack) -> None:
    t59, t60, t300 = "a" * 59, "b" * 60, "/" + "c/" * 149 + "d"
    stack.apply([
        {"name": "l59", "type": tarfile.SYMTYPE, "linkname": t59, "mode": 0o644},
        {"name": "l60", "type": tarfile.SYMTYPE, "linkname": t60},
        {"name": "l300", "type": tarfile.SYMTYPE, "linkname": t300},
        {"name": "rel", "type": tarfile.SYMTYPE, "linkname": "../x/./y", "uid": 5},
    ])
    img = stack.image()
    s59 = img.stat("/l59")
    assert s59.fast_link == t59 and not s59.flags & 0x80000 and s59.mode == 0o777 and s59.kind == "symlink" and s59.version == 2
    s60 = img.stat("/l60")
    assert s60.fast_link is None and s60.size == 60 and s60.flags & 0x80000 and s60.blockcount == 8
    assert img.cat("/l60") == t60.encode()
    assert img.cat("/l300") == t300.encode()
    assert img.stat("/rel").fast_link == "../x/./y" and img.stat("/rel").uid == 5


def test_devices_and_fifo(stack) -> None:
    stack.apply([
        {"name": "dev/null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3, "mode": 0o666},
        {"name": "dev/big", "type": tarfile.BLKTYPE, "devmajor": 259, "devminor": 70000, "mode": 0o660},
        {"name": "dev/fifo", "type": tarfile.FIFOTYPE, "mode": 0o600},
    ])
    img = stack.image()
    outs = img.stats(["/dev/null", "/dev/big", "/dev/fifo"])
    assert outs["/dev/null"].mode == 0o666 and outs["/dev/null"].kind == "character" and "Device major/minor number: 01:03" in outs["/dev/null"].raw
    assert outs["/dev/big"].mode == 0o660 and outs["/dev/big"].kind == "block" and "259:70000" in outs["/dev/big"].raw
    assert outs["/dev/fifo"].mode == 0o600 and outs["/dev/fifo"].kind == "FIFO"


def test_hard_links_across_dirs(stack) -> None:
    stack.apply([
        f("a/orig", b"data", mode=0o640),
        {"name": "b/link", "type": tarfile.LNKTYPE, "linkname": "a/orig", "mode": 0o640},
        {"name": "c/d/link2", "type": tarfile.LNKTYPE, "linkname": "./a//orig", "mode": 0o640},
    ])
    img = stack.image()
    s = img.stats(["/a/orig", "/b/link", "/c/d/link2"])
    assert len({v.ino for v in s.values()}) == 1
    assert all(v.links == 3 for v in s.values())


def test_xattrs_in_inode_and_block(stack) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
    stack.apply([
        f("ping", b"x", pax_headers={"SCHILY.xattr.security.capability": cap.decode("latin-1")}),
        f("big", b"y", pax_headers={"SCHILY.xattr.user.big": "v" * 3000, "SCHILY.xattr.user.small": "s"}),
        d("dir", pax_headers={"SCHILY.xattr.trusted.t": "1"}),
    ])
    img = stack.image()
    # tarfile encodes str PAX values as UTF-8: compare with what the tar really carries
    assert img.xattrs("/ping") == {"security.capability": cap.decode("latin-1").encode()}
    assert img.stat("/ping").file_acl == 0
    big = img.xattrs("/big")
    assert big["user.big"] == b"v" * 3000 and big["user.small"] == b"s"
    assert img.stat("/big").file_acl != 0 and img.stat("/big").blockcount == 16
    assert img.xattrs("/dir") == {"trusted.t": b"1"}


def test_long_names(stack) -> None:
    n255 = "n" * 255
    deep = "/".join(["p" * 100] * 5) + "/file"
    stack.apply([f(n255, b"1"), f(deep, b"2"), {"name": "ln", "type": tarfile.SYMTYPE, "linkname": "t" * 200}],)
    stack.apply(make_gnu([f("g" * 150 + "/x" * 10, b"3"),
                          {"name": "gl", "type": tarfile.SYMTYPE, "linkname": "q" * 150}]))
    img = stack.image()
    assert img.cat("/" + n255) == b"1"
    assert img.cat("/" + deep) == b"2"
    assert img.cat("/ln") == b"t" * 200
    assert img.cat("/" + "g" * 150 + "/x" * 10) == b"3"
    assert img.cat("/gl") == b"q" * 150


def make_gnu(entries: list[dict]) -> bytes:
    from .judge import make_tar

    return make_tar(entries, fmt=tarfile.GNU_FORMAT)


def test_large_file_multi_extent_tree(stack, tmp_path) -> None:
    # 300 MiB: contiguous except where group metadata interrupts it (3 extents of <= 32768 blocks)
    size = 300 << 20
    chunk = os.urandom(1 << 20)
    tar = tmp_path / "big.tar"
    digest = hashlib.sha256()
    with tarfile.open(tar, "w") as tf:
        ti = tarfile.TarInfo("huge.bin")
        ti.size = size

        class Src:
            pos = 0

            def read(self, n: int) -> bytes:
                n = min(n, size - self.pos)
                off = self.pos % len(chunk)
                out = (chunk[off:] + chunk)[:n] if n <= len(chunk) else (chunk[off:] + chunk * (n // len(chunk) + 1))[:n]
                self.pos += n
                digest.update(out)
                return out

        tf.addfile(ti, Src())
    stack.apply(tar, vsize_gb=2)
    img = stack.image()
    st = img.stat("/huge.bin")
    assert st.extents.count("(") == 3
    assert st.size == size and st.blockcount == size // 512
    assert hashlib.sha256(img.cat("/huge.bin")).hexdigest() == digest.hexdigest()
