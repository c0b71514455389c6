"""Issue 11: nothing acknowledged may vanish under I/O errors, failed compactions and damaged,
missing or foreign segment files. Each test injects one fault through the public ``fileio=``
seam (or damages files between opens) and checks what the store promised: every write that
returned survives a reopen, no deleted key comes back, and after a failed fsync the store
refuses every write until it is reopened (PostgreSQL's "fsyncgate")."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
from conftest import newest_segment, segment_files, snapshot_dir

import bitkv
from bitkv import manifest, recovery
from bitkv import segment as seg_mod
from bitkv.fileio import FileIO


class Injected(OSError):
    pass


class FaultyIO(FileIO):
    """Fails the ``at``-th call (counting from 1 once armed) of method ``op`` with ``err``;
    ``match`` restricts the count to calls whose path (or fd's file) contains it."""

    def __init__(self) -> None:
        self.op: str | None = None
        self.at = 0
        self.err = errno.EIO
        self.match = ""
        self.calls = 0
        self.failed = 0
        self.log: list[str] = []
        self._paths: dict[int, str] = {}

    def arm(self, op: str, at: int = 1, err: int = errno.EIO, match: str = "") -> None:
        self.op, self.at, self.err, self.match, self.calls = op, at, err, match, 0

    def _maybe_fail(self, op: str, what: str) -> None:
        self.log.append(f"{op} {os.path.basename(what)}")
        if op != self.op or self.match not in what:
            return
        self.calls += 1
        if self.calls == self.at:
            self.failed += 1
            raise Injected(self.err, f"{os.strerror(self.err)} (injected into {op})")

    def create(self, path: str) -> int:
        fd = super().create(path)
        self._paths[fd] = path
        return fd

    def open_rw(self, path: str) -> int:
        fd = super().open_rw(path)
        self._paths[fd] = path
        return fd

    def write(self, fd: int, data: bytes) -> None:
        self._maybe_fail("write", self._paths.get(fd, ""))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync", self._paths.get(fd, ""))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:  # the active segment's fsync class
        self._maybe_fail("fsync", self._paths.get(fd, ""))
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self._maybe_fail("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self._maybe_fail("rename", dst)
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._maybe_fail("unlink", path)
        super().unlink(path)


SEG = 4096


def _fill(db: bitkv.Store, prefix: bytes, n: int, size: int = 100) -> dict[bytes, bytes]:
    out = {}
    for i in range(n):
        key = prefix + b"%04d" % i
        out[key] = key * (size // len(key) + 1)
        db.put(key, out[key])
    return out


def _contents(path: str) -> dict[bytes, bytes]:
    with bitkv.open(path, readonly=True) as db:
        return dict(db.items())


# -- fsync failures anywhere refuse later writes (item 5) ----------------------------------------


@pytest.mark.parametrize(("sync", "op", "match"), [
    ("never", "fsync", ".data"),      # rotation's fsync of the sealed segment (or the new one)
    ("never", "fsync_dir", ""),       # the new segment's directory entry, or the MANIFEST's
    ("never", "fsync", "MANIFEST"),   # the MANIFEST recording the rotation
    ("always", "fsync", ".data"),
    ("interval", "fsync", ".data"),
])
def test_a_failed_fsync_in_rotation_refuses_every_later_write(db_path, sync, op, match):
    io = FaultyIO()
    db = bitkv.open(db_path, sync=sync, max_segment_size=SEG, fileio=io, auto_compact=False)
    acked = _fill(db, b"before", 5)
    io.arm(op, 1, match=match)
    errors = 0
    for i in range(200):  # several rotations' worth
        key = b"after%04d" % i
        try:
            db.put(key, b"v" * 100)
        except (OSError, bitkv.Error):
            errors += 1
            continue
        assert io.failed == 0 or errors, "a write was acknowledged after a failed fsync"
        acked[key] = b"v" * 100
    assert io.failed == 1 and errors > 0
    with pytest.raises(bitkv.Error, match="refuses writes"):
        db.put(b"late", b"x")
    assert "fsync" in db.stats().get("last_sync_error", "") or db.last_sync_error
    fsyncs_before_close = sum(e.startswith("fsync ") for e in io.log)
    db.close()  # closes without fsyncing again or writing a checkpoint
    assert sum(e.startswith("fsync ") for e in io.log) == fsyncs_before_close
    assert not any(e.startswith("rename") and "hint" in e for e in io.log[-5:])
    got = _contents(db_path)
    for key, value in acked.items():
        assert got.get(key) == value


def test_the_flusher_does_not_retry_a_failed_fsync(db_path):
    io = FaultyIO()
    with bitkv.open(db_path, sync="interval", sync_interval=0.01, fileio=io) as db:
        db.put(b"a", b"1")
        io.arm("fsync", 1, match=".data")
        db.put(b"b", b"2")
        for _ in range(500):
            if db.last_sync_error:
                break
            import time
            time.sleep(0.01)
        assert db.last_sync_error and "injected" in db.last_sync_error
        calls = io.calls
        import time
        time.sleep(0.1)  # many flusher rounds
        assert io.calls == calls, "the flusher fsynced again after a failure"
        with pytest.raises(bitkv.Error, match="refuses writes"):
            db.put(b"c", b"3")
        with pytest.raises(bitkv.Error, match="refuses writes"):
            db.sync()
    assert _contents(db_path) == {b"a": b"1", b"b": b"2"}


# -- compaction: errors before and after its commit point (item 2) -------------------------------


def _churn(path: str, io: FileIO) -> tuple[bitkv.Store, dict[bytes, bytes], set[bytes]]:
    db = bitkv.open(path, sync="always", max_segment_size=SEG, fileio=io, auto_compact=False)
    live = _fill(db, b"k", 60)
    deleted = set()
    for i in range(0, 60, 3):
        key = b"k%04d" % i
        db.delete(key)
        deleted.add(key)
        del live[key]
    for i in range(1, 60, 3):
        key = b"k%04d" % i
        live[key] = b"new" + key
        db.put(key, live[key])
    return db, live, deleted


COMPACTION_FAULTS = [
    ("write", 1, ".data.tmp"),        # an output cannot be written (ENOSPC, say)
    ("fsync", 1, ".data.tmp"),        # an output cannot be made durable
    ("rename", 1, ".data"),           # an output cannot be renamed
    ("fsync_dir", 1, ""),             # the directory after the renames
    ("fsync", 1, "MANIFEST"),         # the commit itself
    ("rename", 1, "MANIFEST"),
    ("fsync_dir", 2, ""),             # the commit's directory fsync: which MANIFEST is unknown
    ("unlink", 1, ".data"),           # removing an input, after the commit
    ("fsync_dir", 3, ""),             # after the inputs went
]


@pytest.mark.parametrize(("op", "at", "match"), COMPACTION_FAULTS)
def test_a_failed_compaction_brings_nothing_back(db_path, op, at, match):
    io = FaultyIO()
    db, live, deleted = _churn(db_path, io)
    db.put(b"tail", b"t")  # the active segment is sealed by compact(): keep one live record
    live[b"tail"] = b"t"
    io.arm(op, at, match=match)
    try:
        db.compact()
        failed = False
    except (OSError, bitkv.Error):
        failed = True
    assert io.failed == 1 or not failed
    if failed and db._log.refusal() is None:
        # Failed before its commit point and nothing durable was in doubt: the store goes on,
        # and a second compaction succeeds.
        db.put(b"more", b"m")
        live[b"more"] = b"m"
        db.compact()
    elif failed:
        with pytest.raises(bitkv.Error, match="refuses writes"):
            db.put(b"more", b"m")
    # Whatever happened, in the running store and after a reopen: the same live keys, and no
    # deleted key or overwritten value back.
    assert {k: db.get(k) for k in live} == live
    assert all(db.get(k) is None for k in deleted)
    db.close()
    for _ in range(2):
        got = _contents(db_path)
        assert got == live
        with bitkv.open(db_path, max_segment_size=SEG) as again:
            again.compact()
    assert _contents(db_path) == live
    assert bitkv.check(db_path).healthy


def test_compaction_never_raises_a_bare_assertion(db_path):
    """dup_segment_assert.py: a copy of the newest segment under a higher id (one record of
    it damaged) made compact() fail with AssertionError after its commit point."""
    with bitkv.open(db_path, auto_compact=False, max_segment_size=1 << 20) as db:
        for i in range(30):
            db.put(b"k%d" % i, b"v1-" + b"x" * 200)
    newest = newest_segment(db_path)
    with open(newest, "rb") as fh:
        data = bytearray(fh.read())
    data[40 + 10 * 237 + 100] ^= 0xFF
    copy = os.path.join(db_path, "000900.data")
    with open(copy, "wb") as fh:
        fh.write(data)
    with bitkv.open(db_path, auto_compact=False, max_segment_size=1 << 20) as db:
        assert [n for n, _why in db.recovery_report.ignored_files] == ["000900.data"]
        for i in range(30):
            db.put(b"k%d" % i, b"v2")
        db.put(b"post", b"x")
        db.compact()
        for i in range(30):
            db.put(b"k%d" % i, b"v3")
        db.compact()
    with bitkv.open(db_path) as db:
        assert {db.get(b"k%d" % i) for i in range(30)} == {b"v3"}
    # Once compaction retired the original, the copy is indistinguishable from a retired
    # input (older than the active segment): an orphan, removed by a writable open.
    assert not os.path.exists(copy)
    assert bitkv.check(db_path).healthy


# -- missing, truncated and foreign segments (items 1, 6) ----------------------------------------


def _compacted_store(path: str) -> dict[bytes, bytes]:
    with bitkv.open(path, max_segment_size=SEG, auto_compact=False) as db:
        live = _fill(db, b"key", 80)
        db.delete(b"key0000")
        del live[b"key0000"]
        db.compact()
        db.put(b"late", b"L")
        live[b"late"] = b"L"
    return live


def _compaction_outputs(path: str) -> list[str]:
    out = []
    for f in segment_files(path):
        with open(f, "rb") as fh:
            if seg_mod.decode_header(fh.read(seg_mod.HEADER_SIZE)).kind == seg_mod.KIND_COMPACTED:
                out.append(f)
    return out


@pytest.mark.parametrize("damage", ["missing", "header-cut", "tail-cut", "emptied"])
def test_a_segment_that_lost_data_is_refused_by_every_open(db_path, damage):
    live = _compacted_store(db_path)
    victim = _compaction_outputs(db_path)[0]
    name = os.path.basename(victim)
    if damage == "missing":
        os.remove(victim)
    else:
        size = {"header-cut": 39, "tail-cut": os.path.getsize(victim) - 1, "emptied": 0}[damage]
        os.truncate(victim, size)
    before = snapshot_dir(db_path)
    for readonly in (False, True):
        with pytest.raises(bitkv.CorruptionError, match=name) as info:
            bitkv.open(db_path, readonly=readonly)
        assert "check --repair" in str(info.value)
    assert snapshot_dir(db_path) == before  # nothing removed, nothing truncated
    report = bitkv.check(db_path)
    assert not report.healthy and report.missing_segments == 1
    [issue] = [i for i in report.errors if i.kind == "missing-segment"]
    assert issue.file == name and "keys at stake" in issue.description
    repaired = bitkv.repair(db_path)
    [(lost_name, _what, keys)] = repaired.lost_segments
    assert lost_name == name and keys
    with bitkv.open(db_path) as db:
        got = dict(db.items())
    assert set(got) <= set(live) and got.items() <= live.items()
    assert set(live) - set(got) <= set(keys)  # only keys the report named are gone
    assert bitkv.check(db_path).healthy


def test_issue_11_truncated_compaction_output_via_the_cli(db_path):
    """The issue's own trial: compact, `truncate -s 39` the output, `bitkv check`, `bitkv put`."""
    _compacted_store(db_path)
    victim = _compaction_outputs(db_path)[0]
    os.truncate(victim, 39)
    cli = [sys.executable, "-m", "bitkv_cli.main", "--dir", db_path]
    check = subprocess.run([*cli, "check"], capture_output=True, text=True)
    assert check.returncode == 1, check.stdout + check.stderr
    assert os.path.basename(victim) in check.stdout + check.stderr
    assert "keys at stake" in check.stdout + check.stderr
    put = subprocess.run([*cli, "put", "k", "v"], capture_output=True, text=True)
    assert put.returncode != 0
    assert os.path.basename(victim) in put.stderr
    assert os.path.getsize(victim) == 39  # not deleted, not "repaired" behind the user's back


def test_a_deleted_sealed_append_segment_is_refused(db_path):
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        _fill(db, b"k", 100)
    sealed = segment_files(db_path)[0]
    os.remove(sealed)
    with pytest.raises(bitkv.CorruptionError, match=os.path.basename(sealed)):
        bitkv.open(db_path)
    assert not bitkv.check(db_path).healthy


def test_leftovers_of_an_uncommitted_compaction_are_removed_and_load_nothing(db_path):
    """Outputs renamed but never listed (a crash before the MANIFEST commit): not loaded (their
    copies are older than what the store says), removed by the next writable open."""
    live = _compacted_store(db_path)
    template = os.path.join(os.path.dirname(db_path), "t")
    shutil.copytree(db_path, template)
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        for key in list(live)[:20]:
            db.delete(key)
            del live[key]
        db.compact()
    # Put the old compaction output back beside the new state, as an unlisted orphan.
    old_out = os.path.basename(_compaction_outputs(template)[0])
    shutil.copy(os.path.join(template, old_out), os.path.join(db_path, "000777.data"))
    assert _contents(db_path) == live  # a reader ignores it
    with bitkv.open(db_path) as db:
        assert "000777.data" in db.recovery_report.removed_orphans
        assert dict(db.items()) == live
    assert not os.path.exists(os.path.join(db_path, "000777.data"))


def test_a_stale_manifest_is_refused_rather_than_dropping_newer_segments(db_path):
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        db.put(b"a", b"1")
    with open(os.path.join(db_path, manifest.MANIFEST_NAME), "rb") as fh:
        old_manifest = fh.read()
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        _fill(db, b"new", 100)  # rotates: newer segments the old MANIFEST does not list
    with open(os.path.join(db_path, manifest.MANIFEST_NAME), "wb") as fh:
        fh.write(old_manifest)  # "an rsync restore" of an old MANIFEST
    before = snapshot_dir(db_path)
    with pytest.raises(bitkv.CorruptionError, match="newer"):
        bitkv.open(db_path)
    assert snapshot_dir(db_path) == before
    assert not bitkv.check(db_path).healthy


def test_a_damaged_manifest_is_refused_and_repair_rebuilds_it(db_path):
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        live = _fill(db, b"k", 50)
    path = os.path.join(db_path, manifest.MANIFEST_NAME)
    with open(path, "r+b") as fh:
        fh.seek(10)
        fh.write(b"\xff")
    with pytest.raises(bitkv.CorruptionError, match="MANIFEST"):
        bitkv.open(db_path)
    assert not bitkv.check(db_path).healthy
    bitkv.repair(db_path)
    assert _contents(db_path) == live


def test_a_missing_manifest_is_refused(db_path):
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        _fill(db, b"k", 5)
    os.remove(os.path.join(db_path, manifest.MANIFEST_NAME))
    with pytest.raises(bitkv.CorruptionError, match="MANIFEST"):
        bitkv.open(db_path)
    assert not bitkv.check(db_path).healthy


def test_a_version_1_store_is_upgraded_by_its_first_writable_open(db_path):
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        live = _fill(db, b"k", 60)
    # What bitkv before the MANIFEST left: no MANIFEST, no DURABLE, marker version 1.
    for name in (manifest.MANIFEST_NAME, "DURABLE"):
        os.remove(os.path.join(db_path, name))
    with open(os.path.join(db_path, recovery.MARKER_NAME), "wb") as fh:
        fh.write(b"bitkv store\nformat-version: 1\n")
    assert _contents(db_path) == live  # a reader opens it as it is, changing nothing
    assert not os.path.exists(os.path.join(db_path, manifest.MANIFEST_NAME))
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        assert db.recovery_report.manifest_created
        assert dict(db.items()) == live
    with open(os.path.join(db_path, recovery.MARKER_NAME), "rb") as fh:
        assert fh.read() == recovery.MARKER_TEXT
    listed = manifest.read(db_path, FileIO())
    assert listed is not None
    assert {seg_mod.data_name(e.segment_id) for e in listed.entries} == {
        os.path.basename(f) for f in segment_files(db_path)}
    assert bitkv.check(db_path).healthy


def test_a_manifest_beside_a_version_1_marker_is_not_trusted(db_path):
    """A crash between the upgrade's MANIFEST and its new marker, after which a bitkv that
    knows only version 1 compacted the store: that MANIFEST lists segments that are gone. The
    marker says version 1, so the next open ignores it and upgrades afresh."""
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        live = _fill(db, b"k", 60)
    with open(os.path.join(db_path, recovery.MARKER_NAME), "wb") as fh:
        fh.write(b"bitkv store\nformat-version: 1\n")
    stale = manifest.read(db_path, FileIO())
    assert stale is not None
    # What the older bitkv did meanwhile: a compaction (its own, without a MANIFEST).
    for name in os.listdir(db_path):
        if name in (manifest.MANIFEST_NAME, "DURABLE"):
            os.remove(os.path.join(db_path, name))
    with bitkv.open(db_path, max_segment_size=SEG, auto_compact=False) as db:
        for key in list(live)[:30]:
            db.delete(key)
            del live[key]
        db.compact()
    with open(os.path.join(db_path, recovery.MARKER_NAME), "wb") as fh:
        fh.write(b"bitkv store\nformat-version: 1\n")
    with open(os.path.join(db_path, manifest.MANIFEST_NAME), "wb") as fh:
        fh.write(stale.encode())  # the leftover of the interrupted upgrade
    assert _contents(db_path) == live
    assert bitkv.check(db_path).healthy  # check ignores the leftover too
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        assert dict(db.items()) == live
    assert manifest.read(db_path, FileIO()) != stale
    assert bitkv.check(db_path).healthy
