"""Multi-key `get` and `delete`, and `--keys-from FILE|-` for scripts."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import bitkv
from bitkv_cli.main import cli

EXIT_NOT_FOUND, EXIT_USAGE = 1, 2


@pytest.fixture
def store_dir(tmp_path) -> str:
    path = str(tmp_path / "store")
    with bitkv.open(path) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"two words")
        db.put(b"c", b"\x00bin")
        db.put(b"\xff", b"x")
        db.put(b"d", b"\xfe\xff")
    return path


def run(store_dir, *args: str, input: bytes | str | None = None):
    result = CliRunner().invoke(cli, ["--dir", store_dir, *args], input=input,
                                catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_get_one_key_prints_exact_bytes(store_dir):
    result = run(store_dir, "get", "c")
    assert result.exit_code == 0 and result.stdout_bytes == b"\x00bin"


def test_get_several_keys_prints_lines_in_order(store_dir):
    result = run(store_dir, "get", "b", "a", "c", "a")
    assert result.exit_code == 0
    assert result.stdout == "b\ttwo words\na\t1\nc\t\\x00bin\na\t1\n"


def test_get_json_is_exact(store_dir):
    result = run(store_dir, "get", "--json", "a", "c", "d")
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"key": "a", "value": "1"}, {"key": "c", "value": "\x00bin"},
                     {"key": "d", "value": "/v8=", "value_encoding": "base64"}]


def test_get_missing_keys_prints_the_rest_then_exits_1(store_dir):
    result = run(store_dir, "get", "a", "nope", "b", "gone")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stdout == "a\t1\nb\ttwo words\n"
    assert result.stderr == "bitkv: key not found: nope, gone\n"


def test_get_many_missing_keys_are_summarised(store_dir):
    result = run(store_dir, "get", *[f"m{i}" for i in range(25)])
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr.strip().endswith("m9 (and 15 more)")


def test_get_needs_a_key(store_dir):
    result = run(store_dir, "get")
    assert result.exit_code == EXIT_USAGE
    assert "at least one KEY" in result.stderr


def test_keys_from_stdin(store_dir):
    result = run(store_dir, "get", "--keys-from", "-", input=b"a\r\n\nb\n")
    assert result.exit_code == 0
    assert result.stdout == "a\t1\nb\ttwo words\n"  # one line per key, even for one


def test_keys_from_binary_keys_in_hex(store_dir):
    result = run(store_dir, "--hex", "get", "--keys-from", "-", input="ff\n 61 \n")
    assert result.exit_code == 0
    assert result.stdout == "ff\tx\n61\t1\n"


def test_keys_from_a_file_plus_arguments(store_dir, tmp_path):
    listing = tmp_path / "keys.txt"
    listing.write_bytes(b"b\n\xff\n")
    result = run(store_dir, "get", "a", "--keys-from", str(listing))
    assert result.exit_code == 0
    assert result.stdout == "a\t1\nb\ttwo words\n\\xff\tx\n"


def test_keys_from_a_missing_file(store_dir, tmp_path):
    result = run(store_dir, "get", "--keys-from", str(tmp_path / "none"))
    assert result.exit_code == EXIT_USAGE
    assert "cannot read" in result.stderr


def test_delete_keys_from_stdin(store_dir):
    result = run(store_dir, "delete", "--keys-from", "-", input=b"a\nb\n")
    assert result.exit_code == 0
    with bitkv.open(store_dir, readonly=True) as db:
        assert sorted(db.keys()) == [b"c", b"d", b"\xff"]


def test_delete_checks_every_key_before_deleting_any(store_dir):
    """A bad line late in the list: nothing is deleted (bad input loses nothing)."""
    result = run(store_dir, "--hex", "delete", "--keys-from", "-", input="61\n62\nzz\n")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.strip() == ("bitkv: error: stdin line 3: key 'zz' is not valid hex "
                                     "(--hex takes pairs of 0-9a-f digits)")
    with bitkv.open(store_dir, readonly=True) as db:
        assert len(db.keys()) == 5


def test_delete_reports_missing_keys(store_dir):
    result = run(store_dir, "delete", "a", "nope", "b")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "bitkv: key not found: nope\n"
    assert run(store_dir, "delete", "-f", "nope").exit_code == 0


def test_scan_output_feeds_delete(store_dir):
    """The scripting idiom: scan a prefix, pipe it to delete."""
    with bitkv.open(store_dir) as db:
        for i in range(50):
            db.put(f"tmp:{i}", b"x")
    keys = run(store_dir, "scan", "--prefix", "tmp:").stdout
    assert run(store_dir, "delete", "--keys-from", "-", input=keys).exit_code == 0
    with bitkv.open(store_dir, readonly=True) as db:
        assert len(db.keys(prefix=b"tmp:")) == 0 and len(db) == 5
