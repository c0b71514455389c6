"""The fuzz targets of fuzz/ run on a few thousand seeded, mutated inputs, without atheris.

Each target's ``check_one(data)`` is the same function the atheris entry point calls, so CI
covers every target deterministically; run the real fuzzers as fuzz/README.md says.
"""

from __future__ import annotations

import os
import random
import sys
import time

import pytest

import bitkv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))

import fuzz_batch
import fuzz_codec_native
import fuzz_compact
import fuzz_get
import fuzz_hint
import fuzz_indexmap
import fuzz_put
import fuzz_rdb
import fuzz_record
import fuzz_replay
import fuzz_resp
import fuzz_server_parser
import fuzz_store


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four random edits: bit flips, byte sets, cuts, zero/garbage runs, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.35 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif r < 0.50 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, rng.randrange(256)))
        elif r < 0.62:
            del buf[rng.randint(0, len(buf)) :]
        elif r < 0.72 and buf:
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 64)]
        elif r < 0.82:
            i = rng.randint(0, len(buf))
            run = bytes(rng.randint(1, 64)) if rng.random() < 0.5 else \
                rng.randbytes(rng.randint(1, 64))
            buf[i:i] = run
        else:
            other = rng.choice(pool)
            if other:
                a = rng.randrange(len(other))
                chunk = other[a : a + rng.randint(1, 200)]
                i = rng.randint(0, len(buf))
                buf[i:i] = chunk
    return bytes(buf)


