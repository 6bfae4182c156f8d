"""Reading an ext4 image through e2fsprogs' debugfs (batch mode, a few processes per tree).

    run_debugfs(image | None, commands, *, write=False, allow_errors=False) -> str
    run_debugfs_to_file(image | None, commands, stdout_path, *, write=False, allow_errors=False)
    split_by_command(output) -> [(command, lines)]
    read_tree(image) -> {path: Node}

``read_tree`` lists directories level by level with ``ls -p <ino>``, reads every inode with
one batch of ``stat`` (split over up to 4 concurrent processes for big trees), file contents
and slow symlink targets with one batch of ``cat`` and xattr values with ``ea_get -f``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.fsnode import EMPTY_SHA256, Node, canonical_xattr

DEBUGFS_ENV = {**os.environ, "PAGER": "__none__", "DEBUGFS_PAGER": "__none__", "LC_ALL": "C"}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/bootstrap.sh should have installed it")
    return path


def run_debugfs(
    image: str | os.PathLike[str] | None,
    commands: Iterable[str],
    *,
    write: bool = False,
    allow_errors: bool = False,
) -> str:
    """Run one debugfs process over a command file; returns stdout (bytes decoded with surrogateescape).

    ``image=None`` runs commands that need no filesystem (``dx_hash``); ``allow_errors`` for
    commands with spurious complaints (``htree_dump`` always grumbles about a checksum).
    Fails the test when debugfs reports an error on stderr (other than its version banner).
    """
    with tempfile.TemporaryDirectory(prefix="debugfs-") as tmp:
        out = Path(tmp, "stdout")
        run_debugfs_to_file(image, commands, out, write=write, allow_errors=allow_errors)
        return out.read_bytes().decode("utf-8", "surrogateescape")


def run_debugfs_to_file(
    image: str | os.PathLike[str] | None,
    commands: Iterable[str],
    stdout_path: str | os.PathLike[str],
    *,
    write: bool = False,
    allow_errors: bool = False,
) -> None:
    """Like :func:`run_debugfs` but stdout goes to a file (big listings, ``cat`` of many files).

    A file instead of a pipe: reading tens of MB through ``communicate`` is several times
    slower than debugfs itself.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False, encoding="utf-8",
                                     errors="surrogateescape") as f:
        for cmd in commands:
            f.write(cmd + "\n")
        cmdfile = f.name
    try:
        args = [_tool("debugfs"), *(["-w"] if write else []), "-f", cmdfile]
        if image is not None:
            args.append(str(image))
        with open(stdout_path, "wb") as out:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, env=DEBUGFS_ENV, check=False)
    finally:
        os.unlink(cmdfile)
    err = proc.stderr.decode("utf-8", "surrogateescape")
    problems = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if proc.returncode != 0 or (problems and not allow_errors):
        pytest.fail(f"debugfs on {image} failed (rc {proc.returncode}):\n" + "\n".join(problems[:20]))


def split_by_command(out: str) -> list[tuple[str, list[str]]]:
    """debugfs -f echoes ``debugfs: CMD`` before each command's output."""
    chunks: list[tuple[str, list[str]]] = []
    for line in out.split("\n"):
        if line.startswith("debugfs: "):
            chunks.append((line[len("debugfs: ") :], []))
        elif chunks:
            chunks[-1][1].append(line)
    return chunks


_TYPES = {
    "regular": "file",
    "directory": "dir",
    "symlink": "symlink",
    "character special": "chr",
    "block special": "blk",
    "FIFO": "fifo",
    "socket": "sock",
}
_STAT_INODE = re.compile(r"^Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+)\s+Flags:")
_STAT_OWNER = re.compile(r"^User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size: (\d+)", re.M)
_STAT_MTIME = re.compile(r"^\s*mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?", re.M)
_STAT_DEV = re.compile(r"Device major/minor number: (\d+):(\d+)")
_STAT_FAST = re.compile(r'^Fast link dest: "(.*)"$', re.S)
_STAT_XATTR = re.compile(r"^  (.+?) \((\d+)\)(?: = .*)?$", re.S)


@dataclass
class _RawInode:
    ino: int
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_ns: int
    rdev: tuple[int, int] | None = None
    fast_target: bytes | None = None
    xattr_names: list[str] = field(default_factory=list)


