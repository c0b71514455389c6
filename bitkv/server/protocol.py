"""RESP request parsing and reply encoding.

Requests are parsed the way Redis 7 parses them (``networking.c``): a request starting with
``*`` is a multibulk array of bulk strings, anything else is an inline command split like
``sdssplitargs`` (so ``PING`` typed into telnet works). Errors carry Redis's texts
("Protocol error: invalid bulk length", ...); after one the connection is closed.

Three parsers share one interface, ``feed(data) -> list of commands`` (each a list of
bytes), with ``error`` set to the protocol error message once the stream turned out malformed
(the commands returned before it still run, as in Redis):

* :class:`PyParser` is pure Python and authoritative: limits, inline commands, commands that
  span many reads.
* ``bitkv._native.RespParser`` (``bitkv/native/resp.c``, made by :func:`native_parser`) is its
  compiled twin, step for step: the same limits, errors and state between reads, and the same
  :func:`split_args` for inline commands. The server uses it when the extension is built
  (not with ``BITKV_PURE_PYTHON=1``): it parses every read itself, whole or split, at about
  a third of the cost of the hiredis path below (no exactness check, no fallback).
* :class:`HiredisParser` hands whole reads that begin at a command boundary to
  ``hiredis.Reader`` (C, ~6x faster) and checks, by recomputing the canonical wire size of
  every command it returned, that the read held exactly those commands and nothing else. Any
  read that does not (a partial command at the end, a malformed or unusual encoding, an
  unauthenticated client) is re-parsed from its first byte by the :class:`PyParser`, which
  keeps the connection until it is back at a boundary with an empty buffer. hiredis never
  sees more than one read, so the limits hold with either parser.

Declared sizes are checked before anything is allocated for them, on both paths. The
:class:`PyParser` checks each ``*N`` and ``$N`` header against the limits before reading on
(it never pre-sizes anything from a header). hiredis, though, allocates an aggregate's
declared number of slots the moment it reads its header (``PyList_New(N)``), nested
aggregates included, so ``*2147483647\r\n`` alone made it allocate a 16 GB list and freeing
it stalled every client for seconds. :class:`HiredisParser` therefore only hands hiredis a
read in which no aggregate header can declare 100 or more elements (a cheap regex over the
read, see ``_large_count``); anything else goes to the :class:`PyParser`.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn, Protocol

from ..record import MAX_VALUE_SIZE
from ..resp import RESP_PARSER

hiredis: Any  # the module, or None when it is not installed
try:  # pragma: no cover - depends on the environment
    import hiredis
except ImportError:  # pragma: no cover
    hiredis = None

HAVE_HIREDIS = hiredis is not None

# The compiled twin of PyParser, unless the pure-Python mode is forced (bitkv/resp.py).
_RespParser = RESP_PARSER
HAVE_NATIVE_PARSER = _RespParser is not None


class Parser(Protocol):
    """What the server needs of a request parser (all three parsers have it)."""

    error: str | None
    authenticated: bool

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The commands ``data`` completes, in order; [] once ``error`` is set."""
        ...

    def idle(self) -> bool:
        """True at a command boundary with nothing buffered."""
        ...

    def buffered(self) -> int:
        """Approximate bytes held for the incomplete command."""
        ...

    def reset(self) -> None:
        """Drop everything buffered."""
        ...

# Redis's limits (server.h); the bulk length default is bitkv's largest value.
PROTO_INLINE_MAX_SIZE = 64 * 1024
DEFAULT_MAX_BULK_LEN = MAX_VALUE_SIZE
DEFAULT_MAX_MULTIBULK_LEN = 1024 * 1024
DEFAULT_MAX_QUERY_BUFFER = 2 * MAX_VALUE_SIZE + 1024 * 1024
# Before AUTH, Redis accepts only tiny requests (processMultibulkBuffer).
UNAUTH_MAX_MULTIBULK = 10
UNAUTH_MAX_BULK = 16384

