"""CRC-32C: the crcmod reference and the accelerated crc32c package must agree byte for byte."""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitkv import crc, record

# RFC 3720 (iSCSI) appendix B.4 and the classic check value.
KNOWN = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize(("data", "expected"), KNOWN)
def test_reference_matches_published_vectors(data, expected):
    assert crc.crc32c_reference(data) == expected


@pytest.mark.parametrize(("data", "expected"), KNOWN)
def test_selected_implementation_matches_published_vectors(data, expected):
    assert crc.crc32c(data) == expected


def test_accelerated_implementation_is_used_when_installed():
    if importlib.util.find_spec("crc32c") is None:
        assert crc.IMPLEMENTATION == "crcmod"
    else:
        assert crc.IMPLEMENTATION == "crc32c"
        assert crc.crc32c is not crc.crc32c_reference


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=5000))
def test_implementations_agree(data):
    assert crc.crc32c(data) == crc.crc32c_reference(data)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1, max_size=500), lo=st.integers(0, 499), hi=st.integers(0, 500))
def test_implementations_agree_on_bytearray_and_memoryview_slices(data, lo, hi):
    view = memoryview(data)[lo:hi]
    expected = crc.crc32c_reference(bytes(view))
    assert crc.crc32c(view) == expected
    assert crc.crc32c(bytearray(view)) == expected


def test_implementations_agree_on_large_buffers():
    for size in (4095, 4096, 4097, 65536 + 3, 1 << 20):
        data = os.urandom(size)
        assert crc.crc32c(data) == crc.crc32c_reference(data), size


def test_record_crc_is_crc32c_of_everything_after_the_crc_field():
    data = record.encode(b"key", b"value", 5, 9)
    stored = int.from_bytes(data[:4], "little")
    assert stored == crc.crc32c_reference(data[4:])


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_extend_continues_a_crc(a, b):
    assert crc.crc32c_extend(crc.crc32c(a), b) == crc.crc32c(a + b)
    assert crc._reference_extend(b, crc.crc32c_reference(a)) == crc.crc32c_reference(a + b)
