"""JsonView (strict JSON documents) and Namespace (a prefix-confined mapping)."""

from __future__ import annotations

import json
import pickle
from collections.abc import MutableMapping

import pytest

import bitkv
from bitkv.views import InvalidJSONError, JsonView, Namespace, NamespaceBatch

# -- JsonView ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [
    {"user": 42, "roles": ["admin"], "nested": {"a": [1, 2.5, None, True, False]}},
    [1, "two", 3.0], "text", "ünïcødé ✓", 0, -7, 2**70, 1.5e-300, True, False, None, {}, [],
])
def test_json_round_trip(db, obj):
    assert db.json.put(b"k", obj) is True
    assert db.json.get(b"k") == obj
    assert db.json[b"k"] == obj
    assert json.loads(db[b"k"]) == obj


def test_json_encoding_is_compact_and_strict(db):
    db.json[b"k"] = {"a": 1, "b": [1, 2], "s": "é"}
    assert db[b"k"] == b'{"a":1,"b":[1,2],"s":"\\u00e9"}'
    assert isinstance(db.json, JsonView)


@pytest.mark.parametrize("bad", [b"bytes", bytearray(b"x"), {"k": b"v"}, {1, 2}, object(),
                                 1 + 2j, {(1, 2): "tuple key"}, [memoryview(b"m")]])
def test_non_json_types_raise_type_error_and_write_nothing(db, bad):
    with pytest.raises(TypeError):
        db.json.put(b"k", bad)
    with pytest.raises(TypeError):
        db.json[b"k"] = bad
    assert b"k" not in db


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), [float("nan")]])
def test_nan_and_infinity_are_rejected(db, bad):
    with pytest.raises(ValueError):
        db.json.put(b"k", bad)
    assert b"k" not in db


def test_json_conversions_are_those_of_the_json_module(db):
    db.json[b"t"] = (1, 2)
    assert db.json[b"t"] == [1, 2]
    db.json[b"d"] = {1: "int key"}
    assert db.json[b"d"] == {"1": "int key"}


def test_json_missing_and_null(db):
    assert db.json.get(b"nope") is None
    assert db.json.get(b"nope", "dflt") == "dflt"
    with pytest.raises(KeyError):
        db.json[b"nope"]
    db.json[b"null"] = None
    assert db.json.get(b"null", "dflt") is None  # a stored null is a value, not "missing"
    assert db.json[b"null"] is None
    assert b"null" in db.json
    assert b"nope" not in db.json


def test_json_put_options(db, clock):
    store = bitkv.open(db.path + "-clock", clock=clock)
    try:
        j = store.json
        assert j.put(b"k", {"v": 1}, ttl=10) is True
        assert store.ttl(b"k") == pytest.approx(10.0)
        assert j.put(b"k", {"v": 2}, if_absent=True) is False
        assert j.put(b"k", {"v": 3}, if_present=True, keep_ttl=True) is True
        assert j[b"k"] == {"v": 3}
        assert store.ttl(b"k") == pytest.approx(10.0)
        assert j.put(b"other", 1, if_present=True) is False
        clock.advance(10)
        assert j.get(b"k") is None
        assert j.put(b"k", {"v": 4}, if_absent=True) is True  # expired counts as absent
        with pytest.raises(ValueError):
            j.put(b"k", 1, ttl=5, keep_ttl=True)
    finally:
        store.close()


def test_json_delete(db):
    db.json["a"] = 1
    assert db.json.delete("a") is True
    assert db.json.delete("a") is False
    db.json["b"] = 2
    del db.json["b"]
    with pytest.raises(KeyError):
        del db.json["b"]


def test_json_items_keys_len(db):
    db.json[b"user:1"] = {"n": 1}
    db.json[b"user:2"] = {"n": 2}
    db.json[b"team:1"] = ["x"]
    assert dict(db.json.items(b"user:")) == {b"user:1": {"n": 1}, b"user:2": {"n": 2}}
    assert dict(db.json.items("team:")) == {b"team:1": ["x"]}
    assert len(dict(db.json.items())) == 3
    assert sorted(db.json.keys(b"user:")) == [b"user:1", b"user:2"]
    assert sorted(db.json) == [b"team:1", b"user:1", b"user:2"]
    assert len(db.json) == 3


@pytest.mark.parametrize("stored", [b"not json", b"{", b"", b"\xff\xfe\xfa", b"NaN",
                                    b"[Infinity]", b'{"a": -Infinity}', b"[" * 100_000])
def test_invalid_stored_json_is_a_clear_error(db, stored):
    db.put(b"bad:key", stored)
    with pytest.raises(InvalidJSONError) as info:
        db.json.get(b"bad:key")
    assert isinstance(info.value, bitkv.Error)
    assert isinstance(info.value, ValueError)
    assert "bad:key" in str(info.value)
    with pytest.raises(InvalidJSONError):
        db.json[b"bad:key"]
    with pytest.raises(InvalidJSONError):
        list(db.json.items())


class _Tripwire:
    """Unpickling this would flip a module-level flag."""

    def __reduce__(self):
        return (_trip, ())


