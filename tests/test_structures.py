"""The collections' storage layer (bitkv/structures): records, index, reload, expiry."""

from __future__ import annotations

import pytest

import bitkv
from bitkv.structures import (
    HashIndex,
    ListIndex,
    ReservedKeyError,
    SetIndex,
    Structures,
    WrongTypeError,
    ZSetIndex,
)
from bitkv.structures.encoding import (
    PREFIX,
    element_prefix,
    header_key,
    pack_position,
    pack_score,
    parse,
)


@pytest.fixture
def db(tmp_path):
    store = bitkv.open(str(tmp_path / "db"))
    yield store
    store.close()


def test_parse_inverts_the_layout():
    for key in (b"k", b"x" * 300, b"\x00\xff"):
        assert parse(header_key(key)) == (b"", key, None)
        assert parse(element_prefix(b"H", key) + b"field") == (b"H", key, b"field")
        assert parse(element_prefix(b"L", key) + pack_position(-5)) == (
            b"L", key, pack_position(-5))
    for bad in (PREFIX, PREFIX + b"e", PREFIX + b"eQ\x01k", PREFIX + b"eH\x05k", PREFIX + b"h"):
        assert parse(bad) is None


def test_edits_are_indexed_and_survive_reopen(tmp_path):
    path = str(tmp_path / "db")
    with bitkv.open(path) as store:
        s = Structures(store)
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f1", b"v1")
            e.put(b"f2", b"v2")
        with s.edit(b"z", ZSetIndex) as e:
            e.put(b"a", pack_score(2.5))
            e.put(b"b", pack_score(-1.0))
        with s.edit(b"l", ListIndex) as e:
            for pos in (0, 1, -1):
                e.put(pack_position(pos), b"p%d" % pos)
        with s.edit(b"s", SetIndex) as e:
            e.put(b"m", b"")
        h = s.find(b"h", HashIndex)
        assert h is not None and s.read(h, b"f2") == b"v2"
        # five user-visible names, one string among them
        store.put(b"plain", b"x")
    with bitkv.open(path) as store:
        s = Structures(store)
        assert sorted(s.keys()) == [b"h", b"l", b"s", b"z"]
        assert list(s.find(b"h", HashIndex).fields) == [b"f1", b"f2"]  # type: ignore[union-attr]
        z = s.find(b"z", ZSetIndex)
        assert z is not None and list(z.order) == [(-1.0, b"b"), (2.5, b"a")]
        lst = s.find(b"l", ListIndex)
        assert lst is not None and list(lst.positions) == [-1, 0, 1]
        assert s.type_name(b"plain") == "string" and s.type_name(b"nope") == "none"
        assert s.type_name(b"s") == "set"


def test_wrong_type_and_reserved_names(db):
    s = Structures(db)
    db.put(b"str", b"v")
    with pytest.raises(WrongTypeError):
        s.edit(b"str", HashIndex)
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")
    with pytest.raises(WrongTypeError):
        s.find(b"h", SetIndex)
    with pytest.raises(ReservedKeyError):
        s.edit(PREFIX + b"x", HashIndex)


def test_removing_the_last_element_removes_the_key(db):
    s = Structures(db)
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")
    with s.edit(b"h", HashIndex) as e:
        e.delete(b"f")
    assert b"h" not in s
    assert list(db.keys(PREFIX)) == []
    with s.edit(b"new", HashIndex) as e:  # a put and a delete of the same field: no key
        e.put(b"f", b"v")
        e.delete(b"f")
    assert b"new" not in s and list(db.keys(PREFIX)) == []


def test_a_failed_write_leaves_the_index_unchanged(db, monkeypatch):
    s = Structures(db)
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")

    def refuse(ops, names=None):
        raise bitkv.StoreFullError("no room")

    monkeypatch.setattr(s, "write", refuse)
    with pytest.raises(bitkv.StoreFullError), s.edit(b"h", HashIndex) as e:
        e.put(b"g", b"w")
    assert list(s.find(b"h", HashIndex).fields) == [b"f"]  # type: ignore[union-attr]


def test_expiry_hides_then_deletes_and_survives_reopen(tmp_path):
    now = [1_000_000]
    path = str(tmp_path / "db")
    with bitkv.open(path) as store:
        s = Structures(store, clock=lambda: now[0])
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"v")
        with s.edit(b"keep", SetIndex) as e:
            e.put(b"m", b"")
        far = 2**62
        assert s.expire_at(b"h", far) and s.expire_at(b"keep", far)
        assert s.expire_at(b"keep", None)
    with bitkv.open(path) as store:
        s = Structures(store, clock=lambda: now[0])
        assert s.find(b"h", HashIndex).expire_ms == far  # type: ignore[union-attr]
        assert s.find(b"keep", SetIndex).expire_ms == 0  # type: ignore[union-attr]
        now[0] = far
        assert b"h" not in s  # expired: gone, and its records deleted
        assert [k for k in store.keys(PREFIX) if b"h" in parse(k)[1]] == []  # type: ignore[index]


