"""The compiled RESP request parser (bitkv/native/resp.c) against its reference, PyParser.

Hypothesis builds request streams (valid commands, inline commands, hostile headers, garbage)
and cuts them into reads at random; both parsers must return the same commands and agree on
``error``, ``idle()`` and ``buffered()`` after every read. Hostile headers must be refused
before anything is allocated for them; the leak tests repeat millions of calls and check that
memory and reference counts stay flat. ``scripts/asan_native.sh`` runs this file under
ASan+UBSan, and fuzz/fuzz_resp.py is the same differential for atheris.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitkv.server import protocol

pytestmark = pytest.mark.skipif(not protocol.HAVE_NATIVE_PARSER,
                                reason="the extension is not built (or BITKV_PURE_PYTHON=1)")

SMALL = protocol.Limits(max_bulk_len=16, max_multibulk_len=8, max_query_buffer=40)
MEDIUM = protocol.Limits(max_bulk_len=300, max_multibulk_len=200, max_query_buffer=2000)
LIMITS = st.sampled_from([SMALL, MEDIUM, protocol.Limits()])


def enc(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


ARG = st.one_of(st.binary(max_size=20), st.sampled_from([b"", b"\r\n", b"*100", b"$-1"]),
                st.binary(min_size=290, max_size=310))
COMMAND = st.lists(ARG, min_size=1, max_size=5).map(lambda a: enc(*a))
INLINE = st.sampled_from([b"PING\r\n", b"GET k\n", b"SET 'a b' \"c\\x41\"\r\n", b"\r\n",
                          b"ECHO \"open\r\n", b"   \r\n", b"SET a 'b'c\r\n"])
HOSTILE = st.sampled_from([
    b"*2147483647\r\n", b"*9223372036854775807\r\n", b"*9223372036854775808\r\n",
    b"*-9223372036854775808\r\n", b"*-1\r\n", b"*0\r\n", b"*01\r\n", b"*+1\r\n", b"*\r\n",
    b"*1\r\n$99999999999\r\n", b"*1\r\n$-1\r\n", b"*1\r\n$-0\r\n", b"*1\r\n$ 1\r\n",
    b"*1\r\n:1\r\n", b"*1\r\n*1\r\n", b"*2\r\n$1\r\na\r\n$2147483647\r\n",
    b"*1\r\n$3\r\nabcXY", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r", b"*1\r\n\x00\r\n",
])
STREAM = st.lists(st.one_of(COMMAND, COMMAND, COMMAND, INLINE, HOSTILE,
                            st.binary(max_size=12)), max_size=12).map(b"".join)


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for size in sizes:
        if i >= len(stream):
            break
        out.append(stream[i : i + size])
        i += size
    if i < len(stream):
        out.append(stream[i:])
    return out


def run_both(limits: protocol.Limits, authenticated: bool, reads: list[bytes]) -> None:
    reference = protocol.PyParser(limits, authenticated)
    native = protocol.native_parser(limits, authenticated)
    for chunk in reads:
        expected = reference.feed(chunk)
        assert native.feed(chunk) == expected
        assert native.error == reference.error
        assert native.idle() == reference.idle()
        assert native.buffered() == reference.buffered()
        if reference.error is not None:
            break


@settings(max_examples=400, deadline=None)
@given(LIMITS, st.booleans(), STREAM, st.lists(st.integers(1, 40), max_size=30))
def test_same_commands_errors_and_state_as_the_reference(limits, authenticated, stream, sizes):
    run_both(limits, authenticated, cut(stream, sizes))


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMAND, min_size=1, max_size=20), st.integers(1, 7))
def test_valid_pipelines_parse_whole_or_byte_by_byte(commands, step):
    stream = b"".join(commands)
    run_both(protocol.Limits(), True, [stream])
    run_both(protocol.Limits(), True, [stream[i : i + step] for i in range(0, len(stream), step)])


def test_redis_error_texts():
    cases = {
        b"*2147483647\r\n": "ERR Protocol error: invalid multibulk length",
        b"*1\r\n$99999999999\r\n": "ERR Protocol error: invalid bulk length",
        b"*1\r\n:1\r\n": "ERR Protocol error: expected '$', got ':'",
        b"*1\r\n\x00\r\n": "ERR Protocol error: expected '$', got '\x00'",
        b"GET \"x\r\n": "ERR Protocol error: unbalanced quotes in request",
        b"x" * 70000: "ERR Protocol error: too big inline request",
        b"*" + b"1" * 70000: "ERR Protocol error: too big mbulk count string",
        b"*1\r\n$" + b"1" * 70000: "ERR Protocol error: too big bulk count string",
    }
    for stream, error in cases.items():
        parser = protocol.native_parser()
        assert parser.feed(stream) == []
        assert parser.error == error, stream[:20]
        assert parser.feed(enc(b"PING")) == []  # nothing is parsed after an error
    unauth = protocol.native_parser(authenticated=False)
    unauth.feed(b"*11\r\n")
    assert unauth.error == "ERR Protocol error: unauthenticated multibulk length"
    unauth = protocol.native_parser(authenticated=False)
    unauth.feed(b"*1\r\n$16385\r\n")
    assert unauth.error == "ERR Protocol error: unauthenticated bulk length"
    small = protocol.native_parser(SMALL)
    small.feed(b"*3\r\n$16\r\n" + b"a" * 16 + b"\r\n$16\r\n" + b"b" * 16 + b"\r\n$16\r\n")
    assert small.error == "ERR Protocol error: query buffer limit exceeded"


def test_hostile_headers_are_refused_before_anything_is_allocated():
    tracemalloc.start()
    try:
        for stream in (b"*2147483647\r\n", b"*1048576\r\n$67108864\r\n",
                       b"*2\r\n$3\r\nSET\r\n$67108864\r\n"):
            parser = protocol.native_parser()
            before = tracemalloc.get_traced_memory()[0]
            parser.feed(stream)
            # Waiting for 64 MiB (or a million arguments) holds only what arrived.
            assert tracemalloc.get_traced_memory()[0] - before < 4096, stream
            assert parser.buffered() <= 67108864 + 1000
    finally:
        tracemalloc.stop()


def test_a_failing_split_args_raises_and_the_parser_stays_usable():
    def boom(line: bytes) -> list[bytes] | None:
        raise ValueError("boom")

    from bitkv._native import RespParser

    parser = RespParser(100, 100, 1000, True, boom)
    with pytest.raises(ValueError, match="boom"):
        parser.feed(b"PING\r\n")
    assert parser.idle()
    assert parser.feed(enc(b"GET", b"k")) == [[b"GET", b"k"]]
    no_inline = RespParser(100, 100, 1000)
    with pytest.raises(RuntimeError):
        no_inline.feed(b"PING\r\n")
    with pytest.raises(ValueError):
        RespParser(0, 1, 1)
    with pytest.raises(TypeError):
        parser.error = 1  # type: ignore[assignment]


def test_split_args_cannot_reenter_the_parser():
    from bitkv._native import RespParser

    holder: list[RespParser] = []

    def reenter(line: bytes) -> list[bytes] | None:
        holder[0].feed(b"*1\r\n$4\r\nPING\r\n")
        return [line]

    parser = RespParser(100, 100, 1000, True, reenter)
    holder.append(parser)
    with pytest.raises(RuntimeError, match="re-entered"):
        parser.feed(b"*1\r\n$1\r\na\r\n*1\r\n$1\r\nPING\r\n")


# -- reference counts and leaks ----------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


PIPELINE = b"".join(enc(b"SET", b"key:%06d" % i, b"v" * 100) for i in range(16))
SPLIT = [PIPELINE[:37], PIPELINE[37:500], PIPELINE[500:]]


def _cycle(n: int) -> int:
    """Every entry point on whole, split and malformed input: ~10 calls per round."""
    count = 0
    parser = protocol.native_parser()
    for _ in range(n):
        count += len(parser.feed(PIPELINE))
        for chunk in SPLIT:
            count += len(parser.feed(chunk))
        parser.buffered()
        parser.idle()
        parser.feed(b"*2\r\n$3\r\nGET\r\n$5\r\nab")  # left incomplete...
        parser.buffered()
        parser.reset()  # ...and dropped
        count += len(parser.feed(b"PING\r\nECHO 'a b'\r\n"))
        bad = protocol.native_parser()
        bad.feed(PIPELINE[:100] + b"*1\r\n:1\r\n")
        bad.feed(PIPELINE)
    return count


@pytest.mark.slow
def test_no_leak_over_millions_of_calls():
    _cycle(2000)  # warm up allocator pools and caches
    refs = [sys.getrefcount(x) for x in (PIPELINE, protocol.split_args, None)]
    gc.collect()
    rss = [_rss_kib()]
    for _ in range(6):  # 6 x 40k rounds x ~10 calls: ~2.4M calls, 8M commands parsed
        assert _cycle(40_000) == 40_000 * (32 + 2)
        gc.collect()
        rss.append(_rss_kib())
    assert [sys.getrefcount(x) for x in (PIPELINE, protocol.split_args)] == refs[:2]
    # None's count moves with the interpreter's own use; a leak of it per call would be 2.4M
    assert abs(sys.getrefcount(None) - refs[2]) < 10_000
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds freed memory
        assert rss[-1] - rss[1] < 4 * 1024, rss
    # Traced bytes (slow to trace, so fewer calls): flat, where a leaked object per call
    # would add ~1 MB per step.
    tracemalloc.start()
    traced = []
    for _ in range(5):
        _cycle(2000)
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert max(traced[1:]) - min(traced[1:]) < 64 * 1024, traced


def test_parsed_objects_are_owned_by_the_caller_only():
    parser = protocol.native_parser()
    cmds = parser.feed(PIPELINE)
    assert len(cmds) == 16
    # A reference from the list, and getrefcount's argument (counted outside the asserts,
    # whose rewriting by pytest holds references of its own).
    counts = [sys.getrefcount(cmds[i]) for i in range(len(cmds))]
    arg_counts = [sys.getrefcount(cmds[i][j]) for i in range(len(cmds))
                  for j in range(len(cmds[i]))]
    own = sys.getrefcount(cmds)
    assert counts == [2] * 16
    assert arg_counts == [2] * 48
    assert own == 2