TRIPPED: list[bool] = []


def _trip() -> None:  # pragma: no cover - must never run
    TRIPPED.append(True)


def test_json_view_never_unpickles(db):
    db.put(b"p", pickle.dumps(_Tripwire()))
    db.put(b"p0", pickle.dumps({"a": 1}, protocol=0))
    with pytest.raises(InvalidJSONError):
        db.json.get(b"p")
    with pytest.raises(InvalidJSONError):
        db.json.get(b"p0")
    assert TRIPPED == []


def test_json_view_survives_reopen(db_path):
    with bitkv.open(db_path) as db:
        db.json["cfg"] = {"threshold": 0.25, "tags": ["a", "b"]}
    with bitkv.open(db_path, readonly=True) as db:
        assert db.json["cfg"] == {"threshold": 0.25, "tags": ["a", "b"]}


# -- Namespace ---------------------------------------------------------------------------------


@pytest.fixture
def ns(db):
    db.put(b"other", b"outside")
    db.put(b"sess", b"the prefix itself, as a key")
    db.put(b"sessX", b"shares characters, not the prefix")
    return db.namespace(b"sess:")


def test_namespace_prefix_validation(db):
    for bad in (b"", ""):
        with pytest.raises(ValueError):
            db.namespace(bad)
    for bad in (None, 5, 1.5, ["a"]):
        with pytest.raises(TypeError):
            db.namespace(bad)
    assert db.namespace("s:").prefix == b"s:"
    assert db.namespace(bytearray(b"b:")).prefix == b"b:"
    assert Namespace(db, memoryview(b"m:")).prefix == b"m:"
    with pytest.raises(ValueError):
        db.namespace(b"p" * bitkv.MAX_KEY_SIZE)


def test_namespace_is_a_mutable_mapping(ns):
    assert isinstance(ns, MutableMapping)
    assert ns.store is not None


def test_namespace_put_get_adds_the_prefix(db, ns):
    ns[b"1"] = b"one"
    assert ns.put("2", b"two") is True
    assert db[b"sess:1"] == b"one"
    assert db[b"sess:2"] == b"two"
    assert ns[b"1"] == b"one"
    assert ns.get("2") == b"two"
    assert ns.get(b"missing") is None
    assert ns.get(b"missing", b"d") == b"d"
    with pytest.raises(KeyError) as info:
        ns[b"missing"]
    assert info.value.args == (b"missing",)  # the key as the caller named it
    assert b"1" in ns and "2" in ns
    assert b"other" not in ns and b"sess:1" not in ns


def test_namespace_keys_len_iter_are_confined(db, ns):
    for i in range(5):
        ns[f"u{i}"] = str(i).encode()
    db.put(b"sess:", b"key equal to the prefix is not a namespace key")
    assert len(ns) == 5
    assert sorted(ns) == [f"u{i}".encode() for i in range(5)]
    assert sorted(ns.keys()) == sorted(ns)
    assert sorted(ns.keys(b"u1")) == [b"u1"]
    assert sorted(ns.keys("u")) == sorted(ns)
    assert dict(ns.items()) == {f"u{i}".encode(): str(i).encode() for i in range(5)}
    assert dict(ns.items(b"u3")) == {b"u3": b"3"}
    assert sorted(ns.values()) == [str(i).encode() for i in range(5)]
    assert dict(ns) == dict(ns.items())
    with pytest.raises(TypeError):
        list(ns.keys(5))
    assert len(db) == 3 + 5 + 1  # the store still sees everything


def test_namespace_delete_and_clear(db, ns):
    ns[b"a"] = b"1"
    ns[b"b"] = b"2"
    assert ns.delete(b"a") is True
    assert ns.delete(b"a") is False
    with pytest.raises(KeyError):
        del ns[b"a"]
    del ns[b"b"]
    for i in range(2500):
        ns[f"k{i}"] = b"v"
    ns.clear()
    assert len(ns) == 0
    assert dict(db.items()) == {b"other": b"outside", b"sess": b"the prefix itself, as a key",
                                b"sessX": b"shares characters, not the prefix"}


def test_namespace_mapping_mixins(ns):
    ns.update({b"a": b"1", "b": b"2"}, c=b"3")
    assert dict(ns) == {b"a": b"1", b"b": b"2", b"c": b"3"}
    assert ns.pop(b"a") == b"1"
    assert ns.pop(b"a", None) is None
    with pytest.raises(KeyError):
        ns.pop(b"a")
    assert ns.setdefault(b"b", b"x") == b"2"
    assert ns.setdefault(b"new", b"x") == b"x"
    assert ns.setdefault(b"e") == b""
    k, _v = ns.popitem()
    assert k not in ns
    assert ns == dict(ns.items())


