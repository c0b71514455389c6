"""bitkv.dbm: the standard dbm interface (flags, errors, str/bytes handling) and shelve on top."""

from __future__ import annotations

import dbm as std_dbm
import errno
import os
import shelve
import stat
from collections.abc import MutableMapping

import pytest

import bitkv
import bitkv.dbm as bdbm

# -- open and its flags ------------------------------------------------------------------------


def test_error_is_a_dbm_error(db_path):
    assert issubclass(bdbm.error, bitkv.Error)
    assert issubclass(bdbm.error, OSError)
    with pytest.raises(bdbm.error) as info:
        bdbm.open(db_path, "r")
    exc = info.value
    assert isinstance(exc, std_dbm.error)  # the stdlib's (error, OSError) tuple catches it
    assert exc.errno == 2
    assert isinstance(exc.__cause__, bitkv.StoreNotFoundError)


def test_default_flag_is_read_only(db_path):
    with pytest.raises(bdbm.error):
        bdbm.open(db_path)
    with bdbm.open(db_path, "c") as db:
        db[b"k"] = b"v"
    with bdbm.open(db_path) as db:
        assert db[b"k"] == b"v"
        with pytest.raises(bdbm.error):
            db[b"k"] = b"w"


def test_flag_c_creates_and_reopens(db_path):
    assert not os.path.exists(db_path)
    with bdbm.open(db_path, "c") as db:
        assert len(db) == 0
        db[b"a"] = b"1"
    assert os.path.isdir(db_path)
    with bdbm.open(db_path, "c") as db:
        assert db[b"a"] == b"1"


def test_flag_r(db_path):
    with pytest.raises(bdbm.error):
        bdbm.open(db_path, "r")
    assert not os.path.exists(db_path)  # a failed 'r' creates nothing
    with bdbm.open(db_path, "c") as db:
        db[b"a"] = b"1"
    with bdbm.open(db_path, "r") as db:
        assert db[b"a"] == b"1"
        assert db.keys() == [b"a"]
        for write in (lambda: db.__setitem__(b"b", b"2"), lambda: db.__delitem__(b"a"),
                      lambda: db.setdefault(b"new", b"x"), lambda: db.pop(b"a"),
                      db.clear, db.reorganize, lambda: db.update({b"c": b"3"})):
            with pytest.raises(bdbm.error, match="read"):
                write()
        assert db.setdefault(b"a", b"x") == b"1"  # no write needed: allowed
        db.sync()  # a no-op, not an error
        assert dict(db.items()) == {b"a": b"1"}


def test_reader_beside_a_writer(db_path):
    with bdbm.open(db_path, "c") as writer:
        writer[b"a"] = b"1"
        with bdbm.open(db_path, "r") as reader:
            assert reader[b"a"] == b"1"
        with pytest.raises(bdbm.error) as info:
            bdbm.open(db_path, "w")  # a second writer is refused
        assert isinstance(info.value.__cause__, bitkv.LockError)


def test_flag_w(db_path):
    with pytest.raises(bdbm.error):
        bdbm.open(db_path, "w")
    assert not os.path.exists(db_path)
    with bdbm.open(db_path, "c") as db:
        db[b"a"] = b"1"
    with bdbm.open(db_path, "w") as db:
        assert db[b"a"] == b"1"
        db[b"b"] = b"2"
    with bdbm.open(db_path, "r") as db:
        assert dict(db.items()) == {b"a": b"1", b"b": b"2"}


def test_flag_n_creates_or_empties(db_path):
    with bdbm.open(db_path, "n") as db:
        assert len(db) == 0
        for i in range(3000):
            db[f"k{i}"] = b"v" * 20
    with bitkv.open(db_path) as store:
        store.put(b"direct", b"written through bitkv")
    with bdbm.open(db_path, "n") as db:
        assert len(db) == 0
        assert db.keys() == []
        db[b"fresh"] = b"1"
    with bdbm.open(db_path, "r") as db:
        assert dict(db.items()) == {b"fresh": b"1"}
    with bitkv.open(db_path) as store:
        assert store.stats()["dead_bytes"] < 1000  # 'n' compacted the old data away


@pytest.mark.parametrize("flag, sync", [("c", "interval"), ("cf", "never"), ("cs", "always"),
                                        ("cu", "interval"), ("cfs", "always"),
                                        ("csu", "always"), ("nf", "never"), ("cuf", "never")])
