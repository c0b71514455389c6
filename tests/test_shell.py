"""bitkv shell: one open, many commands -- the CLI's verbs, outputs and exit statuses, driven
through stdin; completion of verbs, options and key prefixes at the function level."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import bitkv
from bitkv_cli.main import Settings, cli
from bitkv_cli.shell import Shell

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_STORE, EXIT_LOCKED = 1, 2, 3, 4


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store")


def shell(store_dir: str, script: str | bytes, *args: str, env: dict[str, str] | None = None):
    """Run `bitkv --dir DIR [args before 'shell'] shell` with ``script`` on stdin."""
    before = [a for a in args if a in ("--hex",)]
    after = [a for a in args if a not in ("--hex",)]
    result = CliRunner().invoke(cli, ["--dir", store_dir, *before, "shell", *after],
                                input=script, env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_one_open_many_commands(store_dir):
    result = shell(store_dir, 'put greeting "hello, world"\nput n 41\nget greeting\n'
                   "get greeting n\nexists n\nttl n\nscan\n", "--create")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ("hello, world\n"        # one key: the value (and a newline)
                             "greeting\thello, world\nn\t41\n"  # several: as scan --values
                             "yes\nnone\ngreeting\nn\n")
    assert result.stderr == ""
    with bitkv.open(store_dir, readonly=True) as db:
        assert db[b"greeting"] == b"hello, world"


def test_the_store_is_opened_once(store_dir, monkeypatch):
    bitkv.open(store_dir).close()
    opened = []
    real_open = bitkv.open

    def counting_open(*a, **kw):
        opened.append(a)
        return real_open(*a, **kw)

    monkeypatch.setattr(bitkv, "open", counting_open)
    result = shell(store_dir, "put a 1\nget a\ndelete a\nexists a\nstats --json\n")
    assert result.exit_code == EXIT_NOT_FOUND  # `exists a` after the delete
    assert len(opened) == 1


def test_failures_continue_and_the_first_status_is_the_exit_status(store_dir):
    result = shell(store_dir, "get missing\nput a 1\nttl --bogus\nget a\n", "--create")
    assert result.exit_code == EXIT_NOT_FOUND  # the first failure's status, after every line
    assert result.stdout == "1\n"
    lines = result.stderr.splitlines()
    assert lines[0] == "bitkv: key not found: missing"
    assert lines[1].startswith("bitkv: error: No such option") and "--bogus" in lines[1]
    assert len(lines) == 2


def test_exit_with_a_status_stops_reading(store_dir):
    result = shell(store_dir, "put a 1\nexit 7\nput b 2\n", "--create")
    assert result.exit_code == 7
    with bitkv.open(store_dir, readonly=True) as db:
        assert b"b" not in db


def test_same_errors_as_the_cli(store_dir):
    one_shot = CliRunner().invoke(cli, ["--dir", store_dir, "--hex", "get", "zz"])
    in_shell = shell(store_dir, "get zz\n", "--hex", "--create")
    assert one_shot.exit_code == in_shell.exit_code == EXIT_USAGE
    assert one_shot.stderr == in_shell.stderr


def test_hex_mode_and_the_hex_builtin(store_dir):
    result = shell(store_dir, "put 00ff 1\nscan\nhex off\nput text 2\nscan\n", "--hex",
                   "--create")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "00ff\n\\x00\\xff\ntext\n"


def test_non_utf8_keys_pass_through_as_in_argv(store_dir):
    result = shell(store_dir, b"put k\xff v\nget k\xff\n", "--create")
    assert result.exit_code == 0, result.stderr
    with bitkv.open(store_dir, readonly=True) as db:
        assert db[b"k\xff"] == b"v"


def test_stdin_is_never_read_for_data(store_dir):
    result = shell(store_dir, "put a\nimport -\nget --keys-from -\nput b 2\n", "--create")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.count("stdin holds the commands") == 3
    with bitkv.open(store_dir, readonly=True) as db:  # the lines after were still commands
        assert list(db.keys()) == [b"b"]


def test_quoting_errors_and_comments(store_dir):
    result = shell(store_dir, '# a comment\n\nput a "unclosed\nput a \'it is\'\nget a\n',
                   "--create")
    assert result.exit_code == EXIT_USAGE
    assert "cannot split the line: No closing quotation" in result.stderr
    assert result.stdout == "it is\n"


def test_readonly_shell_refuses_writes_and_works_beside_a_writer(store_dir):
    with bitkv.open(store_dir) as writer:
        writer.put(b"a", b"1")
        writer.sync()
        result = shell(store_dir, "get a\nput b 2\n", "--readonly")
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == "1\n"
    assert "read-only" in result.stderr


def test_readonly_shell_follows_the_writer(store_dir, capsys):
    """Each command of a long-lived read-only shell sees the writer's writes so far."""
    with bitkv.open(store_dir) as writer, bitkv.open(store_dir, readonly=True) as reader:
        session = Shell(Settings(store_dir, False, store=reader, in_shell=True))
        session.onecmd("get a")
        writer.put(b"a", b"written later")
        writer.sync()
        session.onecmd("get a")
    out, err = capsys.readouterr()
    assert err == "bitkv: key not found: a\n"
    assert out == "written later\n"
    assert session.final_status() == EXIT_NOT_FOUND