# Python-side memory of one parsed argument beyond its bytes: a bytes object's header (33)
# and its list slot (8). Counted so that a million empty arguments are not "0 bytes".
ARG_OVERHEAD = 41

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def parse_ll(b: bytes | bytearray) -> int | None:
    """Parse like Redis's ``string2ll``: optional '-', digits, no leading zero, int64 range."""
    if b.isdigit():  # bytes.isdigit() is ASCII-only
        if len(b) > 19 or (b[0] == 48 and len(b) > 1):
            return None
        n = int(b)
        return n if n <= INT64_MAX else None
    if len(b) > 1 and b[0] == 45 and b[1] != 48 and len(b) <= 20 and b[1:].isdigit():
        n = int(b)
        return n if n >= INT64_MIN else None
    return None


# -- inline commands (sdssplitargs) --------------------------------------------------------

_SPACE = frozenset(b" \n\r\t\v\f")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_args(line: bytes) -> list[bytes] | None:
    """Split an inline command like Redis's ``sdssplitargs``; None on unbalanced quotes."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    out: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    return None  # unterminated quotes
                c = line[i]
                if (c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX
                        and line[i + 3] in _HEX):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    c = line[i]
                    cur.append(_ESCAPES.get(c, c))
                elif c == 34:
                    # closing quote must be followed by a space or nothing at all
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    return None
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACE:
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        out.append(bytes(cur))


class ProtocolError(Exception):
    pass


class Limits:
    """Per-request limits (``proto-max-bulk-len``, multibulk count, query buffer)."""

    __slots__ = ("max_bulk_len", "max_multibulk_len", "max_query_buffer")

    def __init__(self, max_bulk_len: int = DEFAULT_MAX_BULK_LEN,
                 max_multibulk_len: int = DEFAULT_MAX_MULTIBULK_LEN,
                 max_query_buffer: int = DEFAULT_MAX_QUERY_BUFFER) -> None:
        for name, value in (("max_bulk_len", max_bulk_len),
                            ("max_multibulk_len", max_multibulk_len),
                            ("max_query_buffer", max_query_buffer)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self.max_bulk_len = max_bulk_len
        self.max_multibulk_len = max_multibulk_len
        self.max_query_buffer = max_query_buffer


class PyParser:
    """Incremental RESP request parser in pure Python (see the module docstring).

    ``authenticated`` is False until the client authenticates on a password-protected
    server; until then requests are limited as Redis limits them.
    """

    __slots__ = ("_args", "_buf", "_bulk", "_cmd_bytes", "_left", "_pos", "authenticated",
                 "error", "limits")

    def __init__(self, limits: Limits | None = None, authenticated: bool = True) -> None:
        self.limits = limits or Limits()
        self.authenticated = authenticated
        self.error: str | None = None
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] | None = None  # the multibulk being read, if any
        self._left = 0  # bulk strings still to read in it
        self._bulk = -1  # length of the bulk string whose header was read, or -1
        self._cmd_bytes = 0  # bytes declared by the multibulk so far (query buffer limit)

    def idle(self) -> bool:
        """True at a command boundary with nothing buffered."""
        return self._args is None and self._pos >= len(self._buf)

    def buffered(self) -> int:
        """Approximate memory held for the incomplete command: unparsed bytes plus the
        arguments already parsed from it (their bytes and per-object overhead)."""
        held = len(self._buf) - self._pos
        args = self._args
        if args is not None:
            # _cmd_bytes counts the declared length of the argument being read too
            held += self._cmd_bytes - max(self._bulk, 0) + ARG_OVERHEAD * len(args)
        return held

    def reset(self) -> None:
        """Drop everything buffered (the connection is being closed)."""
        self._buf = bytearray()
        self._pos = 0
        self._args = None
        self._bulk = -1

    def feed(self, data: bytes) -> list[list[bytes]]:
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        try:
            return self._parse()
        finally:
            pos = self._pos
            if pos >= len(buf):
                buf.clear()
                self._pos = 0
            elif pos > 65536:
                del buf[:pos]
                self._pos = 0

    def _fail(self, message: str) -> NoReturn:
        self.error = f"ERR Protocol error: {message}"
        raise ProtocolError(message)

    def _parse(self) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        try:
            while self._parse_one(out):
                pass
        except ProtocolError:
            self._args = None
        return out

    def _parse_one(self, out: list[list[bytes]]) -> bool:
        """Parse one command (appending it to ``out``); False when more data is needed."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        limits = self.limits
        if self._args is None:
            if pos >= end:
                return False
            if buf[pos] != 42:  # not '*': an inline command
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > PROTO_INLINE_MAX_SIZE:
                        self._fail("too big inline request")
                    return False
                line = bytes(buf[pos : nl - 1 if nl > pos and buf[nl - 1] == 13 else nl])
                self._pos = nl + 1
                args = split_args(line)
                if args is None:
                    self._fail("unbalanced quotes in request")
                if args:
                    out.append(args)
                return True
            nl = buf.find(b"\r", pos)
            if nl < 0 or nl + 1 >= end:
                if end - pos > PROTO_INLINE_MAX_SIZE:
                    self._fail("too big mbulk count string")
                return False
            count = parse_ll(buf[pos + 1 : nl])
            if count is None or count > limits.max_multibulk_len:
                self._fail("invalid multibulk length")
            if not self.authenticated and count > UNAUTH_MAX_MULTIBULK:
                self._fail("unauthenticated multibulk length")
            pos = self._pos = nl + 2
            if count <= 0:
                return True  # an empty command, skipped as Redis does
            self._args = []
            self._left = count
            self._bulk = -1
            self._cmd_bytes = 0
        args = self._args
        while self._left:
            bulk = self._bulk
            if bulk < 0:
                if pos >= end:
                    return False
                nl = buf.find(b"\r", pos)
                if nl < 0 or nl + 1 >= end:
                    if end - pos > PROTO_INLINE_MAX_SIZE:
                        self._fail("too big bulk count string")
                    return False
                if buf[pos] != 36:  # '$'
                    self._fail(f"expected '$', got '{chr(buf[pos])}'")
                parsed = parse_ll(buf[pos + 1 : nl])
                if parsed is None or parsed < 0 or parsed > limits.max_bulk_len:
                    self._fail("invalid bulk length")
                bulk = parsed
                if not self.authenticated and bulk > UNAUTH_MAX_BULK:
                    self._fail("unauthenticated bulk length")
                self._cmd_bytes += bulk
                if self._cmd_bytes > limits.max_query_buffer:
                    self._fail("query buffer limit exceeded")
                pos = self._pos = nl + 2
                self._bulk = bulk
            if end - pos < bulk + 2:
                return False
            args.append(bytes(buf[pos : pos + bulk]))
            pos = self._pos = pos + bulk + 2  # like Redis, the trailing CRLF is not checked
            self._bulk = -1
            self._left -= 1
        out.append(args)
        self._args = None
        return True


