"""dirhash against e2fsprogs' own implementation (``debugfs dx_hash``), every version and signedness."""

from __future__ import annotations

import random
import re

import pytest
from overlaybd_provider.ext4.dirhash import (
    DEFAULT_SEED,
    HASH_HALF_MD4,
    HASH_LEGACY,
    HASH_TEA,
    _finish,
    dirhash,
    dirhash_many,
    effective_hash_version,
)
from support.debugfs import run_debugfs, split_by_command

SEED_UUID = "01020304-0506-0708-090a-0b0c0d0e0f10"
SEED_WORDS = [0x04030201, 0x08070605, 0x0C0B0A09, 0x100F0E0D]
# bytes debugfs' command parser would split or interpret; everything >= 0x80 is kept
_UNSAFE = set(range(0x21)) | {0x7F, ord('"'), ord("'"), ord("\\"), ord("#"), ord(";")}
_SAFE = bytes(b for b in range(256) if b not in _UNSAFE)


def _names() -> list[bytes]:
    rnd = random.Random(20261127)
    names = [b"hello", b"a", b"lost+found", b"h\xe9llo\xff", b"\x80", b"\xff" * 4, b"x" * 255]
    for length in (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200, 255):
        names.append(bytes(rnd.choice(_SAFE) for _ in range(length)))
    for _ in range(60):
        names.append(bytes(rnd.choice(_SAFE) for _ in range(rnd.randint(1, 80))))
    return [n for n in names if not n.startswith(b"-")]


NAMES = _names()


def _debugfs_hashes(version: int, seed_uuid: str | None) -> list[tuple[int, int]]:
    seed = f" -s {seed_uuid}" if seed_uuid else ""
    cmds = [f"dx_hash -h {version}{seed} " + n.decode("latin-1") for n in NAMES]
    # the command file must carry the raw bytes: encode latin-1 text back to bytes via surrogates
    cmds = [c.encode("latin-1").decode("utf-8", "surrogateescape") for c in cmds]
    out = run_debugfs(None, cmds)
    results = []
    for _cmd, lines in split_by_command(out):
        text = "\n".join(lines)
        m = re.search(r" is (0x[0-9a-f]+) \(minor (0x[0-9a-f]+)\)\s*$", text)
        assert m, text
        results.append((int(m.group(1), 16), int(m.group(2), 16)))
    assert len(results) == len(NAMES)
    return results


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed_uuid", [None, SEED_UUID])
def test_matches_debugfs_dx_hash(version: int, seed_uuid: str | None) -> None:
    expected = _debugfs_hashes(version, seed_uuid)
    seed = SEED_WORDS if seed_uuid else None
    # versions 3..5 are the unsigned variants whatever ``signed`` says
    got = [dirhash(n, version=version, seed=seed, signed=True) for n in NAMES]
    assert got == expected
    assert dirhash_many(NAMES, version=version, seed=seed, signed=True) == expected


@pytest.mark.parametrize("version", [HASH_LEGACY, HASH_HALF_MD4, HASH_TEA])
def test_unsigned_flag_selects_unsigned_variant(version: int) -> None:
    name = b"h\xe9llo\xff"
    unsigned = dirhash(name, version=version + 3, seed=None, signed=True)
    assert dirhash(name, version=version, seed=None, signed=False) == unsigned
    assert dirhash(name, version=version, seed=None, signed=True) != unsigned
    # ASCII names hash the same either way
    assert dirhash(b"plain", version=version, seed=None, signed=True) == dirhash(
        b"plain", version=version, seed=None, signed=False
    )


def test_known_vectors() -> None:
    # from `debugfs -R 'dx_hash -h half_md4 hello'` (e2fsprogs 1.47.0)
    assert dirhash(b"hello", version=1, seed=None, signed=True) == (0x1746DA32, 0x420013B5)
    assert dirhash(b"hello", version=1, seed=[0, 0, 0, 0], signed=True) == (0x1746DA32, 0x420013B5)
    assert dirhash(b"hello", version=1, seed=list(DEFAULT_SEED), signed=True) == (0x1746DA32, 0x420013B5)
    assert dirhash(b"hello", version=1, seed=SEED_WORDS, signed=True) == (0xE2DDF968, 0xC8BC0924)
    assert dirhash(b"h\xe9llo\xff", version=2, seed=None, signed=True) == (0x71B17E08, 0xF811AD18)
    assert dirhash(b"h\xe9llo\xff", version=0, seed=None, signed=True) == (0xBDBC7C5E, 0)


def test_many_matches_single_on_random_names() -> None:
    rnd = random.Random(5)
    names = [bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 256))) for _ in range(1500)]
    names += [bytes(rnd.choice(b"ab\x80\xff\x7f") for _ in range(n)) for n in (1, 3, 4, 5, 32, 33, 255) for _ in range(30)]
    for signed in (True, False):
        for seed in (None, SEED_WORDS):
            single = [dirhash(n, version=1, seed=seed, signed=signed) for n in names]
            assert dirhash_many(names, version=1, seed=seed, signed=signed) == single


def test_major_low_bit_cleared_and_eof_remapped() -> None:
    for n in NAMES:
        assert dirhash(n, version=1, seed=None, signed=True)[0] & 1 == 0
    assert _finish(0xFFFFFFFF) == 0xFFFFFFFC
    assert _finish(0xFFFFFFFE) == 0xFFFFFFFC
    assert _finish(0xFFFFFFFD) == 0xFFFFFFFC
    assert _finish(0x12345679) == 0x12345678


def test_effective_version_and_errors() -> None:
    assert effective_hash_version(1, signed=False) == 4
    assert effective_hash_version(1, signed=True) == 1
    assert effective_hash_version(4, signed=True) == 4
    with pytest.raises(ValueError):
        dirhash(b"x", version=6, seed=None, signed=True)
    with pytest.raises(ValueError):
        dirhash(b"x", version=1, seed=[1, 2], signed=True)
