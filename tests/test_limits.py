"""Key and value size limits and accepted types."""

from __future__ import annotations

import array

import pytest

import bitkv


@pytest.fixture
def db_path(fast_db_path):
    """Stores of this module live on tmpfs when available (see conftest.fast_base)."""
    return fast_db_path


def test_limits_are_exported():
    assert bitkv.MAX_KEY_SIZE == 65535
    assert bitkv.MAX_VALUE_SIZE == 64 * 2**20


@pytest.mark.parametrize("size", [1, 2, 255, 256, 4095, 65534, 65535])
def test_key_sizes_within_limit(db_path, size):
    key = bytes([size % 251 + 1]) * size
    with bitkv.open(db_path) as db:
        db.put(key, b"v")
        assert db.get(key) == b"v"
        assert key in db
    with bitkv.open(db_path) as db:
        assert db.get(key) == b"v"
        assert list(db.keys()) == [key]


def test_empty_key_is_refused(db):
    for key in (b"", "", bytearray(), memoryview(b"")):
        with pytest.raises(ValueError, match="empty"):
            db.put(key, b"v")
    with pytest.raises(ValueError, match="empty"):
        db.delete(b"")
    with pytest.raises(ValueError, match="empty"):
        db.get(b"")
    with pytest.raises(ValueError, match="empty"):
        b"" in db  # noqa: B015
    assert len(db) == 0


def test_oversized_key_is_refused(db):
    key = b"k" * 65536
    with pytest.raises(ValueError, match="65535") as exc:
        db.put(key, b"v")
    assert "65536" in str(exc.value)
    with pytest.raises(ValueError, match="65535"):
        db.put("é" * 32768, b"v")  # 65536 bytes once encoded
    with pytest.raises(ValueError, match="65535"):
        db.delete(key)
    with pytest.raises(ValueError, match="65535"):
        key in db  # noqa: B015
    with pytest.raises(ValueError, match="65535"):
        db.ttl(key)
    assert len(db) == 0


def test_get_of_oversized_key_raises_like_every_other_method(db):
    """Found by this suite (fixed in a3bbf6f): get's fast path skipped to_key() for bytes
    keys, so an oversized key returned the default instead of raising."""
    with pytest.raises(ValueError, match="65535"):
        db.get(b"k" * 65536)


def test_value_up_to_the_limit(db_path):
    big = b"\xab" * bitkv.MAX_VALUE_SIZE
    with bitkv.open(db_path, sync="never") as db:
        db.put(b"big", big)
        assert db.get(b"big") == big
    with bitkv.open(db_path, sync="never") as db:
        got = db.get(b"big")
        assert len(got) == bitkv.MAX_VALUE_SIZE
        assert got == big


def test_value_over_the_limit_is_refused(db):
    over = bytearray(bitkv.MAX_VALUE_SIZE + 1)
    with pytest.raises(ValueError, match=str(bitkv.MAX_VALUE_SIZE)):
        db.put(b"big", over)
    with pytest.raises(ValueError, match=str(bitkv.MAX_VALUE_SIZE)):
        db.put(b"big", bytes(over))
    del over
    assert b"big" not in db
    assert db.stats()["live_bytes"] == 0


@pytest.mark.parametrize("bad", [1, 1.5, None, [b"a"], (b"a",), {b"a": 1}, object()])
def test_wrong_key_types(db, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        db.put(bad, b"v")
    with pytest.raises(TypeError, match=type(bad).__name__):
        db.get(bad)
    with pytest.raises(TypeError, match=type(bad).__name__):
        db.delete(bad)
    assert len(db) == 0


@pytest.mark.parametrize("bad", ["text", 1, None, [1, 2], 2.5, object()])
def test_wrong_value_types(db, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        db.put(b"k", bad)
    with pytest.raises(TypeError):
        db[b"k"] = bad
    assert b"k" not in db


def test_str_value_error_suggests_encoding(db):
    with pytest.raises(TypeError, match="encode"):
        db.put(b"k", "text")


def test_str_keys_are_utf8_and_come_back_as_bytes(db_path):
    with bitkv.open(db_path) as db:
        db.put("héllo", b"1")
        db["日本"] = b"2"
        assert db.get(b"h\xc3\xa9llo") == b"1"
        assert db.get("héllo") == b"1"
        assert sorted(db.keys()) == sorted([b"h\xc3\xa9llo", "日本".encode()])
        assert all(type(k) is bytes for k in db)
    with bitkv.open(db_path) as db:
        assert db["日本".encode()] == b"2"
        assert "héllo" in db


def test_bytes_like_keys_and_values(db_path):
    with bitkv.open(db_path) as db:
        db.put(bytearray(b"ba"), bytearray(b"value-1"))
        db.put(memoryview(b"mv"), memoryview(b"value-2"))
        db.put(b"arr", memoryview(array.array("H", [1, 2])))
        buf = bytearray(b"mutable")
        db.put(b"copy", buf)
        buf[:] = b"changed"  # the store took a copy
        assert db.get(b"ba") == b"value-1"
        assert db.get(bytearray(b"mv")) == b"value-2"
        assert db.get(b"arr") == array.array("H", [1, 2]).tobytes()
        assert db.get(b"copy") == b"mutable"
        assert all(type(db.get(k)) is bytes for k in db)
    with bitkv.open(db_path) as db:
        assert db.get(b"ba") == b"value-1"
        assert db.get(b"copy") == b"mutable"


def test_empty_value_is_a_value_not_a_tombstone(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"e", b"")
        assert db.get(b"e") == b""
        assert db.get(b"e", b"default") == b""
        assert b"e" in db
        assert len(db) == 1
        assert list(db.items()) == [(b"e", b"")]
    with bitkv.open(db_path) as db:
        assert db.get(b"e", b"default") == b""
        assert b"e" in db
        assert db[b"e"] == b""
        assert db.delete(b"e") is True
    with bitkv.open(db_path) as db:
        assert b"e" not in db


@pytest.mark.parametrize(
    ("ttl", "exc"),
    [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (10**12, ValueError), ("5", TypeError), (True, TypeError), (b"5", TypeError)],
)
def test_bad_ttl_values(db, ttl, exc):
    with pytest.raises(exc):
        db.put(b"k", b"v", ttl=ttl)
    db.put(b"k", b"v")
    with pytest.raises(exc):
        db.expire(b"k", ttl)
    assert db.ttl(b"k") is None


@pytest.mark.parametrize("bad", [3, 1.5, [b"a"], object()])
def test_non_bytes_prefix_is_a_type_error(db, bad):
    """Found by this suite (fixed in a3bbf6f): keys()/items() coerced the prefix with
    bytes(prefix), so keys(prefix=3) silently meant prefix b"\\0\\0\\0"."""
    db.put(b"\x00\x00\x00zero", b"v")
    with pytest.raises(TypeError):
        list(db.keys(prefix=bad))
    with pytest.raises(TypeError):
        list(db.items(prefix=bad))
