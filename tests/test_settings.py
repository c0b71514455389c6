"""The compression setting is the store's (issue 16): recorded in SETTINGS by an explicit
choice, followed by every opener that names none -- the CLI and the server included."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from conftest import segment_files

import bitkv
from bitkv import record as rec
from bitkv import settings
from bitkv.check import check, repair
from bitkv_cli.main import cli

BIG = b"the quick brown fox jumps over the lazy dog; " * 50  # compresses well
SETTINGS = "SETTINGS"


def compressed(path: str) -> dict[bytes, bool]:
    """key -> whether its newest record on disk is COMPRESSED."""
    out: dict[bytes, bool] = {}
    for seg in segment_files(path):
        with open(seg, "rb") as fh:
            data = fh.read()
        for r in rec.scan(data, 40):
            if isinstance(r, rec.ScannedRecord):
                out[r.key] = bool(r.flags & rec.COMPRESSED)
    return out


def test_an_explicit_setting_is_recorded_and_followed(db_path):
    with bitkv.open(db_path, compression="zstd") as db:
        db.put(b"a", BIG)
        assert db.compression == settings.Compression("zstd", 256)
    with open(os.path.join(db_path, SETTINGS), "rb") as fh:  # the bytes docs/format.md shows
        assert fh.read().hex(" ") == ("42 49 54 4b 56 53 45 54 01 00 01 00 00 01 00 00 "
                                      "00 00 00 00 1b 6f be 08")
    with bitkv.open(db_path) as db:  # names no compression: follows the record
        assert db.compression.algorithm == "zstd"
        db.put(b"b", BIG)
    assert compressed(db_path) == {b"a": True, b"b": True}


def test_the_cli_writes_compressed_into_a_compressed_store(tmp_path):
    """The issue's complaint: `bitkv put` into a zstd store stored values uncompressed."""
    path = str(tmp_path / "store")
    bitkv.open(path, compression="zstd").close()
    result = CliRunner().invoke(cli, ["--dir", path, "put", "k", BIG.decode()])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["--dir", path, "shell"], input=f"put s '{BIG.decode()}'\n")
    assert result.exit_code == 0, result.output
    assert compressed(path) == {b"k": True, b"s": True}
    with bitkv.open(path, readonly=True) as db:
        assert db[b"k"] == db[b"s"] == BIG


def test_the_server_writes_compressed_into_a_compressed_store(tmp_path):
    """`bitkv serve` names no compression either: its SETs (the group commit's batch, and
    the other write paths) follow the store's setting."""
    redis = pytest.importorskip("redis")
    from bitkv.server.app import ServerConfig, ServerThread

    path = str(tmp_path / "store")
    bitkv.open(path, compression="zstd").close()
    with ServerThread(ServerConfig(dir=path, port=0)) as server:
        r = redis.Redis(port=server.port, protocol=2)
        r.set("grouped", BIG)
        r.set("with-ttl", BIG, ex=3600)
        r.mset({"m": BIG})
        r.close()
    assert compressed(path) == {b"grouped": True, b"with-ttl": True, b"m": True}
    with bitkv.open(path, readonly=True) as db:
        assert db[b"grouped"] == db[b"with-ttl"] == db[b"m"] == BIG


def test_explicit_none_overrides_and_is_recorded(db_path):
    bitkv.open(db_path, compression="zstd").close()
    with bitkv.open(db_path, compression="none") as db:
        assert db.compression.algorithm is None
        db.put(b"a", BIG)
    with bitkv.open(db_path) as db:
        db.put(b"b", BIG)
    assert compressed(db_path) == {b"a": False, b"b": False}


def test_min_size_is_recorded_too(db_path):
    bitkv.open(db_path, compression="zstd", compression_min_size=4096).close()
    with bitkv.open(db_path) as db:
        assert db.compression == settings.Compression("zstd", 4096)
        db.put(b"small", BIG)  # 2,250 bytes: below the recorded minimum
        db.put(b"large", BIG * 2)
    assert compressed(db_path) == {b"small": False, b"large": True}
    with bitkv.open(db_path, compression_min_size=16) as db:  # one option overrides alone
        assert db.compression == settings.Compression("zstd", 16)
    with bitkv.open(db_path, readonly=True) as db:
        assert db.compression == settings.Compression("zstd", 16)