def _decode_time(lo_hex: str, extra_hex: str | None) -> tuple[int, int]:
    lo = int(lo_hex, 16)
    sec = lo - (1 << 32) if lo & 0x80000000 else lo
    if extra_hex is None:
        return sec, 0
    extra = int(extra_hex, 16)
    return sec + ((extra & 3) << 32), extra >> 2


def _parse_stat(text: str) -> _RawInode:
    """One ``stat`` output (without the echoed command line)."""
    head = _STAT_INODE.match(text)
    if head is None:
        raise AssertionError("unexpected debugfs stat output:\n" + text[:400])
    ino, type_text, mode_text = int(head.group(1)), head.group(2), head.group(3)
    kind = _TYPES.get(type_text)
    if kind is None:
        raise AssertionError(f"inode {ino}: unknown debugfs type {type_text!r}")
    node = _RawInode(ino, kind, int(mode_text, 8) & 0o7777, 0, 0, 0, 0, 0)
    owner = _STAT_OWNER.search(text)
    mtime = _STAT_MTIME.search(text)
    if owner is None or mtime is None:
        raise AssertionError(f"inode {ino}: no owner/size or mtime in debugfs stat:\n{text[:400]}")
    node.uid, node.gid, node.size = int(owner.group(1)), int(owner.group(2)), int(owner.group(3))
    node.mtime, node.mtime_ns = _decode_time(mtime.group(1), mtime.group(2))
    if "Device major/minor number:" in text and (m := _STAT_DEV.search(text)):
        node.rdev = (int(m.group(1)), int(m.group(2)))
    start = text.find('\nFast link dest: "')
    if start >= 0:
        # printed raw (%.*s) as the last line: the target may itself hold quotes or newlines
        start += len('\nFast link dest: "')
        end = text.rstrip("\n").rfind('"')
        node.fast_target = _unescape_debugfs(text[start:end])
    start = text.find("\nExtended attributes:\n")
    if start >= 0 and (start < text.find('\nFast link dest: "') or '\nFast link dest: "' not in text):
        for line in text[start + 1 :].split("\n")[1:]:
            m = _STAT_XATTR.match(line)
            if m is None:
                break
            node.xattr_names.append(_xattr_name(m.group(1)))
    return node


_HEX_NAME = re.compile(r"(?:[0-9a-f]{2} ?)+")


def _xattr_name(printed: str) -> str:
    """debugfs prints names with unprintable bytes as hex pairs ("75 73 65 72 2e ...")."""
    if _HEX_NAME.fullmatch(printed):
        return bytes.fromhex(printed).decode("utf-8", "surrogateescape")
    return printed


def _unescape_debugfs(text: str) -> bytes:
    """Fast symlink targets are printed raw by debugfs (``%.*s``)."""
    return text.encode("utf-8", "surrogateescape")


def _list_dirs(image: str | os.PathLike[str]) -> tuple[dict[str, int], dict[int, int]]:
    """Every path → inode (root included), level by level, one debugfs run per tree depth."""
    paths: dict[str, int] = {"/": 2}
    modes: dict[int, int] = {2: 0o040755}
    level = [("/", 2)]
    while level:
        out = run_debugfs(image, [f"ls -p <{ino}>" for _p, ino in level])
        chunks = split_by_command(out)
        if len(chunks) != len(level):
            raise AssertionError(f"debugfs listed {len(chunks)} of {len(level)} directories")
        nxt = []
        for (dpath, _dino), (_cmd, lines) in zip(level, chunks, strict=True):
            for line in lines:
                if not line:
                    continue
                parts = line.split("/")  # /ino/mode/uid/gid/name/size/ (names hold no '/')
                if len(parts) != 8 or parts[0] or parts[7]:
                    raise AssertionError(f"cannot parse debugfs 'ls -p' line {line!r} in {dpath}")
                ino, mode, name = int(parts[1]), int(parts[2], 8), parts[5]
                if name in (".", "..") or ino == 0:  # ino 0: empty record (e.g. lost+found blocks)
                    continue
                path = dpath.rstrip("/") + "/" + name
                paths[path] = ino
                modes[ino] = mode
                if mode & 0o170000 == 0o040000:
                    nxt.append((path, ino))
        level = nxt
    return paths, modes


