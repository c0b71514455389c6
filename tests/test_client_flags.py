"""Memcached client flags in the engine (record flag CLIENT_FLAGS, docs/format.md "Client
flags") and Store.get_item / put_item: the bytes on disk, every reader seeing the value alone,
compression, encryption, reopen, compaction, check, the change feed, the conditions."""

from __future__ import annotations

import pytest
from conftest import scanned_records

import bitkv
from bitkv import codec
from bitkv import record as rec
from bitkv.history import Cursor

KEY = bytes(range(32))



def test_the_bytes_on_disk_match_the_format_doc(db_path: str) -> None:
    with bitkv.open(db_path) as db:
        db.put_item(b"k", b"hi", client_flags=5)
        db.put_item(b"plain", b"hi")  # client flags 0: an ordinary record
    (flagged, stored), (plain, plain_stored) = scanned_records(db_path)
    assert flagged.flags == rec.CLIENT_FLAGS == 0x40
    assert stored == bytes.fromhex("686900000005")
    assert flagged.value_len == 2 + codec.CLIENT_FLAGS_SIZE
    assert plain.flags == 0 and plain_stored == b"hi"


def test_every_reader_sees_the_value_alone(db_path: str) -> None:
    with bitkv.open(db_path) as db:
        cas = db.put_item(b"k", b"value", client_flags=0xFFFFFFFF, expires_at_ms=2**62)
        assert db.get(b"k") == b"value"
        assert db[b"k"] == b"value"
        assert dict(db.items()) == {b"k": b"value"}
        assert db.get_with_expiry(b"k") == (b"value", 2**62)
        assert db.get_item(b"k") == bitkv.Item(b"value", 0xFFFFFFFF, cas, 2**62)
        changes = db.changes(Cursor(1))
        assert [(c.key, c.value) for c in changes] == [(b"k", b"value")]
        assert db.get_item(b"missing") is None


def test_flags_and_cas_survive_reopen_compaction_and_check(db_path: str) -> None:
    with bitkv.open(db_path, max_segment_size=4096) as db:
        cas = db.put_item(b"k", b"v" * 100, client_flags=42)
        for i in range(200):  # fill sealed segments with dead records
            db.put(b"churn", b"%d" % i * 20)
        before = db.get_item(b"k")
        assert before is not None and before.cas == cas
    with bitkv.open(db_path) as db:
        assert db.get_item(b"k") == before
        db.compact()
        assert db.get_item(b"k") == before
    report = bitkv.check(db_path)
    assert report.healthy and not report.issues, report.issues
    with bitkv.open(db_path) as db:
        assert db.get_item(b"k") == before


def test_expiry_rewrites_keep_the_flags(db_path: str) -> None:
    with bitkv.open(db_path) as db:
        first = db.put_item(b"k", b"v", client_flags=9)
        assert db.expire(b"k", 100)
        item = db.get_item(b"k")
        assert item is not None and item.client_flags == 9 and item.value == b"v"
        assert item.cas > first  # a new record, a new cas
        assert db.persist(b"k")
        assert db.get_item(b"k").client_flags == 9  # type: ignore[union-attr]


@pytest.mark.parametrize("options", [
    {"compression": "zstd", "compression_min_size": 16},
    {"encryption_key": KEY},
    {"compression": "zstd", "compression_min_size": 16, "encryption_key": KEY},
], ids=["zstd", "aes", "zstd+aes"])
def test_with_compression_and_encryption(db_path: str, options: dict[str, object]) -> None:
    pytest.importorskip("cryptography")
    value = b"compressible " * 100
    with bitkv.open(db_path, **options) as db:  # type: ignore[arg-type]
        db.put_item(b"k", value, client_flags=7)
        assert db.get(b"k") == value
        item = db.get_item(b"k")
        assert item is not None and (item.value, item.client_flags) == (value, 7)
    (r, stored), = scanned_records(db_path)
    assert r.flags & rec.CLIENT_FLAGS
    assert value not in stored  # compressed or sealed, flags included
    with bitkv.open(db_path, **options) as db:  # type: ignore[arg-type]
        db.compact()
        assert db.get_item(b"k") == item
        assert db.expire(b"k", 100)  # re-sealed with the new expiry, flags inside
        again = db.get_item(b"k")
        assert again is not None and (again.value, again.client_flags) == (value, 7)


def test_conditions(db_path: str) -> None:
    with bitkv.open(db_path) as db:
        assert db.put_item(b"k", b"1", if_present=True) is None
        first = db.put_item(b"k", b"1", if_absent=True)
        assert first is not None
        assert db.put_item(b"k", b"2", if_absent=True) is None
        assert db.put_item(b"k", b"2", if_cas=first + 100) is None
        second = db.put_item(b"k", b"2", if_cas=first)
        assert second is not None and second > first
        assert db.put_item(b"k", b"3", if_cas=first) is None  # the old cas is spent
        assert db.get(b"k") == b"2"
        assert db.put_item(b"k", b"past", expires_at_ms=1) is not None  # written expired
        assert db.get_item(b"k") is None
        with pytest.raises(ValueError, match="client_flags"):
            db.put_item(b"k", b"x", client_flags=2**32)
        with pytest.raises(ValueError, match="client_flags"):
            db.put_item(b"k", b"x", client_flags=-1)
        with pytest.raises(ValueError, match="if_absent"):
            db.put_item(b"k", b"x", if_absent=True, if_cas=1)


def test_a_flagged_value_too_short_for_its_flags_is_damage() -> None:
    with pytest.raises(bitkv.CorruptionError, match="client flags"):
        codec.split_client_flags(b"k", rec.CLIENT_FLAGS, b"abc")
    assert codec.split_client_flags(b"k", rec.CLIENT_FLAGS, b"ab\x00\x00\x00\x05") == (b"ab", 5)
    assert codec.join_client_flags(b"ab", 0) == (b"ab", 0)


def test_the_cas_returned_by_an_evicting_write_is_the_records(db_path: str) -> None:
    """In cache mode a write may first evict keys (tombstones, each taking a seq): the cas
    put_item returns must still be its own record's, or every later cas would fail."""
    value = b"v" * 100
    with bitkv.open(db_path, max_bytes=4 * 200, eviction="allkeys-lru") as db:
        evicted = 0
        for i in range(20):
            cas = db.put_item(b"key%02d" % i, value, client_flags=7)
            item = db.get_item(b"key%02d" % i)
            assert item is not None and item.cas == cas, i
            assert db.put_item(b"key%02d" % i, value, if_cas=cas) is not None, i
            evicted = db.evicted_keys
        assert evicted > 0  # the bound made the later writes evict
