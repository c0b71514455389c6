"""AES-256-GCM encryption at rest: secrecy on disk, key checks at open, values bound to their
key, key validation, compression + encryption, compaction."""

from __future__ import annotations

import os

import pytest
from conftest import newest_segment, scanned_records

import bitkv
from bitkv import codec
from bitkv import record as rec
from bitkv.check import check

pytest.importorskip("cryptography")

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = b"card=4111-1111-1111-1111;cvv=737;"


def all_file_bytes(path: str) -> bytes:
    out = []
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as fh:
            out.append(fh.read())
    return b"".join(out)



def append_record(path: str, data: bytes) -> None:
    with open(newest_segment(path), "ab") as fh:
        fh.write(data)


def test_values_are_not_visible_on_disk(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"card:1", SECRET)
        db.put(b"card:2", SECRET * 100)  # long and repetitive: still nothing leaks
        with db.batch() as b:
            b.put(b"card:3", SECRET + b"batch")
            b.put(b"card:4", SECRET + b"batch2")
        db.put(b"card:5", SECRET, ttl=3600)
        db.expire(b"card:5", 7200)
        db.compare_and_set(b"card:6", None, SECRET + b"cas")
    blob = all_file_bytes(db_path)
    assert b"card=4111" not in blob
    assert b"cvv" not in blob
    assert b"card:1" in blob  # keys are not encrypted (docs/format.md says so)
    for r, value in scanned_records(db_path):
        assert r.flags & rec.ENCRYPTED
        assert len(value) >= codec.NONCE_SIZE + codec.TAG_SIZE


def test_same_value_twice_gives_different_ciphertexts(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"a", SECRET)
        db.put(b"b", SECRET)
        db.put(b"a", SECRET)
    values = [v for _r, v in scanned_records(db_path)]
    assert len(values) == 3 and len(set(values)) == 3  # a fresh nonce per seal


def test_round_trip_across_reopen(db_path, clock):
    with bitkv.open(db_path, encryption_key=KEY, clock=clock) as db:
        db.put(b"a", SECRET)
        db.put(b"empty", b"")
        db.put(b"t", b"ttl", ttl=100)
        assert db.incr(b"n", 41) == 41
        with db.batch() as b:
            b.put(b"b1", b"x" * 1000)
            b.delete(b"a")
            b.put(b"a", SECRET + b"2")
    with bitkv.open(db_path, encryption_key=bytearray(KEY), clock=clock) as db:
        assert db.get(b"a") == SECRET + b"2"
        assert db.get(b"empty") == b""
        assert db.get(b"b1") == b"x" * 1000
        assert db.get_with_ttl(b"t") == (b"ttl", pytest.approx(100.0))
        assert db.incr(b"n") == 42
        assert db.persist(b"t") is True
        assert db.get_and_delete(b"b1") == b"x" * 1000
    with bitkv.open(db_path, encryption_key=KEY, readonly=True, clock=clock) as db:
        assert dict(db.items()) == {b"a": SECRET + b"2", b"empty": b"", b"t": b"ttl",
                                    b"n": b"42"}
        assert db.ttl(b"t") is None


def test_wrong_key_fails_at_open(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"a", SECRET)
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(db_path, encryption_key=OTHER_KEY)
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(db_path, encryption_key=OTHER_KEY, readonly=True)
    # The failed open released the lock: the right key opens it for writing.
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert db.get(b"a") == SECRET


def test_missing_key_on_encrypted_store_fails_at_open(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"a", SECRET)
    with pytest.raises(bitkv.EncryptionError, match="encrypted"):
        bitkv.open(db_path)
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(db_path, readonly=True)
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert db.get(b"a") == SECRET


def test_encrypted_value_without_key_check_file_is_an_error_not_data(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"a", SECRET)
    os.unlink(os.path.join(db_path, codec.KEYCHECK_NAME))
    with bitkv.open(db_path) as db, pytest.raises(bitkv.EncryptionError):
        db.get(b"a")


