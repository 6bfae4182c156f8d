"""ext4 directory blocks: parse any directory, build linear or htree-indexed ones.

The records themselves (constants, :class:`DirEntry`, packing, validation) live in
:mod:`.dirent`, which both this module and :mod:`.htree` build on; their names are re-exported.

Public API (pure functions, no I/O; ``blocks`` are the directory's logical blocks in order)::

    DirEntry(name: bytes, inode: int, file_type: int)            # named tuple
    ParsedDirectory(parent_inode: int, entries: list[DirEntry], indexed: bool)
    DirectoryLayout(blocks: list[bytes], indexed: bool)

    parse_directory_blocks(blocks: Sequence[bytes], *, block_size: int = 4096,
                           indexed: bool | None = None) -> ParsedDirectory
    build_directory_blocks(self_ino: int, parent_ino: int, entries: Iterable[DirEntry], *,
                           hash_seed: Sequence[int] | None, hash_version: int = 1,
                           signed_hash: bool = True, block_size: int = 4096) -> DirectoryLayout
    dirent_rec_len(name_len: int) -> int
    pack_linear_block(records: Sequence[tuple[bytes, int, int]], block_size: int) -> bytes
        # (name, inode, file_type) records packed tightly, last rec_len fills the block
    pack_dirent(inode: int, rec_len: int, name: bytes, file_type: int) -> bytes
    validate_entry(entry: DirEntry) -> None        # raises DirectoryLimitError
    iter_block_records(block, block_no, block_size) -> Iterable[(offset, inode, name, file_type, rec_len)]
    EXT2_FT_UNKNOWN/REG_FILE/DIR/CHRDEV/BLKDEV/FIFO/SOCK/SYMLINK, file_type_from_mode(mode) -> int

``parse_directory_blocks`` skips '.', '..' and deleted (inode 0) records; entries come in
on-disk order. Every block is read as a chain of ``ext4_dir_entry_2`` records, which also
covers htree directories: the dx root hides its index inside the '..' record (rec_len =
block_size - 12) and dx node blocks are one empty record spanning the block. ``indexed``
is taken from the caller (the inode's EXT2_INDEX_FL) or, when ``None``, detected from the
dx root signature. Corrupt records raise :class:`DirectoryCorruptError` naming block and offset.

``build_directory_blocks`` is deterministic: when '.', '..' and every entry (in the given
order) fit one block the result is that single linear block, otherwise an htree directory
(see :mod:`overlaybd_provider.ext4.htree`) whose caller must set EXT2_INDEX_FL on the inode
and i_size = len(blocks) * block_size. ``hash_version`` is the on-disk value (superblock
``s_def_hash_version``), ``signed_hash`` the superblock's signed/unsigned directory-hash flag
and ``hash_seed`` ``s_hash_seed`` as four little-endian u32 words (all zero: default seed).
Directory entry layout: ext4 disk layout doc, "Linear (Classic) Directories".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from overlaybd_provider.ext4.dirent import (  # noqa: F401 - the records' names, re-exported
    DIRENT_HEADER_LEN,
    EXT2_FT_BLKDEV,
    EXT2_FT_CHRDEV,
    EXT2_FT_DIR,
    EXT2_FT_FIFO,
    EXT2_FT_MAX,
    EXT2_FT_REG_FILE,
    EXT2_FT_SOCK,
    EXT2_FT_SYMLINK,
    EXT2_FT_UNKNOWN,
    EXT4_DIR_ENTRY_2,
    EXT4_NAME_LEN,
    DirectoryLayout,
    DirEntry,
    ParsedDirectory,
    check_dots,
    dirent_rec_len,
    file_type_from_mode,
    iter_block_records,
    pack_dirent,
    pack_linear_block,
    validate_entries,
    validate_entry,
)
from overlaybd_provider.ext4.errors import DirectoryCorruptError
from overlaybd_provider.ext4.htree import build_htree, looks_like_dx_root


def build_directory_blocks(
    self_ino: int,
    parent_ino: int,
    entries: Iterable[DirEntry],
    *,
    hash_seed: Sequence[int] | None,
    hash_version: int = 1,
    signed_hash: bool = True,
    block_size: int = 4096,
) -> DirectoryLayout:
    """Blocks of a directory holding ``entries``: one linear block if it fits, else an htree."""
    entries = list(entries)
    validate_entries(entries)
    total = 2 * dirent_rec_len(2) + sum((DIRENT_HEADER_LEN + 3 + len(e.name)) & ~3 for e in entries)
    dots = [(b".", self_ino, EXT2_FT_DIR), (b"..", parent_ino, EXT2_FT_DIR)]
    if total <= block_size:
        records = dots + [(e.name, e.inode, e.file_type) for e in entries]
        return DirectoryLayout([pack_linear_block(records, block_size)], indexed=False)
    blocks = build_htree(
        self_ino,
        parent_ino,
        entries,
        hash_seed=hash_seed,
        hash_version=hash_version,
        signed_hash=signed_hash,
        block_size=block_size,
    )
    return DirectoryLayout(blocks, indexed=True)


def parse_directory_blocks(
    blocks: Sequence[bytes], *, block_size: int = 4096, indexed: bool | None = None
) -> ParsedDirectory:
    """Entries of a linear or htree directory (without '.'/'..') plus its parent inode."""
    if not blocks:
        raise DirectoryCorruptError("directory has no blocks")
    if indexed is None:
        indexed = len(blocks) > 1 and looks_like_dx_root(blocks[0], block_size)
    entries: list[DirEntry] = []
    parent = 0
    for block_no, block in enumerate(blocks):
        records = iter_block_records(block, block_no, block_size)
        if block_no == 0:
            parent = check_dots(records, block_size)
        for off, inode, name, ftype, _rec_len in records:
            if inode == 0:
                continue
            if not name or b"/" in name or b"\0" in name:
                raise DirectoryCorruptError(
                    f"directory block {block_no} offset {off}: invalid name {name!r}"
                )
            entries.append(DirEntry(name, inode, ftype))
    return ParsedDirectory(parent, entries, indexed)
