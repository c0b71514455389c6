"""Lock waits and fsync failures are logged (issue 16, point 2): once, at the right level,
with the file.

bitkv never waits for the write lock: a writable open of a locked store fails at once
(LockError), and that refusal is logged at INFO with the LOCK file and the holder. What does
wait is a reader beside a writer: a read-only open (or refresh) whose segments the writer
removed or added meanwhile backs off and loads again (INFO when it then succeeds, WARNING
when it gives up), and a backup's pin of a read-only view does the same (bitkv backup).
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

import bitkv
from bitkv import backup as backup_mod
from bitkv.fileio import FileIO


class FailingSync(FileIO):
    """Fails the next fsync or fdatasync of a file whose path contains ``match`` (once),
    or of a directory with ``directories``."""

    def __init__(self) -> None:
        self.armed = False
        self.directories = False

    def _maybe_fail(self) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "Input/output error (injected)")

    def fsync(self, fd: int) -> None:
        if not self.directories:
            self._maybe_fail()
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if not self.directories:
            self._maybe_fail()
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        if self.directories:
            self._maybe_fail()
        super().fsync_dir(path)


def records(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_a_failed_fsync_is_logged_once_at_error_with_its_file(tmp_path, caplog):
    io = FailingSync()
    path = str(tmp_path / "db")
    with caplog.at_level(logging.INFO, logger="bitkv"):
        db = bitkv.open(path, sync="always", fileio=io)
        db.put(b"a", b"1")
        io.armed = True
        with pytest.raises(OSError):
            db.put(b"b", b"2")
        with pytest.raises(bitkv.Error, match="refuses writes"):
            db.put(b"c", b"3")  # refused: nothing more to log
        with pytest.raises(bitkv.Error):
            db.sync_pending()
        db.close()
    failures = records(caplog, "fsync")
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].levelno == logging.ERROR
    segment = os.path.join(os.path.realpath(path), "000001.data")
    assert segment in failures[0].getMessage()
    assert "refusing writes until reopened" in failures[0].getMessage()


def test_a_failed_directory_fsync_names_the_directory(tmp_path, caplog):
    io = FailingSync()
    io.directories = True
    path = str(tmp_path / "db")
    db = bitkv.open(path, fileio=io, max_segment_size=4096, auto_compact=False)
    io.armed = True
    with caplog.at_level(logging.INFO, logger="bitkv"):
        with pytest.raises((OSError, bitkv.Error)):
            for i in range(100):  # the rotation fsyncs the directory for the new segment
                db.put(b"k%d" % i, b"v" * 200)
        db.close()
    failures = records(caplog, "fsync")
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert f"an fsync failed on {path} (" in failures[0].getMessage()


def test_a_writable_open_of_a_locked_store_is_logged_and_does_not_wait(tmp_path, caplog):
    path = str(tmp_path / "db")
    with bitkv.open(path), caplog.at_level(logging.INFO, logger="bitkv"), \
            pytest.raises(bitkv.LockError):
        bitkv.open(path)
    lines = records(caplog, "write lock is held")
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert os.path.join(path, "LOCK") in lines[0].getMessage()
    assert f"pid {os.getpid()}" in lines[0].getMessage()


class VanishingOnce(FileIO):
    """Reports a segment as gone ``times`` times, as a writer's compaction removing it
    between a reader's MANIFEST read and its open would."""

    def __init__(self, times: int) -> None:
        self.times = times

    def open_read(self, path: str) -> int:
        if self.times and path.endswith(".data"):
            self.times -= 1
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return super().open_read(path)


def test_a_read_only_open_that_waits_for_the_writer_is_logged(tmp_path, caplog):
    path = str(tmp_path / "db")
    with bitkv.open(path) as db:
        db.put(b"a", b"1")
    with caplog.at_level(logging.INFO, logger="bitkv"), \
            bitkv.open(path, readonly=True, fileio=VanishingOnce(2)) as reader:
        assert reader[b"a"] == b"1"
    lines = records(caplog, "read-only open waited")
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "000001.data" in lines[0].getMessage() and "attempt 3" in lines[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bitkv"), pytest.raises(bitkv.Error):
        bitkv.open(path, readonly=True, fileio=VanishingOnce(100))
    lines = records(caplog, "read-only open gave up")
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "000001.data" in lines[0].getMessage()
    assert not records(caplog, "read-only open waited")


def test_a_backup_waiting_for_the_writers_compaction_is_logged(tmp_path, caplog, monkeypatch):
    path = str(tmp_path / "db")
    with bitkv.open(path) as db:
        db.put(b"a", b"1")
        real_pin = backup_mod.pin
        vanished = []

        def pin_after_a_compaction(*args, **kwargs):
            if not vanished:
                vanished.append(1)
                raise backup_mod.ViewChanged("000001.data")
            return real_pin(*args, **kwargs)

        monkeypatch.setattr(backup_mod, "pin", pin_after_a_compaction)
        with caplog.at_level(logging.INFO, logger="bitkv"):
            db.backup(tmp_path / "bk")
    lines = records(caplog, "waited")
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "000001.data" in lines[0].getMessage() and "attempt 2" in lines[0].getMessage()

    caplog.clear()

    def always_vanishing() -> backup_mod.Pin:
        raise backup_mod.ViewChanged("000002.data")

    with caplog.at_level(logging.INFO, logger="bitkv"), \
            pytest.raises(bitkv.BackupError, match="kept changing"):
        backup_mod.run(path, tmp_path / "bk2", always_vanishing, io=FileIO())
    lines = records(caplog, "gave up pinning")
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "000002.data" in lines[0].getMessage()