def read_tree(image: str | os.PathLike[str]) -> dict[str, Node]:
    """Every path of the ext4 image with its observable metadata and content hash."""
    paths, _modes = _list_dirs(image)
    inodes = sorted(set(paths.values()))
    raw: dict[int, _RawInode] = {}
    for out in _parallel_debugfs(image, [f"stat <{i}>" for i in inodes]):
        for chunk in ("\n" + out).split("\ndebugfs: stat <")[1:]:
            node = _parse_stat(chunk[chunk.index("\n") + 1 :])
            raw[node.ino] = node
    if len(raw) != len(inodes):
        raise AssertionError(f"debugfs stat returned {len(raw)} of {len(inodes)} inodes")
    by_inode: dict[int, list[str]] = {}
    for p, i in paths.items():
        by_inode.setdefault(i, []).append(p)

    with tempfile.TemporaryDirectory(prefix="fsjudge-") as tmp:
        contents = _read_contents(image, raw.values(), Path(tmp))
        xattr_cmds = [
            f'ea_get -f "{tmp}/x{r.ino}_{k}" <{r.ino}> "{name}"'
            for r in raw.values()
            for k, name in enumerate(r.xattr_names)
        ]
        if xattr_cmds:
            run_debugfs(image, xattr_cmds)
        tree: dict[str, Node] = {}
        for path, ino in paths.items():
            r = raw[ino]
            group = by_inode[ino]
            links = tuple(sorted(group)) if len(group) > 1 and r.type != "dir" else ()
            xattrs = {}
            for k, name in enumerate(r.xattr_names):
                xattrs[name] = canonical_xattr(name, Path(tmp, f"x{ino}_{k}").read_bytes())
            sha = target = None
            size: int | None = r.size
            if r.type == "file":
                sha = contents[ino] if r.size else EMPTY_SHA256
            elif r.type == "symlink":
                target = r.fast_target if r.fast_target is not None else contents[ino]
            elif r.type == "dir":
                size = None
            tree[path] = Node(
                type=r.type, mode=r.mode, uid=r.uid, gid=r.gid, mtime=r.mtime, mtime_ns=r.mtime_ns,
                size=size, sha256=sha, target=target, rdev=r.rdev if r.type in ("chr", "blk") else None,
                xattrs=xattrs, hardlinks=links, inode=ino,
            )
    return tree


def _read_contents(image: str | os.PathLike[str], inodes: Iterable[_RawInode], tmp: Path) -> dict:
    """sha256 of every non-empty regular file and the target of every slow symlink.

    One ``cat <ino>`` per inode into a single stdout file; the echoed command line and the
    size known from ``stat`` delimit each content.
    """
    wanted = [
        r for r in inodes
        if (r.type == "file" and r.size > 0) or (r.type == "symlink" and r.fast_target is None)
    ]
    out: dict[int, str | bytes] = {}
    if not wanted:
        return out
    stream = tmp / "cat.out"
    run_debugfs_to_file(image, [f"cat <{r.ino}>" for r in wanted], stream)
    with stream.open("rb") as f:
        for r in wanted:
            echo = f.readline()
            if echo != f"debugfs: cat <{r.ino}>\n".encode():
                raise AssertionError(f"debugfs cat <{r.ino}>: unexpected output {echo[:80]!r}")
            h = hashlib.sha256()
            left = r.size
            data = b""
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise AssertionError(f"debugfs cat <{r.ino}>: short content ({r.size - left} of {r.size})")
                left -= len(chunk)
                if r.type == "file":
                    h.update(chunk)
                else:
                    data += chunk
            out[r.ino] = h.hexdigest() if r.type == "file" else data
    return out


def _parallel_debugfs(image: str | os.PathLike[str], commands: list[str]) -> list[str]:
    """Big read-only batches split over a few concurrent debugfs processes (outputs in order)."""
    workers = max(1, min(4, os.cpu_count() or 1, len(commands) // 20000))
    if workers == 1:
        return [run_debugfs(image, commands)]
    size = -(-len(commands) // workers)
    parts = [commands[i : i + size] for i in range(0, len(commands), size)]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(lambda cmds: run_debugfs(image, cmds), parts))