def test_sealed_value_moved_to_another_key_fails(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"alice", b"alice's secret")
        db.put(b"mallory", b"mallory's own")
    (alice, sealed), _ = scanned_records(db_path)
    assert alice.key == b"alice"
    # Copy alice's sealed bytes, byte for byte, into a well-formed record for mallory.
    append_record(db_path, rec.encode(b"mallory", sealed, alice.seq + 10, 0, alice.flags))
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert db.get(b"alice") == b"alice's secret"
        with pytest.raises(bitkv.EncryptionError):
            db.get(b"mallory")
        with pytest.raises(bitkv.EncryptionError):
            db[b"mallory"]


def test_tampered_ciphertext_fails(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"k", SECRET)
    ((r, sealed),) = scanned_records(db_path)
    for pos in (0, codec.NONCE_SIZE, len(sealed) // 2, len(sealed) - 1):  # nonce, body, tag
        forged = bytearray(sealed)
        forged[pos] ^= 0x01
        append_record(db_path, rec.encode(b"k", bytes(forged), r.seq + 1 + pos, 0, r.flags))
        with bitkv.open(db_path, encryption_key=KEY) as db:
            with pytest.raises(bitkv.EncryptionError):
                db.get(b"k")
            db.put(b"k", SECRET)  # a good value again for the next round
        r = scanned_records(db_path)[-1][0]
    # A record claiming encryption whose value is too short to be sealed.
    append_record(db_path, rec.encode(b"k", b"short", r.seq + 100, 0, rec.ENCRYPTED))
    with bitkv.open(db_path, encryption_key=KEY) as db, pytest.raises(bitkv.EncryptionError):
        db.get(b"k")


@pytest.mark.parametrize("key", [b"", b"x" * 16, b"x" * 24, b"x" * 31, b"x" * 33, b"x" * 64])
def test_key_must_be_32_bytes(db_path, key):
    with pytest.raises(ValueError):
        bitkv.open(db_path, encryption_key=key)


@pytest.mark.parametrize("key", ["k" * 32, 12345, ["k"] * 32])
def test_key_must_be_bytes(db_path, key):
    with pytest.raises((TypeError, ValueError)):
        bitkv.open(db_path, encryption_key=key)



@pytest.mark.parametrize("key", [b"x" * 16, b"x" * 24, b"x" * 31])
def test_rejected_key_writes_nothing_and_says_32_bytes(db_path, key):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"plain")
    with pytest.raises(ValueError) as info:
        bitkv.open(db_path, encryption_key=key)
    assert codec.KEYCHECK_NAME not in os.listdir(db_path)
    assert "32 bytes" in str(info.value)


def test_rejected_key_leaves_a_plain_store_usable(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"plain")
    with pytest.raises(ValueError):
        bitkv.open(db_path, encryption_key=b"k" * 16)
    with bitkv.open(db_path) as db:  # raises EncryptionError: the store is now "encrypted"
        assert db.get(b"a") == b"plain"


def test_compression_and_encryption_together(db_path):
    value = b'{"user": 42, "roles": ["admin", "editor"], "theme": "dark"} ' * 100
    with bitkv.open(db_path, encryption_key=KEY, compression="zstd") as db:
        db.put(b"doc", value)
        db.put(b"small", b"tiny")  # below compression_min_size: encrypted only
        assert db.get(b"doc") == value
    stored = {r.key: (r.flags, v) for r, v in scanned_records(db_path)}
    flags, sealed = stored[b"doc"]
    assert flags & rec.COMPRESSED and flags & rec.ENCRYPTED
    assert len(sealed) < len(value) // 10  # compressed before it was encrypted
    assert b"roles" not in sealed
    assert stored[b"small"][0] & (rec.COMPRESSED | rec.ENCRYPTED) == rec.ENCRYPTED
    with bitkv.open(db_path, encryption_key=KEY) as db:  # no compression option needed
        assert db.get(b"doc") == value
        assert db.get(b"small") == b"tiny"


