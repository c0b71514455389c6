"""Fuzz target: the compiled single put (``bitkv._native.put``, bitkv/native/put.c).

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_put.py -max_len=4096 -timeout=10 [corpus_dir]

The input is read as a program. *Put* operations (keys and values cut from the input, some
larger than a size hint holds, some not bytes or out of range) run on two stores, one through
the Python path and one through the kernel; afterwards their index entries and the bytes of
their active segments must be equal. *Hostile* operations first set one piece of a third
store's state the kernel reads (the active segment's size, allocated end, slot or map, the
next seq, the index, the slot table) to a value drawn from the input, call the kernel, and
put the state back: the kernel must return a bool or raise a Python exception, and never
write or read outside the map (``scripts/asan_native.sh`` runs this target under ASan+UBSan).
``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris.
"""

from __future__ import annotations

import atexit
import mmap
import random
import shutil
import tempfile
from typing import Any

import bitkv
from bitkv import keydir

try:
    from bitkv._native import put as native_put
except ImportError:  # not built: nothing to fuzz (the test skips)
    native_put = None

_state: dict[str, Any] = {}
_HOSTILE = ("size", "allocated", "slot", "mm", "next_seq", "entries", "slots", "refused")


def setup(directory: str | None = None) -> None:
    """Open the three stores (in ``directory``, else a temporary one removed at exit)."""
    for db in _state.get("stores", []):
        db.close()
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fuzz_put-")
        atexit.register(shutil.rmtree, directory, True)
    stores = [bitkv.open(f"{directory}/{name}", auto_compact=False, max_segment_size=65536,
                         clock=lambda: 1_700_000_000.0) for name in ("py", "c", "victim")]
    stores[0]._use_native_put(False)
    _state["stores"] = stores


def _value(sel: int, raw: bytes) -> Any:
    if sel == 0:
        return raw.decode("latin-1")  # not bytes: declined
    if sel == 1:
        return bytearray(raw)
    if sel == 2:
        return raw * 40  # past 4095 bytes: no size hint in the entry
    return raw


def _hostile(db: bitkv.Store, which: str, n: int, key: bytes, value: bytes) -> None:
    seg = db._log.active
    kd = db._keydir
    saved = (seg.size, seg.allocated, seg.slot, seg.mm, seg.mapped, db._next_seq, kd.entries,
             kd.slots, db._log.refused)
    choices = [n, -n, n * 4096, 2**63 - 1 + n, 2**64 + n, seg.size + n, seg.allocated - n]
    weird = choices[n % len(choices)]
    try:
        if which == "size":
            seg.size = weird
        elif which == "allocated":
            seg.allocated = weird
        elif which == "slot":
            seg.slot = weird
        elif which == "mm":
            seg.mm = [None, b"short", mmap.mmap(-1, 4096), bytearray(64)][n % 4]
        elif which == "next_seq":
            db._next_seq = [weird, -1, "seq", None][n % 4]
        elif which == "entries":
            kd.entries = [{}, None, keydir.new_index()][n % 3]
        elif which == "slots":
            kd.slots = [[], [None] * 3, None][n % 3]
        else:
            db._log.refused = [True, 1, None][n % 3]
        try:
            result = native_put(db, key, value)
        except Exception:
            return
        assert result in (True, False), result
    finally:
        (seg.size, seg.allocated, seg.slot, seg.mm, seg.mapped, db._next_seq, kd.entries,
         kd.slots, db._log.refused) = saved


def check_one(data: bytes) -> None:
    """Run the program ``data``; raise AssertionError on any disagreement or wrong result."""
    if native_put is None or keydir.IMPLEMENTATION != "native":
        return
    if "stores" not in _state:
        setup()
    py, c, victim = _state["stores"]
    victim.put(b"warm", b"up")  # room preallocated and mapped, as the kernel expects
    pos = 0
    while pos + 3 <= len(data):
        op, klen, vlen = data[pos], data[pos + 1] % 24, data[pos + 2]
        pos += 3
        key = b"k" + data[pos : pos + klen]
        raw = data[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        if op < 200:
            value = _value(op % 8, raw)
            outcomes = []
            for db in (py, c):
                try:
                    outcomes.append(db.put(key, value))
                except TypeError as exc:  # a str value: refused the same way by both
                    outcomes.append(type(exc))
            assert outcomes[0] == outcomes[1] and outcomes[0] in (True, TypeError), outcomes
        else:
            _hostile(victim, _HOSTILE[op % len(_HOSTILE)], vlen, key, raw)
    assert dict(py._keydir.entries.items()) == dict(c._keydir.entries.items())
    assert py._next_seq == c._next_seq
    a, b = py._log.active, c._log.active
    assert (a.size, a.live_bytes) == (b.size, b.live_bytes)
    assert a.read(40, a.size - 40) == b.read(40, b.size - 40)  # headers differ (nonces)


def seeds() -> list[bytes]:
    """Plain puts, big values, declined values and each hostile operation."""
    rng = random.Random(21)
    out = [b"", bytes(3), bytes(range(256))]
    for _ in range(10):
        out.append(rng.randbytes(rng.randint(20, 1200)))
    puts = b"".join(bytes([3, 4, 20]) + b"key%01d" % (i % 10) + bytes(20) for i in range(50))
    hostile = b"".join(bytes([200 + i, 2, 9]) + b"hk" + b"h" * 9 for i in range(56))
    out += [puts, hostile, puts + hostile + puts]
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