def test_load_removes_orphans_and_ignores_malformed_records(db):
    s = Structures(db)
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")
    db.delete(header_key(b"h"))  # as if the header had expired while the store was closed
    db.put(element_prefix(b"Z", b"z") + b"m", b"not a score")
    db.put(header_key(b"z"), b"Z\x01")
    db.put(PREFIX + b"garbage", b"")
    s.load()
    assert s.keys() == []
    assert s.orphans_removed == 2  # the hash's element, the header left without elements
    assert s.malformed == 2


def test_copy_ops_and_delete_ops(db):
    s = Structures(db)
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")
        e.put(b"g", b"w")
    src = s.find(b"h", HashIndex)
    assert src is not None
    ops, clone = s.copy_ops(src, b"h2", 0)
    s.write(ops)
    s.install(clone)
    s.write(s.delete_ops(b"h"))
    s.forget(b"h")
    s.load()
    h2 = s.find(b"h2", HashIndex)
    assert h2 is not None and s.read_many(h2, [b"f", b"g"]) == [b"v", b"w"]
    assert s.keys() == [b"h2"]


def test_commit_edits_writes_two_collections_in_one_batch(db):
    s = Structures(db)
    with s.edit(b"src", SetIndex) as e:
        e.put(b"m", b"")
    src, dst = s.edit(b"src", SetIndex), s.edit(b"dst", SetIndex)
    src.delete(b"m")
    dst.put(b"m", b"")
    batches = []
    real_batch = db.batch

    def counting_batch():
        batches.append(1)
        return real_batch()

    db.batch = counting_batch  # type: ignore[method-assign]
    s.commit_edits([src, dst])
    del db.batch
    assert batches == [1]
    assert s.find(b"src", SetIndex) is None  # emptied: the key is gone, header too
    assert header_key(b"src") not in db
    d = s.find(b"dst", SetIndex)
    assert d is not None and list(d.members) == [b"m"]
    assert len(src) == len(dst) == 0  # committed edits are left empty
    with pytest.raises(ValueError, match="two edits"):
        s.commit_edits([s.edit(b"dst", SetIndex), s.edit(b"dst", SetIndex)])


def test_replace_ops_overwrite_any_type(db):
    s = Structures(db)
    db.put(b"str", b"x")
    with s.edit(b"h", HashIndex) as e:
        e.put(b"f", b"v")
    for key in (b"str", b"h", b"none"):
        ops, new = s.replace_ops(key, SetIndex, [(b"a", b""), (b"b", b"")])
        s.write(ops)
        assert new is not None
        s.install(new)
        found = s.find(key, SetIndex)
        assert found is not None and list(found.members) == [b"a", b"b"]
    assert s.replace_ops(b"e", SetIndex, []) == ([], None)
    assert db.get(b"str") is None  # the string itself was deleted
    with pytest.raises(ReservedKeyError):
        s.replace_ops(PREFIX + b"x", SetIndex, [])
    s2 = Structures(db)  # what was written is what reloads
    assert sorted(s2.keys()) == [b"h", b"none", b"str"]
    assert s2.find(b"h", SetIndex) is not None


def test_set_sampler_stays_dense_and_matches_members():
    import random

    idx = SetIndex(b"s")
    model: set[bytes] = set()
    rnd = random.Random(7)
    for _ in range(2000):
        m = b"%d" % rnd.randrange(60)
        if rnd.random() < 0.5:
            idx.on_put(m, b"")
            model.add(m)
        else:
            idx.on_delete(m)
            model.discard(m)
        assert sorted(idx.sampler) == sorted(model) == sorted(idx.members)
        assert all(idx.sampler[slot] == m for m, slot in idx.members.items())
    if model:
        assert idx.random_member(rnd.randrange) in model


def test_write_of_one_op_is_a_plain_put_or_delete_with_the_same_effect(db, monkeypatch):
    """A single op skips the batch (a record is atomic alone); several still use one."""
    s = Structures(db)
    batches = []
    real_batch = db.batch
    monkeypatch.setattr(db, "batch", lambda: batches.append(1) or real_batch())
    far = 4102444800123
    s.write([(b"a", b"1", None)])
    s.write([(b"b", b"2", far)])
    assert db.get(b"a") == b"1" and db.get_with_expiry(b"b") == (b"2", far)
    s.write([(b"a", None, None)])
    s.write([(b"missing", None, None)])  # deleting nothing is no error, as in a batch
    assert db.get(b"a") is None and batches == []
    s.write([(b"c", b"3", None), (b"b", None, None)])
    assert batches == [1] and db.get(b"c") == b"3" and db.get(b"b") is None
