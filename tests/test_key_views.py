"""keys(), values() and items() of a store, a namespace and a JSON view are views (issue 16):
``len``, ``in``, iterable more than once, live rather than a copy, cheap to make."""

from __future__ import annotations

import pytest

import bitkv
from bitkv.views import ItemsView, KeysView, ValuesView


def _fill(db: bitkv.Store) -> None:
    for i in range(5):
        db.put(f"user:{i}", f"u{i}".encode())
    for i in range(3):
        db.put(f"session:{i}", f"s{i}".encode())


def test_len_of_keys_values_items(db):
    _fill(db)
    assert len(db.keys()) == len(db.values()) == len(db.items()) == 8 == len(db)
    assert len(db.keys(prefix=b"user:")) == 5
    assert len(db.keys("session:")) == 3
    assert len(db.items(prefix="session:")) == 3
    assert len(db.values(prefix="user:")) == 5
    assert len(db.keys(prefix=b"nothing")) == 0
    assert isinstance(db.keys(), KeysView)
    assert isinstance(db.values(), ValuesView)
    assert isinstance(db.items(), ItemsView)


def test_views_iterate_more_than_once(db):
    _fill(db)
    keys = db.keys(prefix=b"user:")
    assert sorted(keys) == sorted(keys) == [f"user:{i}".encode() for i in range(5)]
    items = db.items(prefix=b"session:")
    assert dict(items) == dict(items) == {f"session:{i}".encode(): f"s{i}".encode()
                                         for i in range(3)}
    values = db.values()
    assert sorted(values) == sorted(values)
    assert len(list(values)) == 8


def test_membership(db):
    _fill(db)
    keys, users = db.keys(), db.keys(prefix=b"user:")  # the views' own `in`, not the store's
    assert b"user:1" in keys
    assert "user:1" in keys  # str keys are UTF-8, as everywhere
    assert b"user:9" not in keys
    assert b"session:1" not in users  # in the store, not under the prefix
    assert b"" not in keys and 42 not in keys and None not in keys
    assert (b"user:2", b"u2") in db.items()
    assert (b"user:2", b"other") not in db.items()
    assert (b"user:2", b"u2") not in db.items(prefix=b"session:")
    assert "not a pair" not in db.items()
    assert b"s1" in db.values() and b"zz" not in db.values()


def test_views_are_live_not_copies(db):
    keys = db.keys()  # made before the writes: sees them, as a dict view does
    items = db.items()
    assert len(keys) == 0
    _fill(db)
    assert len(keys) == 8 and len(items) == 8
    db.delete(b"user:0")
    assert len(keys) == 7 and b"user:0" not in keys and b"user:0" not in dict(items)


def test_set_operations_like_dict_views(db):
    _fill(db)
    assert db.keys(prefix=b"user:") & {b"user:1", b"nope"} == {b"user:1"}
    assert db.keys() - db.keys(prefix=b"user:") == {f"session:{i}".encode() for i in range(3)}


def test_expired_keys_are_neither_counted_nor_listed(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        db.put(b"a:short", b"1", ttl=10)
        db.put(b"a:long", b"2", ttl=1000)
        db.put(b"b", b"3")
        keys = db.keys(prefix=b"a:")
        assert len(keys) == 2
        clock.advance(20)
        assert len(keys) == 1 and list(keys) == [b"a:long"]
        assert len(db.keys()) == 2 == len(list(db.keys()))
        assert len(db.items()) == len(list(db.items())) == 2


def test_held_expired_keys_count_as_iteration_sees_them(db_path, clock):
    """A replica's store keeps expired keys indexed but hidden: len must agree with
    iteration, with and without a prefix."""
    with bitkv.open(db_path, clock=clock, hold_expired=True) as db:
        db.put(b"a:1", b"1", ttl=10)
        db.put(b"a:2", b"2")
        db.put(b"b", b"3")
        clock.advance(20)
        assert sorted(db.keys()) == [b"a:2", b"b"]
        assert len(db.keys()) == 2
        assert len(db.keys(prefix=b"a:")) == 1
        with db.seeing_expired():
            assert len(db.keys()) == 3 == len(list(db.keys()))


def test_views_of_a_closed_store_raise(db_path):
    db = bitkv.open(db_path)
    db.put(b"k", b"v")
    keys, items = db.keys(), db.items()
    db.close()
    for use in (lambda: len(keys), lambda: list(keys), lambda: list(items),
                lambda: db.keys()):
        with pytest.raises(bitkv.ClosedError):
            use()


def test_namespace_views(db):
    _fill(db)
    db.put(b"user:", b"the prefix itself: no key of the namespace")
    ns = db.namespace(b"user:")
    assert len(ns) == len(ns.keys()) == len(ns.items()) == len(ns.values()) == 5
    assert sorted(ns.keys()) == [str(i).encode() for i in range(5)]
    assert len(ns.keys(prefix=b"1")) == 1 and list(ns.keys(prefix=b"1")) == [b"1"]
    all_keys, ones = ns.keys(), ns.keys(prefix=b"1")
    assert b"3" in all_keys and b"3" not in ones
    assert (b"2", b"u2") in ns.items()
    keys = ns.keys()
    ns[b"9"] = b"u9"
    assert len(keys) == 6 and sorted(keys) == sorted(keys)


def test_json_view_items_and_values(db):
    db.json.put(b"doc:1", {"n": 1})
    db.json.put(b"doc:2", {"n": 2})
    db.put(b"raw", b"1")
    items = db.json.items(prefix=b"doc:")
    assert len(items) == 2
    assert dict(items) == dict(items) == {b"doc:1": {"n": 1}, b"doc:2": {"n": 2}}
    assert (b"doc:1", {"n": 1}) in items
    assert sorted(v["n"] for v in db.json.values(prefix=b"doc:")) == [1, 2]
    assert len(db.json.keys()) == 3