def test_flag_modifiers(db_path, flag, sync):
    assert set(flag) <= set(bdbm.open_flags)
    with bdbm.open(db_path, flag) as db:
        assert db.store.sync_mode == sync
        db[b"k"] = b"v"
    with bdbm.open(db_path, "wu") as db:
        assert db[b"k"] == b"v"


@pytest.mark.parametrize("flag", ["", "x", "rw", "cz", "R", "cs!", "f", "s", None, 1, b"c"])
def test_bad_flags(db_path, flag):
    with pytest.raises(bdbm.error) as info:
        bdbm.open(db_path, flag)
    assert isinstance(info.value, ValueError)  # like dbm.dumb
    assert not os.path.exists(db_path)


def test_open_argument_errors(db_path):
    with pytest.raises(TypeError):
        bdbm.open(db_path, "c", "0o666")
    with pytest.raises(TypeError):
        bdbm.open(db_path, "c", readonly=True)
    with pytest.raises(TypeError):
        bdbm.open(db_path, "c", create=False)
    with pytest.raises(ValueError):
        bdbm.open(db_path, "cs", sync="never")
    assert not os.path.exists(db_path)


def test_open_passes_options_to_bitkv(db_path):
    key = bytes(32)
    pytest.importorskip("cryptography")
    with bdbm.open(db_path, "c", encryption_key=key, compression="zstd", sync="always") as db:
        db[b"k"] = b"v" * 1000
        assert db.store.sync_mode == "always"
    with pytest.raises(bdbm.error) as info:
        bdbm.open(db_path, "r")
    assert isinstance(info.value.__cause__, bitkv.EncryptionError)
    with bdbm.open(db_path, "r", encryption_key=key) as db:
        assert db[b"k"] == b"v" * 1000


def test_path_types(tmp_path):
    import pathlib

    p = tmp_path / "pathlib"
    with bdbm.open(p, "c") as db:
        db[b"a"] = b"1"
    with bdbm.open(os.fsencode(str(p)), "r") as db:
        assert db[b"a"] == b"1"
    with bdbm.open(str(pathlib.Path(p)), "r") as db:
        assert db[b"a"] == b"1"


def test_not_a_store_is_never_overwritten(tmp_path):
    f = tmp_path / "file.txt"
    f.write_bytes(b"precious")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "notes.txt").write_bytes(b"precious too")
    link = tmp_path / "link"
    link.symlink_to(f)
    for path, flags in ((f, "rwc"), (d, "rwcn"), (link, "rwcn")):
        for flag in flags:
            with pytest.raises(bdbm.error):
                bdbm.open(path, flag)
    assert f.read_bytes() == b"precious"
    assert (d / "notes.txt").read_bytes() == b"precious too"
    assert os.listdir(d) == ["notes.txt"]


def test_flag_n_replaces_a_plain_file_as_the_stdlib_backends_do(tmp_path):
    # dbm.gnu/ndbm/dumb truncate a file that is not a database into a new one on 'n'
    # (CPython's test_dbm relies on it); a bitkv store is a directory, so the file goes.
    f = tmp_path / "junk"
    f.write_bytes(b"not a database")
    with bdbm.open(f, "n") as db:
        assert len(db) == 0
        db[b"k"] = b"v"
    assert f.is_dir()
    with bdbm.open(f, "r") as db:
        assert dict(db.items()) == {b"k": b"v"}


@pytest.mark.parametrize("flag", ["r", "w"])
def test_missing_database_is_a_file_not_found_error(tmp_path, flag):
    # stdlib's dbm.error includes OSError; its backends raise FileNotFoundError here.
    with pytest.raises(FileNotFoundError) as info:
        bdbm.open(tmp_path / "absent", flag)
    assert isinstance(info.value, bdbm.error)
    assert info.value.errno == errno.ENOENT
    assert not (tmp_path / "absent").exists()


def test_mode_applies_to_created_files(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "private"
        with bdbm.open(path, "c", 0o600) as db:
            db[b"a"] = b"1"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        for name in os.listdir(path):
            assert stat.S_IMODE(os.stat(path / name).st_mode) == 0o600, name
        # Reopened with the default mode, the store keeps its own: new segments stay private.
        with bdbm.open(path, "c", max_segment_size=4096) as db:
            for i in range(100):
                db[f"k{i}"] = b"x" * 100
            db.reorganize()
        assert len(os.listdir(path)) > 3
        for name in os.listdir(path):
            assert stat.S_IMODE(os.stat(path / name).st_mode) == 0o600, name

        shared = tmp_path / "shared"
        with bdbm.open(shared, "c", 0o666) as db:  # the umask still applies
            db[b"a"] = b"1"
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(shared / "BITKV").st_mode) == 0o644
    finally:
        os.umask(old)


