"""Encrypted stores from the CLI and `bitkv serve`: the key from a file or the environment,
never from argv; key files others can read are refused (as ssh refuses private keys)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import bitkv
from bitkv_cli.keyfile import load_key
from bitkv_cli.main import cli

EXIT_USAGE, EXIT_STORE = 2, 3
KEY = bytes(range(32))


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def key_file(tmp_path) -> str:
    path = str(tmp_path / "store.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, KEY.hex().encode() + b"\n")
    os.close(fd)
    return path


def bitkv_cli(*args: str, input: bytes | str | None = None, env: dict[str, str] | None = None):
    env = {"BITKV_KEY_FILE": "", "BITKV_ENCRYPTION_KEY": "", **(env or {})}
    result = CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def _is_encrypted(store_dir: str) -> bool:
    try:
        bitkv.open(store_dir, readonly=True).close()
    except bitkv.EncryptionError:
        return True
    return False


def test_key_file_encrypts_and_reads(store_dir, key_file):
    put = bitkv_cli("--dir", store_dir, "--key-file", key_file, "put", "k", "secret")
    assert put.exit_code == 0
    got = bitkv_cli("--dir", store_dir, "--key-file", key_file, "get", "k")
    assert got.exit_code == 0 and got.stdout_bytes == b"secret"
    assert _is_encrypted(store_dir)
    with bitkv.open(store_dir, readonly=True, encryption_key=KEY) as db:
        assert db[b"k"] == b"secret"
    for segment in os.listdir(store_dir):  # the value is sealed on disk
        with open(os.path.join(store_dir, segment), "rb") as fh:
            assert b"secret" not in fh.read()


def test_environment_variables(store_dir, key_file):
    assert bitkv_cli("--dir", store_dir, "put", "k", "v",
                     env={"BITKV_KEY_FILE": key_file}).exit_code == 0
    assert _is_encrypted(store_dir)
    got = bitkv_cli("--dir", store_dir, "get", "k", env={"BITKV_ENCRYPTION_KEY": KEY.hex()})
    assert got.exit_code == 0 and got.stdout_bytes == b"v"
    # --key-file wins over the environment
    wrong = "ff" * 32
    got = bitkv_cli("--dir", store_dir, "--key-file", key_file, "get", "k",
                    env={"BITKV_ENCRYPTION_KEY": wrong})
    assert got.exit_code == 0


def test_raw_32_byte_key_file(store_dir, tmp_path):
    path = str(tmp_path / "raw.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o400)
    os.write(fd, KEY)
    os.close(fd)
    assert load_key(path, {}) == KEY
    assert bitkv_cli("--dir", store_dir, "--key-file", path, "put", "k", "v").exit_code == 0
    with bitkv.open(store_dir, readonly=True, encryption_key=KEY) as db:
        assert db[b"k"] == b"v"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_key_file_readable_by_others_is_refused(store_dir, key_file, mode):
    os.chmod(key_file, mode)
    result = bitkv_cli("--dir", store_dir, "--key-file", key_file, "put", "k", "v")
    assert result.exit_code == EXIT_USAGE
    (line,) = result.stderr.strip().splitlines()
    assert "accessible by group or others" in line and f"chmod 600 {key_file}" in line
    assert not os.path.exists(store_dir)  # nothing was done


@pytest.mark.parametrize("content", [b"", b"abc\n", b"zz" * 32, b"00" * 31, b"00" * 33,
                                     b"\xff" * 40])
def test_bad_key_file_content(store_dir, tmp_path, content):
    path = str(tmp_path / "bad.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    result = bitkv_cli("--dir", store_dir, "--key-file", path, "put", "k", "v")
    assert result.exit_code == EXIT_USAGE
    assert len(result.stderr.strip().splitlines()) == 1
    assert "key" in result.stderr
    assert not os.path.exists(store_dir)


def test_bad_environment_key(store_dir):
    result = bitkv_cli("--dir", store_dir, "put", "k", "v",
                       env={"BITKV_ENCRYPTION_KEY": "not hex"})
    assert result.exit_code == EXIT_USAGE
    assert "$BITKV_ENCRYPTION_KEY is not a key" in result.stderr


def test_missing_key_file(store_dir, tmp_path):
    result = bitkv_cli("--dir", store_dir, "--key-file", str(tmp_path / "none"), "get", "k")
    assert result.exit_code == EXIT_USAGE
    assert "cannot read key file" in result.stderr


def test_encrypted_store_without_or_with_a_wrong_key(store_dir, key_file, tmp_path):
    bitkv_cli("--dir", store_dir, "--key-file", key_file, "put", "k", "v")
    result = bitkv_cli("--dir", store_dir, "get", "k")
    assert result.exit_code == EXIT_STORE
    assert "--key-file" in result.stderr and "BITKV_ENCRYPTION_KEY" in result.stderr
    result = bitkv_cli("--dir", store_dir, "get", "k", env={"BITKV_ENCRYPTION_KEY": "ab" * 32})
    assert result.exit_code == EXIT_STORE
    assert "wrong encryption key" in result.stderr


def test_keygen(tmp_path, store_dir):
    path = str(tmp_path / "new.key")
    result = bitkv_cli("keygen", path)
    assert result.exit_code == 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = load_key(path, {})
    assert key is not None and len(key) == 32
    assert bitkv_cli("keygen", path).exit_code == EXIT_USAGE  # never overwritten
    assert load_key(path, {}) == key
    assert bitkv_cli("--dir", store_dir, "--key-file", path, "put", "a", "1").exit_code == 0
    assert _is_encrypted(store_dir)


def test_shell_with_a_key(store_dir, key_file):
    result = bitkv_cli("--dir", store_dir, "--key-file", key_file, "shell", "--create",
                       input="put a 1\nget a\n")
    assert result.exit_code == 0 and result.stdout == "1\n"
    assert _is_encrypted(store_dir)


def test_serve_takes_the_key_from_a_file_and_keeps_it_out_of_argv(tmp_path, store_dir, key_file):
    redis = pytest.importorskip("redis")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bitkv_cli", "--dir", store_dir, "serve",
                                 "--port", "0", "--key-file", key_file],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "BITKV_ENCRYPTION_KEY": ""})
        try:
            deadline = time.time() + 30
            while not (m := re.search(rb"Ready to accept connections on port (\d+)",
                                      log_path.read_bytes())):
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()
                time.sleep(0.02)
            with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
                assert KEY.hex().encode() not in fh.read()
            client = redis.Redis(port=int(m.group(1)), socket_timeout=10)
            client.set("k", "served")
            assert client.get("k") == b"served"
            client.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _is_encrypted(store_dir)
    with bitkv.open(store_dir, readonly=True, encryption_key=KEY) as db:
        assert db[b"k"] == b"served"


def test_serve_on_an_encrypted_store_without_the_key(store_dir, key_file):
    bitkv_cli("--dir", store_dir, "--key-file", key_file, "put", "k", "v")
    result = bitkv_cli("--dir", store_dir, "serve", "--port", "0")
    assert result.exit_code == EXIT_STORE
    assert "--key-file" in result.stderr


def test_server_config_repr_hides_the_key():
    from bitkv.server.app import ServerConfig

    config = ServerConfig(encryption_key=KEY)
    assert KEY.hex() not in repr(config) and repr(KEY) not in repr(config)


def test_the_global_key_file_reaches_serve(store_dir, key_file, tmp_path):
    """`bitkv --key-file K serve` uses K (as `bitkv --dir D serve` uses D): here a wrong
    key, so the open fails saying so rather than asking for a key."""
    bitkv_cli("--dir", store_dir, "--key-file", key_file, "put", "k", "v")
    wrong = str(tmp_path / "wrong.key")
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"ab" * 32)
    os.close(fd)
    result = bitkv_cli("--dir", store_dir, "--key-file", wrong, "serve", "--port", "0")
    assert result.exit_code == EXIT_STORE
    assert "wrong encryption key" in result.stderr
