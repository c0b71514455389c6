"""Fuzz target: the compiled RESP request parser (``bitkv._native.RespParser``, resp.c)
against its pure-Python twin (``bitkv.server.protocol.PyParser``).

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_resp.py -max_len=4096 -timeout=10 [corpus_dir]

The first input byte picks the limits and whether the client is authenticated, the second
how the rest is cut into reads; the rest is the byte stream a client sends (hostile headers
included: huge or negative counts and bulk lengths, truncated frames, other RESP types). Both
parsers are fed the same reads; after every read they must return the same commands and
agree on ``error``, ``idle()`` and ``buffered()`` (the server's query-buffer accounting), and
``reset()`` must leave both idle. Anything else (a disagreement, an exception, a crash, a huge
allocation) is a bug. atheris instruments the Python side only; ``scripts/asan_native.sh``
runs this target against an ASan+UBSan build. ``tests/test_fuzz_targets.py`` runs
``check_one`` on seeded inputs without atheris.
"""

from __future__ import annotations

from fuzz_server_parser import _LIMITS, _reads
from fuzz_server_parser import seeds as _parser_seeds

from bitkv.resp import RESP_PARSER as RespParser
from bitkv.server import protocol


def check_one(data: bytes) -> None:
    """Run the differential on one input; raise AssertionError (or anything else) on a bug."""
    if RespParser is None or len(data) < 2:
        return
    limits = _LIMITS[data[0] & 3]
    authenticated = not data[0] & 4
    reads = _reads(data[2:], data[1])
    reference = protocol.PyParser(limits, authenticated)
    native = protocol.native_parser(limits, authenticated)
    for i, chunk in enumerate(reads):
        if data[0] & 8 and i == len(reads) // 2:
            # The client authenticates halfway (AUTH): the limits change between reads.
            reference.authenticated = native.authenticated = True
        expected = reference.feed(chunk)
        got = native.feed(chunk)
        assert got == expected, ("commands differ", i, got, expected)
        assert native.error == reference.error, ("errors differ", native.error,
                                                 reference.error)
        assert native.idle() == reference.idle(), ("idle() differs", i)
        assert native.buffered() == reference.buffered(), (
            "buffered() differs", i, native.buffered(), reference.buffered())
        if reference.error is not None:
            assert native.feed(b"*1\r\n$4\r\nPING\r\n") == []  # nothing after an error
            break
    native.reset()
    reference.reset()
    assert native.idle() and reference.idle()
    assert native.buffered() == reference.buffered() == 0


def seeds() -> list[bytes]:
    """The server parser's corpus plus hostile headers for the compiled one."""
    hostile = [
        b"*9223372036854775807\r\n",
        b"*9223372036854775808\r\n",
        b"*-9223372036854775808\r\n",
        b"*-1\r\n*0\r\n*-99\r\n*1\r\n$4\r\nPING\r\n",
        b"*1\r\n$9223372036854775807\r\n",
        b"*2\r\n$1\r\na\r\n$2147483647\r\nxx",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$-0\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nab",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r",
        b"*\r\n",
        b"*1\r\n$\r\n\r\n",
        b"*1\r\n$1\r\n\x00\r\n*1\r\n\x00",
        b"PING\r\n" + b"a" * 70000,
        b"*1\r\n" + b"$" + b"9" * 70000,
        b"*" + b"1" * 70000,
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nECHO 'x'\r\nECHO \"\\x41\"\r\n\r\n\n",
    ]
    out = list(_parser_seeds())
    for i, stream in enumerate(hostile):
        out.append(b"\x02\x00" + stream)
        out.append(bytes([i % 16, (i * 53) % 256]) + stream)
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
