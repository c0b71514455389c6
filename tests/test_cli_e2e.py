"""The installed ``bitkv`` entry point, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import bitkv as bitkv_lib

BIN_DIR = os.path.dirname(sys.executable)


def _bitkv() -> list[str]:
    """The console script next to this interpreter, else on PATH, else ``python -m``."""
    beside = os.path.join(BIN_DIR, "bitkv")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("bitkv")
    if found:
        return [found]
    return [sys.executable, "-m", "bitkv_cli"]


def bitkv(*args: str, cwd=None, input: bytes | None = None, check: bool = False
          ) -> subprocess.CompletedProcess:
    result = subprocess.run([*_bitkv(), *args], cwd=cwd, input=input, capture_output=True,
                            timeout=60, env={**os.environ, "BITKV_DIR": ""})
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def test_readme_first_command(tmp_path):
    if not (os.access(os.path.join(BIN_DIR, "bitkv"), os.X_OK) or shutil.which("bitkv")):
        pytest.skip("the bitkv console script is not installed")
    env = {**os.environ, "PATH": BIN_DIR + os.pathsep + os.environ.get("PATH", "")}
    env.pop("BITKV_DIR", None)
    result = subprocess.run('bitkv put greeting "hello, world" && bitkv get greeting',
                            shell=True, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"hello, world"
    assert (tmp_path / "bitkv-data").is_dir()


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "bitkv_cli", "--version"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0
    assert b"bitkv" in result.stdout


def test_binary_values_through_pipes(tmp_path):
    store = str(tmp_path / "s")
    blob = os.urandom(70_000) + b"\x00\r\n"
    bitkv("--dir", store, "put", "blob", input=blob, check=True)
    assert bitkv("--dir", store, "get", "blob", check=True).stdout == blob
    bitkv("--dir", store, "--hex", "put", "ff00", "-", input=b"\xff", check=True)
    assert bitkv("--dir", store, "--hex", "get", "ff00", check=True).stdout == b"\xff"


def test_errors_are_one_line_with_documented_status(tmp_path):
    missing = str(tmp_path / "missing")
    result = bitkv("--dir", missing, "get", "k")
    assert result.returncode == 3
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert not os.path.exists(missing)
    result = bitkv("--dir", missing, "put", "k", "v", "--ttl", "soon")
    assert result.returncode == 2
    assert len(result.stderr.decode().strip().splitlines()) == 1


def test_store_locked_by_another_process(tmp_path):
    store = str(tmp_path / "s")
    bitkv("--dir", store, "put", "k", "v", check=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, bitkv\n"
         "db = bitkv.open(sys.argv[1])\n"
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n"
         "db.close()\n", store],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        result = bitkv("--dir", store, "put", "k", "w")
        assert result.returncode == 4
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "locked" in lines[0] and f"pid {holder.pid}" in lines[0]
        assert bitkv("--dir", store, "get", "k", check=True).stdout == b"v"
        assert bitkv("--dir", store, "check").returncode == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    bitkv("--dir", store, "put", "k", "w", check=True)


def test_closed_pipe_is_not_an_error(tmp_path):
    store = str(tmp_path / "s")
    lines = "".join(json.dumps({"key": f"key-{i:06d}-" + "x" * 40, "value": "v", "ttl": None})
                    + "\n" for i in range(4000))
    bitkv("--dir", store, "import", "-", input=lines.encode(), check=True)
    proc = subprocess.Popen([*_bitkv(), "--dir", store, "scan"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first == b"key-000000-" + b"x" * 40 + b"\n"
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_serve_on_a_locked_store_exits_4_with_a_shell_message(tmp_path):
    store = tmp_path / "db"
    with bitkv_lib.open(str(store)):
        result = bitkv("serve", "--dir", str(store), "--port", "0")
    assert result.returncode == 4, result.stderr
    err = result.stderr.decode()
    assert "locked for writing" in err and "stop that process" in err
    assert "readonly=True" not in err  # a Python hint means nothing at a shell
