"""Shared fixtures and helpers for the engine-core tests.

Helpers that tests import directly (``from conftest import ...``) live here too, because the
test directory has no package of its own.
"""

from __future__ import annotations

import os

import pytest

import bitkv
from bitkv import segment as seg_mod


class FakeClock:
    """A mutable clock to inject with ``bitkv.open(..., clock=clock)``.

    Time starts at a round number of seconds and only moves when a test says so. Values are
    kept to whole or binary-fraction seconds so ``int(t * 1000)`` is exact.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def now_ms(self) -> int:
        return int(self.now * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path (not yet existing) for a fresh store."""
    return str(tmp_path / "db")


@pytest.fixture
def db(db_path):
    """An open store with default settings; closed after the test."""
    store = bitkv.open(db_path)
    try:
        yield store
    finally:
        store.close()


def segment_files(path: str) -> list[str]:
    """Full paths of the store's segment files, oldest id first."""
    names = sorted(n for n in os.listdir(path)
                   if seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) is not None)
    return [os.path.join(path, n) for n in names]


def newest_segment(path: str) -> str:
    files = segment_files(path)
    assert files, f"no segment files in {path}"
    return files[-1]


def flip_bit(path: str, byte_offset: int, bit: int = 0) -> None:
    """Flip one bit of the file at ``path`` in place."""
    with open(path, "r+b") as fh:
        fh.seek(byte_offset)
        (b,) = fh.read(1)
        fh.seek(byte_offset)
        fh.write(bytes([b ^ (1 << bit)]))


def append_bytes(path: str, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def snapshot_dir(path: str) -> dict[str, bytes]:
    """Name -> content of every regular file directly in ``path`` (to prove nothing changed)."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as fh:
                out[name] = fh.read()
        else:
            out[name] = b"<dir>"
    return out