def test_namespace_atomic_operations(ns, db):
    assert ns.incr(b"hits") == 1
    assert ns.incr(b"hits", 9) == 10
    assert db[b"sess:hits"] == b"10"
    assert ns.compare_and_set(b"lock", None, b"me") is True
    assert ns.compare_and_set(b"lock", None, b"you") is False
    assert ns.compare_and_set(b"lock", b"me", b"you") is True
    assert db[b"sess:lock"] == b"you"
    assert ns.get_and_delete(b"lock") == b"you"
    assert ns.get_and_delete(b"lock") is None
    assert b"sess:lock" not in db
    assert ns.get_with_ttl(b"hits") == (b"10", None)
    assert ns.get_with_ttl(b"none") is None


def test_namespace_ttl(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        ns = db.namespace("rate:")
        assert ns.incr(b"ip", ttl=60) == 1
        assert ns.ttl(b"ip") == pytest.approx(60.0)
        assert db.ttl(b"rate:ip") == pytest.approx(60.0)
        ns.put(b"p", b"v")
        assert ns.ttl(b"p") is None
        assert ns.expire(b"p", 30) is True
        assert ns.ttl(b"p") == pytest.approx(30.0)
        assert ns.persist(b"p") is True
        assert ns.ttl(b"p") is None
        assert ns.expire(b"missing", 5) is False
        assert ns.persist(b"missing") is False
        with pytest.raises(KeyError) as info:
            ns.ttl(b"missing")
        assert info.value.args == (b"missing",)
        ns.put(b"t", b"v", ttl=5)
        value, left = ns.get_with_ttl(b"t")
        assert value == b"v" and left == pytest.approx(5.0)
        clock.advance(60)
        assert b"ip" not in ns and b"t" not in ns
        assert sorted(ns) == [b"p"]
        assert len(ns) == 1


def test_namespace_batch_adds_the_prefix(db, ns):
    ns[b"gone"] = b"x"
    with ns.batch() as b:
        assert isinstance(b, NamespaceBatch)
        b.put(b"a", b"1")
        b.put("b", b"2", ttl=100)
        b.delete(b"gone")
        assert len(b) == 3
    assert db[b"sess:a"] == b"1" and db[b"sess:b"] == b"2"
    assert b"sess:gone" not in db
    assert ns.ttl(b"b") == pytest.approx(100.0, abs=1)
    with pytest.raises(RuntimeError), ns.batch() as b:
        b.put(b"c", b"3")
        raise RuntimeError
    assert b"c" not in ns
    b = ns.batch()
    b.put(b"d", b"4")
    b.discard()
    assert b"d" not in ns
    b = ns.batch()
    b.put(b"e", b"5")
    b.commit()
    assert ns[b"e"] == b"5"


def test_nested_namespaces(db):
    app = db.namespace(b"app:")
    users = app.namespace(b"user:")
    assert users.prefix == b"app:user:"
    assert users.store is db
    users[b"1"] = b"ada"
    assert db[b"app:user:1"] == b"ada"
    assert app[b"user:1"] == b"ada"
    assert list(app) == [b"user:1"]
    assert list(users) == [b"1"]
    assert Namespace(app, "x:").prefix == b"app:x:"
    with users.batch() as b:
        b.put(b"2", b"grace")
    assert db[b"app:user:2"] == b"grace"


def test_namespace_json(db, ns):
    ns.json[b"42"] = {"user": 42}
    assert db[b"sess:42"] == b'{"user":42}'
    assert ns.json[b"42"] == {"user": 42}
    assert ns.json.get(b"43") is None
    assert ns.json.put(b"42", {"user": 43}, if_absent=True) is False
    assert dict(ns.json.items()) == {b"42": {"user": 42}}
    assert list(ns.json) == [b"42"]
    assert len(ns.json) == 1
    db.put(b"sess:bad", b"\x80pickle")
    with pytest.raises(InvalidJSONError, match="bad"):
        ns.json[b"bad"]


def test_namespace_key_validation(ns):
    with pytest.raises(ValueError):
        ns[b""] = b"empty key"
    with pytest.raises(TypeError):
        ns[5] = b"int key"
    with pytest.raises(TypeError):
        ns.get(None)
    longest = b"k" * (bitkv.MAX_KEY_SIZE - len(ns.prefix))
    ns[longest] = b"fits"
    assert ns[longest] == b"fits"
    with pytest.raises(ValueError, match="prefix"):
        ns[longest + b"k"] = b"too long with the prefix"
    with pytest.raises(TypeError):
        ns[b"k"] = "str value"


def test_namespace_survives_reopen_and_readonly(db_path):
    with bitkv.open(db_path) as db:
        db.namespace(b"n:")[b"k"] = b"v"
    with bitkv.open(db_path, readonly=True) as db:
        ns = db.namespace(b"n:")
        assert dict(ns) == {b"k": b"v"}
        with pytest.raises(bitkv.ReadOnlyError):
            ns[b"k2"] = b"v"
        with pytest.raises(bitkv.ReadOnlyError):
            ns.batch()
    db = bitkv.open(db_path)
    ns = db.namespace(b"n:")
    db.close()
    with pytest.raises(bitkv.ClosedError):
        ns[b"k"]
    with pytest.raises(bitkv.ClosedError):
        len(ns)