_HiredisReader: Any = hiredis.Reader if HAVE_HIREDIS else None

# hiredis allocates N slots when it reads an aggregate header "*N", "~N", ">N" or "|N" (and
# nested ones as deep as 1024 levels), before a single element arrived ("%N" maps are dicts,
# not pre-sized). A read goes to hiredis only if no such header in it can have 3 or more
# digits: then one read can make it allocate at most 1024 * 99 slots (measured: 0.6 ms for
# the worst 5.5 KB read, about what serving 5.5 KB of real commands costs), where
# "*2147483647" cost seconds. The regexes match anywhere, payloads too, so a value holding
# "*123" merely takes the pure-Python path; they never miss a header. Commands of 100 or
# more arguments take that path too. "~", ">" and "|" are rare in requests: a memchr-speed
# find() for each decides whether the slower character-class regex has to run.
_large_count = re.compile(rb"\*[0-9]{3}").search
_large_other_count = re.compile(rb"[~>|][0-9]{3}").search


class HiredisParser:
    """hiredis for whole reads at a command boundary, :class:`PyParser` for everything else."""

    __slots__ = ("_max_bulk", "_max_count", "_max_query", "_py", "_reader", "error")

    def __init__(self, limits: Limits | None = None, authenticated: bool = True) -> None:
        if not HAVE_HIREDIS:  # pragma: no cover
            raise RuntimeError("hiredis is not installed")
        self._py = PyParser(limits, authenticated)
        self._reader = _HiredisReader()
        self._max_bulk = self._py.limits.max_bulk_len
        self._max_count = self._py.limits.max_multibulk_len
        self._max_query = self._py.limits.max_query_buffer
        self.error: str | None = None

    @property
    def authenticated(self) -> bool:
        return self._py.authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        self._py.authenticated = value

    @property
    def limits(self) -> Limits:
        return self._py.limits

    def idle(self) -> bool:
        return self._py.idle()

    def buffered(self) -> int:
        return self._py.buffered()  # hiredis never keeps anything between reads

    def reset(self) -> None:
        self._py.reset()

    def feed(self, data: bytes) -> list[list[bytes]]:
        py = self._py
        # py.idle(): PyParser clears its buffer once it is consumed (feed), so between reads
        # "nothing buffered and no multibulk begun" is exactly what it reports.
        if data[0] != 42 or not py.idle() or not py.authenticated \
                or self.error is not None or _large_count(data) is not None \
                or ((data.find(b"~") >= 0 or data.find(b">") >= 0 or data.find(b"|") >= 0)
                    and _large_other_count(data) is not None):
            out = py.feed(data)
            self.error = py.error
            return out
        reader = self._reader
        reader.feed(data)
        out = []
        total = 0  # where the next command starts, if every one so far was canonical
        max_bulk = self._max_bulk
        try:
            while True:
                cmd: Any = reader.gets()
                if cmd is False:
                    break
                # Sizes alone can be fooled: "~2" (a RESP3 set) is as long as "*2", and a
                # "+a" simple string (shorter than "$1" + "a") can make up for a longer
                # element. So each element's type byte is checked where the canonical
                # encoding puts it; an IndexError past the end lands in the except below.
                if type(cmd) is not list or data[total] != 42:  # '*'
                    raise ProtocolError
                n = len(cmd)
                # The canonical encoding: "*n\r\n" then "$len\r\n<arg>\r\n" each.
                pos = total + (4 if n < 10 else 3 + len(str(n)))
                for arg in cmd:
                    if type(arg) is not bytes or data[pos] != 36:  # '$'
                        raise ProtocolError
                    a = len(arg)
                    if a < 10:
                        pos += a + 6
                    elif a < 100:
                        pos += a + 7
                    elif a < 1000:
                        pos += a + 8
                    elif a <= max_bulk:
                        pos += a + 5 + len(str(a))
                    else:
                        raise ProtocolError
                if not n or n > self._max_count or pos - total > self._max_query:
                    raise ProtocolError  # the pure-Python parser decides
                total = pos
                out.append(cmd)
        except Exception:
            # Whatever hiredis makes of a read that is not plain bulk-string arrays (its
            # ProtocolError, or TypeError for a RESP3 map keyed by an array, which it builds
            # as a dict) only means "not the common case": the authoritative parser decides.
            total = -1
        if total == len(data) and not reader.has_data():
            return out
        # Not exactly whole canonical commands: let the authoritative parser redo this read.
        self._reader = _HiredisReader()
        out = py.feed(data)
        self.error = py.error
        return out