def test_encrypted_with_trained_dictionary(db_path):
    docs = [f'{{"user_id":{i},"role":"viewer","theme":"dark","csrf":"{i * 7919:x}"}}'.encode()
            * 3 for i in range(300)]
    with bitkv.open(db_path, encryption_key=KEY, compression="zstd",
                    compression_min_size=32) as db:
        db.train_compression_dictionary(docs[:200], dict_size=2048)
        for i, d in enumerate(docs):
            db.put(f"s:{i}".encode(), d)
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert all(db.get(f"s:{i}".encode()) == d for i, d in enumerate(docs))


def test_trained_dictionary_does_not_leak_plaintext(db_path):
    docs = [f'{{"user_id":{i},"api_secret":"hunter2-ORG-WIDE","n":{i * 7}}}'.encode()
            for i in range(500)]
    with bitkv.open(db_path, encryption_key=KEY, compression="zstd",
                    compression_min_size=32) as db:
        for i, d in enumerate(docs):
            db.put(f"s:{i}".encode(), d)
        db.train_compression_dictionary(dict_size=4096)
    assert b"hunter2" not in all_file_bytes(db_path)


def test_readable_after_compaction(db_path, clock):
    expected = {}
    with bitkv.open(db_path, encryption_key=KEY, compression="zstd", clock=clock,
                    max_segment_size=8192, auto_compact=False) as db:
        for i in range(400):
            k = f"k{i % 50}".encode()
            v = f"value {i} ".encode() * (i % 40 + 1)
            db.put(k, v)
            expected[k] = v
        db.put(b"ttl", SECRET, ttl=50)
        db.delete(b"k0")
        del expected[b"k0"]
        summary = db.compact()
        assert summary["bytes_reclaimed"] > 0
        assert dict((k, v) for k, v in db.items() if k != b"ttl") == expected
        assert db.ttl(b"ttl") == pytest.approx(50.0)
    assert b"value 1" not in all_file_bytes(db_path)
    with bitkv.open(db_path, encryption_key=KEY, clock=clock) as db:
        assert db.get(b"ttl") == SECRET
        del db[b"ttl"]
        assert dict(db.items()) == expected
    for name in os.listdir(db_path):  # and when the compacted segments are scanned, not hinted
        if name.endswith(".hint"):
            os.unlink(os.path.join(db_path, name))
    with bitkv.open(db_path, encryption_key=KEY, readonly=True) as db:
        assert dict(db.items()) == expected
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(db_path, encryption_key=OTHER_KEY)


def test_plain_store_opened_with_a_key_becomes_encrypted(db_path):
    """Existing plain records stay readable; new ones are sealed; the key is required from
    then on."""
    with bitkv.open(db_path) as db:
        db.put(b"old", b"plain value")
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert db.get(b"old") == b"plain value"
        db.put(b"new", SECRET)
    flags = {r.key: r.flags for r, _v in scanned_records(db_path)}
    assert not flags[b"old"] & rec.ENCRYPTED
    assert flags[b"new"] & rec.ENCRYPTED
    with pytest.raises(bitkv.EncryptionError):
        bitkv.open(db_path)
    with bitkv.open(db_path, encryption_key=KEY) as db:
        assert dict(db.items()) == {b"old": b"plain value", b"new": SECRET}


# -- tampering by someone who can write the files but has no key (issue 11, item 8) ------------
#
# Each test rewrites one record of an encrypted store and recomputes its (unkeyed) CRC, as an
# attacker could, then checks that a read raises instead of returning wrong data.

TAMPER_OPTS = {"encryption_key": KEY, "auto_compact": False}


def _records_of(seg: str) -> list[tuple[rec.ScannedRecord, bytes]]:
    with open(seg, "rb") as fh:
        data = fh.read()
    return [(r, data[r.offset + rec.HEADER_SIZE + len(r.key) : r.offset + r.size])
            for r in rec.scan(data, 40) if isinstance(r, rec.ScannedRecord)]


