"""LSMT writer/reader/stack against simple models of lsmt.md §6 and §7."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from overlaybd_provider.formats.errors import StackError
from overlaybd_provider.formats.lsmt import IndexEntry, LayerStack, LSMTReader, LSMTWriter

MAXLEN = 16383


def model_commit(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """lsmt.md §6 written out literally: pieces ≤ 16383, data chunks of 64, greedy merge.

    Contiguous runs of the same kind are one extent of upstream's sparse data file."""
    extents: list[list[int]] = []
    for lba, n, zeroed in runs:
        if extents and extents[-1][0] + extents[-1][1] == lba and extents[-1][2] == zeroed:
            extents[-1][1] += n
        else:
            extents.append([lba, n, zeroed])
    emitted = []
    pos = 8
    for lba, n, zeroed in extents:
        for p in range(lba, lba + n, MAXLEN):
            plen = min(MAXLEN, lba + n - p)
            if zeroed:
                emitted.append((p, plen, pos, 1))
                continue
            for c in range(p, p + plen, 64):
                clen = min(64, p + plen - c)
                emitted.append((c, clen, pos, 0))
                pos += clen
    merged: list[list[int]] = []
    for off, length, moff, z in emitted:
        if merged:
            i = merged[-1]
            mend = i[2] if i[3] else i[2] + i[1]
            if i[0] + i[1] == off and mend == moff and i[3] == z and i[1] + length < MAXLEN:
                i[1] += length
                continue
        merged.append([off, length, moff, z])
    return [tuple(m) for m in merged]


def sector_data(layer: int, lba: int, n: int) -> bytes:
    return b"".join(bytes([(layer * 37 + s) % 251 + 1]) * 512 for s in range(lba, lba + n))


@st.composite
def run_lists(draw, max_sector: int, max_len: int):
    """Non-overlapping ascending runs (lba, nsectors, zeroed), each split into sub-writes."""
    runs = []
    lba = draw(st.integers(0, 200))
    while len(runs) < draw(st.integers(1, 8)) and lba < max_sector:
        n = draw(st.integers(1, max_len))
        n = min(n, max_sector - lba)
        runs.append((lba, n, int(draw(st.booleans()) and draw(st.booleans()))))
        lba += n + draw(st.sampled_from([0, 0, 1, 64, 3000]))
    return runs


def write_layer(runs, layer: int, *, uuid: str, parent: str = "", splits: int = 3, vsize: int = 64 << 30):
    out = io.BytesIO()
    w = LSMTWriter(out, virtual_size=vsize, uuid=uuid, parent_uuid=parent)
    for lba, n, zeroed in runs:
        if zeroed:
            w.add_zero(lba, n)
            continue
        step = max(1, n // splits)
        for s in range(lba, lba + n, step):
            k = min(step, lba + n - s)
            w.add_data(s, sector_data(layer, s, k))
    info = w.close()
    return out.getvalue(), info


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=run_lists(max_sector=120_000, max_len=40_000), splits=st.integers(1, 5))
def test_writer_matches_commit_model(runs, splits: int) -> None:
    blob, info = write_layer(runs, 1, uuid="11111111-2222-3333-4444-555555555555", splits=splits)
    r = LSMTReader(io.BytesIO(blob), name="mem")
    assert [tuple(e)[:4] for e in r.entries()] == model_commit(runs)
    assert r.trailer.index_size % 256 == 0 and r.trailer.index_size == info.index_size
    assert r.header.flags == 0x7 and r.trailer.flags == 0x6 and r.header.index_offset == 0
    assert len(blob) == info.size == r.trailer.index_offset + 16 * r.trailer.index_size + 4096
    for lba, n, zeroed in runs:
        want = bytes(n * 512) if zeroed else sector_data(1, lba, n)
        assert r.read(lba * 512, n * 512) == want


def test_long_run_chunking() -> None:
    blob, _ = write_layer([(0, 40000, 0)], 0, uuid="", splits=7)
    r = LSMTReader(io.BytesIO(blob))
    # pieces 16383/16383/7234 → chunks of 64 (+63 tails) → greedy merge while the sum < 16383
    assert [e.length for e in r.entries()] == [16320, 63 + 254 * 64, 64 + 63 + 7234]
    assert [tuple(e)[:4] for e in r.entries()] == model_commit([(0, 40000, 0)])
    assert all(e.length < MAXLEN for e in r.entries())


def test_contiguous_writes_are_one_extent() -> None:
    one, _ = write_layer([(0, 20000, 0)], 0, uuid="", splits=1)
    split, _ = write_layer([(0, 16000, 0), (16000, 4000, 0)], 0, uuid="", splits=1)
    assert one == split
    assert [e.length for e in LSMTReader(io.BytesIO(one)).entries()] == [16320, 3680]


def test_zeroed_pieces_keep_16383() -> None:
    blob, _ = write_layer([(8, 40000, 1)], 0, uuid="")
    r = LSMTReader(io.BytesIO(blob))
    assert [(e.length, e.zeroed, e.moffset) for e in r.entries()] == [(16383, 1, 8), (16383, 1, 8), (7234, 1, 8)]


