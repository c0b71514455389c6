"""The fuzz targets of fuzz/ run on a few thousand seeded, mutated inputs, without atheris.

Each target's ``check_one(data)`` is the same function the atheris entry point calls, so CI
covers every target deterministically; run the real fuzzers as fuzz/README.md says.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest

import bitkv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))

import fuzz_batch
import fuzz_codec_native
import fuzz_compact
import fuzz_get
import fuzz_get_many
import fuzz_hint
import fuzz_indexmap
import fuzz_items_in
import fuzz_prefix
import fuzz_put
import fuzz_rdb
import fuzz_rdb_types
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


def _random_bytes(most: int) -> Callable[[random.Random], bytes]:
    return lambda rng: rng.randbytes(rng.randint(0, most))


def _compiled(name: str, module: ModuleType) -> Callable[[], bool]:
    """The target tests a compiled entry point: it is there when the module's ``name`` is."""
    return lambda: getattr(module, name) is not None


_SHORT_RANDOM_BYTES = _random_bytes(200)


@dataclass(frozen=True)
class Target:
    """How CI runs one fuzz target: ``mutations`` seeded mutations of its seeds (rng seeded
    with ``seed``), then ``random_inputs`` inputs from ``random_input`` (rng ``seed + 1``);
    skipped unless ``built()`` (a compiled entry point needs the extension)."""

    module: ModuleType
    mutations: int
    seed: int
    random_inputs: int = 0
    random_input: Callable[[random.Random], bytes] = _SHORT_RANDOM_BYTES
    built: Callable[[], bool] = lambda: True

    def __str__(self) -> str:
        return self.module.__name__


TARGETS = [
    Target(fuzz_record, 4000, 1, 1500),
    Target(fuzz_hint, 4000, 3),
    # Differential: hiredis path vs pure-Python parser vs one-piece parsing agree.
    Target(fuzz_server_parser, 4000, 11, 1500),
    # The RDB reader: RDBError or a consistent result, the same through a trickling source.
    Target(fuzz_rdb, 3000, 13, 1500,
           lambda rng: b"REDIS00%02d" % rng.randint(0, 13) + rng.randbytes(rng.randint(0, 200))),
    # The RDB reader's hashes, sets, lists and zsets in every encoding, and the packed decoders.
    Target(fuzz_rdb_types, 2000, 23, 1000,
           lambda rng: b"REDIS0010\xfe\x00" + bytes([rng.choice((1, 2, 3, 4, 5, 9, 10, 11, 12, 13,
                                                                 14, 16, 17, 18, 20))]) +
           rng.randbytes(rng.randint(0, 200))),
    # The compiled index map against a dict, on programs read from mutated bytes.
    Target(fuzz_indexmap, 3000, 15, 1500, _random_bytes(400),
           _compiled("IndexMap", fuzz_indexmap)),
    # IndexMap.items_in (KeyDir.entries_in) against a comprehension over a dict.
    Target(fuzz_items_in, 2000, 37, 1000, _random_bytes(600),
           _compiled("IndexMap", fuzz_items_in)),
    # The compiled prefix scans (keys_with_prefix, count_with_prefix) against the dict's.
    Target(fuzz_prefix, 2000, 21, 1000, _random_bytes(400), _compiled("IndexMap", fuzz_prefix)),
    # The compiled RESP parser against PyParser: commands, errors, idle(), buffered().
    Target(fuzz_resp, 4000, 19, 1500, _random_bytes(300), _compiled("RespParser", fuzz_resp)),
    # The get, record codec and batch kernels against their Python rules (each target
    # compares every result; see its docstring).
    Target(fuzz_get, 2000, 31, 800, _random_bytes(600), _compiled("Reader", fuzz_get)),
    Target(fuzz_get_many, 1500, 37, 600, _random_bytes(900), _compiled("Reader", fuzz_get_many)),
    Target(fuzz_codec_native, 2000, 31, 800, _random_bytes(600),
           _compiled("decode_record", fuzz_codec_native)),
    Target(fuzz_batch, 2000, 31, 800, _random_bytes(600),
           _compiled("encode_batch", fuzz_batch)),
    # Compaction's compiled copy loop against the Python one, on mutated segments.
    Target(fuzz_compact, 3000, 17, 1500, _random_bytes(400),
           _compiled("native_copy_live", fuzz_compact)),
    Target(fuzz_replay, 3000, 16, 2000,
           lambda rng: bytes([rng.randrange(4)]) + rng.randbytes(rng.randint(0, 900)),
           _compiled("_native", fuzz_replay)),
]


def _skip_unless_built(target: Target) -> None:
    if not target.built():
        pytest.skip("the extension is not built (or BITKV_PURE_PYTHON=1)")


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_target_on_seeded_mutations(target: Target) -> None:
    _skip_unless_built(target)
    run_target(target.module.check_one, target.module.seeds(), target.mutations, target.seed)


@pytest.mark.parametrize("target", [t for t in TARGETS if t.random_inputs], ids=str)
def test_target_on_random_bytes(target: Target) -> None:
    _skip_unless_built(target)
    rng = random.Random(target.seed + 1)
    for _ in range(target.random_inputs):
        target.module.check_one(target.random_input(rng))


def test_store_target_on_seeded_commands(tmp_path):
    fuzz_store.setup(str(tmp_path))
    seeds = fuzz_store.seeds()
    rng = random.Random(5)
    for data in seeds:
        fuzz_store.check_one(data)
    for _ in range(300):
        fuzz_store.check_one(mutate(rng, rng.choice(seeds), seeds))


def test_put_target_on_seeded_mutations(tmp_path) -> None:
    """The compiled single put against the Python path, and under hostile store state."""
    if fuzz_put.native_put is None or bitkv.IMPLEMENTATION != "native":
        pytest.skip("the extension is not built")
    fuzz_put.setup(str(tmp_path))
    try:
        run_target(fuzz_put.check_one, fuzz_put.seeds(), 800, seed=17)
    finally:
        # Close the target's three stores: left open, their flusher threads allocate while
        # later tests measure memory (test_indexmap's per-key figure failed by 540 bytes).
        for db in fuzz_put._state.get("stores", []):
            with contextlib.suppress(Exception):
                db.close()


def test_every_target_is_run() -> None:
    """A new fuzz/ target must join TARGETS (or have its own test above)."""
    fuzz_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz")
    on_disk = {name[:-3] for name in os.listdir(fuzz_dir)
               if name.startswith("fuzz_") and name.endswith(".py")}
    assert on_disk == {t.module.__name__ for t in TARGETS} | {"fuzz_store", "fuzz_put"}


@pytest.mark.parametrize("target", [fuzz_record, fuzz_hint, fuzz_store, fuzz_server_parser,
                                    fuzz_rdb, fuzz_rdb_types, fuzz_indexmap, fuzz_put, fuzz_get,
                                    fuzz_get_many,
                                    fuzz_codec_native, fuzz_batch, fuzz_compact, fuzz_replay,
                                    fuzz_resp, fuzz_items_in])
def test_targets_have_an_atheris_entry_point(target):
    assert callable(target.check_one) and callable(target.main)