def _rewrite(seg: str, old: rec.ScannedRecord, new: bytes) -> None:
    """Replace record ``old`` in ``seg`` by the record bytes ``new``, CRC and all."""
    with open(seg, "rb") as fh:
        data = fh.read()
    with open(seg, "wb") as fh:
        fh.write(data[: old.offset] + new + data[old.offset + old.size :])


def _tampered_store(db_path: str, **opts: object
                    ) -> tuple[str, list[tuple[rec.ScannedRecord, bytes]]]:
    with bitkv.open(db_path, **TAMPER_OPTS, **opts) as db:
        db.put(b"alice", b"alice-secret-" + b"A" * 300)
        db.put(b"bob", b"bob-secret-" + b"B" * 300)
        db.put(b"carol", b"carol-old-" + b"C" * 300, ttl=3600)
        db.put(b"carol", b"carol-new-" + b"c" * 300, ttl=3600)
    seg = newest_segment(db_path)
    return seg, _records_of(seg)


def _read_fails(db_path: str, key: bytes, **opts: object) -> None:
    with bitkv.open(db_path, readonly=True, encryption_key=KEY, **opts) as db:
        with pytest.raises((bitkv.CorruptionError, bitkv.EncryptionError)):
            db.get(key)
        with pytest.raises((bitkv.CorruptionError, bitkv.EncryptionError)):
            dict(db.items())


def test_clearing_the_encrypted_flag_is_refused_not_returned_as_ciphertext(db_path):
    seg, recs = _tampered_store(db_path)
    r, value = recs[0]
    _rewrite(seg, r, rec.encode(r.key, value, r.seq, r.expiry_ms, r.flags & ~rec.ENCRYPTED))
    with bitkv.open(db_path, readonly=True, encryption_key=KEY) as db:
        with pytest.raises(bitkv.IntegrityError, match="not encrypted"):
            db.get(b"alice")
        assert db.get(b"bob") == b"bob-secret-" + b"B" * 300
    _read_fails(db_path, b"alice")


def test_clearing_the_compressed_flag_is_refused(db_path):
    seg, recs = _tampered_store(db_path, compression="zstd", compression_min_size=16)
    r, value = recs[0]
    assert r.flags & rec.COMPRESSED
    _rewrite(seg, r, rec.encode(r.key, value, r.seq, r.expiry_ms, r.flags & ~rec.COMPRESSED))
    _read_fails(db_path, b"alice", compression="zstd")


def test_replaying_an_older_ciphertext_of_the_same_key_is_refused(db_path):
    seg, recs = _tampered_store(db_path)
    (old, old_value), (new, _new_value) = recs[2], recs[3]
    assert old.key == new.key == b"carol"
    _rewrite(seg, new, rec.encode(new.key, old_value, new.seq, new.expiry_ms, new.flags))
    _read_fails(db_path, b"carol")


def test_zeroing_the_expiry_is_refused(db_path):
    seg, recs = _tampered_store(db_path)
    r, value = recs[3]
    assert r.expiry_ms
    _rewrite(seg, r, rec.encode(r.key, value, r.seq, 0, r.flags))
    _read_fails(db_path, b"carol")


def test_changing_the_seq_is_refused(db_path):
    seg, recs = _tampered_store(db_path)
    r, value = recs[0]
    _rewrite(seg, r, rec.encode(r.key, value, r.seq + 100, r.expiry_ms, r.flags))
    _read_fails(db_path, b"alice")


def test_appended_plain_record_is_refused(db_path):
    _seg, recs = _tampered_store(db_path)
    append_record(db_path, rec.encode(b"alice", b"attacker-chosen", recs[-1][0].seq + 1))
    _read_fails(db_path, b"alice")
    # The writable paths refuse it too: expire must not launder it into a sealed record.
    with bitkv.open(db_path, **TAMPER_OPTS) as db:
        with pytest.raises(bitkv.IntegrityError):
            db.expire(b"alice", 100)
        with pytest.raises(bitkv.IntegrityError):
            db.incr(b"alice")


