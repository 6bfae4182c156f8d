"""Small ext4 test images made with the real e2fsprogs, and raw patching helpers.

Lets tests put bytes produced by our writer into a filesystem made by ``mke2fs`` so that
``e2fsck``/``debugfs`` judge them::

    img = make_image(tmp_path / "t.img", size="64M")     # ext4, 256-byte inodes, no csum/journal
    seed, signed = hash_info(img)                         # s_hash_seed words, signed hash flag
    ino = new_inode(img, "f", kind="fifo")                # debugfs mknod / write / mkdir
    off = inode_offset(img, ino)                          # byte offset of the inode in the image
    patch(img, off + 160, ibody)                          # raw write
    blocks = inode_blocks(img, ino)                       # physical blocks (debugfs 'blocks')
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from support.fsjudge import DEBUGFS_ENV, run_debugfs

BLOCK = 4096
TEST_HASH_SEED = "01020304-0506-0708-090a-0b0c0d0e0f10"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/bootstrap.sh should have installed it")
    return path


def make_image(
    path: str | os.PathLike[str],
    *,
    size: str = "64M",
    src_dir: str | os.PathLike[str] | None = None,
    inodes: int | None = None,
    hash_seed: str = TEST_HASH_SEED,
    extra: Sequence[str] = (),
) -> Path:
    """``mke2fs -t ext4`` without metadata_csum/journal, 4 KiB blocks, 256-byte inodes."""
    path = Path(path)
    cmd = [
        _tool("mke2fs"), "-q", "-F", "-t", "ext4", "-O", "^metadata_csum,^has_journal",
        "-I", "256", "-b", str(BLOCK), "-E", f"hash_seed={hash_seed}", "-U", "clear",
        *(["-N", str(inodes)] if inodes else []),
        *(["-d", str(src_dir)] if src_dir else []),
        *extra, str(path), size,
    ]
    env = {**DEBUGFS_ENV, "E2FSPROGS_FAKE_TIME": "1700000000"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        pytest.fail(f"mke2fs failed: {proc.stderr}")
    return path


def hash_info(image: str | os.PathLike[str]) -> tuple[list[int], bool]:
    """(s_hash_seed as 4 little-endian u32, signed_directory_hash?) from ``dumpe2fs -h``."""
    out = subprocess.run(
        [_tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    seed_text = re.search(r"^Directory Hash Seed:\s+(\S+)", out, re.M)
    raw = uuid.UUID(seed_text.group(1)).bytes if seed_text else bytes(16)
    seed = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]
    flags = re.search(r"^Filesystem flags:\s+(.*)$", out, re.M)
    signed = not (flags and "unsigned_directory_hash" in flags.group(1))
    return seed, signed


def inode_offset(image: str | os.PathLike[str], ino: int) -> int:
    out = run_debugfs(image, [f"imap <{ino}>"])
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
    if m is None:
        raise AssertionError(f"debugfs imap <{ino}>: {out}")
    return int(m.group(1)) * BLOCK + int(m.group(2), 16)


def inode_blocks(image: str | os.PathLike[str], ino: int) -> list[int]:
    out = run_debugfs(image, [f"blocks <{ino}>"])
    body = out.split("\n", 1)[1] if "\n" in out else ""
    return [int(x) for x in body.split()]


def lookup(image: str | os.PathLike[str], path: str) -> int:
    out = run_debugfs(image, [f'stat "{path}"'])
    m = re.search(r"^Inode: (\d+)", out, re.M)
    if m is None:
        raise AssertionError(f"{path} not found in {image}")
    return int(m.group(1))


def read_at(image: str | os.PathLike[str], offset: int, length: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(length)


def patch(image: str | os.PathLike[str], offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def write_blocks(image: str | os.PathLike[str], blocks: Sequence[int], data: Sequence[bytes]) -> None:
    if len(blocks) != len(data):
        raise AssertionError(f"{len(data)} blocks of data for {len(blocks)} physical blocks")
    with open(image, "r+b") as f:
        for blk, chunk in zip(blocks, data, strict=True):
            f.seek(blk * BLOCK)
            f.write(chunk)


def read_blocks(image: str | os.PathLike[str], blocks: Sequence[int]) -> list[bytes]:
    with open(image, "rb") as f:
        out = []
        for blk in blocks:
            f.seek(blk * BLOCK)
            out.append(f.read(BLOCK))
        return out


def write_file(image: str | os.PathLike[str], name: str, data: bytes, tmp: Path) -> int:
    """Create ``/name`` holding ``data`` with debugfs ``write``; returns its inode."""
    host = tmp / f"host-{name.replace('/', '_')}"
    host.write_bytes(data)
    run_debugfs(image, [f'write "{host}" "{name}"'], write=True)
    host.unlink()
    return lookup(image, "/" + name)


def install_directory(
    image: str | os.PathLike[str], name: str, nblocks: int, tmp: Path
) -> tuple[int, list[int]]:
    """Reserve an ``nblocks``-block regular file ``/name`` to be turned into a directory.

    Returns (inode, physical blocks); call :func:`finish_directory` after writing the blocks.
    """
    ino = write_file(image, name, b"\xff" * (nblocks * BLOCK), tmp)
    blocks = inode_blocks(image, ino)
    if len(blocks) != nblocks:
        raise AssertionError(f"/{name} got {len(blocks)} blocks, wanted {nblocks}")
    return ino, blocks


def finish_directory(
    image: str | os.PathLike[str], name: str, ino: int, *, indexed: bool, root_links: int
) -> None:
    """Turn the reserved file into a directory (mode, flags, links) and relink it with type dir."""
    flags = 0x80000 | (0x1000 if indexed else 0)
    group, dirs = _group_dirs(image, ino)
    run_debugfs(
        image,
        [
            f"sif <{ino}> mode 040755",
            f"sif <{ino}> flags {flags:#x}",
            f"sif <{ino}> links_count 2",
            f'unlink "/{name}"',
            f'link <{ino}> "/{name}"',
            f"sif <2> links_count {root_links}",
            f"set_bg {group} used_dirs_count {dirs + 1}",
        ],
        write=True,
    )


def _group_dirs(image: str | os.PathLike[str], ino: int) -> tuple[int, int]:
    """(block group of ``ino``, its used-directories count) from ``dumpe2fs``."""
    out = subprocess.run(
        [_tool("dumpe2fs"), str(image)], capture_output=True, text=True, check=True
    ).stdout
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", out, re.M).group(1))
    group = (ino - 1) // per_group
    sections = re.split(r"^Group (\d+):", out, flags=re.M)
    for i in range(1, len(sections), 2):
        if int(sections[i]) == group:
            return group, int(re.search(r"(\d+) directories", sections[i + 1]).group(1))
    raise AssertionError(f"group {group} not in dumpe2fs output")
