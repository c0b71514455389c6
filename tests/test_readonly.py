"""readonly=True and create=False: no writes, and nothing created where no store exists."""

from __future__ import annotations

import os

import pytest
from conftest import newest_segment, snapshot_dir

import bitkv


@pytest.fixture
def filled(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
        db.put(b"t", b"3", ttl=100)
        db.delete(b"b")
    return db_path


def test_readonly_reads_everything(filled, clock):
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        assert db.readonly
        assert db.get(b"a") == b"1"
        assert db.get(b"b") is None
        assert db[b"t"] == b"3"
        assert db.ttl(b"t") == 100.0
        assert sorted(db.keys()) == [b"a", b"t"]
        assert sorted(db.items()) == [(b"a", b"1"), (b"t", b"3")]
        assert len(db) == 2
        assert b"a" in db
        assert db.stats()["readonly"] is True
        db.sync()  # nothing to flush; not an error


def test_readonly_writes_raise(filled, clock):
    before = snapshot_dir(filled)
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        writes = {
            "put": lambda: db.put(b"a", b"x"),
            "put new": lambda: db.put(b"new", b"x"),
            "put ttl": lambda: db.put(b"a", b"x", ttl=5),
            "setitem": lambda: db.__setitem__(b"a", b"x"),
            "delete": lambda: db.delete(b"a"),
            "delete missing": lambda: db.delete(b"missing"),
            "delitem": lambda: db.__delitem__(b"a"),
            "expire": lambda: db.expire(b"a", 5),
            "expire missing": lambda: db.expire(b"missing", 5),
            "persist": lambda: db.persist(b"t"),
            "persist no ttl": lambda: db.persist(b"a"),
        }
        for name, call in writes.items():
            try:
                call()
            except bitkv.ReadOnlyError as exc:
                assert filled in str(exc)
                continue
            pytest.fail(f"{name} on a read-only store did not raise ReadOnlyError")
        if hasattr(db, "compact"):
            with pytest.raises(bitkv.ReadOnlyError):
                db.compact()
        assert db.get(b"a") == b"1"
        assert db.ttl(b"t") == 100.0
    assert snapshot_dir(filled) == before


def test_readonly_is_a_bitkv_error():
    assert issubclass(bitkv.ReadOnlyError, bitkv.Error)
    assert issubclass(bitkv.StoreNotFoundError, bitkv.Error)


@pytest.mark.parametrize("kwargs", [{"readonly": True}, {"create": False},
                                    {"readonly": True, "create": False}])
def test_missing_path_is_not_created(tmp_path, kwargs):
    path = tmp_path / "nope"
    with pytest.raises(bitkv.StoreNotFoundError) as exc:
        bitkv.open(path, **kwargs)
    assert str(path) in str(exc.value)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"readonly": True}, {"create": False}])
def test_empty_directory_is_not_turned_into_a_store(tmp_path, kwargs):
    path = tmp_path / "empty"
    path.mkdir()
    with pytest.raises(bitkv.StoreNotFoundError):
        bitkv.open(path, **kwargs)
    assert os.listdir(path) == []


def test_create_false_opens_an_existing_store(filled):
    with bitkv.open(filled, create=False) as db:
        assert db.get(b"a") == b"1"
        db.put(b"c", b"3")
    with bitkv.open(filled, create=False) as db:
        assert db.get(b"c") == b"3"


def test_readonly_does_not_take_or_touch_the_lock(filled):
    lock = os.path.join(filled, "LOCK")
    os.remove(lock)
    with bitkv.open(filled, readonly=True) as db:
        assert db.get(b"a") == b"1"
        with bitkv.open(filled) as writer:  # a writer can open beside it
            writer.put(b"w", b"1")
    assert os.path.exists(lock)  # created by the writer, not the reader


def test_readonly_leaves_a_torn_tail_on_disk(filled):
    seg = newest_segment(filled)
    size = os.path.getsize(seg)
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 50)
    before = snapshot_dir(filled)
    with bitkv.open(filled, readonly=True) as db:
        assert db.get(b"a") == b"1"
        assert db.stats()["recovery"]["truncated_bytes"] == 50
    assert snapshot_dir(filled) == before
    with bitkv.open(filled) as db:
        assert db.get(b"a") == b"1"
    assert os.path.getsize(seg) == size


def test_readonly_len_and_keys_hide_expired_keys(filled, clock):
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        assert len(db) == 2
        clock.advance(100)
        assert len(db) == 1
        assert list(db.keys()) == [b"a"]
        with pytest.raises(KeyError):
            db.ttl(b"t")
