"""Shared fixtures and helpers for the engine-core tests.

Helpers that tests import directly (``from conftest import ...``) live here too, because the
test directory has no package of its own.

``fast_db_path`` / ``fast_tempdir`` put stores under ``$BITKV_TEST_TMPDIR`` if set, else under
``/dev/shm`` when it is a writable directory (tmpfs: fsync is free, which keeps the
open/close-heavy recovery, regression and model tests fast), else under pytest's ``tmp_path``.
``db_path`` is always under ``tmp_path``; the sync-mode and lock tests use it so the fsync and
flock paths also run against a real file system.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

import bitkv
from bitkv import record as rec
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


def fast_base() -> str | None:
    """The directory fast temporary stores go under (None: use pytest's tmp_path)."""
    env = os.environ.get("BITKV_TEST_TMPDIR")
    if env:
        return env
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return None


@contextlib.contextmanager
def fast_tempdir(fallback: pathlib.Path | None = None) -> Iterator[pathlib.Path]:
    """A fresh directory under :func:`fast_base`, removed afterwards."""
    base = fast_base()
    if base is None and fallback is not None:
        yield fallback
        return
    path = tempfile.mkdtemp(prefix="bitkv-test-", dir=base)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fast_tmp(tmp_path) -> Iterator[pathlib.Path]:
    with fast_tempdir(tmp_path) as path:
        yield path


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path (not yet existing) for a fresh store, under pytest's ``tmp_path``."""
    return str(tmp_path / "db")


@pytest.fixture
def fast_db_path(fast_tmp) -> str:
    """Like ``db_path`` but under :func:`fast_base` (tmpfs when available). Modules that
    open and close stores in loops override ``db_path`` with it."""
    return str(fast_tmp / "db")


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


def scanned_records(path: str) -> list[tuple[rec.ScannedRecord, bytes]]:
    """(record, stored value) of every intact record, segments in id order."""
    out = []
    for seg in segment_files(path):
        with open(seg, "rb") as fh:
            data = fh.read()
        for r in rec.scan(data, 40):
            if isinstance(r, rec.ScannedRecord):
                out.append((r, data[r.offset + rec.HEADER_SIZE + len(r.key) : r.offset + r.size]))
    return out


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


def forget_fsyncs(path: str) -> None:
    """Make the store at ``path`` look as if its writer died before the fsync that covered
    its last writes: remove the DURABLE mark (docs/format.md), so that recovery takes damage
    at the end of the newest segment for a torn write, which is what a test that tears or
    garbles a tail after a clean close means to simulate. Without this, the close's fsync
    vouches for those bytes and the same damage is (rightly) bit rot in acknowledged writes.
    """
    try:
        os.remove(os.path.join(path, "DURABLE"))
    except FileNotFoundError:
        pass


def tear(segment: str, size: int) -> None:
    """Cut ``segment`` to ``size`` bytes as a crash before its fsync would have."""
    os.truncate(segment, size)
    forget_fsyncs(os.path.dirname(segment))


# -- the two servers of the differential tests (redis_compare.py) --------------------------


@pytest.fixture(scope="module")
def bitkv_server(tmp_path_factory, request):
    """A `bitkv serve` process shared by one test module."""
    from procs import BitkvProcess, free_port

    srv = BitkvProcess(tmp_path_factory.mktemp(request.module.__name__) / "db", free_port())
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, request):
    """A real redis-server shared by one test module (tests using it are ``needs_redis``)."""
    from procs import RedisProcess

    srv = RedisProcess(tmp_path_factory.mktemp(request.module.__name__ + "-real"))
    yield srv
    srv.stop()