def run_target(check_one, seeds: list[bytes], count: int, seed: int) -> int:
    rng = random.Random(seed)
    pool = list(seeds)
    started = time.monotonic()
    for data in seeds:
        check_one(data)
    for _ in range(count):
        data = mutate(rng, rng.choice(pool), pool)
        try:
            check_one(data)
        except Exception as exc:
            raise AssertionError(f"{check_one.__module__} failed on input {data!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if len(pool) < 500 and rng.random() < 0.1:
            pool.append(data)
    return int(time.monotonic() - started)


def test_record_target_on_seeded_mutations():
    run_target(fuzz_record.check_one, fuzz_record.seeds(), 4000, seed=1)


def test_record_target_on_random_bytes():
    rng = random.Random(2)
    for _ in range(1500):
        fuzz_record.check_one(rng.randbytes(rng.randint(0, 200)))


def test_hint_target_on_seeded_mutations():
    run_target(fuzz_hint.check_one, fuzz_hint.seeds(), 4000, seed=3)


def test_store_target_on_seeded_commands(tmp_path):
    fuzz_store.setup(str(tmp_path))
    seeds = fuzz_store.seeds()
    rng = random.Random(5)
    for data in seeds:
        fuzz_store.check_one(data)
    for _ in range(300):
        fuzz_store.check_one(mutate(rng, rng.choice(seeds), seeds))


def test_server_parser_target_on_seeded_mutations() -> None:
    """Differential: hiredis path vs pure-Python parser vs one-piece parsing agree."""
    run_target(fuzz_server_parser.check_one, fuzz_server_parser.seeds(), 4000, seed=11)


def test_server_parser_target_on_random_bytes() -> None:
    rng = random.Random(12)
    for _ in range(1500):
        fuzz_server_parser.check_one(rng.randbytes(rng.randint(0, 200)))


def test_rdb_target_on_seeded_mutations() -> None:
    """The RDB reader: RDBError or a consistent result, the same through a trickling source."""
    run_target(fuzz_rdb.check_one, fuzz_rdb.seeds(), 3000, seed=13)


def test_rdb_target_on_random_bytes() -> None:
    rng = random.Random(14)
    for _ in range(1500):
        fuzz_rdb.check_one(b"REDIS00%02d" % rng.randint(0, 13) + rng.randbytes(rng.randint(0, 200)))


def test_indexmap_target_on_seeded_mutations() -> None:
    """The compiled index map against a dict, on programs read from mutated bytes."""
    if fuzz_indexmap.IndexMap is None:
        pytest.skip("the extension is not built")
    run_target(fuzz_indexmap.check_one, fuzz_indexmap.seeds(), 3000, seed=15)


def test_indexmap_target_on_random_bytes() -> None:
    if fuzz_indexmap.IndexMap is None:
        pytest.skip("the extension is not built")
    rng = random.Random(16)
    for _ in range(1500):
        fuzz_indexmap.check_one(rng.randbytes(rng.randint(0, 400)))


def test_resp_target_on_seeded_mutations() -> None:
    """The compiled RESP parser against PyParser: commands, errors, idle(), buffered()."""
    if fuzz_resp.RespParser is None:
        pytest.skip("the extension is not built (or BITKV_PURE_PYTHON=1)")
    run_target(fuzz_resp.check_one, fuzz_resp.seeds(), 4000, seed=19)


def test_resp_target_on_random_bytes() -> None:
    if fuzz_resp.RespParser is None:
        pytest.skip("the extension is not built (or BITKV_PURE_PYTHON=1)")
    rng = random.Random(20)
    for _ in range(1500):
        fuzz_resp.check_one(rng.randbytes(rng.randint(0, 300)))


def test_put_target_on_seeded_mutations(tmp_path) -> None:
    """The compiled single put against the Python path, and under hostile store state."""
    if fuzz_put.native_put is None or bitkv.IMPLEMENTATION != "native":
        pytest.skip("the extension is not built")
    fuzz_put.setup(str(tmp_path))
    run_target(fuzz_put.check_one, fuzz_put.seeds(), 800, seed=17)


@pytest.mark.parametrize("target", [fuzz_get, fuzz_codec_native, fuzz_batch])
def test_kernel_target_on_seeded_mutations(target) -> None:
    """The get, record codec and batch kernels against their Python rules, on mutated bytes
    (each target compares every result; see its docstring)."""
    if target.check_one.__globals__.get("encode_batch", True) is None or \
            target.check_one.__globals__.get("Reader", True) is None or \
            target.check_one.__globals__.get("decode_record", True) is None:
        pytest.skip("the extension is not built")
    run_target(target.check_one, target.seeds(), 2000, seed=31)
    rng = random.Random(32)
    for _ in range(800):
        target.check_one(rng.randbytes(rng.randint(0, 600)))


def test_compact_target_on_seeded_mutations() -> None:
    """Compaction's compiled copy loop against the Python one, on mutated segments."""
    if fuzz_compact.native_copy_live is None:
        pytest.skip("the extension is not built")
    run_target(fuzz_compact.check_one, fuzz_compact.seeds(), 3000, seed=17)


def test_compact_target_on_random_bytes() -> None:
    if fuzz_compact.native_copy_live is None:
        pytest.skip("the extension is not built")
    rng = random.Random(18)
    for _ in range(1500):
        fuzz_compact.check_one(rng.randbytes(rng.randint(0, 400)))


def test_replay_target_on_seeded_mutations() -> None:
    if fuzz_replay._native is None:
        pytest.skip("the compiled extension is not built")
    run_target(fuzz_replay.check_one, fuzz_replay.seeds(), 3000, seed=16)


def test_replay_target_on_random_bytes() -> None:
    if fuzz_replay._native is None:
        pytest.skip("the compiled extension is not built")
    rng = random.Random(17)
    for _ in range(2000):
        fuzz_replay.check_one(bytes([rng.randrange(4)]) + rng.randbytes(rng.randint(0, 900)))


@pytest.mark.parametrize("target", [fuzz_record, fuzz_hint, fuzz_store, fuzz_server_parser,
                                    fuzz_rdb, fuzz_indexmap, fuzz_put, fuzz_get,
                                    fuzz_codec_native, fuzz_batch, fuzz_compact, fuzz_replay,
                                    fuzz_resp])
def test_targets_have_an_atheris_entry_point(target):
    assert callable(target.check_one) and callable(target.main)
