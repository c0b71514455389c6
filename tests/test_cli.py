"""The bitkv command, driven in-process with click's CliRunner."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import flip_bit, segment_files

import bitkv
from bitkv import crashtest
from bitkv_cli.main import cli

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_STORE, EXIT_LOCKED = 1, 2, 3, 4


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def run(store_dir):
    """run(*args, input=None, dir=store_dir) -> click Result, for `bitkv --dir DIR args...`."""
    runner = CliRunner()

    def invoke(*args: str, input: bytes | str | None = None, dir: str | None = store_dir,
               env: dict[str, str] | None = None):
        argv = (["--dir", dir] if dir is not None else []) + list(args)
        result = runner.invoke(cli, argv, input=input, env=env, catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- put / get --------------------------------------------------------------------------------


def test_put_then_get(run, store_dir):
    assert run("put", "greeting", "hello, world").exit_code == 0
    result = run("get", "greeting")
    assert result.exit_code == 0
    assert result.stdout_bytes == b"hello, world"  # not a terminal: exactly the value
    assert os.path.isdir(store_dir)


def test_put_reads_stdin_binary_safe(run):
    blob = bytes(range(256)) * 3 + b"\r\n\x00"
    assert run("put", "blob", input=blob).exit_code == 0
    assert run("get", "blob").stdout_bytes == blob
    assert run("put", "dash", "-", input=blob[::-1]).exit_code == 0
    assert run("get", "dash").stdout_bytes == blob[::-1]
    assert run("put", "empty", input=b"").exit_code == 0
    result = run("get", "empty")
    assert (result.exit_code, result.stdout_bytes) == (0, b"")


def test_value_starting_with_a_dash(run):
    assert run("put", "n", "--", "-5").exit_code == 0
    assert run("get", "n").stdout_bytes == b"-5"


def test_get_missing_key(run):
    run("put", "a", "1")
    result = run("get", "nope")
    line = _one_line_error(result, EXIT_NOT_FOUND)
    assert "not found" in line and "nope" in line


def test_hex_keys(run):
    assert run("--hex", "put", "00ff10", "binary key").exit_code == 0
    assert run("--hex", "get", "00FF10").stdout_bytes == b"binary key"
    assert run("put", "text", "t").exit_code == 0
    assert run("--hex", "scan").stdout == "00ff10\n" + b"text".hex() + "\n"
    line = _one_line_error(run("--hex", "get", "xyz"), EXIT_USAGE)
    assert "not valid hex" in line
    _one_line_error(run("--hex", "put", "", "v"), EXIT_USAGE)


@pytest.mark.parametrize("ttl", ["abc", "0", "-5", "nan", "inf", "1e12", ""])
def test_bad_ttl_is_a_usage_error(run, store_dir, ttl):
    line = _one_line_error(run("put", "k", "v", "--ttl", ttl), EXIT_USAGE)
    assert "--ttl" in line
    assert not os.path.exists(store_dir)
    run("put", "k", "v")
    _one_line_error(run("expire", "k", ttl), EXIT_USAGE)


def test_ttl_expire_persist(run):
    run("put", "s", "v", "--ttl", "100")
    left = float(run("ttl", "s").stdout)
    assert 99 < left <= 100
    run("put", "forever", "v")
    assert run("ttl", "forever").stdout == "none\n"
    assert run("expire", "forever", "50").exit_code == 0
    assert 49 < float(run("ttl", "forever").stdout) <= 50
    assert run("persist", "forever").exit_code == 0
    assert run("ttl", "forever").stdout == "none\n"
    again = run("persist", "forever")
    assert again.exit_code == 0 and "no TTL" in again.stderr
    for cmd in (("ttl", "nope"), ("expire", "nope", "5"), ("persist", "nope")):
        _one_line_error(run(*cmd), EXIT_NOT_FOUND)


def test_expired_key_is_gone(run):
    run("put", "brief", "v", "--ttl", "0.001")
    import time

    time.sleep(0.01)
    _one_line_error(run("get", "brief"), EXIT_NOT_FOUND)
    assert run("exists", "brief").exit_code == EXIT_NOT_FOUND


def test_delete_and_exists(run):
    for k in ("a", "b", "c"):
        run("put", k, k)
    assert run("exists", "a").stdout == "yes\n"
    assert run("delete", "a", "b").exit_code == 0
    result = run("exists", "a")
    assert (result.exit_code, result.stdout) == (EXIT_NOT_FOUND, "no\n")
    assert run("exists", "-q", "c").stdout == ""
    line = _one_line_error(run("delete", "c", "zz"), EXIT_NOT_FOUND)
    assert "zz" in line
    assert run("exists", "c").exit_code == EXIT_NOT_FOUND  # deleted despite the missing one
    assert run("delete", "-f", "zz").exit_code == 0


# -- scan / stats / compact -------------------------------------------------------------------


def test_scan(run):
    for k in ("b", "a", "user:2", "user:10", "user:1"):
        run("put", k, f"value of {k}")
    run("put", "ctl\nkey", "line1\nline2\t\x01")
    assert run("scan").stdout.splitlines() == [
        "a", "b", "ctl\\nkey", "user:1", "user:10", "user:2"]
    assert run("scan", "--prefix", "user:", "--limit", "2").stdout == "user:1\nuser:10\n"
    assert run("scan", "--limit", "0").stdout == ""
    assert run("scan", "--prefix", "user:1", "--values").stdout == (
        "user:1\tvalue of user:1\nuser:10\tvalue of user:10\n")
    assert "ctl\\nkey\tline1\\nline2\\t\\x01" in run("scan", "--values").stdout
    rows = [json.loads(line) for line in run("scan", "--json", "--values").stdout.splitlines()]
    assert rows[2] == {"key": "ctl\nkey", "value": "line1\nline2\t\x01"}
    assert [r["key"] for r in rows] == ["a", "b", "ctl\nkey", "user:1", "user:10", "user:2"]
    keys_only = json.loads(run("scan", "--json").stdout.splitlines()[0])
    assert keys_only == {"key": "a"}
    _one_line_error(run("scan", "--limit", "-1"), EXIT_USAGE)


def test_stats(run):
    for i in range(20):
        run("put", "k", f"version {i}")
    text = run("stats").stdout
    for label in ("keys", "segments", "live bytes", "dead bytes", "disk bytes",
                  "fragmentation", "last compaction"):
        assert label in text
    data = json.loads(run("stats", "--json").stdout)
    assert data["keys"] == 1
    assert data["dead_bytes"] > 0
    assert data["fragmentation"] == pytest.approx(
        data["dead_bytes"] / (data["dead_bytes"] + data["live_bytes"]), abs=1e-4)


def test_compact(run):
    for i in range(50):
        run("put", f"k{i % 5}", "x" * 100)
    result = run("compact")
    assert result.exit_code == 0
    assert "bytes_reclaimed" in result.stdout
    summary = json.loads(run("compact", "--json").stdout)
    assert summary["keys_kept"] in (0, 5)
    assert json.loads(run("stats", "--json").stdout)["fragmentation"] == 0.0


# -- missing, foreign and locked stores -------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("get", "k"), ("exists", "k"), ("ttl", "k"), ("scan",), ("stats",), ("export",),
    ("check",), ("delete", "k"), ("expire", "k", "5"), ("persist", "k"), ("compact",),
])
def test_commands_on_a_missing_store_do_not_create_it(run, store_dir, args):
    line = _one_line_error(run(*args), EXIT_STORE)
    assert "no bitkv store" in line
    assert not os.path.exists(store_dir)


def test_empty_directory_is_not_turned_into_a_store_by_a_read(run, store_dir):
    os.mkdir(store_dir)
    _one_line_error(run("get", "k"), EXIT_STORE)
    assert os.listdir(store_dir) == []


def test_directory_that_is_not_a_store(run, store_dir):
    os.mkdir(store_dir)
    with open(os.path.join(store_dir, "thesis.tex"), "w") as fh:
        fh.write("precious")
    for args in (("get", "k"), ("put", "k", "v"), ("check",), ("import", "-")):
        line = _one_line_error(run(*args, input=""), EXIT_STORE)
        assert "not a bitkv store" in line
    assert os.listdir(store_dir) == ["thesis.tex"]


def test_locked_store(run, store_dir):
    run("put", "k", "v")
    with bitkv.open(store_dir):  # another writer holds the lock
        for args in (("put", "k", "w"), ("delete", "k"), ("compact",), ("import", "-")):
            line = _one_line_error(run(*args, input=""), EXIT_LOCKED)
            assert "locked" in line
        # Reads and the check work beside the writer.
        assert run("get", "k").stdout_bytes == b"v"
        assert run("check").exit_code == 0
    assert run("put", "k", "w").exit_code == 0


def test_store_from_environment_and_default(run, tmp_path, monkeypatch):
    env_dir = str(tmp_path / "from-env")
    assert run("put", "k", "env", dir=None, env={"BITKV_DIR": env_dir}).exit_code == 0
    assert os.path.isdir(env_dir)
    monkeypatch.chdir(tmp_path)
    assert run("put", "k", "default", dir=None, env={"BITKV_DIR": ""}).exit_code == 0
    assert os.path.isdir(tmp_path / "bitkv-data")
    assert run("get", "k", dir=None, env={"BITKV_DIR": ""}).stdout_bytes == b"default"


# -- export / import --------------------------------------------------------------------------


def _fill_for_export(store_dir: str) -> dict[bytes, tuple[bytes, float | None]]:
    data = {
        b"text": (b"hello", None),
        b"unicode \xc3\xa9": ("caf\u00e9 \u2603".encode(), None),
        b"bin\xff\xfe": (bytes(range(256)), None),
        b"ttl": (b"short lived", 3600.0),
        b"empty": (b"", None),
        b"json-ish": (b'{"a": [1, "\\n"]}\n', 120.5),
    }
    with bitkv.open(store_dir) as db:
        for k, (v, ttl) in data.items():
            db.put(k, v, ttl=ttl)
    return data


def test_export_format(run, store_dir):
    _fill_for_export(store_dir)
    lines = run("export").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    by_key = {r["key"]: r for r in rows}
    assert by_key["text"] == {"key": "text", "value": "hello", "ttl": None}
    assert by_key["unicode \u00e9"]["value"] == "caf\u00e9 \u2603"
    binary = next(r for r in rows if r.get("key_encoding") == "base64")
    assert binary["value_encoding"] == "base64"
    assert 3590 < by_key["ttl"]["ttl"] <= 3600
    raw_keys = [base64.b64decode(r["key"]) if r.get("key_encoding") == "base64"
                else r["key"].encode() for r in rows]
    assert raw_keys == sorted(raw_keys) and len(raw_keys) == 6
    prefixed = run("export", "--prefix", "t").stdout.splitlines()
    assert [json.loads(line)["key"] for line in prefixed] == ["text", "ttl"]


def test_export_import_round_trip(run, store_dir, tmp_path):
    data = _fill_for_export(store_dir)
    dump = run("export").stdout_bytes
    copy = str(tmp_path / "copy")
    dump_file = tmp_path / "dump.jsonl"
    dump_file.write_bytes(dump)
    result = run("import", str(dump_file), dir=copy)
    assert result.exit_code == 0
    assert f"imported {len(data)}" in result.stdout
    with bitkv.open(copy, readonly=True) as db:
        assert {k: db.get(k) for k in db} == {k: v for k, (v, _t) in data.items()}
        for k, (_v, ttl) in data.items():
            left = db.ttl(k)
            if ttl is None:
                assert left is None
            else:
                assert ttl - 5 < left <= ttl
    # And again through stdin, into a third store: the exports agree (TTLs aside).
    third = str(tmp_path / "third")
    assert run("import", "-", input=dump, dir=third).exit_code == 0

    def strip_ttl(raw: bytes) -> list[dict]:
        rows = [json.loads(line) for line in raw.splitlines()]
        for r in rows:
            r["ttl"] = r["ttl"] is not None
        return rows

    assert strip_ttl(run("export", dir=third).stdout_bytes) == strip_ttl(dump)


def test_export_import_hex_keys(run, store_dir, tmp_path):
    with bitkv.open(store_dir) as db:
        db.put(b"\x00\x01", b"v")
    dump = run("--hex", "export").stdout
    assert json.loads(dump) == {"key": "0001", "key_encoding": "hex", "value": "v", "ttl": None}
    other = str(tmp_path / "other")
    assert run("import", "-", input=dump, dir=other).exit_code == 0
    with bitkv.open(other, readonly=True) as db:
        assert db.get(b"\x00\x01") == b"v"


def test_import_uses_batches(run, monkeypatch):
    calls = []
    real = bitkv.Store.batch

    def spy(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(bitkv.Store, "batch", spy)
    lines = "".join(json.dumps({"key": f"k{i}", "value": "v", "ttl": None}) + "\n"
                    for i in range(2500))
    result = run("import", "-", input=lines)
    assert "imported 2500" in result.stdout
    assert len(calls) == 3  # 1000 + 1000 + 500


@pytest.mark.parametrize(("bad", "why"), [
    ("not json", "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"value": "v"}', 'no "key"'),
    ('{"key": "", "value": "v"}', "key is empty"),
    ('{"key": "k"}', 'no "value"'),
    ('{"key": "k", "value": 5}', "must be a string"),
    ('{"key": "k", "value": "@@", "value_encoding": "base64"}', "not valid base64"),
    ('{"key": "k", "value": "v", "value_encoding": "rot13"}', "must be one of"),
    ('{"key": "k", "value": "v", "ttl": -1}', "ttl"),
    ('{"key": "k", "value": "v", "ttl": "soon"}', "ttl"),
    ('{"key": "k", "value": "v", "ttl": true}', "ttl"),
])
def test_import_bad_line_names_its_number(run, store_dir, bad, why):
    good = json.dumps({"key": "ok", "value": "fine", "ttl": None})
    text = f"{good}\n\n{bad}\n{good}\n"
    line = _one_line_error(run("import", "-", input=text), EXIT_USAGE)
    assert "line 3" in line and why in line
    assert "1 record(s) before it were imported" in line
    with bitkv.open(store_dir, readonly=True) as db:
        assert list(db) == [b"ok"]


def test_import_non_utf8_line_and_missing_file(run, tmp_path):
    line = _one_line_error(run("import", "-", input=b'{"key": "\xff"}\n'), EXIT_USAGE)
    assert "line 1" in line and "UTF-8" in line
    line = _one_line_error(run("import", str(tmp_path / "nope.jsonl")), EXIT_USAGE)
    assert "nope.jsonl" in line


# -- check ------------------------------------------------------------------------------------


def _damaged_store(store_dir: str) -> None:
    with bitkv.open(store_dir, max_segment_size=4096, auto_compact=False) as db:
        for i in range(200):
            db.put(b"k%03d" % i, b"v" * 50)
    first = segment_files(store_dir)[0]
    flip_bit(first, 200)


def test_check_healthy_and_damaged(run, store_dir):
    run("put", "k", "v")
    result = run("check")
    assert result.exit_code == 0 and "healthy" in result.stdout
    _damaged_store(store_dir)
    result = run("check")
    assert result.exit_code == EXIT_NOT_FOUND
    name = os.path.basename(segment_files(store_dir)[0])
    assert f"error: {name} offset" in result.stdout
    assert "DAMAGED" in result.stdout
    report = json.loads(run("check", "--json").stdout)
    assert report["healthy"] is False and report["damaged_files"] == [name]


def test_check_repair(run, store_dir):
    _damaged_store(store_dir)
    with bitkv.open(store_dir, readonly=True) as db:
        expected = {k: db.get(k) for k in db}
    result = run("check", "--repair")
    assert result.exit_code == 0, result.output
    assert "repaired, healthy" in result.stdout
    damaged = [n for n in os.listdir(store_dir) if n.startswith("damaged-")]
    assert len(damaged) == 1
    assert run("check").exit_code == 0
    with bitkv.open(store_dir, readonly=True) as db:
        assert {k: db.get(k) for k in db} == expected
    # Repair of a healthy store does nothing.
    result = run("check", "--repair")
    assert result.exit_code == 0
    assert [n for n in os.listdir(store_dir) if n.startswith("damaged-")] == damaged


def test_check_repair_needs_the_lock(run, store_dir):
    _damaged_store(store_dir)
    with bitkv.open(store_dir):
        result = run("check", "--repair")
    assert result.exit_code == EXIT_LOCKED
    assert "locked" in result.stderr


# -- crashtest --------------------------------------------------------------------------------


def _fake_harness(monkeypatch, violations):
    seen = {}

    def fake_run(directory, *, mode, cycles, seed, progress, **extra):
        if os.path.exists(directory) and os.listdir(directory):
            raise FileExistsError(f"{directory!r} is not empty and was not made by bitkv "
                                  "crashtest")
        seen.update(directory=directory, mode=mode, cycles=cycles, seed=seed, **extra)
        for n in range(cycles):
            progress(n + 1, cycles)
        return crashtest.CrashTestSummary(
            cycles=cycles, operations_acknowledged=10 * cycles,
            operations_verified=10 * cycles, violations=violations,
            seed=1234 if seed is None else seed,
            reproduce_command="bitkv crashtest --seed 1234 --mode kill --cycles 3")

    # The CLI calls bitkv.crashtest.run (the typed API, no import-time guessing): replace it.
    monkeypatch.setattr(crashtest, "run", fake_run)
    return seen


def test_crashtest_reports_success(run, monkeypatch, tmp_path):
    seen = _fake_harness(monkeypatch, [])
    scratch = tmp_path / "scratch"
    result = run("crashtest", "--cycles", "3", "--mode", "whitebox", "--seed", "9",
                 "--dir", str(scratch), "--sync", "never", "--ops-per-cycle", "7")
    assert result.exit_code == 0, result.output
    assert "violations: 0" in result.stdout
    assert seen == {"directory": str(scratch), "mode": "whitebox", "cycles": 3, "seed": 9,
                    "sync": "never", "ops_per_cycle": 7}
    # The default scratch directory is temporary and removed after a pass.
    run("crashtest", "--cycles", "1")
    assert not os.path.exists(seen["directory"])


def test_crashtest_reports_violations_with_seed_and_command(run, monkeypatch):
    _fake_harness(monkeypatch, ["key b'k1' lost after cycle 2"])
    result = run("crashtest", "--cycles", "3")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "lost after cycle 2" in result.stdout
    assert "seed 1234" in result.stderr
    assert "bitkv crashtest --seed 1234" in result.stderr


def test_crashtest_refuses_a_directory_with_files(run, store_dir, monkeypatch):
    _fake_harness(monkeypatch, [])
    run("put", "k", "v")
    line = _one_line_error(run("crashtest", "--dir", store_dir), EXIT_USAGE)
    assert "not empty" in line


def test_crashtest_with_the_real_harness(run, tmp_path):
    scratch = str(tmp_path / "ct")
    result = run("crashtest", "--cycles", "2", "--seed", "1", "--dir", scratch,
                 "--ops-per-cycle", "50")
    assert result.exit_code == 0, result.output
    assert "violations: 0" in result.stdout
    # The same directory again, as a printed reproduce command would use it.
    assert run("crashtest", "--cycles", "1", "--seed", "1", "--dir", scratch,
               "--ops-per-cycle", "50").exit_code == 0


# -- help -------------------------------------------------------------------------------------


def test_help_everywhere(run):
    top = run("--help").stdout
    assert "Exit status" in top and "locked" in top
    for name in cli.commands:
        text = run(name, "--help").stdout
        assert "Example" in text, name


def test_version(run):
    assert bitkv.__version__ in run("--version").stdout


def test_no_command_shows_the_help(run):
    result = run(dir=None)
    assert result.exit_code == EXIT_USAGE
    assert "Usage:" in result.output and "Commands:" in result.output
    line = _one_line_error(run("frobnicate"), EXIT_USAGE)
    assert "No such command" in line


def test_serve_is_registered_lazily_and_follows_the_global_dir(run, monkeypatch):
    assert "serve" in run("--help", dir=None).stdout
    text = run("serve", "--help", dir="my-store").stdout
    assert "Redis" in text and "[default: my-store]" in text  # the global --dir
    # Lazily: the server's modules are not imported by the commands that do not need them.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, bitkv_cli.main; "
         "print(sorted(m for m in sys.modules if m.startswith(('bitkv_cli.serve', "
         "'bitkv.server', 'bitkv.crashtest'))))"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"