def test_index_entry_bit_layout() -> None:
    e = IndexEntry(12288, 256, 8456)
    assert e.to_bytes().hex() == "00300000000000040821000000000000"
    assert IndexEntry.from_bytes(bytes.fromhex("ffffffffffff03000000000000000000")).offset == (1 << 50) - 1
    z = IndexEntry((1 << 50) - 2, 16383, (1 << 55) - 1, 1, 0)
    assert IndexEntry.from_bytes(z.to_bytes()) == z


def test_writer_rejects_descending() -> None:
    w = LSMTWriter(io.BytesIO(), virtual_size=1 << 20, uuid="")
    w.add_data(100, bytes(512))
    with pytest.raises(ValueError, match="ascending"):
        w.add_data(50, bytes(512))
    with pytest.raises(ValueError, match="multiple of 512"):
        w.add_data(200, bytes(100))
    with pytest.raises(ValueError, match="beyond the device"):
        w.add_zero(2047, 2)


@st.composite
def stacks(draw):
    nlayers = draw(st.integers(1, 4))
    return [draw(run_lists(max_sector=3000, max_len=700)) for _ in range(nlayers)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=stacks())
def test_stack_matches_model(layers) -> None:
    vsize = 4000 * 512
    readers = []
    model: list[tuple[int, int] | None] = [None] * 4000  # sector -> (layer, zeroed)
    parent = ""
    for i, runs in enumerate(layers):
        uuid = f"{i + 1:08x}-0000-0000-0000-000000000000"
        blob, _ = write_layer(runs, i, uuid=uuid, parent=parent, vsize=vsize if i == 0 else 0)
        readers.append(LSMTReader(io.BytesIO(blob), name=f"layer{i}"))
        parent = uuid
        for lba, n, zeroed in runs:
            for s in range(lba, lba + n):
                model[s] = (i, zeroed)
    stack = LayerStack(readers)
    assert stack.virtual_size == vsize
    want = b"".join(
        bytes(512) if m is None or m[1] else sector_data(m[0], s, 1) for s, m in enumerate(model)
    )
    assert stack.read(0, vsize) == want
    assert stack.read(1000 * 512 + 7, 5000) == want[1000 * 512 + 7 : 1000 * 512 + 5007]
    seen: list[tuple[int, int] | None] = [None] * 4000
    prev_end = 0
    for ext in stack.mapped_extents():
        assert ext.offset >= prev_end and ext.length > 0
        prev_end = ext.offset + ext.length
        for s in range(ext.offset // 512, prev_end // 512):
            seen[s] = (ext.layer, int(ext.zeroed))
    assert seen == model


def test_uuid_chain_rules() -> None:
    a = LSMTReader(io.BytesIO(write_layer([(0, 8, 0)], 0, uuid="aaaaaaaa-0000-0000-0000-000000000000")[0]),
                   name="layer0")
    b = LSMTReader(io.BytesIO(write_layer([(0, 8, 0), (20, 9, 0)], 1, uuid="bbbbbbbb-0000-0000-0000-000000000000",
                                          parent="aaaaaaaa-0000-0000-0000-000000000000")[0]), name="layer1")
    c = LSMTReader(io.BytesIO(write_layer([(0, 8, 0)], 2, uuid="cccccccc-0000-0000-0000-000000000000",
                                          parent="")[0]), name="layer2")
    LayerStack([a, b, c])  # zero parent is accepted at any height
    with pytest.raises(StackError, match="parent_uuid AAAAAAAA"):
        LayerStack([a, c, b])
    LayerStack([a, c, b], check_chain=False)
    with pytest.raises(StackError, match=r"^layer1: parent_uuid AAAAAAAA-0000-0000-0000-000000000000 is the uuid "
                       r"of layer0, which is above it: give the layers bottom first$"):
        LayerStack([b, a])  # wrong order
    with pytest.raises(StackError, match=r"^layer1: parent_uuid AAAAAAAA-0000-0000-0000-000000000000, but it is "
                       r"the bottom layer: its lower layer is missing$"):
        LayerStack([b])  # an upper layer alone
    with pytest.raises(StackError, match=r"^layer1: parent_uuid AAAAAAAA.* is the uuid of layer0, which is not "
                       r"directly below it \(layer2 is\)"):
        LayerStack([a, c, b])
    LayerStack([b, a], check_chain=False)
    LayerStack([c, a, b])  # zero parents anywhere (upstream's layer 0 on the base layer)
    for offset, length in ((0, 16 * 512), (100, 1000), (5 * 512 + 7, 20 * 512), (30 * 512, 512), (9, 0)):
        assert b.read(offset, length) == LayerStack([b], check_chain=False).read(offset, length)
    with pytest.raises(StackError, match="at most 255"):
        LayerStack([a] * 256, check_chain=False)


def test_lsmt_reader_does_not_import_the_stack() -> None:
    """stack imports lsmt_reader; the reverse made an import cycle (docs/architecture.md)."""
    import ast
    from pathlib import Path

    import overlaybd_provider.formats.lsmt_reader as mod

    tree = ast.parse((Path(mod.__file__).parent / "lsmt_reader.py").read_text())  # the source, also when compiled
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "overlaybd_provider.formats.stack" not in imported