def test_downgrading_the_key_check_to_version_1_does_not_open_version_2_values(db_path):
    """Replacing ENCRYPTION by a version-1 key check made with the same key (say, kept from
    before an upgrade) must not make version-2 values open with the weaker associated data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _tampered_store(db_path)
    nonce = os.urandom(12)
    v1 = codec.KEYCHECK_MAGIC + nonce + AESGCM(KEY).encrypt(
        nonce, codec._KEYCHECK_PLAINTEXT, codec.KEYCHECK_MAGIC)
    with open(os.path.join(db_path, codec.KEYCHECK_NAME), "wb") as fh:
        fh.write(v1)
    _read_fails(db_path, b"alice")


def test_new_encrypted_store_writes_a_version_2_key_check(db_path):
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"k", b"v")
    with open(os.path.join(db_path, codec.KEYCHECK_NAME), "rb") as fh:
        blob = fh.read()
    assert blob.startswith(codec.KEYCHECK_MAGIC_V2)
    assert codec.keycheck_problem(blob) is None


def test_expire_persist_batch_incr_and_compaction_keep_values_readable(db_path, clock):
    """The associated data holds seq and expiry: every path that writes them must seal anew
    (expire, persist, batches, incr), and compaction, which copies records with the same seq
    and expiry but clears batch bits, must leave them openable."""
    opts = dict(encryption_key=KEY, clock=clock, auto_compact=False, compression="zstd",
                compression_min_size=16)
    with bitkv.open(db_path, **opts) as db:
        db.put(b"t", SECRET * 4, ttl=100)
        assert db.expire(b"t", 500)
        db.put(b"p", SECRET, ttl=100)
        assert db.persist(b"p")
        with db.batch() as b:
            b.put(b"b1", SECRET + b"1", ttl=50)
            b.put(b"b2", SECRET + b"2")
            b.delete(b"p2")
        assert db.incr(b"n", 5) == 5
        assert db.incr(b"n", 2) == 7
        db.compare_and_set(b"c", None, SECRET + b"cas")
        db.compact()
        assert db.expire(b"b1", 900)
    with bitkv.open(db_path, readonly=True, **{k: v for k, v in opts.items()
                                               if k != "auto_compact"}) as db:
        assert db.get(b"t") == SECRET * 4 and db.ttl(b"t") == pytest.approx(500)
        assert db.get(b"p") == SECRET and db.ttl(b"p") is None
        assert db.get(b"b1") == SECRET + b"1" and db.ttl(b"b1") == pytest.approx(900)
        assert db.get(b"b2") == SECRET + b"2"
        assert db.get(b"n") == b"7"
        assert db.get(b"c") == SECRET + b"cas"
    assert all(r.flags & rec.ENCRYPTED for r, _v in scanned_records(db_path)
               if not r.flags & rec.TOMBSTONE)


# -- version-1 stores (written before the associated data bound flags, seq and expiry) ---------


def _make_v1_store(path: str, values: dict[bytes, bytes]) -> None:
    """Build a store as bitkv wrote it with key-only associated data: a BITKVENC key check and
    values sealed with the record key alone as associated data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(KEY)
    with bitkv.open(path) as db:
        db.put(b"plain-old", b"written before the key")
    nonce = os.urandom(12)
    with open(os.path.join(path, codec.KEYCHECK_NAME), "wb") as fh:
        fh.write(codec.KEYCHECK_MAGIC + nonce
                 + aead.encrypt(nonce, codec._KEYCHECK_PLAINTEXT, codec.KEYCHECK_MAGIC))
    seq = max(r.seq for r, _v in scanned_records(path)) + 1
    for k, v in values.items():
        nonce = os.urandom(12)
        append_record(path, rec.encode(k, nonce + aead.encrypt(nonce, v, k), seq, 0,
                                       rec.ENCRYPTED))
        seq += 1


