"""Connection commands: PING, ECHO, QUIT, SELECT, AUTH, HELLO, RESET, CLIENT."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING

from ... import __version__ as BITKV_VERSION
from .. import clients
from ..protocol import (
    OK,
    ONE,
    PONG,
    ZERO,
    bulk,
    bulk_array,
    encode_value,
    integer,
    parse_ll,
    verbatim,
)
from .registry import (
    F_FAST,
    F_NOAUTH,
    F_PUBSUB,
    F_STATE,
    F_TXCTL,
    NOT_INT,
    REDIS_VERSION,
    SYNTAX,
    CommandError,
    arity_error,
    command,
    to_int,
)

if TYPE_CHECKING:
    from ..app import Connection
    from ..control import ClientView

PUBSUB_PONG = b"*2\r\n$4\r\npong\r\n"


@command("ping", -1, F_FAST | F_PUBSUB, group="connection", summary="Ping the server")
def cmd_ping(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2:
        return arity_error("ping")
    if c.subscriptions is not None and c.pubsub_restricted:  # a property call only then
        # Subscribed in RESP2, a client reads arrays only (messages), so PING answers one.
        return PUBSUB_PONG + bulk(args[1] if len(args) == 2 else b"")
    if len(args) == 2:
        return bulk(args[1])
    return PONG


@command("echo", 2, F_FAST, group="connection", summary="Echo the given string")
def cmd_echo(c: Connection, args: list[bytes]) -> bytes:
    return bulk(args[1])


@command("quit", 1, F_NOAUTH | F_TXCTL | F_FAST | F_PUBSUB, group="connection",
         summary="Close the connection")
def cmd_quit(c: Connection, args: list[bytes]) -> bytes:
    c.close_after_reply()
    return OK


@command("select", 2, F_FAST, group="connection", summary="Change the selected database")
def cmd_select(c: Connection, args: list[bytes]) -> bytes:
    index = parse_ll(args[1])
    if index is None or not -(2**31) <= index < 2**31:
        raise CommandError(NOT_INT)
    if index != 0:
        raise CommandError("ERR DB index is out of range")
    return OK


def _check_password(c: Connection, user: bytes, password: bytes) -> bool:
    secret = c.control.requirepass
    if secret is None:
        return user == b"default"  # the default user has no password: anything goes
    ok = user == b"default" and hmac.compare_digest(password, secret)
    c.auth_checked(ok)  # failures are throttled, see app.AUTH_FAILURE_DELAY
    return ok


WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


@command("auth", -2, F_NOAUTH | F_STATE | F_FAST, group="connection",
         summary="Authenticate to the server")
def cmd_auth(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise CommandError(SYNTAX)
    if len(args) == 2:
        if c.control.requirepass is None:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?")
        user, password = b"default", args[1]
    else:
        user, password = args[1], args[2]
    if not _check_password(c, user, password):
        raise CommandError(WRONGPASS)
    c.set_authenticated(True)
    return OK


def _valid_client_name(name: bytes) -> bool:
    return all(33 <= ch <= 126 for ch in name)


@command("hello", -1, F_NOAUTH | F_STATE | F_FAST, group="connection",
         summary="Handshake: protocol version, authentication, client name", since="6.0.0")
def cmd_hello(c: Connection, args: list[bytes]) -> bytes:
    version = None
    i = 1
    if len(args) >= 2:
        version = parse_ll(args[1])
        if version is None:
            raise CommandError("ERR Protocol version is not an integer or out of range")
        i = 2
    auth: tuple[bytes, bytes] | None = None
    name: bytes | None = None
    while i < len(args):
        opt = args[i].upper()
        more = len(args) - i - 1
        if opt == b"AUTH" and more >= 2:
            auth = (args[i + 1], args[i + 2])
            i += 3
        elif opt == b"SETNAME" and more >= 1:
            name = args[i + 1]
            i += 2
        else:
            raise CommandError("ERR Syntax error in HELLO option '"
                               + args[i].decode("utf-8", "replace") + "'")
    if version is not None and version not in (2, 3):
        raise CommandError("NOPROTO unsupported protocol version")
    if auth is not None:
        if not _check_password(c, *auth):
            raise CommandError(WRONGPASS)
        c.set_authenticated(True)
    if not c.authenticated:
        raise CommandError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client "
            "and select the RESP protocol version at the same time")
    if name is not None:
        if not _valid_client_name(name):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special "
                               "characters.")
        c.name = name
    if version is not None:
        c.set_protocol(version)
    return encode_value({
        "server": "bitkv",
        "version": REDIS_VERSION,
        "bitkv_version": BITKV_VERSION,
        "proto": 3 if c.resp3 else 2,
        "id": c.client_id,
        "mode": "standalone",
        "role": "master" if c.control.replication.link is None else "replica",
        "modules": [],
    }, c.resp3)


@command("reset", 1, F_NOAUTH | F_TXCTL | F_STATE | F_FAST | F_PUBSUB, group="connection",
         summary="Reset the connection", since="6.2.0")
def cmd_reset(c: Connection, args: list[bytes]) -> bytes:
    """Back to a fresh connection's state: no MULTI, no subscriptions, RESP2, no name, and
    not authenticated when the server has a password (Redis: the default user again)."""
    if c.client_type in (clients.REPLICA, clients.MASTER):
        raise CommandError("ERR can only reset normal client connections")
    c.multi = None
    c.multi_dirty = False
    c.watched = None  # as Redis: RESET unwatches
    c.control.pubsub.drop(c)
    c.set_protocol(2)
    c.name = None
    c.set_authenticated(c.control.requirepass is None)
    return b"+RESET\r\n"


def _client_type_arg(name: bytes) -> str:
    found = clients.type_by_name(name)
    if found is None:
        raise CommandError("ERR Unknown client type '" + name.decode("utf-8", "replace") + "'")
    return found


def _client_list(c: Connection, args: list[bytes]) -> bytes:
    """CLIENT LIST [TYPE type | ID id [id ...]] (Redis 7.0: one filter or none)."""
    shown: list[ClientView]
    if len(args) == 2:
        shown = list(c.control.clients)
    elif len(args) == 4 and args[2].upper() == b"TYPE":
        wanted = _client_type_arg(args[3])
        shown = [x for x in c.control.clients if x.client_type == wanted]
    elif len(args) > 3 and args[2].upper() == b"ID":
        by_id = {x.client_id: x for x in c.control.clients}
        shown = []
        for arg in args[3:]:
            cid = parse_ll(arg)
            if cid is None:
                raise CommandError("ERR Invalid client ID")
            if cid in by_id:
                shown.append(by_id[cid])
    else:
        raise CommandError(SYNTAX)
    return verbatim("".join(x.describe() + "\n" for x in shown), c.resp3)


def _client_kill(c: Connection, args: list[bytes]) -> bytes:
    """CLIENT KILL addr:port (OK or an error), or CLIENT KILL <filter> <value> ... (how many
    were killed). Every filter given must match; the caller is spared unless SKIPME no (the
    old form spares no one). The caller, if killed, is closed after this reply."""
    addr = laddr = wanted = None
    cid = max_age = 0
    skipme = True
    if len(args) == 3:
        addr = args[2].decode("utf-8", "replace")
        skipme = False
    else:
        for i in range(2, len(args), 2):
            if i + 1 == len(args):
                raise CommandError(SYNTAX)  # an option without its value
            opt, value = args[i].upper(), args[i + 1]
            if opt == b"ID":
                n = parse_ll(value)
                if n is None or n < 1:
                    raise CommandError("ERR client-id should be greater than 0")
                cid = n
            elif opt == b"TYPE":
                wanted = _client_type_arg(value)
            elif opt == b"ADDR":
                addr = value.decode("utf-8", "replace")
            elif opt == b"LADDR":
                laddr = value.decode("utf-8", "replace")
            elif opt == b"USER":
                if value != b"default":  # the only user there is
                    raise CommandError("ERR No such user '" + value.decode("utf-8", "replace")
                                       + "'")
            elif opt == b"SKIPME":
                choice = value.lower()
                if choice not in (b"yes", b"no"):
                    raise CommandError(SYNTAX)
                skipme = choice == b"yes"
            elif opt == b"MAXAGE":  # Redis 7.4
                n = parse_ll(value)
                if n is None:
                    raise CommandError("ERR maxage is not an integer or out of range")
                if n <= 0:
                    raise CommandError("ERR maxage should be greater than 0")
                max_age = n
            else:
                raise CommandError(SYNTAX)
    now = time.monotonic()
    killed = 0
    for x in list(c.control.clients):
        if (addr is not None and x.peer != addr) or (laddr is not None and x.local != laddr) \
                or (wanted is not None and x.client_type != wanted) \
                or (cid and x.client_id != cid) or (max_age and now - x.created < max_age):
            continue
        if x is c:
            if skipme:
                continue
            c.close_after_reply()
            killed += 1
        elif x.kill():
            killed += 1
    if len(args) == 3:
        if not killed:
            raise CommandError("ERR No such client")
        return OK
    return integer(killed)


def _client_unblock(c: Connection, args: list[bytes]) -> bytes:
    """CLIENT UNBLOCK id [TIMEOUT|ERROR]: 1 if that client was blocked (BLPOP...), else 0."""
    from . import blocking  # here: importing it above would register MULTI... before PING

    with_error = False
    if len(args) == 4:
        reason = args[3].upper()
        if reason not in (b"TIMEOUT", b"ERROR"):
            raise CommandError("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
        with_error = reason == b"ERROR"
    return ONE if blocking.unblock(c, to_int(args[2]), with_error) else ZERO


@command("client", -2, F_FAST, group="connection", summary="Client connection commands",
         subcommands=True)
def cmd_client(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    n = len(args)
    if sub == b"ID" and n == 2:
        return integer(c.client_id)
    if sub == b"SETNAME" and n == 3:
        if not _valid_client_name(args[2]):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special "
                               "characters.")
        c.name = args[2] or None
        return OK
    if sub == b"GETNAME" and n == 2:
        return bulk(c.name) if c.name else c.null
    if sub == b"SETINFO" and n == 4:
        attr = args[2].upper()
        if attr == b"LIB-NAME":
            c.lib_name = args[3]
        elif attr == b"LIB-VER":
            c.lib_ver = args[3]
        else:
            raise CommandError("ERR Unrecognized option '" + args[2].decode("utf-8", "replace")
                               + "'")
        return OK
    if sub == b"LIST":
        return _client_list(c, args)
    if sub == b"KILL" and n >= 3:
        return _client_kill(c, args)
    if sub == b"UNBLOCK" and n in (3, 4):
        return _client_unblock(c, args)
    if sub == b"INFO" and n == 2:
        return verbatim(c.describe() + "\n", c.resp3)
    if sub in (b"NO-EVICT", b"NO-TOUCH") and n == 3:
        return OK
    if sub == b"HELP" and n == 2:
        return bulk_array([b"CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                           b"ID", b"SETNAME <name>", b"GETNAME", b"SETINFO <attr> <value>",
                           b"LIST [TYPE (NORMAL|MASTER|REPLICA|PUBSUB) | ID <id> [<id> ...]]",
                           b"KILL <ip:port>",
                           b"KILL <option> <value> [<option> <value> ...]: options ID <id>, "
                           b"TYPE (NORMAL|MASTER|REPLICA|PUBSUB), USER <username>, "
                           b"ADDR <ip:port>, LADDR <ip:port>, SKIPME (YES|NO), MAXAGE <seconds>",
                           b"UNBLOCK <clientid> [TIMEOUT|ERROR]", b"INFO", b"HELP"])
    if sub in (b"ID", b"SETNAME", b"GETNAME", b"SETINFO", b"KILL", b"INFO", b"NO-EVICT",
               b"NO-TOUCH", b"HELP", b"UNBLOCK"):
        return arity_error("client|" + sub.decode().lower())
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try CLIENT HELP.")