# -- the mapping -------------------------------------------------------------------------------


@pytest.fixture
def ddb(db_path):
    db = bdbm.open(db_path, "c")
    try:
        yield db
    finally:
        db.close()


def test_is_a_mutable_mapping(ddb):
    assert isinstance(ddb, MutableMapping)


def test_str_and_bytes_are_stored_as_utf8_bytes(ddb):
    ddb["ключ"] = "значение"
    assert ddb["ключ"] == "значение".encode()
    assert ddb["ключ".encode()] == "значение".encode()
    ddb[b"raw"] = bytearray(b"\x00\xff")
    ddb[bytearray(b"mv")] = memoryview(b"view")
    assert ddb[b"raw"] == b"\x00\xff"
    assert ddb["mv"] == b"view"
    assert sorted(ddb.keys()) == sorted(["ключ".encode(), b"raw", b"mv"])
    keys = ddb.keys()
    assert isinstance(keys, list)  # a list, like dbm.gnu and dbm.dumb
    assert all(type(k) is bytes for k in keys)
    assert all(type(v) is bytes for v in ddb.values())
    assert "ключ" in ddb and b"raw" in ddb and "nope" not in ddb


@pytest.mark.parametrize("value", [1, 1.5, None, ["a"], {"a": 1}, object()])
def test_values_must_be_bytes_or_str(ddb, value):
    with pytest.raises(TypeError):
        ddb[b"k"] = value
    assert b"k" not in ddb


@pytest.mark.parametrize("key", [1, None, 1.5, ("a",)])
def test_keys_must_be_bytes_or_str(ddb, key):
    with pytest.raises(TypeError):
        ddb[key] = b"v"
    with pytest.raises(TypeError):
        ddb[key]
    with pytest.raises(TypeError):
        key in ddb  # noqa: B015


def test_missing_key_raises_key_error(ddb):
    with pytest.raises(KeyError):
        ddb[b"missing"]
    with pytest.raises(KeyError):
        ddb["missing"]
    with pytest.raises(KeyError):
        del ddb[b"missing"]
    assert ddb.get(b"missing") is None
    assert ddb.get("missing", b"d") == b"d"


def test_keys_bitkv_cannot_hold(ddb):
    with pytest.raises(ValueError):
        ddb[b""] = b"empty key"
    with pytest.raises(ValueError):
        ddb[b"k" * (bitkv.MAX_KEY_SIZE + 1)] = b"too long"
    for key in (b"", "", b"k" * (bitkv.MAX_KEY_SIZE + 1)):
        with pytest.raises(KeyError):
            ddb[key]
        assert key not in ddb
        assert ddb.get(key, b"d") == b"d"
        with pytest.raises(KeyError):
            del ddb[key]
    assert len(ddb) == 0


def test_get_setdefault_pop_len_iter(ddb):
    ddb["a"] = "1"
    assert ddb.get("a") == b"1"
    assert ddb.setdefault("a", "x") == b"1"
    assert ddb.setdefault("b", "2") == b"2"
    assert ddb["b"] == b"2"
    assert ddb.setdefault("c") == b""
    assert ddb["c"] == b""
    with pytest.raises(TypeError):
        ddb.setdefault("d", 5)
    assert len(ddb) == 3
    assert sorted(ddb) == [b"a", b"b", b"c"]
    assert ddb.pop("c") == b""
    assert ddb.pop("c", None) is None
    with pytest.raises(KeyError):
        ddb.pop("c")
    ddb.update({"x": "1"}, y=b"2")
    assert dict(ddb) == {b"a": b"1", b"b": b"2", b"x": b"1", b"y": b"2"}
    k, _v = ddb.popitem()
    assert k not in ddb and len(ddb) == 3
    ddb.clear()
    assert len(ddb) == 0


def test_overwrite_and_delete(ddb):
    ddb[b"k"] = b"1"
    ddb[b"k"] = b"2"
    assert ddb[b"k"] == b"2"
    del ddb[b"k"]
    assert b"k" not in ddb
    ddb[b"k"] = b""
    assert ddb[b"k"] == b""  # an empty value is a value


