"""RESP request parsing (both parsers), reply encoding and Redis glob matching; no sockets."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitkv.server import protocol
from bitkv.server.glob import compile_glob, glob_match, literal_prefix
from bitkv.server.protocol import (
    HAVE_HIREDIS,
    HiredisParser,
    Limits,
    PyParser,
    encode_value,
    parse_ll,
    split_args,
)

PARSERS = [PyParser]
if HAVE_HIREDIS:
    PARSERS.append(HiredisParser)


def encode(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def feed_all(parser, chunks):
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


@pytest.fixture(params=PARSERS, ids=lambda p: p.__name__)
def make(request):
    return lambda **kw: request.param(**kw)


def random_command(rng: random.Random) -> list[bytes]:
    n = rng.choice([1, 2, 3, 3, 5, 12])
    args = []
    for _ in range(n):
        size = rng.choice([0, 1, 9, 10, 99, 100, 999, 1000, 5000, 70000])
        args.append(rng.randbytes(size) if rng.random() < 0.5 else b"\r\n" * (size // 2))
    args[0] = args[0] or b"x"
    return args


def test_random_commands_split_anywhere_parse_identically(make):
    rng = random.Random(1234)
    for _round in range(30):
        cmds = [random_command(rng) for _ in range(rng.randint(1, 12))]
        stream = b"".join(encode(*c) for c in cmds)
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1,
                                                              rng.randint(0, 8))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        parser = make()
        assert feed_all(parser, chunks) == cmds
        assert parser.error is None
        assert parser.idle()


def test_byte_at_a_time(make):
    cmds = [[b"SET", b"key", b"va\r\nlue"], [b"GET", b"key"], [b"PING"]]
    stream = b"".join(encode(*c) for c in cmds) + b"PING inline\r\n"
    parser = make()
    got = feed_all(parser, [stream[i : i + 1] for i in range(len(stream))])
    assert got == [*cmds, [b"PING", b"inline"]]


def test_pipelined_reads_keep_order(make):
    parser = make()
    one = encode(b"SET", b"k", b"v" * 100)
    assert parser.feed(one * 16) == [[b"SET", b"k", b"v" * 100]] * 16
    assert parser.feed(one * 3 + one[:10]) == [[b"SET", b"k", b"v" * 100]] * 3
    assert parser.feed(one[10:]) == [[b"SET", b"k", b"v" * 100]]


def test_inline_commands(make):
    parser = make()
    got = parser.feed(b"PING\r\nSET a 'b c'\r\n\r\n  \r\nECHO \"x\\ty\\x41\"\nGET a\n")
    assert got == [[b"PING"], [b"SET", b"a", b"b c"], [b"ECHO", b"x\tyA"], [b"GET", b"a"]]
    assert parser.error is None


def test_inline_then_multibulk_in_one_read(make):
    parser = make()
    assert parser.feed(b"PING\r\n" + encode(b"GET", b"k")) == [[b"PING"], [b"GET", b"k"]]


def test_empty_multibulk_is_skipped(make):
    parser = make()
    assert parser.feed(b"*0\r\n*-1\r\n" + encode(b"PING")) == [[b"PING"]]


@pytest.mark.parametrize("data, message", [
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*99999999999\r\n", "invalid multibulk length"),
    (b"*1\r\n:1\r\n", "expected '$', got ':'"),
    (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
    (b"*1\r\n$abc\r\n", "invalid bulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
    (b"*1\r\n$+3\r\nabc\r\n", "invalid bulk length"),
    (b"*1\r\n$03\r\nabc\r\n", "invalid bulk length"),
    (b"SET a \"b\r\n", "unbalanced quotes in request"),
    (b"SET a 'b'c\r\n", "unbalanced quotes in request"),
])
def test_protocol_errors(make, data, message):
    parser = make()
    assert parser.feed(data) == []
    assert parser.error == f"ERR Protocol error: {message}"
    assert parser.feed(encode(b"PING")) == []  # nothing is parsed after an error


def test_commands_before_an_error_are_returned(make):
    parser = make()
    got = parser.feed(encode(b"SET", b"a", b"1") + encode(b"GET", b"a") + b"*1\r\n$x\r\n")
    assert got == [[b"SET", b"a", b"1"], [b"GET", b"a"]]
    assert parser.error == "ERR Protocol error: invalid bulk length"


def test_too_big_inline_and_count_strings(make):
    parser = make()
    assert parser.feed(b"A" * (protocol.PROTO_INLINE_MAX_SIZE + 1)) == []
    assert parser.error == "ERR Protocol error: too big inline request"
    parser = make()
    parser.feed(b"*1")
    assert parser.feed(b"1" * (protocol.PROTO_INLINE_MAX_SIZE + 1)) == []
    assert parser.error == "ERR Protocol error: too big mbulk count string"
    parser = make()
    parser.feed(b"*1\r\n$1")
    parser.feed(b"1" * (protocol.PROTO_INLINE_MAX_SIZE + 1))
    assert parser.error == "ERR Protocol error: too big bulk count string"


def test_limits(make):
    limits = Limits(max_bulk_len=100, max_multibulk_len=4, max_query_buffer=250)
    parser = make(limits=limits)
    assert parser.feed(encode(b"SET", b"k", b"v" * 100)) == [[b"SET", b"k", b"v" * 100]]
    assert parser.feed(b"*1\r\n$101\r\n") == []
    assert parser.error == "ERR Protocol error: invalid bulk length"
    parser = make(limits=limits)
    assert parser.feed(b"*5\r\n") == []
    assert parser.error == "ERR Protocol error: invalid multibulk length"
    parser = make(limits=limits)
    assert parser.feed(encode(b"MSET", b"a" * 100, b"b" * 100, b"c" * 100)) == []
    assert parser.error == "ERR Protocol error: query buffer limit exceeded"


def test_oversized_bulk_is_refused_before_it_is_buffered(make):
    parser = make(limits=Limits(max_bulk_len=1000))
    assert parser.feed(b"*2\r\n$3\r\nGET\r\n$1001\r\n" + b"x" * 500) == []
    assert parser.error == "ERR Protocol error: invalid bulk length"


def test_unauthenticated_limits(make):
    parser = make(authenticated=False)
    assert parser.feed(encode(b"AUTH", b"pw")) == [[b"AUTH", b"pw"]]
    assert parser.feed(b"*11\r\n") == []
    assert parser.error == "ERR Protocol error: unauthenticated multibulk length"
    parser = make(authenticated=False)
    assert parser.feed(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n") == []
    assert parser.error == "ERR Protocol error: unauthenticated bulk length"
    parser = make(authenticated=False)
    parser.authenticated = True
    assert parser.feed(encode(b"SET", b"k", b"v" * 20000)) == [[b"SET", b"k", b"v" * 20000]]


def test_large_bulk_in_many_reads_is_linear(make):
    value = bytes(range(256)) * 4096  # 1 MiB
    stream = encode(b"SET", b"big", value)
    parser = make()
    got = feed_all(parser, [stream[i : i + 4096] for i in range(0, len(stream), 4096)])
    assert got == [[b"SET", b"big", value]]


@pytest.mark.skipif(not HAVE_HIREDIS, reason="hiredis is not installed")
def test_hiredis_parser_falls_back_for_unusual_encodings():
    parser = HiredisParser()
    # A nested array and a non-bulk element are protocol errors in Redis.
    assert parser.feed(b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nx\r\n") == []
    assert parser.error == "ERR Protocol error: expected '$', got '*'"
    parser = HiredisParser()
    assert parser.feed(encode(b"PING") + b"*1\r\n$4\r\nPI") == [[b"PING"]]
    assert not parser.idle()
    assert parser.feed(b"NG\r\n" + encode(b"ECHO", b"x")) == [[b"PING"], [b"ECHO", b"x"]]
    assert parser.idle()


def test_parse_ll_is_strict():
    assert parse_ll(b"0") == 0
    assert parse_ll(b"-5") == -5
    assert parse_ll(b"9223372036854775807") == 2**63 - 1
    assert parse_ll(b"-9223372036854775808") == -(2**63)
    for bad in (b"", b"-", b"+1", b" 1", b"1 ", b"01", b"-0", b"1_0", b"1.5", b"0x10",
                b"9223372036854775808", b"-9223372036854775809", "\u0661".encode()):
        assert parse_ll(bad) is None, bad


def test_split_args():
    assert split_args(b"  a  b\tc ") == [b"a", b"b", b"c"]
    assert split_args(b'"a b" \'c d\' "\\n\\r\\t\\b\\a\\\\\\"" \'it\\\'s\'') == [
        b"a b", b"c d", b'\n\r\t\b\a\\"', b"it's"]
    assert split_args(b'"\\x4a\\x4B\\x4"') == [b"JK\x04"[:2] + b"x4"]
    assert split_args(b'"unterminated') is None
    assert split_args(b'"a"b') is None
    assert split_args(b"") == []


def test_reply_encoding():
    assert encode_value(None) == b"$-1\r\n"
    assert encode_value(None, resp3=True) == b"_\r\n"
    assert encode_value(5) == b":5\r\n"
    assert encode_value(-7) == b":-7\r\n"
    assert encode_value("hé") == "$3\r\nhé\r\n".encode()
    assert encode_value([b"a", 1]) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode_value({"a": 1}) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode_value({"a": 1}, resp3=True) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert protocol.error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert protocol.verbatim("x", True) == b"=5\r\ntxt:x\r\n"


@pytest.mark.parametrize("pattern, key, expected", [
    (b"*", b"anything", True),
    (b"user:*", b"user:42", True),
    (b"user:*", b"use", False),
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"h*llo", b"heeeello", True),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[b-a]llo", b"hallo", True),  # reversed ranges work in Redis
    (b"h\\*llo", b"h*llo", True),
    (b"h\\*llo", b"hello", False),
    (b"a.b", b"a.b", True),
    (b"a.b", b"axb", False),  # regex characters are literal
    (b"[]", b"x", False),
    (b"*\n*", b"a\nb", True),
    (b"exact", b"exact", True),
    (b"exact", b"exactly", False),
    (b"a*b*c", b"a__b__c", True),
    (b"a*b*c", b"a__c__b", False),
])
def test_glob(pattern, key, expected):
    assert glob_match(pattern, key) is expected


def test_literal_prefix():
    assert literal_prefix(b"user:*:x") == b"user:"
    assert literal_prefix(b"*") == b""
    assert literal_prefix(b"plain") == b"plain"
    assert compile_glob(b"user:*") is compile_glob(b"user:*")  # cached


def stringmatchlen(pattern: bytes, key: bytes) -> bool:
    """Redis's util.c stringmatchlen (nocase=0), ported line by line: the reference."""
    p, s = 0, 0
    plen, slen = len(pattern), len(key)
    while plen and slen:
        c = pattern[p]
        if c == ord("*"):
            while plen > 1 and pattern[p + 1] == ord("*"):
                p += 1
                plen -= 1
            if plen == 1:
                return True
            while slen:
                if stringmatchlen(pattern[p + 1:p + plen], key[s:s + slen]):
                    return True
                s += 1
                slen -= 1
            return False
        if c == ord("?"):
            s += 1
            slen -= 1
        elif c == ord("["):
            p += 1
            plen -= 1
            negate = plen > 0 and pattern[p] == ord("^")
            if negate:
                p += 1
                plen -= 1
            match = False
            while True:
                if plen >= 2 and pattern[p] == ord("\\"):
                    p += 1
                    plen -= 1
                    match |= pattern[p] == key[s]
                elif plen and pattern[p] == ord("]"):
                    break
                elif plen == 0:
                    p -= 1
                    plen += 1
                    break
                elif plen >= 3 and pattern[p + 1] == ord("-"):
                    lo, hi = sorted((pattern[p], pattern[p + 2]))
                    p += 2
                    plen -= 2
                    match |= lo <= key[s] <= hi
                else:
                    match |= pattern[p] == key[s]
                p += 1
                plen -= 1
            if match == negate:
                return False
            s += 1
            slen -= 1
        else:
            if c == ord("\\") and plen >= 2:
                p += 1
                plen -= 1
            if pattern[p] != key[s]:
                return False
            s += 1
            slen -= 1
        p += 1
        plen -= 1
        if slen == 0:
            while plen and pattern[p] == ord("*"):
                p += 1
                plen -= 1
            break
    return plen == 0 and slen == 0


@given(st.binary(max_size=10).map(lambda b: bytes(b"ab*?[]^-\\"[x % 9] for x in b)),
       st.binary(max_size=12).map(lambda b: bytes(b"ab-^]\\[*?\n"[x % 10] for x in b)))
@settings(max_examples=800, deadline=None)
def test_glob_matches_like_redis(pattern, key):
    assert glob_match(pattern, key) is stringmatchlen(pattern, key), (pattern, key)


def test_glob_does_not_backtrack_exponentially():
    # A subscribed pattern is matched against every channel published to: a regex of
    # ".*a.*a.*a..." took 4.5 s on this one with 5 stars, and doubles with each more.
    started = time.perf_counter()
    assert not glob_match(b"*a" * 12 + b"*b", b"a" * 2000)
    assert glob_match(b"*a" * 12 + b"*b", b"a" * 2000 + b"b")
    assert time.perf_counter() - started < 1.0


def test_an_empty_key_matches_only_the_empty_pattern():
    assert not glob_match(b"*", b"")  # as in Redis: PSUBSCRIBE * gets nothing for ""
    assert not glob_match(b"**", b"")
    assert glob_match(b"", b"")
    assert not glob_match(b"", b"a")
