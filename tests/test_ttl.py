"""TTLs with an injected clock: visibility, expire/persist, and persistence across reopen."""

from __future__ import annotations

import pytest

import bitkv


@pytest.fixture
def db_path(fast_db_path):
    """Stores of this module live on tmpfs when available (see conftest.fast_base)."""
    return fast_db_path


def _open(path, clock, **kw):
    return bitkv.open(path, clock=clock, **kw)


def _assert_invisible(db, key, others=()):
    """``key`` is expired: no view of the store may show it."""
    assert db.get(key) is None
    assert db.get(key, b"dflt") == b"dflt"
    assert key not in db
    with pytest.raises(KeyError):
        db[key]
    with pytest.raises(KeyError):
        db.ttl(key)
    assert key not in list(db.keys())
    assert key not in list(db)
    assert key not in dict(db.items())
    assert key not in list(db.keys(prefix=key[:1]))
    assert len(db) == len(others)
    assert sorted(db.keys()) == sorted(others)


def test_ttl_counts_down_and_expires_exactly(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v", ttl=10)
        db.put(b"forever", b"f")
        assert db.ttl(b"k") == 10.0
        assert db.ttl(b"forever") is None
        assert db.stats()["expiring_keys"] == 1
        clock.advance(4)
        assert db.ttl(b"k") == 6.0
        clock.advance(5.5)  # binary fractions keep int(t * 1000) exact
        assert db.get(b"k") == b"v"
        assert b"k" in db
        assert len(db) == 2
        assert db.ttl(b"k") == 0.5
        clock.advance(0.5)  # now == expiry: expired
        _assert_invisible(db, b"k", others=[b"forever"])
        assert db.stats()["keys"] == 1


def test_fractional_and_tiny_ttls(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"half", b"v", ttl=0.5)
        db.put(b"tiny", b"v", ttl=1e-9)  # rounds up to 1 ms, never to "no expiry"
        assert db.ttl(b"half") == 0.5
        assert db.ttl(b"tiny") == 0.001
        clock.advance(0.25)
        _assert_invisible(db, b"tiny", others=[b"half"])
        assert db.ttl(b"half") == 0.25
        clock.advance(0.25)
        _assert_invisible(db, b"half")


def test_ttl_survives_reopen(db_path, clock):
    """nutsdb #465: a TTL must neither be lost nor restarted by a reopen."""
    with _open(db_path, clock) as db:
        db.put(b"k", b"v", ttl=10)
        db.put(b"other", b"o", ttl=1000)
    clock.advance(4)
    with _open(db_path, clock) as db:
        assert db.ttl(b"k") == 6.0
        assert db.get(b"k") == b"v"
        assert db.stats()["expiring_keys"] == 2
        clock.advance(6)
        _assert_invisible(db, b"k", others=[b"other"])
    with _open(db_path, clock) as db:
        _assert_invisible(db, b"k", others=[b"other"])
        assert db.ttl(b"other") == 990.0


def test_key_expiring_while_closed_is_invisible_after_reopen(db_path, clock):
    with _open(db_path, clock) as db:
        for i in range(20):
            db.put(b"k%d" % i, b"v", ttl=5 + i)
        db.put(b"keep", b"v")
    clock.advance(10)  # k0..k5 expired
    with _open(db_path, clock) as db:
        alive = [b"keep"] + [b"k%d" % i for i in range(6, 20)]
        for i in range(6):
            _assert_invisible(db, b"k%d" % i, others=alive)
        assert db.stats()["keys"] == len(alive)
    with _open(db_path, clock, readonly=True) as db:
        assert sorted(db.keys()) == sorted(alive)


def test_put_without_ttl_clears_the_ttl(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v1", ttl=5)
        db.put(b"k", b"v2")
        assert db.ttl(b"k") is None
        clock.advance(10)
        assert db.get(b"k") == b"v2"
    with _open(db_path, clock) as db:
        assert db.get(b"k") == b"v2"
        assert db.ttl(b"k") is None


def test_put_with_new_ttl_replaces_the_old_one(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v1", ttl=100)
        db.put(b"k", b"v2", ttl=5)
        assert db.ttl(b"k") == 5.0
        clock.advance(5)
        _assert_invisible(db, b"k")
    with _open(db_path, clock) as db:
        _assert_invisible(db, b"k")


def test_ttl_of_missing_key_raises(db, clock):
    with pytest.raises(KeyError):
        db.ttl(b"missing")


def test_expire(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v")
        assert db.expire(b"k", 30) is True
        assert db.ttl(b"k") == 30.0
        assert db.get(b"k") == b"v"
        assert db.expire(b"k", 60) is True  # replace with a longer one
        assert db.ttl(b"k") == 60.0
        assert db.expire(b"k", 2) is True  # and a shorter one
        assert db.ttl(b"k") == 2.0
        assert db.expire(b"missing", 5) is False
        assert b"missing" not in db
    with _open(db_path, clock) as db:
        assert db.ttl(b"k") == 2.0
        assert db.get(b"k") == b"v"
        clock.advance(2)
        _assert_invisible(db, b"k")
        assert db.expire(b"k", 100) is False  # an expired key is not revived
        _assert_invisible(db, b"k")
    with _open(db_path, clock) as db:
        _assert_invisible(db, b"k")


def test_persist(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"t", b"v", ttl=10)
        db.put(b"p", b"v")
        assert db.persist(b"t") is True
        assert db.ttl(b"t") is None
        assert db.persist(b"t") is False  # no TTL left to remove
        assert db.persist(b"p") is False
        assert db.persist(b"missing") is False
        assert b"missing" not in db
        db.put(b"gone", b"v", ttl=1)
        clock.advance(1)
        assert db.persist(b"gone") is False  # expired: not revived
        _assert_invisible(db, b"gone", others=[b"p", b"t"])
        clock.advance(100)
        assert db.get(b"t") == b"v"
    with _open(db_path, clock) as db:
        assert db.get(b"t") == b"v"
        assert db.ttl(b"t") is None
        _assert_invisible(db, b"gone", others=[b"p", b"t"])


def test_expired_read_never_removes_a_newer_value(db_path, clock):
    """bitcask #191: cleaning up an expired key must not delete a value written meanwhile."""
    with _open(db_path, clock) as db:
        db.put(b"k", b"old", ttl=1)
        db.put(b"j", b"old", ttl=1)
        clock.advance(2)
        assert db.get(b"k") is None  # the read sees the expired record...
        assert b"j" not in db
        db.put(b"k", b"new")  # ...a newer value arrives...
        db.put(b"j", b"new", ttl=50)
        assert len(db) == 2  # ...and the expiry cleanup (len/keys purge) spares it
        assert sorted(db.keys()) == [b"j", b"k"]
        assert db.get(b"k") == b"new"
        assert db.get(b"j") == b"new"
        assert db.ttl(b"j") == 50.0
        assert db.delete(b"k") is True
        db.put(b"k", b"newest")
    with _open(db_path, clock) as db:
        assert db.get(b"k") == b"newest"
        assert db.get(b"j") == b"new"


def test_delete_of_expired_key_does_not_resurrect_older_value(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v1")  # no TTL
        db.put(b"k", b"v2", ttl=1)
        clock.advance(1)
        assert db.delete(b"k") is False  # already invisible
        _assert_invisible(db, b"k")
    with _open(db_path, clock) as db:
        _assert_invisible(db, b"k")
    clock.advance(-10)  # even if the clock steps back, v1 is overwritten, not resurrected
    with _open(db_path, clock) as db:
        assert db.get(b"k") in (None, b"v2")


def test_expired_value_shadows_older_value_across_reopen(db_path, clock):
    with _open(db_path, clock, max_segment_size=4096) as db:
        db.put(b"k", b"v1")
        for i in range(100):  # the older value lands in an older segment
            db.put(b"fill-%d" % i, b"x" * 50)
        db.put(b"k", b"v2", ttl=3)
    clock.advance(3)
    with _open(db_path, clock, max_segment_size=4096) as db:
        _assert_invisible(db, b"k", others=[b"fill-%d" % i for i in range(100)])


def test_ttl_and_compaction(db_path, clock):
    with _open(db_path, clock, max_segment_size=4096) as db:
        if not hasattr(db, "compact"):
            pytest.skip("this engine has no compaction")
        db.put(b"k", b"v1")
        db.put(b"short", b"s", ttl=5)
        db.put(b"long", b"l", ttl=500)
        for i in range(100):
            db.put(b"fill-%d" % i, b"x" * 50)
        db.put(b"k", b"v2", ttl=5)
        for i in range(100):
            db.put(b"fill-%d" % i, b"y" * 50)
        clock.advance(5)
        db.compact()
        others = [b"long"] + [b"fill-%d" % i for i in range(100)]
        _assert_invisible(db, b"k", others=others)
        _assert_invisible(db, b"short", others=others)
        assert db.ttl(b"long") == 495.0
    with _open(db_path, clock, max_segment_size=4096) as db:
        _assert_invisible(db, b"k", others=others)
        assert db.ttl(b"long") == 495.0
        assert all(db.get(b"fill-%d" % i) == b"y" * 50 for i in range(100))


def test_batch_put_with_an_absolute_expiry(db_path, clock):
    now_ms = int(clock.now * 1000)
    with _open(db_path, clock) as db:
        with db.batch() as b:
            b.put(b"abs", b"v", expires_at_ms=now_ms + 2500)
            b.put(b"rel", b"v", ttl=2)
            b.put(b"past", b"v", expires_at_ms=now_ms - 1)  # written already expired
        assert db.ttl(b"abs") == 2.5 and db.ttl(b"rel") == 2.0
        assert b"past" not in db
        with pytest.raises(ValueError):
            db.batch().put(b"x", b"v", ttl=1, expires_at_ms=now_ms)
    with _open(db_path, clock) as db:
        assert db.ttl(b"abs") == 2.5  # the absolute time itself was stored


def test_hold_expired_keeps_expired_keys_for_the_masters_commands(db_path, clock):
    """A replica's store: expired keys stay indexed, hidden from reads, until deleted; inside
    seeing_expired() (the master's commands) they are live."""
    with _open(db_path, clock, log_expirations=True) as db:
        db.hold_expired = True
        db.put(b"k", b"v", ttl=1)
        db.put(b"other", b"o")
        clock.advance(2)
        assert db.get(b"k") is None and b"k" not in db and list(db.keys()) == [b"other"]
        db.purge_expired()  # held: nothing is dropped
        assert db.stats()["keys"] == 2
        with db.seeing_expired():
            assert db.get(b"k") == b"v" and b"k" in db
            assert db.ttl(b"k") == -1.0
            assert db.expire_at(b"k", int(clock.now * 1000) + 5000)  # the master extends it
        assert db.get(b"k") == b"v" and db.ttl(b"k") == 5.0
        clock.advance(10)
        assert db.get(b"k") is None
        db.compact()
        with db.seeing_expired():
            assert db.get(b"k") == b"v"  # compaction keeps it too
            assert sorted(db.keys()) == [b"k", b"other"]
        assert db.delete(b"k") is False  # the master's DEL: gone for good
        with db.seeing_expired():
            assert db.get(b"k") is None
        db.hold_expired = False
        db.put(b"t", b"v", ttl=1)
        clock.advance(2)
        db.purge_expired()
        assert db.stats()["keys"] == 1


def test_hold_expired_at_open_keeps_expired_keys(db_path, clock):
    with _open(db_path, clock) as db:
        db.put(b"k", b"v", ttl=1)
    clock.advance(5)
    with _open(db_path, clock, hold_expired=True) as db:
        assert db.get(b"k") is None
        with db.seeing_expired():
            assert db.get(b"k") == b"v"
    with _open(db_path, clock) as db, db.seeing_expired():
        assert db.get(b"k") is None  # an ordinary open drops it


def test_version_changes_on_every_write_to_the_key_and_survives_compaction(db_path, clock):
    with _open(db_path, clock) as db:
        assert db.version(b"k") is None
        db.put(b"k", b"v")
        seen = [db.version(b"k")]
        assert seen[0] is not None and db.version(b"k") == seen[0]  # reading changes nothing
        db.put(b"other", b"x")
        assert db.version(b"k") == seen[0]  # another key's write
        for write in (lambda: db.put(b"k", b"v"),  # the same value is still a write
                      lambda: db.expire(b"k", 10),
                      lambda: db.persist(b"k"),
                      lambda: db.incr(b"n") and db.put(b"k", b"1"),
                      lambda: db.incr(b"k"),
                      lambda: db.compare_and_set(b"k", b"2", b"3")):
            write()
            seen.append(db.version(b"k"))
        with db.batch() as b:
            b.put(b"k", b"4")
        seen.append(db.version(b"k"))
        assert seen == sorted(set(seen)), seen  # always new, always larger
        for i in range(50):  # garbage for compaction to move the live record past
            db.put(b"junk", b"%d" % i)
        before = db.version(b"k")
        db.compact()
        assert db.version(b"k") == before
        db.expire(b"k", 1)
        clock.advance(1)
        assert db.version(b"k") is None  # expired: no live value
        db.put(b"d", b"v")
        db.delete(b"d")
        assert db.version(b"d") is None
    with _open(db_path, clock) as db:  # versions are the records' seqs: kept on reopen
        assert db.version(b"junk") is not None and db.version(b"k") is None
