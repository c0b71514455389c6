"""Protected mode (issue 16, and the brief's security rule): a server without a password does
not listen beyond loopback, and refuses non-loopback clients, unless told otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from bitkv.server import ServerThread
from bitkv.server.app import ServerConfig
from bitkv.server.protected import DENIED, check_bind, is_loopback


def _external_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if is_loopback(address) else address


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
    ("192.0.2.7", False), ("example.org", False), ("::ffff:10.0.0.1", False),
])
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_the_bind_rule():
    check_bind(("127.0.0.1", "::1"), has_password=False, protected=True)
    check_bind(("0.0.0.0",), has_password=True, protected=True)
    check_bind(("0.0.0.0",), has_password=False, protected=False)
    with pytest.raises(ValueError, match=r"protected mode: refusing to listen on 0\.0\.0\.0"):
        check_bind(("127.0.0.1", "0.0.0.0"), has_password=False, protected=True)


def test_the_config_refuses_an_exposed_server_without_a_password(tmp_path):
    with pytest.raises(ValueError, match="--requirepass"):
        ServerConfig(dir=str(tmp_path), hosts=("0.0.0.0",))
    with pytest.raises(ValueError, match="protected mode"):
        ServerConfig(dir=str(tmp_path), hosts=("127.0.0.1", "::"), requirepass="")
    assert ServerConfig(dir=str(tmp_path), hosts=("0.0.0.0",), requirepass="s3cret").hosts
    assert not ServerConfig(dir=str(tmp_path), hosts=("0.0.0.0",),
                            protected_mode=False).protected_mode


def test_bitkv_serve_refuses_to_start_exposed_without_a_password(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bitkv_cli.main", "serve", "--dir", str(tmp_path / "db"),
         "--port", "0", "--bind", "0.0.0.0"], capture_output=True, timeout=60)
    assert result.returncode == 2, result.stderr
    err = result.stderr.decode()
    assert "protected mode" in err and "--requirepass" in err and "--protected-mode no" in err
    assert not (tmp_path / "db").exists()  # refused before anything was created


def test_a_non_loopback_client_is_denied_while_no_password_is_set(tmp_path):
    address = _external_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    config = ServerConfig(dir=str(tmp_path / "db"), hosts=(address,), port=0,
                          requirepass="s3cret")
    with ServerThread(config) as srv:
        with socket.create_connection((address, srv.port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(4096).startswith(b"-NOAUTH")  # a password is set: it may AUTH
        assert srv.server is not None
        srv.server.requirepass = None  # as if the password had been cleared at run time
        # The refusal comes as soon as the connection is accepted (as Redis's does): read it
        # before sending anything, since a request the server never reads makes its close a
        # reset that may overtake the reply.
        with socket.create_connection((address, srv.port), timeout=10) as s:
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert got == DENIED  # and then the server closed the connection


def test_config_get_reports_protected_mode(tmp_path):
    redis = pytest.importorskip("redis")
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        r = redis.Redis(port=srv.port)
        assert r.config_get("protected-mode") == {"protected-mode": "yes"}