def native_parser(limits: Limits | None = None, authenticated: bool = True) -> Parser:
    """The compiled ``RespParser`` (the twin of :class:`PyParser`) with these limits."""
    if _RespParser is None:
        raise RuntimeError("the compiled RESP parser is not available (bitkv._native is not "
                           "built, or BITKV_PURE_PYTHON=1)")
    limits = limits or Limits()
    parser: Parser = _RespParser(limits.max_bulk_len, limits.max_multibulk_len,
                                 limits.max_query_buffer, authenticated, split_args)
    return parser


PARSER_KINDS = ("native", "hiredis", "python")


def choose_parser(use_native: bool | None = None, use_hiredis: bool | None = None) -> str:
    """Which parser a server uses: "native", "hiredis" or "python".

    ``None`` means "when available". The compiled parser comes first unless hiredis was
    asked for (or refused: ``use_hiredis=False`` alone means the pure-Python parser, as the
    ``--no-hiredis`` option always has); explicitly asking for one that is not there raises.
    """
    if use_native:
        if not HAVE_NATIVE_PARSER:
            raise RuntimeError("the compiled RESP parser was requested but is not available")
        return "native"
    if use_native is None and use_hiredis is None and HAVE_NATIVE_PARSER:
        return "native"
    if use_hiredis or (use_hiredis is None and HAVE_HIREDIS):
        if not HAVE_HIREDIS:
            raise RuntimeError("hiredis was requested but is not installed")
        return "hiredis"
    return "python"


