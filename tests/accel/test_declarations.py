"""The augmenting ``.pxd`` declarations of the accelerator (docs/accelerator.md): each names exactly the
attributes its class assigns, the compiled classes keep them in slots and still take any other
attribute, and an edited declaration makes the build stale like an edited source."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import overlaybd_provider
import pytest
from overlaybd_provider import accel

PACKAGE_DIR = Path(overlaybd_provider.__file__).resolve().parent
_CLASS = re.compile(r"^cdef class (\w+):$")
_FIELDS = re.compile(r"^\s+cdef public object (.+)$")


def declared(pxd: Path) -> dict[str, set[str]]:
    """Per ``cdef class`` of a ``.pxd``: its ``cdef public object`` names."""
    classes: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in pxd.read_text().splitlines():
        if match := _CLASS.match(line):
            current = classes.setdefault(match.group(1), set())
        elif (match := _FIELDS.match(line)) and current is not None:
            current.update(name.strip() for name in match.group(1).split(","))
    return classes


def assigned(source: Path, name: str) -> set[str]:
    """The ``self.x`` a class assigns anywhere in its body, minus the names its body defines (a method
    an instance replaces, such as ``Filesystem.meta_block``, lives in ``__dict__``)."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            names: set[str] = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign | ast.AnnAssign | ast.AugAssign):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                    for target in targets:
                        for part in ast.walk(target):
                            if (isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name)
                                    and part.value.id == "self"):
                                names.add(part.attr)
            body = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            body |= {t.id for item in node.body if isinstance(item, ast.Assign)
                     for t in item.targets if isinstance(t, ast.Name)}
            return names - body
    raise AssertionError(f"{source} has no class {name}")


DECLARATIONS = sorted(path for module in accel.MODULES
                      if (path := accel.source_path(PACKAGE_DIR.parent, module).with_suffix(".pxd")).is_file())


def test_the_hot_classes_are_declared() -> None:
    names = {path.relative_to(PACKAGE_DIR).as_posix() for path in DECLARATIONS}
    assert {"ext4/alloc.pxd", "ext4/blockdev.pxd", "ext4/changeset.pxd", "ext4/dirhash.pxd", "ext4/fs.pxd",
            "ext4/inode.pxd", "ext4/namespace.pxd", "ext4/tarstream.pxd", "formats/zfile_spool.pxd"} <= names


@pytest.mark.parametrize("pxd", DECLARATIONS, ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_declarations_name_every_attribute_their_class_assigns(pxd: Path) -> None:
    """A missing name would still work (through ``__dict__``) but slowly; a name the class no longer
    assigns is dead weight: both fail here, so the declarations follow the code."""
    classes = declared(pxd)
    assert classes or "cpdef " in pxd.read_text(), f"{pxd} declares nothing"
    for name, fields in classes.items():
        assert fields == assigned(pxd.with_suffix(".py"), name), name


def test_compiled_classes_use_slots_and_still_take_any_attribute() -> None:
    """In the compiled build a declared attribute is a slot of the object (a descriptor on the
    type, not a key of the instance's ``__dict__``); an undeclared one, and a monkeypatched method,
    land in ``__dict__`` as in Python."""
    code = """
import overlaybd_provider.ext4.alloc as alloc
from overlaybd_provider.ext4.alloc import Allocator
a = Allocator.__new__(Allocator)
a.context = "x"
a.not_declared = 1
a.alloc_block = lambda: 7
assert a.alloc_block() == 7 and a.not_declared == 1 and a.context == "x"
print(alloc.__file__.endswith(".py"), "context" in Allocator.__dict__, sorted(vars(a)))
"""
    for mode, slots in (("1", True), ("0", False)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, accel.ENV: mode}).stdout.split(maxsplit=2)
        assert out[0] == str(not slots) and out[1] == str(slots), (mode, out)
        expected = ["alloc_block", "not_declared"] if slots else ["alloc_block", "context", "not_declared"]
        assert out[2].strip() == repr(expected)