def test_a_locked_store_says_so(store_dir):
    with bitkv.open(store_dir):
        result = shell(store_dir, "get a\n")
    assert result.exit_code == EXIT_LOCKED


def test_no_store_is_created_without_create(store_dir):
    result = shell(store_dir, "put a 1\n")
    assert result.exit_code == EXIT_STORE
    assert not os.path.exists(store_dir)


def test_unavailable_verbs(store_dir):
    result = shell(store_dir, "shell\nserve\ncheck --repair\nnosuch\n", "--create")
    assert result.exit_code == EXIT_USAGE
    errors = result.stderr.splitlines()
    assert len(errors) == 4
    assert "not available in the shell" in errors[0]
    assert "quit the shell first" in errors[2]
    assert "no such command 'nosuch'" in errors[3]


def test_help(store_dir):
    result = shell(store_dir, "help\nhelp get\n", "--create")
    assert result.exit_code == 0
    assert "hex on|off" in result.stdout
    assert "--keys-from" in result.stdout  # get's own help


def test_shell_as_a_real_process(store_dir):
    """The installed command: a pipe in, outputs and the exit status out."""
    proc = subprocess.run([sys.executable, "-m", "bitkv_cli", "--dir", store_dir, "shell",
                           "--create"], input=b"put a 1\nget a\nget b\n", capture_output=True,
                          timeout=60)
    assert proc.returncode == EXIT_NOT_FOUND
    assert proc.stdout == b"1\n"
    assert proc.stderr == b"bitkv: key not found: b\n"


# -- completion ----------------------------------------------------------------------------------


@pytest.fixture
def session(store_dir):
    with bitkv.open(store_dir) as db:
        for key in (b"user:1", b"user:2", b"user:10", b"session:9", b"with space", b"\x00\xff"):
            db.put(key, b"v")
        yield Shell(Settings(store_dir, False, store=db, in_shell=True))


def test_complete_key_prefixes(session):
    assert session.complete_key("user:1") == ["user:1", "user:10"]
    assert session.complete_key("user:") == ["user:1", "user:10", "user:2"]
    assert session.complete_key("nothing") == []
    assert session.complete_key("with") == ["'with space'"]  # quoted for the word splitting
    assert session.complete_key("'with") == ["'with space"]  # the user opened the quote
    session.settings.hex_mode = True
    assert session.complete_key("00") == ["00ff"]
    assert session.complete_key("7573") == ["757365723a31", "757365723a3130",
                                            "757365723a32"]
    assert session.complete_key("757") == ["757365723a31", "757365723a3130", "757365723a32"]
    assert session.complete_key("zz") == []


def test_complete_arguments_by_position(session):
    assert session.complete_argument("user:1", "get ") == ["user:1", "user:10"]
    assert session.complete_argument("user:1", "get user:2 ") == ["user:1", "user:10"]
    assert session.complete_argument("user:1", "put ") == ["user:1", "user:10"]
    assert session.complete_argument("user:1", "put user:2 ") == []  # a value, not a key
    assert session.complete_argument("ses", "scan --prefix ") == ["session:9"]
    assert session.complete_argument("ses", "stats ") == []
    assert session.complete_argument("--key", "get ") == ["--keys-from"]
    assert session.complete_argument("--l", "scan ") == ["--limit"]


def test_complete_verbs(session):
    assert session.completenames("ge") == ["get"]
    assert "shell" not in session.completenames("")
    assert "serve" not in session.completenames("s")
    assert {"scan", "stats"} <= set(session.completenames("s"))


# -- a terminal ----------------------------------------------------------------------------------


def test_interactive_on_a_terminal_with_history(store_dir, tmp_path):
    """On a pty: banner and prompt, commands run, and the history is saved with mode 0600."""
    pty = pytest.importorskip("pty")
    import select

    history = tmp_path / "history"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bitkv_cli", "--dir", store_dir, "shell",
                             "--create"], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "BITKV_HISTORY": str(history), "TERM": "dumb"})
    os.close(slave)
    output = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        nonlocal output
        import time

        deadline = time.monotonic() + timeout
        while marker not in output:
            assert time.monotonic() < deadline, output
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"bitkv> ")
        os.write(master, b"put greeting 'hello there'\r")
        read_until(b"bitkv> ")
        output = b""
        os.write(master, b"get greeting\r")
        read_until(b"bitkv> ")
        assert b"hello there" in output
        os.write(master, b"quit\r")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert "put greeting 'hello there'" in history.read_text()
    assert history.stat().st_mode & 0o777 == 0o600


def test_import_and_export_files_in_the_shell(store_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "a", "value": "1"}\n{"key": "b", "value": "2"}\n')
    result = shell(store_dir, f"import {source}\nexport\nget a b\n", "--create")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported 2 record(s)", '{"key": "a", "value": "1", "ttl": null}',
        '{"key": "b", "value": "2", "ttl": null}', "a\t1", "b\t2"]
