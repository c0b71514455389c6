"""`bitkv serve` with a password (AUTH, HELLO AUTH, NOAUTH) and with TLS."""

from __future__ import annotations

import datetime
import pathlib
import socket
import ssl
import time
import warnings

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from bitkv.server import ServerThread  # noqa: E402

PASSWORD = "s3cret pass"
NO_RETRY = {"retry": Retry(NoBackoff(), 0)}  # fail fast instead of backing off for seconds


def raw(port: int, payload: bytes) -> bytes:
    """Send ``payload`` (ending with QUIT) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        return read_until_closed(s)


def read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:  # closed with requests of ours still unread
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "db"
    with ServerThread(dir=str(path), port=0, requirepass=PASSWORD) as srv:
        yield srv


def test_commands_need_auth(locked):
    got = raw(locked.port, b"GET k\r\nSET k v\r\nNOSUCH\r\nPING\r\nQUIT\r\n")
    assert got == (b"-NOAUTH Authentication required.\r\n"
                   b"-NOAUTH Authentication required.\r\n"
                   b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n"
                   b"-NOAUTH Authentication required.\r\n+OK\r\n")
    r = redis.Redis(port=locked.port, protocol=2, **NO_RETRY)
    with pytest.raises(redis.exceptions.AuthenticationError):
        r.get("k")


def test_auth_wrong_and_right(locked):
    got = raw(locked.port, b'AUTH nope\r\nAUTH "s3cret pass"\r\nSET k v\r\nGET k\r\nQUIT\r\n')
    assert got == (b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                   b"+OK\r\n+OK\r\n$1\r\nv\r\n+OK\r\n")
    got = raw(locked.port, b'AUTH default "s3cret pass"\r\nGET k\r\nAUTH other "s3cret pass"'
                           b'\r\nQUIT\r\n')
    assert got == (b"+OK\r\n$1\r\nv\r\n"
                   b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n")


def test_redis_py_with_password(locked):
    r = redis.Redis(port=locked.port, password=PASSWORD, protocol=2)
    assert r.set("a", "1") is True
    assert r.get("a") == b"1"
    r3 = redis.Redis(port=locked.port, password=PASSWORD, protocol=3)  # HELLO 3 AUTH ...
    assert r3.get("a") == b"1"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=locked.port, password="wrong", protocol=2, **NO_RETRY).get("a")


def test_hello_needs_auth(locked):
    got = raw(locked.port, b"HELLO 3\r\nHELLO 3 AUTH default wrong\r\n"
                           b'HELLO 3 AUTH default "s3cret pass"\r\nGET nosuch\r\nQUIT\r\n')
    first, rest = got.split(b"\r\n", 1)
    assert first.startswith(b"-NOAUTH HELLO must be called with the client already "
                            b"authenticated")
    assert rest.startswith(b"-WRONGPASS invalid username-password pair or user is disabled."
                           b"\r\n%")
    assert rest.endswith(b"_\r\n+OK\r\n")


def test_unauthenticated_clients_get_small_request_limits(locked):
    with socket.create_connection(("127.0.0.1", locked.port), timeout=10) as s:
        s.sendall(b"*20\r\n")
        assert s.recv(1000) == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    with socket.create_connection(("127.0.0.1", locked.port), timeout=10) as s:
        s.sendall(b"*2\r\n$4\r\nAUTH\r\n$100000\r\n")
        assert s.recv(1000) == b"-ERR Protocol error: unauthenticated bulk length\r\n"
    r = redis.Redis(port=locked.port, password=PASSWORD, protocol=2)
    assert r.set("big", b"x" * 100_000) is True  # fine once authenticated


def test_auth_without_a_password_configured(tmp_path):
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        got = raw(srv.port, b"AUTH x\r\nAUTH default anything\r\nQUIT\r\n")
        assert got == (b"-ERR AUTH <password> called without any password configured for the "
                       b"default user. Are you sure your configuration is correct?\r\n"
                       b"+OK\r\n+OK\r\n")


def test_requirepass_from_environment(monkeypatch, tmp_path):
    testing = pytest.importorskip("click.testing")
    from bitkv_cli.serve import serve

    seen = {}

    def fake_run_server(config):
        seen["config"] = config

    monkeypatch.setattr("bitkv_cli.serve.run_server", fake_run_server)
    monkeypatch.setenv("BITKV_REQUIREPASS", "from-env")
    result = testing.CliRunner().invoke(serve, ["--dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert seen["config"].requirepass == b"from-env"
    assert seen["config"].hosts == ("127.0.0.1",)  # loopback by default
    assert seen["config"].port == 6380


# -- TLS -------------------------------------------------------------------------------------

def make_self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 / localhost, made with `cryptography`."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bitkv-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed(tmp)
    with ServerThread(dir=str(tmp / "db"), port=0, tls_cert=cert, tls_key=key,
                      requirepass=PASSWORD) as srv:
        yield srv, cert


def test_tls_with_redis_py(tls_server):
    srv, cert = tls_server
    r = redis.Redis(host="127.0.0.1", port=srv.port, ssl=True, ssl_ca_certs=cert,
                    password=PASSWORD, protocol=2)
    assert r.set("secure", b"\x00value" * 1000) is True
    assert r.get("secure") == b"\x00value" * 1000
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"t{i}", i)
    assert pipe.execute() == [True] * 500
    assert r.config_get("tls-port") == {"tls-port": str(srv.port)}


def test_tls_verifies_and_refuses_plain_and_old_clients(tls_server):
    srv, cert = tls_server
    # Certificate verification against the self-signed CA, hostname included.
    ctx = ssl.create_default_context(cafile=cert)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"PING\r\n")
        assert tls.recv(100) == b"-NOAUTH Authentication required.\r\n"
    # Plain text to the TLS port: no reply, the handshake fails and the server closes.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        try:
            assert b"PONG" not in sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            pass
    # TLS 1.1 is refused (if this OpenSSL can still speak it at all).
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cert)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1_1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        return
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        old.wrap_socket(sock, server_hostname="localhost")
    assert redis.Redis(host="127.0.0.1", port=srv.port, ssl=True, ssl_ca_certs=cert,
                       password=PASSWORD).ping() is True


# -- AUTH brute force (issue 11) --------------------------------------------------------------

WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


def test_failed_auth_is_delayed_then_disconnected(locked: ServerThread,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from bitkv.server import app

    monkeypatch.setattr(app, "AUTH_FAILURE_DELAY", 0.05)
    monkeypatch.setattr(app, "AUTH_FAILURE_MAX_DELAY", 0.1)
    monkeypatch.setattr(app, "AUTH_MAX_FAILURES", 4)
    started = time.monotonic()
    # 100 pipelined guesses (what took ~1 ms before): the 4th failure closes the connection
    got = raw(locked.port, b"".join(b"AUTH guess%d\r\n" % i for i in range(100)) + b"PING\r\n")
    elapsed = time.monotonic() - started
    assert got == WRONGPASS * 4
    assert elapsed >= 0.05 + 0.1 + 0.1  # the delays after failures 1-3
    # HELLO ... AUTH counts too, and a right password in between starts the count over
    started = time.monotonic()
    got = raw(locked.port, b"AUTH a\r\nHELLO 2 AUTH default b\r\nAUTH default c\r\n"
                           b'AUTH "s3cret pass"\r\nAUTH d\r\nGET nosuch\r\nQUIT\r\n')
    assert got.startswith(WRONGPASS + b"-WRONGPASS") and got.endswith(
        WRONGPASS + b"+OK\r\n" + WRONGPASS + b"$-1\r\n+OK\r\n")
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.1 + 0.05


def test_one_wrong_password_costs_a_person_little(locked: ServerThread) -> None:
    started = time.monotonic()
    got = raw(locked.port, b'AUTH typo\r\nAUTH "s3cret pass"\r\nPING\r\nQUIT\r\n')
    assert got == WRONGPASS + b"+OK\r\n+PONG\r\n+OK\r\n"
    assert 0.1 <= time.monotonic() - started < 1.0


def test_other_clients_are_not_slowed_by_a_guessing_one(locked: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", locked.port), timeout=10) as guesser:
        guesser.sendall(b"".join(b"AUTH guess%d\r\n" % i for i in range(50)))
        r = redis.Redis(port=locked.port, password=PASSWORD, protocol=2)
        started = time.monotonic()
        for _ in range(20):
            assert r.ping() is True
        assert time.monotonic() - started < 1.0


def test_auth_failures_are_limited_server_wide(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Many connections guessing at once share one budget; a password is checked only when
    the budget allows, so a right guess is not confirmed sooner than a wrong one."""
    from bitkv.server import app

    monkeypatch.setattr(app, "AUTH_GLOBAL_RATE", 10.0)
    monkeypatch.setattr(app, "AUTH_GLOBAL_BURST", 3)
    monkeypatch.setattr(app, "AUTH_GLOBAL_MAX_WAIT", 0.25)
    with ServerThread(dir=str(tmp_path / "db"), port=0, requirepass=PASSWORD) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                 for _ in range(12)]
        started = time.monotonic()
        for s in socks:
            s.sendall(b"AUTH wrong\r\nPING\r\n")
        replies = []
        for s in socks:
            data = b""
            while not data.endswith((b"NOAUTH Authentication required.\r\n", b"later\r\n")):
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            replies.append(data)
        elapsed = time.monotonic() - started
        checked = [r for r in replies if r.startswith(WRONGPASS)]
        refused = [r for r in replies
                   if r == b"-ERR too many failed AUTH attempts on this server, try again later"
                           b"\r\n"]
        assert len(checked) + len(refused) == 12
        # the burst of 3, then 10 a second for at most AUTH_GLOBAL_MAX_WAIT (+1 for timing)
        assert 3 <= len(checked) <= 3 + 10 * 0.25 + 1
        assert len(refused) >= 12 - 3 - 4
        assert elapsed >= 0.2  # the checked ones beyond the burst waited their turn
        for s in socks:
            s.close()
        # Once the budget has refilled, the right password works at once.
        time.sleep(0.5)
        started = time.monotonic()
        assert redis.Redis(port=srv.port, password=PASSWORD, protocol=2).ping() is True
        assert time.monotonic() - started < 0.2