def test_defaults_write_no_file_and_readers_write_nothing(db_path):
    bitkv.open(db_path).close()
    bitkv.open(db_path, compression="none").close()  # the default, named: still nothing
    assert not os.path.exists(os.path.join(db_path, SETTINGS))
    with bitkv.open(db_path, readonly=True, compression="zstd") as db:
        assert db.compression.algorithm == "zstd"  # for this open only
    assert not os.path.exists(os.path.join(db_path, SETTINGS))


def test_unknown_compression_is_refused(db_path):
    with pytest.raises(ValueError, match="compression must be"):
        bitkv.open(db_path, compression="gzip")
    with pytest.raises(ValueError):
        bitkv.open(db_path, compression_min_size=-1)


def _damage(db_path: str, data: bytes) -> None:
    with open(os.path.join(db_path, SETTINGS), "wb") as fh:
        fh.write(data)


@pytest.mark.parametrize("data", [b"", b"junk", settings.encode(settings.DEFAULT)[:-1] + b"\0",
                                  b"BITKVSEX" + settings.encode(settings.DEFAULT)[8:]])
def test_a_damaged_file_stops_writers_that_name_no_compression(db_path, data):
    bitkv.open(db_path, compression="zstd").close()
    _damage(db_path, data)
    with pytest.raises(bitkv.CorruptionError, match="SETTINGS is damaged"):
        bitkv.open(db_path)
    bitkv.open(db_path, readonly=True).close()  # a reader writes nothing: it needs no setting
    report = check(db_path)
    assert not report.healthy and any(i.kind == "settings" for i in report.issues)
    with bitkv.open(db_path, compression="zstd") as db:  # naming it rewrites the file
        db.put(b"a", BIG)
    with bitkv.open(db_path) as db:
        assert db.compression.algorithm == "zstd"
    assert check(db_path).healthy


def test_a_newer_version_is_refused_by_writers(db_path):
    bitkv.open(db_path, compression="zstd").close()
    newer = bytearray(settings.encode(settings.Compression("zstd", 256)))
    newer[8] = 2
    _damage(db_path, bytes(newer))
    with pytest.raises(bitkv.FormatVersionError, match="version 2"):
        bitkv.open(db_path)
    with pytest.raises(bitkv.FormatVersionError):
        bitkv.open(db_path, compression="zstd")  # not overwritten: it may say more
    bitkv.open(db_path, readonly=True).close()


def test_a_leftover_temporary_is_removed(db_path):
    bitkv.open(db_path).close()
    _damage(db_path, b"")
    os.rename(os.path.join(db_path, SETTINGS), os.path.join(db_path, SETTINGS + ".tmp"))
    with bitkv.open(db_path) as db:
        assert db.compression == settings.DEFAULT
    assert not os.path.exists(os.path.join(db_path, SETTINGS + ".tmp"))


def test_repair_into_a_new_store_keeps_the_setting(db_path, tmp_path):
    with bitkv.open(db_path, compression="zstd") as db:
        db.put(b"a", BIG)
    segment = segment_files(db_path)[-1]
    with open(segment, "r+b") as fh:  # damage a record so that repair has work to do
        fh.seek(60)
        byte = fh.read(1)
        fh.seek(60)
        fh.write(bytes([byte[0] ^ 0xFF]))
    repaired = str(tmp_path / "repaired")
    repair(db_path, output=repaired)
    with bitkv.open(repaired) as db:
        assert db.compression.algorithm == "zstd"


def test_the_codec_round_trips():
    for value in (settings.DEFAULT, settings.Compression("zstd", 0),
                  settings.Compression("zstd", 2**64 - 1)):
        assert settings.decode(settings.encode(value), "x") == value


def test_stats_shows_the_setting(tmp_path):
    path = str(tmp_path / "store")
    bitkv.open(path, compression="zstd", compression_min_size=100).close()
    text = CliRunner().invoke(cli, ["--dir", path, "stats"]).stdout
    assert "compression      zstd (values of 100 bytes or more)" in text
    data = json.loads(CliRunner().invoke(cli, ["--dir", path, "stats", "--json"]).stdout)
    assert data["compression"] == {"algorithm": "zstd", "min_size": 100}