def make_parser(limits: Limits | None = None, authenticated: bool = True,
                use_hiredis: bool | None = None, *, kind: str | None = None) -> Parser:
    """A parser of the given ``kind`` (see :func:`choose_parser`); by default the compiled one
    when built, else a :class:`HiredisParser` when hiredis is installed, else a
    :class:`PyParser`. All three have the interface described in the module doc."""
    if kind is None:
        kind = choose_parser(None, use_hiredis)
    if kind == "native":
        return native_parser(limits, authenticated)
    if kind == "hiredis":
        return HiredisParser(limits, authenticated)
    if kind == "python":
        return PyParser(limits, authenticated)
    raise ValueError(f"parser kind must be one of {PARSER_KINDS}, not {kind!r}")


# -- replies ---------------------------------------------------------------------------------

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
NIL2 = b"$-1\r\n"
NIL_ARRAY2 = b"*-1\r\n"
NIL3 = b"_\r\n"
EMPTY_ARRAY = b"*0\r\n"
_INTS = tuple(b":%d\r\n" % i for i in range(1024))
ZERO = _INTS[0]
ONE = _INTS[1]
MINUS_ONE = b":-1\r\n"
MINUS_TWO = b":-2\r\n"


def integer(n: int) -> bytes:
    if 0 <= n < 1024:
        return _INTS[n]
    return b":%d\r\n" % n


def bulk(v: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(v), v)


def simple(s: str) -> bytes:
    return b"+%b\r\n" % s.encode()


def error(message: str) -> bytes:
    """An error reply; ``message`` starts with its code (``ERR``, ``WRONGPASS``...)."""
    return b"-%b\r\n" % message.replace("\r", " ").replace("\n", " ").encode("utf-8",
                                                                              "replace")


def array(items: list[bytes]) -> bytes:
    """An array of already-encoded replies."""
    return b"*%d\r\n%b" % (len(items), b"".join(items))


def bulk_array(values: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(values)]
    for v in values:
        parts.append(b"$%d\r\n%b\r\n" % (len(v), v))
    return b"".join(parts)


def map_reply(pairs: list[tuple[bytes, bytes]], resp3: bool) -> bytes:
    """A map of already-encoded keys and values (a flat array in RESP2)."""
    head = b"%%%d\r\n" % len(pairs) if resp3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def verbatim(text: str, resp3: bool) -> bytes:
    """A verbatim string (``=``) in RESP3, a bulk string in RESP2 (INFO uses this)."""
    data = text.encode()
    if resp3:
        return b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data)
    return bulk(data)


def double(x: float, resp3: bool) -> bytes:
    text = repr(float(x)).encode()
    return b",%b\r\n" % text if resp3 else bulk(text)


def encode_value(value: Any, resp3: bool = False) -> bytes:
    """Encode a plain Python value: str/bytes -> bulk, int -> integer, list, dict, None."""
    if value is None:
        return NIL3 if resp3 else NIL2
    if isinstance(value, bool):
        return integer(int(value))
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, float):
        return double(value, resp3)
    if isinstance(value, str):
        return bulk(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return bulk(bytes(value))
    if isinstance(value, dict):
        return map_reply([(encode_value(k, resp3), encode_value(v, resp3))
                          for k, v in value.items()], resp3)
    if isinstance(value, (list, tuple)):
        return array([encode_value(v, resp3) for v in value])
    raise TypeError(f"cannot encode {type(value).__name__} as RESP")
