from __future__ import annotations

from overlaybd_provider.formats.crc import crc32c_raw


def test_check_values_from_spec() -> None:
    assert crc32c_raw(b"123456789") == 0x58E3FA20
    assert crc32c_raw(b"123456789", 100007) == 0x3C9BD4E0
    assert crc32c_raw(b"", 0xDEADBEEF) == 0xDEADBEEF


def test_chaining_equals_one_pass() -> None:
    data = bytes(range(256)) * 3
    assert crc32c_raw(data[100:], crc32c_raw(data[:100])) == crc32c_raw(data)
