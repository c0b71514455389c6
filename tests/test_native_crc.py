"""The compiled CRC-32C (bitkv/native/crc32c.c) against crcmod, the reference: both the SSE4.2
path and the table path (forced with BITKV_NO_HW_CRC=1 in a child process)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from bitkv.crc import crc32c_reference

native = pytest.importorskip("bitkv._native", reason="the extension is not built")


def test_agrees_with_crcmod_on_every_length_and_alignment() -> None:
    rng = random.Random(5)
    for length in [*range(70), 127, 128, 129, 4095, 4096, 65535, 65536, 100_003]:
        data = rng.randbytes(length + 8)
        for start in range(8):
            chunk = data[start : start + length]
            assert native.crc32c(chunk) == crc32c_reference(chunk), (length, start)


def test_extends_a_crc_over_parts() -> None:
    data = random.Random(6).randbytes(10_000)
    for cut in (0, 1, 7, 4096, 9_999, 10_000):
        assert native.crc32c(data[cut:], native.crc32c(data[:cut])) == crc32c_reference(data)


def test_takes_any_buffer_and_rejects_bad_arguments() -> None:
    assert native.crc32c(bytearray(b"abc")) == crc32c_reference(b"abc")
    assert native.crc32c(memoryview(b"xabc")[1:]) == crc32c_reference(b"abc")
    with pytest.raises(TypeError):
        native.crc32c("text")
    with pytest.raises(OverflowError):
        native.crc32c(b"", 2**32)
    with pytest.raises(TypeError):
        native.crc32c()


def test_the_table_path_agrees_too() -> None:
    code = ("import random, bitkv._native as n\n"
            "from bitkv.crc import crc32c_reference as ref\n"
            "assert n.CRC_IMPLEMENTATION == 'software', n.CRC_IMPLEMENTATION\n"
            "r = random.Random(7)\n"
            "for L in range(300):\n"
            "    d = r.randbytes(L + 3)\n"
            "    assert n.crc32c(d[3:]) == ref(d[3:]), L\n")
    env = dict(os.environ, BITKV_NO_HW_CRC="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