def test_an_edited_declaration_makes_the_build_stale(tmp_path: Path) -> None:
    copy = tmp_path / "overlaybd_provider"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert accel._build_state(copy / "ext4" / "alloc.py", accel._manifest(tmp_path), "overlaybd_provider.ext4.alloc")[0] == "compiled"
    pxd = copy / "ext4" / "alloc.pxd"
    pxd.write_text(pxd.read_text() + "\n# edited after the build\n")
    state = accel._build_state(copy / "ext4" / "alloc.py", accel._manifest(tmp_path), "overlaybd_provider.ext4.alloc")
    assert state == ("stale", None)


def test_half_md4_rounds_run_on_c_integers_only_when_compiled() -> None:
    """dirhash.pxd types the rounds: the compiled build refuses a word of 33 bits (the pure build's
    SWAR lanes are such words, so the compiled dirhash_many must not take that path), Python takes it."""
    code = """
from overlaybd_provider.ext4 import dirhash as d
try:
    d._md4_rounds(1 << 32, 0, 0, 0, (0,) * 8, 0xFFFFFFFF, 0, 0)
    rounds = "python"
except OverflowError:
    rounds = "c"
import random
rng = random.Random(7)
names = [b"name-%d" % i for i in range(40)] + [b"\\xff\\x80a\\xc3\\xa9" * k for k in range(1, 12)]
names += [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 256))) for _ in range(300)]
same = all(d.dirhash_many(names, version=1, seed=seed, signed=signed) == [
    d.dirhash(n, version=1, seed=seed, signed=signed) for n in names]
    for signed in (False, True) for seed in (None, [0x1234567, 0x89ABCDEF, 0xFEDCBA98, 0x7654321]))
one = [d._half_md4_one(n, *d.DEFAULT_SEED, False) for n in names] == [
    d.dirhash(n, version=1, seed=None, signed=True) for n in names]
print(d._COMPILED, rounds, d.__file__.endswith(".py"), same and one)
"""
    for mode, expected in (("1", "True c False True"), ("0", "False python True True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, accel.ENV: mode}).stdout.strip()
        assert out == expected, (mode, out)


def test_tar_header_numbers_run_on_c_integers_only_when_compiled() -> None:
    """tarstream.pxd types the header's byte sum and octal fields: compiled, they take ``bytes``
    only; in both builds they give what the Python forms give (adler32 sum, ``b"%06o\\0 "``,
    ``int(field, 8)``) on random, near-miss and real headers, and -1 exactly where a field is not
    plain octal digits ended by a NUL."""
    code = r"""
import random, tarfile
from overlaybd_provider.ext4 import tarstream as t
try:
    t._octal_field(bytearray(512), 0, 1)
    typed = "python"
except TypeError:
    typed = "c"
rng = random.Random(11)
alphabet = b"01234567 \0+-_89xo\x80\xff"
def header():
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(512))
    if kind == 1:
        return bytes(rng.choice(alphabet) for _ in range(512))
    info = tarfile.TarInfo("d/" * rng.randrange(20) + "f%d" % rng.randrange(10**6))
    info.size, info.mtime, info.mode = rng.randrange(8**11), rng.randrange(8**11), rng.randrange(8**7)
    info.uid, info.gid = rng.randrange(8**7), rng.randrange(8**7)
    h = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for _ in range(rng.randrange(3)):  # near misses
        h[rng.randrange(100, 160)] = rng.choice(alphabet)
    return bytes(h)
def octal(h, s, e):
    field = h[s:e]
    return int(field, 8) if field and not field.translate(None, b"01234567") and h[e] == 0 else -1
bad, written = 0, 0
for _ in range(4000):
    h = header()
    computed = 256 + sum(h) - sum(h[148:156])
    bad += t._unsigned_sum(h) != computed
    for c in (computed, computed + 1, int(h[148:154], 8) if not h[148:154].translate(None, b"01234567") else 0):
        expect = h[148:156] == b"%06o\0 " % c
        written += expect
        bad += t._checksum_written(h, c) != expect
    for s, e in ((100, 107), (108, 115), (116, 123), (124, 135), (136, 147)):
        bad += t._octal_field(h, s, e) != octal(h, s, e)
print(t._COMPILED, typed, t.__file__.endswith(".py"), bad, written > 1000)
"""
    for mode, expected in (("1", "True c False 0 True"), ("0", "False python True 0 True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, accel.ENV: mode}).stdout.strip()
        assert out == expected, (mode, out)
