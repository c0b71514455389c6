"""`bitkv backup` beside another process's writer, and `export --absolute-expiry` / `import`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import bitkv
from bitkv_cli.main import cli

EXIT_NOT_FOUND, EXIT_DATA = 1, 5

# Writes op i as key k(i % 300) = "v<i>" and, every 1,500 ops, compacts; after every 50 ops it
# prints how many returned (each put has reached the OS once it returns).
WRITER = textwrap.dedent("""
    import sys, bitkv
    db = bitkv.open(sys.argv[1], max_segment_size=8192, sync="never")
    i = 0
    while True:
        db.put(b"k%03d" % (i % 300), b"v%d" % i + b"." * (i % 90))
        i += 1
        if i % 1500 == 0:
            db.compact()
        if i % 50 == 0:
            print(i, flush=True)
""")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def acked_now(proc: subprocess.Popen[str]) -> int:
    """The number of writes the writer reports done (it reports every 50)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the writer died"
    return int(line)


def check_holds(backup: Path, acked: int) -> None:
    """Every write acknowledged before the backup began is there (or a newer one of its key)."""
    with bitkv.open(backup, readonly=True) as db:
        for slot in range(300):
            last = max((i for i in range(slot, acked, 300)), default=None)
            value = db.get(b"k%03d" % slot)
            if last is None:
                continue
            assert value is not None, slot
            written = int(value.rstrip(b".")[1:])
            assert written % 300 == slot and written >= last, (slot, written, last)


def test_cli_backup_beside_a_writing_compacting_process(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(4):
            acked_now(proc)  # let it get going (and past a compaction or two)
        for round_ in range(4):
            for _ in range(10):
                acked = acked_now(proc)
            full = tmp_path / f"full-{round_}"
            code, out, err = invoke("--dir", str(store), "backup", str(full), "--verify")
            assert code == 0, err
            assert "check:    healthy" in out
            code, out, err = invoke("--dir", str(store), "backup", str(tmp_path / "incr"),
                                    "--verify", "--json", *(["--incremental"] if round_ else []))
            assert code == 0, err
            report = json.loads(out)
            assert report["check"]["healthy"] and report["incremental"] == bool(round_)
            check_holds(full, acked)
            check_holds(tmp_path / "incr", acked)
    finally:
        proc.kill()
        proc.wait()
    for round_ in range(4):
        with bitkv.open(tmp_path / f"full-{round_}") as db:  # and they open for writing
            db.put(b"more", b"1")


def test_cli_backup_errors_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with bitkv.open(store) as db:
        db.put(b"k", b"v")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, out, err = invoke("--dir", str(store), "backup", str(busy))
    assert code == EXIT_DATA and out == ""
    assert err.startswith("bitkv: error: ") and "not a bitkv backup" in err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    code, out, err = invoke("--dir", str(store), "backup", str(store / "sub"))
    assert code == EXIT_DATA and "inside the store" in err


def test_export_absolute_expiry_round_trips_exactly(tmp_path: Path) -> None:
    src, dst, dump = tmp_path / "src", tmp_path / "dst", tmp_path / "dump.jsonl"
    with bitkv.open(src) as db:
        db.put(b"forever", b"1")
        db.put(b"soon", b"2", ttl=3600)
        expiry = db.get_with_expiry(b"soon")
        assert expiry is not None
    code, out, err = invoke("--dir", str(src), "export", "--absolute-expiry")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [{"key": "forever", "value": "1", "expires_at_ms": None},
                     {"key": "soon", "value": "2", "expires_at_ms": expiry[1]}]
    gone = {"key": "gone", "value": "3", "expires_at_ms": int(time.time() * 1000) - 1000}
    dump.write_text(out + json.dumps(gone) + "\n")
    time.sleep(0.05)  # an import later must not move the expiry (a "ttl" export would)
    code, out, err = invoke("--dir", str(dst), "import", str(dump))
    assert code == 0, err
    assert out.strip() == "imported 2 record(s), skipped 1 already expired"
    with bitkv.open(dst, readonly=True) as db:
        assert db.get_with_expiry(b"soon") == (b"2", expiry[1])
        assert db.get_with_expiry(b"forever") == (b"1", 0)
        assert db.get(b"gone") is None


def test_import_refuses_ttl_and_absolute_expiry_together(tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text('{"key": "a", "value": "1", "ttl": 5, "expires_at_ms": 99999999999999}\n'
                    '{"key": "b", "value": "1", "expires_at_ms": "soon"}\n')
    code, _out, err = invoke("--dir", str(tmp_path / "s"), "import", str(dump))
    assert code == 2 and "line 1" in err and "exclude each other" in err
    dump.write_text('{"key": "b", "value": "1", "expires_at_ms": "soon"}\n')
    code, _out, err = invoke("--dir", str(tmp_path / "s"), "import", str(dump))
    assert code == 2 and "line 1" in err and "positive integer" in err


def test_cli_backs_up_an_encrypted_store_with_its_key_file(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    key = bytes(range(32))
    key_file = tmp_path / "key"
    key_file.write_text(key.hex())
    key_file.chmod(0o600)
    with bitkv.open(tmp_path / "s", encryption_key=key) as db:
        db.put(b"secret", b"value")
    code, out, err = invoke("--dir", str(tmp_path / "s"), "--key-file", str(key_file),
                            "backup", str(tmp_path / "bk"), "--verify")
    assert code == 0, err
    assert "check:    healthy" in out
    with bitkv.open(tmp_path / "bk", readonly=True, encryption_key=key) as db:
        assert db[b"secret"] == b"value"