def test_sync_and_reorganize(db_path):
    with bdbm.open(db_path, "c") as db:
        for i in range(200):
            db[b"churn"] = str(i).encode() * 50
        db.sync()
        db.reorganize()
        assert db[b"churn"] == b"199" * 50
    with bdbm.open(db_path, "r") as db:
        assert db[b"churn"] == b"199" * 50


def test_closed_database_raises_error(db_path):
    db = bdbm.open(db_path, "c")
    db[b"a"] = b"1"
    assert not db.closed
    db.close()
    assert db.closed
    db.close()  # closing twice is harmless
    for op in (lambda: db[b"a"], lambda: db.__setitem__(b"a", b"2"), lambda: db.__delitem__(b"a"),
               lambda: b"a" in db, lambda: len(db), db.keys, lambda: list(db), db.items,
               lambda: db.get(b"a"), lambda: db.setdefault(b"a"), db.sync, db.reorganize,
               lambda: db.store):
        with pytest.raises(bdbm.error, match="closed"):
            op()
    assert "closed" in repr(db)


def test_context_manager_closes(db_path):
    with bdbm.open(db_path, "c") as db:
        db["k"] = "v"
        assert "open" in repr(db)
    assert db.closed
    with pytest.raises(bdbm.error):
        db["k"]
    with bdbm.open(db_path, "w") as db:  # the lock was released
        assert db["k"] == b"v"


def test_reads_a_store_written_with_bitkv(db_path, clock):
    with bitkv.open(db_path, clock=clock) as store:
        store.put(b"plain", b"1")
        store.put(b"short", b"2", ttl=10)
    clock.advance(10)
    with bdbm.open(db_path, "r", clock=clock) as db:
        assert db.keys() == [b"plain"]
        assert b"short" not in db


def test_store_errors_become_dbm_errors(db_path):
    with bdbm.open(db_path, "c") as db:
        db[b"k"] = b"v"
        store = db.store
        store._abandon()  # the store underneath goes away (as after a fatal error)
        with pytest.raises(bdbm.error) as info:
            db[b"k"]
        assert isinstance(info.value.__cause__, bitkv.ClosedError)
        with pytest.raises(bdbm.error):
            db[b"k"] = b"w"


def test_stdlib_style_except_clauses(db_path):
    caught = []
    for clause in (bdbm.error, std_dbm.error, OSError, bitkv.Error):
        try:
            bdbm.open(db_path, "w")
        except clause:
            caught.append(clause)
    assert len(caught) == 4


# -- shelve --------------------------------------------------------------------------------------


def test_shelve_round_trip(db_path):
    users = {f"user:{i}": {"id": i, "name": f"n{i}", "roles": ["a", "b"][: i % 3],
                           "score": i / 3} for i in range(200)}
    with shelve.Shelf(bdbm.open(db_path, "c")) as shelf:
        for k, v in users.items():
            shelf[k] = v
        shelf["nested"] = {"list": [1, (2, 3)], "set": {4, 5}, "bytes": b"\x00"}
        assert shelf["user:5"] == users["user:5"]
        del shelf["user:0"]
    del users["user:0"]
    with shelve.Shelf(bdbm.open(db_path, "r")) as shelf:
        assert len(shelf) == 200
        assert "user:0" not in shelf
        assert "user:1" in shelf
        assert shelf["nested"] == {"list": [1, (2, 3)], "set": {4, 5}, "bytes": b"\x00"}
        assert {k: shelf[k] for k in shelf if k != "nested"} == users
        assert shelf.get("missing") is None
        with pytest.raises(KeyError):
            shelf["missing"]
        with pytest.raises(bdbm.error):
            shelf["x"] = 1


def test_shelve_writeback(db_path):
    with shelve.Shelf(bdbm.open(db_path, "c"), writeback=True) as shelf:
        shelf["cart"] = {"items": []}
        shelf["cart"]["items"].append("apple")  # mutated in the cache, written on sync/close
        shelf.sync()
        shelf["cart"]["items"].append("pear")
    with shelve.Shelf(bdbm.open(db_path, "r")) as shelf:
        assert shelf["cart"] == {"items": ["apple", "pear"]}


def test_shelve_values_are_pickles_in_the_store(db_path):
    """bitkv stores what shelve hands it: bytes. It never unpickles them itself."""
    with shelve.Shelf(bdbm.open(db_path, "c")) as shelf:
        shelf["k"] = {"a": 1}
    with bitkv.open(db_path, readonly=True) as store:
        raw = store[b"k"]
        assert isinstance(raw, bytes) and raw.startswith(b"\x80")  # a pickle, as bytes
