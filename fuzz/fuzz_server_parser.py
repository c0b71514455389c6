"""Fuzz target: the server's RESP request parsers (``bitkv.server.protocol``).

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_server_parser.py -max_len=4096 -timeout=10 [corpus_dir]

The first input byte picks the limits and whether the client is authenticated, the second
how the rest is cut into reads; the rest is the byte stream a client sends. It is fed, read
by read, to the pure-Python parser (authoritative) and to the hiredis one (when hiredis is
installed), and in one piece to a third parser. The only allowed outcome: all of them return
the same commands and the same protocol error (or none); every command is a non-empty list
of bytes within the limits. Anything else (an exception, a disagreement, a limit not kept,
a hang or a huge allocation, which shows up as a timeout or OOM) is a bug.
``tests/test_fuzz_targets.py`` runs ``check_one`` on a few thousand seeded inputs without
atheris.
"""

from __future__ import annotations

from bitkv.server import protocol

# Small limits reach every limit check with short inputs; the defaults keep the real ones.
_LIMITS = (
    protocol.Limits(max_bulk_len=16, max_multibulk_len=8, max_query_buffer=40),
    protocol.Limits(max_bulk_len=300, max_multibulk_len=200, max_query_buffer=2000),
    protocol.Limits(),
    protocol.Limits(),
)


def _reads(data: bytes, how: int) -> list[bytes]:
    """Cut ``data`` into reads: whole, fixed sizes, or sizes taken from the data itself."""
    if how % 4 == 0 or not data:
        return [data] if data else []
    if how % 4 in (1, 2):
        size = 1 + (how >> 2) % (7 if how % 4 == 1 else 64)
        return [data[i : i + size] for i in range(0, len(data), size)]
    out = []
    i = 0
    while i < len(data):
        size = 1 + data[i] % 32
        out.append(data[i : i + size])
        i += size
    return out


def _run(parser: protocol.PyParser | protocol.HiredisParser,
         reads: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    commands: list[list[bytes]] = []
    for chunk in reads:
        if parser.error is not None:
            break  # the server closes the connection at the first error
        commands += parser.feed(chunk)
    return commands, parser.error


def _check_commands(commands: list[list[bytes]], limits: protocol.Limits) -> None:
    # An inline command is bounded by its line length instead of the multibulk limits.
    max_count = max(limits.max_multibulk_len, protocol.PROTO_INLINE_MAX_SIZE)
    max_arg = max(limits.max_bulk_len, protocol.PROTO_INLINE_MAX_SIZE)
    for cmd in commands:
        assert type(cmd) is list and 0 < len(cmd) <= max_count, cmd
        for arg in cmd:
            assert type(arg) is bytes and len(arg) <= max_arg, arg


def check_one(data: bytes) -> None:
    """Run every check on one input; raise AssertionError (or anything else) on a bug."""
    if len(data) < 2:
        return
    limits = _LIMITS[data[0] & 3]
    authenticated = not data[0] & 4
    stream = data[2:]
    reads = _reads(stream, data[1])
    expected = _run(protocol.PyParser(limits, authenticated), reads)
    _check_commands(expected[0], limits)
    whole = _run(protocol.PyParser(limits, authenticated), [stream] if stream else [])
    assert whole == expected, ("the pure-Python parser depends on how reads are cut",
                               whole, expected)
    if protocol.HAVE_HIREDIS:
        fast = _run(protocol.HiredisParser(limits, authenticated), reads)
        assert fast == expected, ("hiredis path and pure-Python parser disagree", fast,
                                  expected)


def _encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def seeds() -> list[bytes]:
    """A starting corpus: pipelines, inline commands, every RESP3 type, oversized headers."""
    ok = _encode(b"SET", b"k", b"v") + _encode(b"GET", b"k") + _encode(b"PING")
    streams = [
        ok,
        ok + b"GET k\r\nSET \"a b\" 'c'\r\n",
        _encode(b"MSET", *[b"k%d" % i for i in range(120)]),
        b"*2147483647\r\n",
        b"*1\r\n*2147483647\r\n",
        ok + b"~99999\r\n",
        b"*1\r\n%1\r\n*0\r\n$1\r\nb\r\n",
        b"*2\r\n$4\r\nECHO\r\n>1\r\n$1\r\na\r\n",
        b"*2\r\n$4\r\nECHO\r\n|1\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"*3\r\n$4\r\nECHO\r\n:1\r\n_\r\n#t\r\n,1.5\r\n(123\r\n=5\r\ntxt:a\r\n",
        b"*1\r\n$99999999999\r\n",
        b"*1\r\n$3\r\nabcXY*0\r\n*-1\r\n$-1\r\n",
        b"*01\r\n$03\r\nabc\r\n*+1\r\n$ 1\r\n",
        _encode(b"SET", b"k", b"x" * 200) + _encode(b"GET", b"k"),
        b"GET \"unterminated\r\n",
    ]
    out = []
    for i, stream in enumerate(streams):
        out.append(b"\x02\x00" + stream)  # default limits, authenticated, one read
        out.append(bytes([i % 8, (i * 37) % 256]) + stream)
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
