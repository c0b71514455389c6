"""Hashes, sets, lists and sorted sets through everything below the server: compaction with
hint files, reopen, a torn tail (recovery), ``bitkv check``, backup, export/import. A
collection is ordinary records to those layers (structures/encoding.py); these tests check
that the collections come back whole, with their order, values, scores and TTL."""

from __future__ import annotations

import json
import os
import random

from click.testing import CliRunner
from collections_support import expiries, logical, populate
from conftest import forget_fsyncs, newest_segment, segment_files

import bitkv
from bitkv.check import check
from bitkv.structures import HashIndex, ListIndex, SetIndex, Structures, ZSetIndex
from bitkv.structures.encoding import PREFIX, pack_position, pack_score
from bitkv_cli.main import cli


def invoke(*args: str, input: bytes | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def churn(s: Structures, rng: random.Random) -> None:
    """Overwrites and deletes, so compaction has dead records of every type to drop."""
    with s.edit(b"hash:big", HashIndex) as e:
        for i in range(0, 600, 2):
            e.put(b"f%d" % i, b"new%d" % i)
        for i in range(1, 600, 4):
            e.delete(b"f%d" % i)
    with s.edit(b"set:big", SetIndex) as e:
        for i in range(0, 600, 3):
            e.delete(b"m\x00%d" % i)
    with s.edit(b"zset:big", ZSetIndex) as e:
        for i in range(0, 600, 5):
            e.put(b"z%d" % i, pack_score(-i / 9))
    with s.edit(b"list:big", ListIndex) as e:
        lst = e.collection
        assert isinstance(lst, ListIndex)
        for p in list(lst.positions)[:100]:
            e.delete(pack_position(p))
        e.put(pack_position(lst.positions[-1] + 1), b"tail")
    s.delete(b"intset:small")
    with s.edit(b"hash:gone", HashIndex) as e:
        e.put(b"x", b"y")
    s.delete(b"hash:gone")


def test_compaction_with_hints_and_reopen_keep_every_collection(tmp_path):
    path = str(tmp_path / "db")
    with bitkv.open(path, max_segment_size=64 * 1024) as db:
        s = Structures(db)
        populate(s, random.Random(1))
        churn(s, random.Random(2))
        want, want_ttl = logical(s), expiries(s)
        before = db.stats()["keys"]
        db.compact()
        assert logical(s) == want  # the live index reads through the compacted segments
        assert db.stats()["keys"] == before
    assert any(f.endswith(".hint") for f in os.listdir(path)), "compaction wrote no hints"
    with bitkv.open(path) as db:  # loads the keydir from the hint files
        s = Structures(db)
        assert logical(s) == want and expiries(s) == want_ttl
        assert s.orphans_removed == 0 and s.malformed == 0
        assert b"hash:gone" not in s and b"intset:small" not in s
        assert not [k for k in db.keys(PREFIX) if b"hash:gone" in k]


def test_a_torn_tail_loses_the_last_edit_whole_or_not_at_all(tmp_path):
    """Cut the log at points inside the last edit (one batch of 200 fields): after recovery
    the hash is as it was before that edit, never a part of it."""
    path = str(tmp_path / "db")
    with bitkv.open(path, sync="never") as db:
        s = Structures(db)
        with s.edit(b"h", HashIndex) as e:
            for i in range(50):
                e.put(b"old%d" % i, b"v")
        before = logical(s)
    seg = newest_segment(path)
    start = os.path.getsize(seg)  # (closed: the segment's preallocation is trimmed)
    with bitkv.open(path, sync="never") as db:
        s = Structures(db)
        with s.edit(b"h", HashIndex) as e:
            for i in range(200):
                e.put(b"new%d" % i, b"w" * 20)
            for i in range(10):
                e.delete(b"old%d" % i)
        after = logical(s)
    forget_fsyncs(path)
    assert segment_files(path)[-1] == seg
    with open(seg, "rb") as f:
        pristine = f.read()
    end = len(pristine)
    rng = random.Random(7)
    for cut in sorted({start + 1, end - 1, *(rng.randrange(start, end) for _ in range(6))}):
        with open(seg, "wb") as f:
            f.write(pristine[:cut])
        forget_fsyncs(path)
        with bitkv.open(path, sync="never") as db:
            assert logical(Structures(db)) == before, cut
    with open(seg, "wb") as f:
        f.write(pristine)
    with bitkv.open(path) as db:
        assert logical(Structures(db)) == after


def test_check_backup_and_restore_keep_the_collections(tmp_path):
    path, dest = str(tmp_path / "db"), str(tmp_path / "backup")
    with bitkv.open(path, max_segment_size=64 * 1024) as db:
        s = Structures(db)
        populate(s, random.Random(3))
        churn(s, random.Random(4))
        db.put(b"plain", b"string")
        want, want_ttl = logical(s), expiries(s)
        db.backup(dest)
    report = check(path)
    assert report.healthy and report.records > 0
    assert "healthy" in invoke("--dir", dest, "check")
    with bitkv.open(dest) as db:
        s = Structures(db)
        assert logical(s) == want and expiries(s) == want_ttl
        assert db.get(b"plain") == b"string"


def test_export_then_import_rebuilds_the_collections(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with bitkv.open(src) as db:
        s = Structures(db)
        populate(s, random.Random(5))
        want, want_ttl = logical(s), expiries(s)
    out = invoke("--dir", src, "export", "--absolute-expiry")
    lines = [json.loads(x) for x in out.splitlines()]
    assert any(x.get("key_encoding") == "base64" for x in lines)  # the internal records
    dump = tmp_path / "dump.jsonl"
    dump.write_text(out)
    invoke("--dir", dst, "import", str(dump))
    with bitkv.open(dst) as db:
        s = Structures(db)
        assert logical(s) == want and expiries(s) == want_ttl


def test_repair_salvages_collections_around_damage(tmp_path):
    """Damage in an older segment costs the records in it; the collections' index, rebuilt
    from what was salvaged, holds no element whose record is gone and no orphan."""
    path = str(tmp_path / "db")
    with bitkv.open(path, max_segment_size=16 * 1024) as db:
        s = Structures(db)
        populate(s, random.Random(6), big=300)
    files = segment_files(path)
    assert len(files) > 3
    victim = files[1]
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        f.write(b"\x00garbage\x00" * 8)
    assert not check(path).healthy
    invoke("--dir", path, "check", "--repair")
    assert check(path).healthy
    with bitkv.open(path) as db:
        s = Structures(db)
        for c in s.items():
            assert len(c) > 0
            assert None not in s.read_many(c, c.subs()), c.key
