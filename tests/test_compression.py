"""zstd compression: round trips, mixed records, thresholds, incompressible values, trained
dictionaries and their persistence."""

from __future__ import annotations

import json
import os
import random

import pytest
import zstandard
from conftest import segment_files

import bitkv
from bitkv import codec
from bitkv import record as rec


def stored_records(path: str) -> dict[bytes, tuple[int, bytes]]:
    """key -> (flags, stored value bytes) of the newest record of each key on disk.

    Reads the segment files directly (ids in order; fine for stores never compacted).
    """
    out: dict[bytes, tuple[int, bytes]] = {}
    for seg in segment_files(path):
        with open(seg, "rb") as fh:
            data = fh.read()
        for r in rec.scan(data, 40):
            if isinstance(r, rec.ScannedRecord):
                start = r.offset + rec.HEADER_SIZE + len(r.key)
                out[r.key] = (r.flags, data[start : r.offset + r.size])
    return out


def session_value(rng: random.Random, i: int) -> bytes:
    """A small JSON session document, like a web app keeps per login."""
    doc = {
        "user_id": rng.randint(1, 5_000_000),
        "created": 1_700_000_000 + rng.randint(0, 10**6),
        "roles": rng.sample(["viewer", "editor", "admin", "billing", "support"], 2),
        "prefs": {"theme": rng.choice(["dark", "light"]), "lang": rng.choice(["en", "de", "fr"]),
                  "tz": rng.choice(["UTC", "Europe/Berlin", "America/New_York"])},
        "csrf": f"{rng.getrandbits(128):032x}",
        "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "n": i,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


COMPRESSIBLE = b"the quick brown fox jumps over the lazy dog; " * 50


def test_zstd_round_trip_sizes(db_path):
    rng = random.Random(1)
    values = {
        b"empty": b"",
        b"one": b"x",
        b"below": b"a" * 255,
        b"at": b"a" * 256,
        b"text": COMPRESSIBLE,
        b"random": rng.randbytes(5000),
        b"big": COMPRESSIBLE * 200,
        b"binary": bytes(range(256)) * 40,
    }
    with bitkv.open(db_path, compression="zstd") as db:
        for k, v in values.items():
            db.put(k, v)
        for k, v in values.items():
            assert db.get(k) == v
    for compression in ("zstd", None):
        with bitkv.open(db_path, compression=compression) as db:
            assert dict(db.items()) == values
    stored = stored_records(db_path)
    assert stored[b"text"][0] & rec.COMPRESSED
    assert len(stored[b"text"][1]) < len(COMPRESSIBLE) // 5
    assert stored[b"big"][0] & rec.COMPRESSED
    assert not stored[b"empty"][0] & rec.COMPRESSED


def test_compression_option_is_validated(db_path):
    with pytest.raises(ValueError):
        bitkv.open(db_path, compression="gzip")
    with pytest.raises(ValueError):
        bitkv.open(db_path, compression="zstd", compression_min_size=-1)


def test_mixed_compressed_and_plain_records(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"plain1", COMPRESSIBLE)
    with bitkv.open(db_path, compression="zstd") as db:
        assert db.get(b"plain1") == COMPRESSIBLE
        db.put(b"zstd1", COMPRESSIBLE + b"1")
    # Without compression= the store's recorded setting (zstd, since the open above) would
    # apply; "none" turns it off explicitly.
    with bitkv.open(db_path, compression="none") as db:
        assert db.get(b"zstd1") == COMPRESSIBLE + b"1"
        db.put(b"plain2", COMPRESSIBLE + b"2")
    with bitkv.open(db_path, compression="zstd") as db:
        db.put(b"zstd2", COMPRESSIBLE + b"3")
        db.put(b"plain1", COMPRESSIBLE + b"4")  # overwritten: now compressed
    stored = stored_records(db_path)
    assert {k: bool(f & rec.COMPRESSED) for k, (f, _v) in stored.items()} == {
        b"plain1": True, b"zstd1": True, b"plain2": False, b"zstd2": True}
    expected = {b"plain1": COMPRESSIBLE + b"4", b"zstd1": COMPRESSIBLE + b"1",
                b"plain2": COMPRESSIBLE + b"2", b"zstd2": COMPRESSIBLE + b"3"}
    for compression in (None, "zstd"):
        with bitkv.open(db_path, compression=compression) as db:
            assert dict(db.items()) == expected
    with bitkv.open(db_path, readonly=True) as db:
        assert dict(db.items()) == expected


def test_values_below_min_size_are_not_compressed(db_path):
    with bitkv.open(db_path, compression="zstd", compression_min_size=512) as db:
        db.put(b"below", b"a" * 511)
        db.put(b"at", b"a" * 512)
        db.put(b"above", b"a" * 4000)
    stored = stored_records(db_path)
    assert stored[b"below"] == (0, b"a" * 511)
    assert stored[b"at"][0] & rec.COMPRESSED
    assert stored[b"above"][0] & rec.COMPRESSED
    with bitkv.open(db_path, compression="zstd", compression_min_size=0) as db:
        db.put(b"tiny", b"aaaaaaaaaaaaaaaa")  # no gain at this size: stored plain anyway
        assert db.get(b"below") == b"a" * 511
    assert stored_records(db_path)[b"tiny"] == (0, b"aaaaaaaaaaaaaaaa")


def test_incompressible_values_are_stored_plain(db_path):
    noise = random.Random(7).randbytes(4096)
    with bitkv.open(db_path, compression="zstd") as db:
        db.put(b"noise", noise)
        db.put(b"zipped", zstandard.ZstdCompressor().compress(COMPRESSIBLE * 10))
        assert db.get(b"noise") == noise
    stored = stored_records(db_path)
    assert stored[b"noise"] == (0, noise)
    assert not stored[b"zipped"][0] & rec.COMPRESSED


def test_compression_with_ttl_batch_incr_and_compaction(db_path, clock):
    with bitkv.open(db_path, compression="zstd", compression_min_size=0, clock=clock) as db:
        db.put(b"ttl", COMPRESSIBLE, ttl=100)
        with db.batch() as b:
            b.put(b"b1", COMPRESSIBLE + b"b1")
            b.put(b"b2", COMPRESSIBLE + b"b2", ttl=50)
        assert db.incr(b"n", 5) == 5
        assert db.expire(b"ttl", 200) is True  # rewrites the stored (compressed) bytes
        for i in range(50):
            db.put(b"churn", COMPRESSIBLE + str(i).encode())
        db.compact()
        assert db.get(b"ttl") == COMPRESSIBLE
        assert db.ttl(b"ttl") == pytest.approx(200.0)
    with bitkv.open(db_path, clock=clock) as db:
        assert db.get(b"b1") == COMPRESSIBLE + b"b1"
        assert db.get(b"b2") == COMPRESSIBLE + b"b2"
        assert db.get(b"churn") == COMPRESSIBLE + b"49"
        assert db.incr(b"n") == 6


def test_corrupted_compressed_value_is_an_error_not_data(db_path):
    with bitkv.open(db_path, compression="zstd") as db:
        db.put(b"k", COMPRESSIBLE)
    # Replace the zstd frame by garbage of the same length, with a valid record CRC.
    (seg,) = segment_files(db_path)
    with open(seg, "rb") as fh:
        data = fh.read()
    (r,) = [x for x in rec.scan(data, 40) if isinstance(x, rec.ScannedRecord)]
    value = data[r.offset + rec.HEADER_SIZE + 1 : r.offset + r.size]
    bad = value[:4] + bytes(len(value) - 4)  # keep the magic, zero the rest
    forged = rec.encode(b"k", bad, r.seq, 0, r.flags)
    with open(seg, "r+b") as fh:
        fh.seek(r.offset)
        fh.write(forged)
    with bitkv.open(db_path) as db, pytest.raises(bitkv.Error):
        db.get(b"k")


# -- trained dictionaries --------------------------------------------------------------------


def sessions(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [session_value(rng, i) for i in range(n)]


def mean_stored(path: str, prefix: bytes) -> float:
    sizes = [len(v) for k, (_f, v) in stored_records(path).items() if k.startswith(prefix)]
    return sum(sizes) / len(sizes)


def test_trained_dictionary_compresses_small_similar_values(tmp_path):
    train, test = sessions(1, 2000), sessions(2, 300)
    assert 150 < sum(map(len, test)) / len(test) < 400
    plain_mean = sum(map(len, test)) / len(test)

    no_dict = str(tmp_path / "nodict")
    with bitkv.open(no_dict, compression="zstd", compression_min_size=64) as db:
        for i, v in enumerate(test):
            db.put(f"s:{i}".encode(), v)
    with_dict = str(tmp_path / "dict")
    with bitkv.open(with_dict, compression="zstd", compression_min_size=64) as db:
        dict_id = db.train_compression_dictionary(train, dict_size=8192)
        for i, v in enumerate(test):
            db.put(f"s:{i}".encode(), v)
        assert all(db.get(f"s:{i}".encode()) == v for i, v in enumerate(test))

    without, with_ = mean_stored(no_dict, b"s:"), mean_stored(with_dict, b"s:")
    # zstd alone barely helps values this small; the dictionary makes them compress well.
    assert without > 0.7 * plain_mean
    assert with_ < 0.6 * without
    frames = [v for _f, v in stored_records(with_dict).values()]
    assert frames and all(zstandard.get_frame_parameters(v).dict_id == dict_id for v in frames)


def test_dictionary_trained_from_the_stores_own_values(db_path):
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        for i, v in enumerate(sessions(3, 1500)):
            db.put(f"s:{i}".encode(), v)
        dict_id = db.train_compression_dictionary(dict_size=8192, sample_count=1000)
        db.put(b"after", sessions(4, 1)[0])
    flags, stored = stored_records(db_path)[b"after"]
    assert flags & rec.COMPRESSED
    assert zstandard.get_frame_parameters(stored).dict_id == dict_id


def test_dictionary_survives_reopen_and_plain_open_reads(db_path):
    values = sessions(5, 200)
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        dict_id = db.train_compression_dictionary(sessions(6, 1000), dict_size=8192)
        for i, v in enumerate(values[:100]):
            db.put(f"s:{i}".encode(), v)
    names = [n for n in os.listdir(db_path) if codec.is_dict_name(n)]
    assert names == [codec.dict_name(dict_id)]
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        for i, v in enumerate(values[100:], start=100):
            db.put(f"s:{i}".encode(), v)  # new values keep using the stored dictionary
    stored = stored_records(db_path)
    assert all(zstandard.get_frame_parameters(stored[f"s:{i}".encode()][1]).dict_id == dict_id
               for i in range(200))
    expected = {f"s:{i}".encode(): v for i, v in enumerate(values)}
    with bitkv.open(db_path) as db:  # no compression option: still reads everything
        assert dict(db.items()) == expected
        db.put(b"plain", values[0])
        db.compact()
        assert dict(db.items()) == {**expected, b"plain": values[0]}
    assert stored_records(db_path)  # (compacted files are still scannable)
    with bitkv.open(db_path, readonly=True) as db:
        assert db.get(b"s:150") == values[150]


def test_missing_dictionary_file_is_an_error_not_data(db_path):
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        dict_id = db.train_compression_dictionary(sessions(8, 500), dict_size=4096)
        db.put(b"k", sessions(9, 1)[0])
    os.unlink(os.path.join(db_path, codec.dict_name(dict_id)))
    with bitkv.open(db_path) as db, pytest.raises(bitkv.Error, match="dictionary"):
        db.get(b"k")


def test_training_needs_samples(db_path):
    with bitkv.open(db_path, compression="zstd") as db, pytest.raises(ValueError):
        db.train_compression_dictionary([b"a", b"b"])
    with bitkv.open(db_path, readonly=True) as db, pytest.raises(bitkv.ReadOnlyError):
        db.train_compression_dictionary(sessions(1, 100))


def test_trained_dictionaries_get_increasing_private_ids(db_path):
    """Ids count up from 32768 (zstd's private range), so "newest" is the highest id."""
    with bitkv.open(db_path, compression="zstd") as db:
        first = db.train_compression_dictionary(sessions(10, 400), dict_size=4096)
        second = db.train_compression_dictionary(sessions(11, 400), dict_size=4096)
    assert first >= 32768
    assert second == first + 1


def test_newest_trained_dictionary_stays_active_after_reopen(db_path):
    first, second = sessions(10, 400), sessions(11, 400)
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        old_id = db.train_compression_dictionary(first, dict_size=4096)
        new_id = db.train_compression_dictionary(second, dict_size=4096)
        assert new_id != old_id
        db.put(b"before", second[0])
    with bitkv.open(db_path, compression="zstd", compression_min_size=64) as db:
        db.put(b"after", second[1])
    stored = stored_records(db_path)
    assert zstandard.get_frame_parameters(stored[b"before"][1]).dict_id == new_id
    assert zstandard.get_frame_parameters(stored[b"after"][1]).dict_id == new_id