def test_version_1_store_stays_readable_and_version_1(db_path):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _make_v1_store(db_path, {b"a": SECRET, b"b": SECRET + b"b"})
    keycheck = os.path.join(db_path, codec.KEYCHECK_NAME)
    with open(keycheck, "rb") as fh:
        before = fh.read()
    with bitkv.open(db_path, encryption_key=KEY, auto_compact=False) as db:
        assert db.get(b"a") == SECRET
        assert db.get(b"plain-old") == b"written before the key"
        db.put(b"new", SECRET + b"new")
        assert db.expire(b"b", 100)
        db.compact()
    with open(keycheck, "rb") as fh:
        assert fh.read() == before  # not upgraded silently, nor downgraded
    # New records of a version-1 store use the version-1 associated data (the key alone), so
    # the store never mixes the two.
    aead = AESGCM(KEY)
    for r, value in scanned_records(db_path):
        if r.flags & rec.ENCRYPTED:
            aead.decrypt(value[:12], value[12:], r.key)
    with bitkv.open(db_path, encryption_key=KEY, readonly=True) as db:
        assert dict(db.items()) == {b"a": SECRET, b"b": SECRET + b"b", b"new": SECRET + b"new",
                                    b"plain-old": b"written before the key"}
    report = check(db_path)
    assert report.healthy
    assert [i.kind for i in report.issues] == ["keycheck-v1"]


# -- the key-check file and dictionaries (issue 11, item 10) ---------------------------------


def test_a_file_named_encryption_that_is_no_key_check_fails_open_and_check(db_path):
    from click.testing import CliRunner

    from bitkv_cli.main import cli

    with bitkv.open(db_path) as db:
        db.put(b"k", b"v")
    with open(os.path.join(db_path, codec.KEYCHECK_NAME), "wb") as fh:
        fh.write(b"not a key check at all\n")
    for key in (None, KEY):
        with pytest.raises(bitkv.EncryptionError, match="not a valid bitkv key-check file"):
            bitkv.open(db_path, encryption_key=key)
    report = check(db_path)
    assert not report.healthy
    assert [(i.file, i.kind) for i in report.errors] == [(codec.KEYCHECK_NAME, "keycheck")]
    result = CliRunner().invoke(cli, ["--dir", db_path, "check"], catch_exceptions=False)
    assert result.exit_code == 1
    assert codec.KEYCHECK_NAME in result.stdout


def test_missing_key_check_in_a_store_with_sealed_values_is_not_recreated(db_path):
    """Recreating it would let whoever deleted it downgrade the store (or inject plain
    records): the open refuses instead."""
    with bitkv.open(db_path, encryption_key=KEY) as db:
        db.put(b"k", SECRET)
    os.unlink(os.path.join(db_path, codec.KEYCHECK_NAME))
    for readonly in (False, True):
        with pytest.raises(bitkv.EncryptionError, match="missing"):
            bitkv.open(db_path, encryption_key=KEY, readonly=readonly)
    assert not os.path.exists(os.path.join(db_path, codec.KEYCHECK_NAME))


@pytest.mark.parametrize("encrypted", [False, True])
def test_damaged_dictionary_is_reported_as_damaged_not_missing(db_path, encrypted):
    key = KEY if encrypted else None
    samples = [b"session user=%d role=admin theme=dark lang=en-GB " % i * 4 for i in range(200)]
    with bitkv.open(db_path, compression="zstd", compression_min_size=32,
                    encryption_key=key) as db:
        dict_id = db.train_compression_dictionary(samples, dict_size=2048)
        db.put(b"k", samples[7])
    name = codec.dict_name(dict_id)
    path = os.path.join(db_path, name)
    with open(path, "rb") as fh:
        blob = bytearray(fh.read())
    blob[40] ^= 0xFF  # inside the dictionary bytes, or their sealed form
    with open(path, "wb") as fh:
        fh.write(blob)
    with bitkv.open(db_path, compression="zstd", encryption_key=key) as db:
        with pytest.raises(bitkv.CorruptionError, match=f"{name} is damaged") as info:
            db.get(b"k")
        assert "missing" not in str(info.value)
