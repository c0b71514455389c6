"""The crash-test worker: ``python -m bitkv.crashtest.worker FD`` runs a workload the parent
sends as JSON on stdin against a store, announcing each operation on pipe ``FD`` before it
starts (``I id``) and after it returns (``A id result``), until the parent kills it.

Messages, one per line (each shorter than PIPE_BUF, so never torn): ``O`` opening the store,
``R {stats}`` opened, ``I id``, ``A id json``, ``D`` every operation done, ``C`` closed,
``X json`` an operation raised (the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    config = json.loads(sys.stdin.buffer.read())

    def send(line: str) -> None:
        data = (line + "\n").encode()
        while data:
            n = os.write(fd, data)
            data = data[n:]

    import bitkv

    from .workload import OpClock, execute

    sabotage = os.environ.get("BITKV_CRASHTEST_SABOTAGE")
    if sabotage:
        _sabotage(sabotage)
    clock = OpClock(config["start_op"])
    send("O")
    try:
        db = bitkv.open(
            config["dir"], sync=config["sync"], sync_interval=config["sync_interval"],
            max_segment_size=config["max_segment_size"], clock=clock,
            auto_compact=config["auto_compact"],
            compact_min_dead_bytes=config["compact_min_dead_bytes"],
            compact_dead_ratio=config["compact_dead_ratio"])
    except Exception:
        send("X " + json.dumps({"op": None, "error": traceback.format_exc()}))
        return 3
    send("R " + json.dumps(db.stats()["recovery"]))
    has_batch = hasattr(db, "batch")
    for op in config["ops"]:
        if op["kind"] == "batch" and not has_batch:
            continue
        clock.op = op["id"]
        send(f"I {op['id']}")
        try:
            result = execute(db, op)
        except Exception:
            send("X " + json.dumps({"op": op["id"], "error": traceback.format_exc()}))
            return 4
        send(f"A {op['id']} {json.dumps(result)}")
    send("D")
    db.close()
    send("C")
    return 0


def _sabotage(kind: str) -> None:
    """Break the store on purpose (the harness's self-test proves it notices)."""
    from ..store import Store

    if kind == "ignore-deletes":
        Store.delete = lambda self, key: True  # type: ignore[method-assign]
    elif kind == "drop-puts":
        real_put = Store.put
        count = [0]

        def put(self, key, value, **kw):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] % 7 == 0:
                return True
            return real_put(self, key, value, **kw)

        Store.put = put  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown sabotage {kind!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
