"""Backups (Store.backup, bitkv backup): complete, consistent, hot, and never harmful.

Every backup taken here is checked the way a user would: it opens (read-only and for
writing), ``bitkv.check`` calls it healthy, and it holds the writes acknowledged before the
backup started.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bitkv
from bitkv import backup as backup_mod
from bitkv import manifest
from bitkv import segment as seg_mod
from bitkv.crashtest.recording import POLICIES, DiskModel, RecordingFileIO, write_state
from bitkv.fileio import FileIO


def contents(path: str | Path, **options: object) -> dict[bytes, bytes]:
    with bitkv.open(path, readonly=True, **options) as db:  # type: ignore[arg-type]
        return {k: db[k] for k in db}


def assert_sound(path: str | Path, **options: object) -> dict[bytes, bytes]:
    """The backup is a healthy store that opens read-only and for writing; its contents."""
    report = bitkv.check(path)
    assert report.healthy, report.issues
    got = contents(path, **options)
    with bitkv.open(path, **options) as db:  # type: ignore[arg-type]
        assert {k: db[k] for k in db} == got
    assert bitkv.check(path).healthy
    return got


def fill(db: bitkv.Store, start: int, stop: int, tag: bytes = b"v") -> dict[bytes, bytes]:
    written = {}
    for i in range(start, stop):
        key, value = b"key:%05d" % i, tag + b"-%05d" % i + b"." * 60
        db.put(key, value)
        written[key] = value
    return written


def test_backup_is_a_complete_store(tmp_path: Path) -> None:
    src = tmp_path / "store"
    with bitkv.open(src, max_segment_size=4096) as db:
        expected = fill(db, 0, 300)
        db.delete(b"key:00007")
        del expected[b"key:00007"]
        db.put(b"ttl", b"x", ttl=3600)
        expected[b"ttl"] = b"x"
        report = db.backup(tmp_path / "bk")
        assert report.segments > 3 and report.linked >= 1 and report.copied >= 1
        assert report.last_seq == db.last_seq
        fill(db, 300, 320, b"after")  # not in the backup
    names = set(os.listdir(tmp_path / "bk"))
    assert {"BITKV", "MANIFEST", "DURABLE", "BACKUP"} <= names
    assert assert_sound(tmp_path / "bk") == expected
    note = json.loads((tmp_path / "bk" / "BACKUP").read_text())
    assert note["complete"] is True and note["source"] == os.path.realpath(src)


def test_sealed_segments_are_hard_links_unless_told(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        fill(db, 0, 200)
        linked = db.backup(tmp_path / "linked")
        copied = db.backup(tmp_path / "copied", link=False)
        active = db.stats()["active_segment"]
    assert linked.linked > 0 and copied.linked == 0
    sealed = [n for n in os.listdir(tmp_path / "s")
              if n.endswith(".data") and n != seg_mod.data_name(active)]
    for name in sealed:
        src = os.stat(tmp_path / "s" / name)
        assert os.stat(tmp_path / "linked" / name).st_ino == src.st_ino
        assert os.stat(tmp_path / "copied" / name).st_ino != src.st_ino
    # The active segment is always a copy: the store keeps appending to its own.
    name = seg_mod.data_name(active)
    assert os.stat(tmp_path / "linked" / name).st_ino != os.stat(tmp_path / "s" / name).st_ino
    assert assert_sound(tmp_path / "linked") == assert_sound(tmp_path / "copied")


def test_active_segment_is_copied_to_its_data_end_not_its_file_size(tmp_path: Path) -> None:
    # A preallocated active segment has zeros past its data: the backup must not take them
    # (its copy would end in a torn tail, and a DURABLE mark past the data refuses to open).
    with bitkv.open(tmp_path / "s", auto_compact=False) as db:
        expected = fill(db, 0, 50)
        active = tmp_path / "s" / seg_mod.data_name(db.stats()["active_segment"])
        data_end = seg_mod.HEADER_SIZE + sum(28 + len(k) + len(v) for k, v in expected.items())
        # (The store may preallocate the file already; either way, zeros past the data.)
        os.truncate(active, max(active.stat().st_size, data_end) + 65536)
        db.backup(tmp_path / "bk")
    copy = tmp_path / "bk" / active.name
    assert copy.stat().st_size == data_end
    assert assert_sound(tmp_path / "bk") == expected


def test_readonly_view_backs_up_its_committed_end(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s", auto_compact=False) as db:
        expected = fill(db, 0, 40)
        active = tmp_path / "s" / seg_mod.data_name(db.stats()["active_segment"])
        with bitkv.open(tmp_path / "s", readonly=True) as reader:
            # Half a record at the end: a write in flight (or a preallocated zero tail).
            with open(active, "ab") as fh:
                fh.write(b"\x07" * 20 + bytes(4096))
            reader.backup(tmp_path / "bk")
    assert assert_sound(tmp_path / "bk") == expected


def test_encrypted_store_backup_keeps_the_key_check_not_the_key(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    key = bytes(range(32))
    with bitkv.open(tmp_path / "s", encryption_key=key) as db:
        db.put(b"secret", b"value")
        db.backup(tmp_path / "bk")
    assert (tmp_path / "bk" / "ENCRYPTION").read_bytes() == \
        (tmp_path / "s" / "ENCRYPTION").read_bytes()
    assert key not in b"".join(p.read_bytes() for p in (tmp_path / "bk").iterdir())
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(tmp_path / "bk", readonly=True)
    assert assert_sound(tmp_path / "bk", encryption_key=key) == {b"secret": b"value"}


# -- the destination ------------------------------------------------------------------------------


def test_refuses_a_destination_that_is_not_a_backup_and_changes_nothing(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"v")
        with bitkv.open(tmp_path / "a-store") as another:
            another.put(b"mine", b"1")
        cases = {
            other: "not empty and is not a bitkv backup",
            a_file: "not a directory",
            link: "symbolic link",
            tmp_path / "s" / "inside": "inside the store",
            tmp_path / "s": "inside the store",
            tmp_path: "inside the destination",
            tmp_path / "a-store": "already a bitkv store",
            tmp_path / "missing" / "child": "parent directory",
        }
        for dest, why in cases.items():
            with pytest.raises(bitkv.BackupError, match=why):
                db.backup(dest)
        with pytest.raises(bitkv.BackupError, match="not a bitkv backup"):
            db.backup(other, incremental=True)
        with pytest.raises(bitkv.BackupError, match="a bitkv store, not a backup"):
            db.backup(tmp_path / "a-store", incremental=True)
        with pytest.raises(bitkv.BackupError, match="does not exist"):
            db.backup(tmp_path / "nothing-yet", incremental=True)
        db.put(b"k2", b"v2")  # the store is unharmed
    assert sorted(os.listdir(other)) == ["notes.txt"]
    assert a_file.read_text() == "x" and os.listdir(real) == []
    assert contents(tmp_path / "a-store") == {b"mine": b"1"}
    assert not (tmp_path / "s" / "inside").exists()
    assert not (tmp_path / "nothing-yet").exists()


def test_a_complete_backup_is_never_overwritten_by_a_full_one(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"1")
        db.backup(tmp_path / "bk")
        db.put(b"k", b"2")
        with pytest.raises(bitkv.BackupError, match="already a backup"):
            db.backup(tmp_path / "bk")
    assert contents(tmp_path / "bk") == {b"k": b"1"}


def test_an_empty_existing_directory_is_a_fine_destination(tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"1")
        db.backup(tmp_path / "bk")
    assert assert_sound(tmp_path / "bk") == {b"k": b"1"}


class FailingIO(FileIO):
    """Fails writes (ENOSPC) or fsyncs (EIO) of files created under ``prefix`` only."""

    def __init__(self, prefix: str, fail: str, after_bytes: int = 0) -> None:
        self.prefix = prefix
        self.fail = fail
        self.after_bytes = after_bytes
        self.written = 0
        self.fds: set[int] = set()
        self.fsyncs = 0

    def create(self, path: str) -> int:
        fd = super().create(path)
        if path.startswith(self.prefix):
            self.fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.discard(fd)
        super().close(fd)

    def write(self, fd: int, data: bytes) -> None:
        if fd in self.fds and self.fail == "write":
            self.written += len(data)
            if self.written > self.after_bytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if fd in self.fds and self.fail == "fsync":
            self.fsyncs += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)


@pytest.mark.parametrize("fail", ["write", "fsync"])
def test_full_disk_or_failed_fsync_fails_the_backup_not_the_store(tmp_path: Path,
                                                                 fail: str) -> None:
    dest = tmp_path / "bk"
    io = FailingIO(str(dest), fail, after_bytes=5000)
    with bitkv.open(tmp_path / "s", fileio=io, max_segment_size=4096, sync="always") as db:
        expected = fill(db, 0, 200)
        message = "No space left on device" if fail == "write" else "Input/output error"
        with pytest.raises(bitkv.BackupError, match=message):
            db.backup(dest, link=False)
        assert not dest.exists()  # what it wrote (and the directory it made) is gone
        # A failed fsync of the backup's files is final for the backup only.
        expected.update(fill(db, 200, 210))
        db.sync()
        assert db.stats()["last_sync_error"] is None
    assert contents(tmp_path / "s") == expected


def test_interrupted_full_backup_never_looks_complete_and_is_cleared(tmp_path: Path,
                                                                    monkeypatch) -> None:
    dest = tmp_path / "bk"
    dest.mkdir()  # (a directory the backup made is removed on the way out, this is not)
    with bitkv.open(tmp_path / "s", max_segment_size=4096) as db:
        expected = fill(db, 0, 100)

        def crash(*args: object) -> None:
            raise KeyboardInterrupt  # stands for the process dying here

        monkeypatch.setattr(backup_mod._Writer, "remove_created", lambda self: None)
        monkeypatch.setattr(backup_mod.recovery, "create_store", crash)
        with pytest.raises(KeyboardInterrupt):
            db.backup(dest)
        monkeypatch.undo()
        assert "BITKV" not in os.listdir(dest) and "MANIFEST" in os.listdir(dest)
        with pytest.raises(bitkv.NotAStoreError):
            bitkv.open(dest, readonly=True)
        with pytest.raises(bitkv.NotAStoreError):
            bitkv.open(dest)  # a writable open never takes it over either
        db.backup(dest)  # a new backup clears the interrupted one
    assert assert_sound(dest) == expected


# -- incremental ----------------------------------------------------------------------------------


def test_incremental_copies_only_what_the_backup_lacks(tmp_path: Path) -> None:
    dest = tmp_path / "bk"
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        expected = fill(db, 0, 200)
        first = db.backup(dest)
        expected.update(fill(db, 200, 260, b"second"))
        second = db.backup(dest, incremental=True)
        assert second.reused == first.segments - 1  # every sealed segment; the open one again
        assert second.copied + second.linked == second.segments - second.reused
        assert assert_sound(dest) == expected
        db.delete(b"key:00003")
        del expected[b"key:00003"]
        db.compact()
        expected.update(fill(db, 260, 270, b"third"))
        third = db.backup(dest, incremental=True)
        assert third.removed > 0
        listed = {e.segment_id for e in manifest.read(str(dest), FileIO()).entries}
        on_disk = set(seg_mod.list_segment_ids(os.listdir(dest)))
        assert on_disk == listed  # what the store no longer has is gone
    assert assert_sound(dest) == expected


def test_incremental_refuses_a_backup_of_another_store(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "other") as other:
        other.put(b"o", b"1")
        other.backup(tmp_path / "bk")
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"v")
        with pytest.raises(bitkv.BackupError, match="not a backup of the store"):
            db.backup(tmp_path / "bk", incremental=True)
    assert assert_sound(tmp_path / "bk") == {b"o": b"1"}


def test_incremental_refuses_a_backup_written_to_since(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"v")
        db.backup(tmp_path / "bk")
        with bitkv.open(tmp_path / "bk") as restored:
            restored.put(b"only-in-the-backup", b"!")
        db.put(b"k2", b"v2")
        with pytest.raises(bitkv.BackupError, match="changed since it was taken"):
            db.backup(tmp_path / "bk", incremental=True)
    assert contents(tmp_path / "bk")[b"only-in-the-backup"] == b"!"


def test_incremental_refuses_a_backup_newer_than_the_store(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"1")
        db.backup(tmp_path / "old")
        db.put(b"k", b"2")
        db.backup(tmp_path / "new")
    # The store is restored from the older backup: the newer one holds writes it lacks.
    for name in os.listdir(tmp_path / "s"):
        os.unlink(tmp_path / "s" / name)
    os.rmdir(tmp_path / "s")
    os.rename(tmp_path / "old", tmp_path / "s")
    with bitkv.open(tmp_path / "s") as db, \
            pytest.raises(bitkv.BackupError, match="newer than the store"):
        db.backup(tmp_path / "new", incremental=True)
    assert contents(tmp_path / "new") == {b"k": b"2"}


def _rotate_a_few_times(db: bitkv.Store, tag: bytes) -> dict[bytes, bytes]:
    return fill(db, 0, 150, tag)  # 4 KiB segments: several rotations, new append segments


def test_incremental_interrupted_before_its_commit_opens_as_the_older_backup(
        tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "bk"
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        older = fill(db, 0, 100, b"old")
        db.backup(dest)
        newer = {**older, **_rotate_a_few_times(db, b"new")}

        def crash(*args: object) -> None:
            raise KeyboardInterrupt  # the process dies before the new MANIFEST is in place

        monkeypatch.setattr(backup_mod._Writer, "remove_created", lambda self: None)
        monkeypatch.setattr(backup_mod.manifest, "write", crash)
        with pytest.raises(KeyboardInterrupt):
            db.backup(dest, incremental=True)
        monkeypatch.undo()
        # New append segments, newer than the backup's open one, lie there unlisted: they
        # must not make the older backup refuse to open.
        listed = {e.segment_id for e in manifest.read(str(dest), FileIO()).entries}
        assert set(seg_mod.list_segment_ids(os.listdir(dest))) - listed
        assert contents(dest) == older
        # The next incremental backup finishes the job.
        db.backup(dest, incremental=True)
    assert assert_sound(dest) == newer


def test_incremental_interrupted_after_its_commit_opens_as_the_newer_backup(
        tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "bk"
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        older = fill(db, 0, 100, b"old")
        db.backup(dest)
        newer = {**older, **_rotate_a_few_times(db, b"new")}
        # The process dies right after the MANIFEST: headers not yet written, nothing removed.
        monkeypatch.setattr(backup_mod, "_finish_incremental", lambda *args: None)
        db.backup(dest, incremental=True)
        monkeypatch.undo()
        assert contents(dest) == newer
        newest = {k: v for k, v in fill(db, 0, 10, b"newest").items()}
        db.backup(dest, incremental=True)
    assert assert_sound(dest) == {**newer, **newest}


def test_readonly_pin_retries_when_segments_vanish_and_gives_up_clearly(
        tmp_path: Path) -> None:
    calls = []

    def vanishing() -> backup_mod.Pin:
        calls.append(1)
        raise backup_mod.ViewChanged("000001.data")

    with pytest.raises(bitkv.BackupError, match="kept changing"):
        backup_mod.run(str(tmp_path / "s"), tmp_path / "bk", vanishing, io=FileIO())
    assert len(calls) == backup_mod.PIN_ATTEMPTS
    assert not (tmp_path / "bk").exists()  # nothing of it is left

    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        expected = fill(db, 0, 100)
        with bitkv.open(tmp_path / "s", readonly=True) as reader:
            stale = [backup_mod.SegmentState(s.id, s.header, s.size, False, s.size)
                     for s in reader._table.segments]  # the view as it was
            db.put(b"key:00001", b"changed")
            expected[b"key:00001"] = b"changed"
            db.compact()  # removes the segments the reader's view holds
            with pytest.raises(backup_mod.ViewChanged):
                backup_mod.pin(str(tmp_path / "s"), FileIO(), stale, 0)
            reader.backup(tmp_path / "bk")  # refreshes, pins what is there now
    assert assert_sound(tmp_path / "bk") == expected


# -- hot: while writers write ---------------------------------------------------------------------


class Writer(threading.Thread):
    """Writes and deletes its own keys; remembers, per key, every operation it issued (its
    index in the key's history; None for a delete) and how many were acknowledged."""

    def __init__(self, db: bitkv.Store, n: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.db, self.n, self.stop = db, n, stop
        self.history: dict[bytes, list[bytes | None]] = {}
        self.acked: dict[bytes, int] = {}  # key -> number of its operations acknowledged
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                key = b"w%d:%03d" % (self.n, i % 97)
                ops = self.history.setdefault(key, [])
                if i % 5 == 4:
                    ops.append(None)
                    self.db.delete(key)
                else:
                    value = key + b"=%d" % len(ops) + b"#" * (i % 200)
                    ops.append(value)
                    self.db.put(key, value)
                with self.lock:
                    self.acked[key] = len(ops)
                i += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def acknowledged(self) -> dict[bytes, int]:
        with self.lock:
            return dict(self.acked)


class BatchWriter(threading.Thread):
    """Writes the same counter into five keys in one batch, again and again: a consistent
    snapshot shows all five equal."""

    def __init__(self, db: bitkv.Store, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.db, self.stop = db, stop
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                with self.db.batch() as b:
                    for j in range(5):
                        b.put(b"batch:%d" % j, b"%d" % n)
                self.acked = n
        except BaseException as exc:
            self.error = exc


def check_holds(got: dict[bytes, bytes], writers: list[Writer],
                acked_before: list[dict[bytes, int]], batch_acked: int) -> None:
    for w, before in zip(writers, acked_before, strict=True):
        for key, ops in list(w.history.items()):
            floor = before.get(key, 0)  # operations acknowledged before the backup began
            value = got.get(key)
            allowed = ops[floor - 1:] if floor else [None, *ops]
            assert value in allowed, (key, value, floor, len(ops))
    batch = {got.get(b"batch:%d" % j) for j in range(5)}
    assert len(batch) == 1, batch  # one batch, whole
    (value,) = batch
    assert value is not None
    assert int(value) >= batch_acked


def test_backups_while_four_threads_write_delete_and_compact(tmp_path: Path) -> None:
    """The issue's definition of done: backups taken while 4 threads write and deletes and
    compaction run each open, pass check, and hold every write acknowledged before they
    started."""
    src = tmp_path / "s"
    stop = threading.Event()
    with bitkv.open(src, max_segment_size=8192, compact_min_dead_bytes=4096) as db:
        writers = [Writer(db, n, stop) for n in range(3)]
        batcher = BatchWriter(db, stop)
        compactions = []

        def compact_loop() -> None:
            while not stop.is_set():
                compactions.append(db.compact()["segments_in"])
                time.sleep(0.01)

        compactor = threading.Thread(target=compact_loop, daemon=True)
        threads: list[threading.Thread] = [*writers, batcher, compactor]
        for t in threads:
            t.start()
        taken = []
        try:
            for round_ in range(6):
                # At least one compaction between two backups, however loaded the machine.
                ran = len(compactions)
                deadline = time.monotonic() + 60
                while len(compactions) == ran and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.05)
                before = [w.acknowledged() for w in writers]
                batch_before = batcher.acked
                full = tmp_path / f"full-{round_}"
                db.backup(full, link=round_ % 2 == 0)
                db.backup(tmp_path / "incr", incremental=round_ > 0)
                taken.append((full, before, batch_before))
                taken_incr = contents(tmp_path / "incr")
                check_holds(taken_incr, writers, before, batch_before)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for t in (*writers, batcher):
            assert t.error is None, t.error  # type: ignore[attr-defined]
        assert len(compactions) >= 6 and sum(compactions) > 0, compactions
    for full, before, batch_before in taken:
        check_holds(assert_sound(full), writers, before, batch_before)
    assert_sound(tmp_path / "incr")


def test_incremental_into_a_backup_opened_for_writing_is_refused(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"k", b"v")
        db.backup(tmp_path / "bk")
        with bitkv.open(tmp_path / "bk"), \
                pytest.raises(bitkv.BackupError, match="in use"):
            db.backup(tmp_path / "bk", incremental=True)
    assert assert_sound(tmp_path / "bk") == {b"k": b"v"}


# Runs one incremental backup of a store (read-only, as the command does) and stops at the
# phase named by argv[3], where the test kills it: after the first segment copied, just
# before the commit (every new file written), just after it (headers not yet written,
# nothing removed).
KILLED_BACKUP = """
import sys, time, bitkv
from bitkv import backup as bm
phase = sys.argv[3]
def stop(name):
    if name == phase:
        print(name, flush=True)
        time.sleep(60)  # killed here
copy, commit = bm._Writer.copy_segment, bm.manifest.write
def copy_then_stop(self, *a, **k):
    copy(self, *a, **k)
    stop("copying")
def stop_then_commit(*a):
    stop("before-commit")
    commit(*a)
    stop("after-commit")
bm._Writer.copy_segment, bm.manifest.write = copy_then_stop, stop_then_commit
with bitkv.open(sys.argv[1], readonly=True) as db:
    db.backup(sys.argv[2], incremental=True)
print("done", flush=True)
"""
PHASES = ("copying", "before-commit", "after-commit")


def test_incremental_backups_killed_anywhere_open_as_the_older_or_the_newer(
        tmp_path: Path) -> None:
    src, dest = tmp_path / "s", tmp_path / "bk"
    with bitkv.open(src, max_segment_size=4096, auto_compact=False) as db:
        older = fill(db, 0, 100, b"round0")
        db.backup(dest)
    for round_, phase in enumerate(PHASES * 2, start=1):
        with bitkv.open(src, max_segment_size=4096, auto_compact=False) as db:
            if round_ > len(PHASES):
                db.compact()  # the second time around, the backup also drops segments
            newer = {**older, **fill(db, 0, 250, b"round%d" % round_)}
        proc = subprocess.Popen([sys.executable, "-c", KILLED_BACKUP, str(src), str(dest),
                                 phase], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == phase + "\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Left as a kill left it: it opens (read-only and for writing: a copy is used, so the
        # backup itself stays untouched) as the older backup or the newer, never a mix.
        expected = newer if phase == "after-commit" else older
        assert contents(dest) == expected, phase
        shutil.copytree(dest, tmp_path / f"opened-{round_}")
        with bitkv.open(tmp_path / f"opened-{round_}") as copy:
            assert dict(copy.items()) == expected
        # The next incremental backup cleans up and completes.
        with bitkv.open(src, readonly=True) as reader:
            reader.backup(dest, incremental=True)
        assert assert_sound_readonly(dest) == newer
        assert set(seg_mod.list_segment_ids(os.listdir(dest))) == {
            e.segment_id for e in manifest.read(str(dest), FileIO()).entries}
        older = newer


def assert_sound_readonly(path: Path) -> dict[bytes, bytes]:
    """As assert_sound, without the writable open (which would end incremental backups)."""
    report = bitkv.check(path)
    assert report.healthy, report.issues
    return contents(path)


def test_incremental_refuses_a_store_created_again_at_the_same_path(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s") as db:
        db.put(b"old", b"1")
        db.backup(tmp_path / "bk")
    shutil.rmtree(tmp_path / "s")
    with bitkv.open(tmp_path / "s") as db:  # may get the same inode numbers back
        for i in range(5):
            db.put(b"new%d" % i, b"2")
        with pytest.raises(bitkv.BackupError, match="not a backup of the store"):
            db.backup(tmp_path / "bk", incremental=True)
    assert contents(tmp_path / "bk") == {b"old": b"1"}


def test_incremental_takes_hints_the_store_wrote_since(tmp_path: Path) -> None:
    dest = tmp_path / "bk"
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        expected = fill(db, 0, 100)
        db.backup(dest)
        before = {n for n in os.listdir(dest) if n.endswith(".hint")}
        db._write_seal_hints(blocking=True)  # what the background thread does
        report = db.backup(dest, incremental=True)
        assert report.reused > 0
    after = {n for n in os.listdir(dest) if n.endswith(".hint")}
    assert after - before
    with bitkv.open(dest, readonly=True) as db:
        assert db.recovery_report.segments_from_hints >= report.reused
    assert assert_sound_readonly(dest) == expected


# A pin holds one descriptor per segment: with a soft limit too low for that, the backup
# raises it (toward the hard one); with a hard limit too low, it says so and writes nothing.
FEW_DESCRIPTORS = """
import os, resource, sys, bitkv
with bitkv.open(sys.argv[1], readonly=True) as db:
    in_use = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = in_use + 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit if sys.argv[3] == "hard" else hard))
    try:
        report = db.backup(sys.argv[2], link=False)
    except bitkv.BackupError as exc:
        print(exc)
    else:
        print(report.segments)
"""


def test_a_store_of_more_segments_than_descriptors_backs_up(tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        expected = fill(db, 0, 4000)
        segments = db.stats()["segments"]
    assert segments > 100  # far more than the 16 descriptors left free

    def backup(dest: str, limit: str) -> str:
        done = subprocess.run([sys.executable, "-c", FEW_DESCRIPTORS, str(tmp_path / "s"),
                               str(tmp_path / dest), limit], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert backup("bk", "soft") == str(segments)
    assert assert_sound_readonly(tmp_path / "bk") == expected
    refused = backup("refused", "hard")
    assert "more open files" in refused and "Nothing was written" in refused
    assert not (tmp_path / "refused").exists()


def test_incremental_backup_power_cut_anywhere_opens_as_the_older_or_the_newer(
        tmp_path: Path) -> None:
    """Every state a power loss may leave of the backup directory, at every step of an
    incremental backup (the crash harness's disk model: unsynced bytes lost, torn or kept,
    directory changes since the last directory fsync reverted or partly kept), opens as the
    older backup or the newer one."""
    src, dest = tmp_path / "s", tmp_path / "bk"
    with bitkv.open(src, max_segment_size=4096, auto_compact=False) as db:
        older = fill(db, 0, 100, b"old")
        db.backup(dest, link=False)
        db.delete(b"key:00001")
        db.compact()  # the backup will drop segments too
        newer = fill(db, 0, 150, b"new")  # every key of the older backup, and more
    recorder = RecordingFileIO(str(dest))
    with bitkv.open(src, readonly=True, fileio=recorder) as reader:
        reader.backup(dest, incremental=True, link=False)  # (links are not recorded)
    assert contents(dest) == newer
    model = DiskModel(recorder.initial)
    rng = random.Random(16)
    seen = {"older": 0, "newer": 0}
    for i, event in enumerate(recorder.events):
        model.apply(event)
        # The policies with a random choice of directory changes get several draws.
        for n, policy in enumerate([*POLICIES, "metadata", "metadata", "reorder", "reorder"]):
            files, how = model.crash_state(rng, policy)
            state = tmp_path / f"state-{i}-{n}"
            write_state(str(state), files)
            got = contents(state)
            assert got in (older, newer), (i, event[:2], policy, how)
            seen["older" if got == older else "newer"] += 1
            shutil.rmtree(state)
    assert seen["older"] and seen["newer"]


def test_full_backup_power_cut_anywhere_is_no_store_or_the_whole_backup(
        tmp_path: Path) -> None:
    src, dest = tmp_path / "s", tmp_path / "bk"
    with bitkv.open(src, max_segment_size=4096, auto_compact=False) as db:
        expected = fill(db, 0, 150)
    recorder = RecordingFileIO(str(dest))
    with bitkv.open(src, readonly=True, fileio=recorder) as reader:
        reader.backup(dest, link=False)  # (links are not recorded)
    model = DiskModel(recorder.initial)
    rng = random.Random(16)
    complete = 0
    for i, event in enumerate(recorder.events):
        model.apply(event)
        for n, policy in enumerate([*POLICIES, "metadata", "metadata", "reorder", "reorder"]):
            files, how = model.crash_state(rng, policy)
            state = tmp_path / f"state-{i}-{n}"
            write_state(str(state), files)
            if "BITKV" not in files:  # empty, or files but no marker: no store either way
                with pytest.raises((bitkv.NotAStoreError, bitkv.StoreNotFoundError)):
                    bitkv.open(state, readonly=True)
            else:
                complete += 1
                assert contents(state) == expected, (i, event[:2], policy, how)
                assert bitkv.check(state).healthy, (i, event[:2], policy, how)
            shutil.rmtree(state)
    assert complete


def test_progress_reaches_the_total_whether_segments_are_linked_copied_or_kept(
        tmp_path: Path) -> None:
    with bitkv.open(tmp_path / "s", max_segment_size=4096, auto_compact=False) as db:
        fill(db, 0, 200)
        for kwargs in ({}, {"link": False}, {"incremental": True}):
            calls: list[tuple[int, int]] = []
            dest = tmp_path / ("copied" if kwargs.get("link") is False else "bk")
            db.backup(dest, progress=lambda done, total, calls=calls: calls.append(
                (done, total)), **kwargs)  # type: ignore[arg-type]
            assert calls and calls[-1][0] == calls[-1][1] > 0, kwargs
            assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_a_readonly_stores_last_seq_follows_its_writer_on_refresh(tmp_path: Path) -> None:
    # Regression: refresh() indexed the writer's new records but left last_seq where it was
    # at open (and a read-only backup's report with it).
    with bitkv.open(tmp_path / "s") as writer, \
            bitkv.open(tmp_path / "s", readonly=True) as reader:
        writer.put(b"a", b"1")
        reader.refresh()
        assert reader.last_seq == writer.last_seq == 1
        writer.put(b"b", b"2")
        writer.put(b"c", b"3")
        reader.refresh()  # extends the index
        assert reader.last_seq == writer.last_seq == 3
        writer.compact()
        writer.put(b"d", b"4")
        reader.refresh()  # reloads after a compaction
        assert reader.last_seq == writer.last_seq == 4
        assert reader.backup(tmp_path / "bk").last_seq == 4


def test_an_unwritable_destination_is_a_backup_error(tmp_path: Path) -> None:
    class NoMkdir(FileIO):
        def mkdir(self, path: str) -> None:
            if path.endswith("bk"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            super().mkdir(path)

    with bitkv.open(tmp_path / "s", fileio=NoMkdir()) as db, \
            pytest.raises(bitkv.BackupError, match="Permission denied"):
        db.backup(tmp_path / "bk")


def test_incremental_refuses_a_store_restored_from_an_older_copy_and_written_past(
        tmp_path: Path) -> None:
    src = tmp_path / "s"
    with bitkv.open(src, auto_compact=False) as db:
        fill(db, 0, 10, b"a")
        db.backup(tmp_path / "older")
        fill(db, 10, 20, b"b")
        db.backup(tmp_path / "newer")
    shutil.rmtree(src)
    shutil.copytree(tmp_path / "older", src)  # restored from the older copy...
    with bitkv.open(src, auto_compact=False) as db:
        fill(db, 100, 140, b"c")  # ...and written past the newer backup's newest seq
        assert db.last_seq > 20
        with pytest.raises(bitkv.BackupError, match="different histories"):
            db.backup(tmp_path / "newer", incremental=True)
        db.backup(tmp_path / "older", incremental=True)  # its own lineage: fine
    assert len(contents(tmp_path / "newer")) == 20
    assert len(assert_sound_readonly(tmp_path / "older")) == 50
