"""The oracle: what the store may legitimately hold after a crash.

It keeps the state every key had at the last verified point (``base``), then every operation
started since, in order, with the state each one leaves its keys in. After a crash the caller
says which operations were *required* to survive (acknowledged ones for a process kill or
``sync="always"``; fsynced ones for power loss in the other modes) and which merely *may*
have (started but not acknowledged, or acknowledged but not yet durable). For each key the
store may then show the state of its last required operation or of any later one, nothing
else: no older value, no value never written, no deleted key, no expired key.

A batch is all-or-nothing: when one key shows exactly the batch's own value, every other key
of the batch must show the batch's effect or a later one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .workload import Op, member_tag, now_ms, written_length

State = tuple[str, int, int] | None  # (tag, value length, expiry_ms or 0); None = absent


class _Unknown:
    def __repr__(self) -> str:
        return "unknown (damaged earlier)"


UNKNOWN: Any = _Unknown()  # a key whose value was lost to an earlier reported violation


def visible(state: State, at_ms: int) -> State:
    if state is None or state is UNKNOWN:
        return state
    if state[2] and state[2] <= at_ms:
        return None
    return state


def describe_state(state: Any) -> str:
    if state is None:
        return "absent"
    if state is UNKNOWN:
        return repr(state)
    if isinstance(state, tuple) and len(state) == 3 and isinstance(state[0], str):
        tag, length, exp = state
        ttl = f", expiry {exp}" if exp else ""
        return f"value of op {tag} ({length} B{ttl})"
    return repr(state)


@dataclass
class OpRecord:
    op: Op
    effects: list[tuple[bytes, State]]     # in order; the last effect on a key wins
    expected: Any                          # the result the operation must return
    acked: bool = False
    verified: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> int:
        op_id: int = self.op["id"]  # ops are JSON-like dicts (workload.Op); "id" is an int
        return op_id

    def final(self) -> dict[bytes, State]:
        out: dict[bytes, State] = {}
        for key, state in self.effects:
            out[key] = state
        return out


class Oracle:
    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = list(keys)
        self.base: dict[bytes, Any] = dict.fromkeys(self.keys)
        self.current: dict[bytes, Any] = dict(self.base)
        self.records: list[OpRecord] = []
        self.acknowledged = 0
        self.verified = 0

    # -- running -------------------------------------------------------------------------------

    def begin(self, op: Op) -> OpRecord:
        """Note that ``op`` is starting; compute the state it leaves and the result it owes."""
        kind = op["kind"]
        at = now_ms(op["id"])
        cur = self.current
        effects: list[tuple[bytes, State]] = []
        expected: Any = None
        if kind in ("put", "delete", "get", "expire", "persist"):
            key = op["key"].encode()
            before = visible(cur[key], at)
            unknown = before is UNKNOWN
            if kind == "put":
                exp = at + op["ttl"] * 1000 if op["ttl"] else 0
                effects.append((key, (str(op["id"]), written_length(op), exp)))
            elif kind == "delete":
                expected = None if unknown else before is not None
                effects.append((key, None))
            elif kind == "get":
                expected = None if unknown else (
                    None if before is None else [before[0], before[1], op["key"]])
            elif kind == "expire":
                expected = None if unknown else before is not None
                if unknown:
                    effects.append((key, UNKNOWN))
                elif before is not None:
                    effects.append((key, (before[0], before[1], at + op["ttl"] * 1000)))
            elif kind == "persist":
                expected = None if unknown else (before is not None and before[2] != 0)
                if unknown:
                    effects.append((key, UNKNOWN))
                elif before is not None and before[2]:
                    effects.append((key, (before[0], before[1], 0)))
            if unknown:
                expected = "?"
        elif kind == "batch":
            for i, m in enumerate(op["members"]):
                key = m["key"].encode()
                if m["kind"] == "put":
                    exp = at + m["ttl"] * 1000 if m["ttl"] else 0
                    effects.append((key, (member_tag(op["id"], i), written_length(op, i), exp)))
                else:
                    effects.append((key, None))
        record = OpRecord(op, effects, expected)
        if effects:
            # The states before the operation, for settle(): an operation that raised may
            # have left its keys as they were.
            record.extra["before"] = {key: cur[key] for key, _state in effects}
        for key, state in effects:
            cur[key] = state
        self.records.append(record)
        return record

    def ack(self, record: OpRecord, result: Any) -> str | None:
        """The operation returned ``result``; return a violation message if it is wrong."""
        record.acked = True
        self.acknowledged += 1
        if record.expected == "?" or record.op["kind"] in ("put", "batch", "compact", "sync",
                                                             "pause"):
            return None
        if record.op["kind"] == "get" and isinstance(result, list) and result \
                and result[0] in ("garbage", "corrupt"):
            return (f"op {record.id} get {record.op['key']!r} read {result[0]} data "
                    f"{result[1:]!r}; expected {record.expected!r}")
        if result != record.expected:
            return (f"op {record.id} {record.op['kind']} {record.op['key']!r} returned "
                    f"{result!r}; the oracle expected {record.expected!r}")
        return None

    def settle(self, record: OpRecord, shown: dict[bytes, Any]) -> list[str]:
        """The operation of ``record`` raised, and the store, still running, now shows
        ``shown`` (key -> state, as :func:`verify.observe` reports it) for its keys.

        A failed operation may or may not have been applied. The record stays unacknowledged
        (a later :meth:`check` accepts either outcome), but the running state that later
        operations compute their expected results from must follow the store: if the store
        shows the key as it was before, later reads must see that. A state that is neither
        before nor after, or a batch applied to some keys only, is a violation.
        """
        at = now_ms(record.id)
        before: dict[bytes, Any] = record.extra.get("before", {})
        violations: list[str] = []
        outcomes: set[str] = set()
        for key, after in record.final().items():
            prior = before.get(key)
            got = shown.get(key, UNKNOWN)
            if got is UNKNOWN or prior is UNKNOWN or after is UNKNOWN:
                self.current[key] = UNKNOWN
                continue
            if isinstance(got, tuple) and got and got[0] in ("garbage", "corrupt", "error"):
                violations.append(f"after op {record.id} ({record.op['kind']}) raised, "
                                  f"reading {key!r} gives {got[0]}: {got[1]}")
                self.current[key] = UNKNOWN
                continue
            is_after = visible(after, at) == got
            is_before = visible(prior, at) == got
            if is_after and is_before:
                continue
            if is_after:
                outcomes.add("applied")
            elif is_before:
                outcomes.add("not applied")
                self.current[key] = prior
            else:
                violations.append(
                    f"after op {record.id} ({record.op['kind']}) raised, {key!r} shows "
                    f"{describe_state(got)}; allowed: {describe_state(visible(prior, at))} "
                    f"(before) | {describe_state(visible(after, at))} (after)")
                self.current[key] = UNKNOWN
        if len(outcomes) > 1:
            violations.append(f"batch op {record.id} raised and is half applied in the "
                              "running store (some keys show it, others do not)")
        return violations

    # -- checking after a crash ----------------------------------------------------------------

    def check(self, observed: dict[bytes, Any], at_ms: int,
              required: Callable[[OpRecord], bool],
              existing: Callable[[OpRecord], bool] | None = None) -> list[str]:
        """Compare what the recovered store shows with what it may show.

        ``observed`` maps every key to None, (tag, length, expiry_ms), or ("garbage"|"corrupt"|
        "error", detail). ``existing`` selects the operations that had started before the crash
        (default: all); ``required`` those that must have survived.
        """
        records = [r for r in self.records if existing is None or existing(r)]
        violations: list[str] = []
        # Per key: [(record index or -1 for base, state after)], and the last required index.
        history: dict[bytes, list[tuple[int, Any]]] = {k: [(-1, self.base[k])] for k in self.keys}
        last_required: dict[bytes, int] = dict.fromkeys(self.keys, 0)
        for idx, r in enumerate(records):
            req = required(r)
            for key, state in r.final().items():
                history[key].append((idx, state))
                if req:
                    last_required[key] = len(history[key]) - 1
        matches: dict[bytes, set[int]] = {}
        bad: set[bytes] = set()
        for key in self.keys:
            got = observed.get(key)
            cands = history[key][last_required[key]:]
            if any(s is UNKNOWN for _i, s in cands):
                matches[key] = {i for i, _s in cands}
                continue
            if isinstance(got, tuple) and got and got[0] in ("garbage", "corrupt", "error"):
                violations.append(f"key {key!r}: read {got[0]}: {got[1]}; allowed: "
                                  + _allowed(cands, at_ms))
                bad.add(key)
                continue
            m = {i for i, s in cands if visible(s, at_ms) == got}
            matches[key] = m
            if not m:
                older = [i for i, s in history[key][: last_required[key]]
                         if visible(s, at_ms) == got]
                why = ""
                if older:
                    why = " (an older state: a required operation was lost)"
                elif got is not None and all(s is None or visible(s, at_ms) is None
                                             for _i, s in cands):
                    why = " (the key should be deleted or expired)"
                violations.append(f"key {key!r}: recovered {describe_state(got)}{why}; "
                                  "allowed: " + _allowed(cands, at_ms))
                bad.add(key)
        # Atomicity of batches that may or may not have survived.
        for idx, r in enumerate(records):
            if r.op["kind"] != "batch" or required(r):
                continue
            fin = r.final()
            if len(fin) < 2:
                continue
            shown = [k for k in fin if k in matches and matches[k] == {idx}]
            if not shown:
                continue
            partial = [k for k in fin if k in matches and matches[k]
                       and max(matches[k]) < idx]
            if partial:
                violations.append(
                    f"batch op {r.id} is half applied: {shown[0]!r} shows the batch's value "
                    f"but {partial[0]!r} shows a state from before the batch")
                bad.update(fin)
        for r in records:
            if r.acked and not r.verified and required(r) \
                    and not any(k in bad for k, _s in r.effects):
                r.verified = True
                self.verified += 1
        return violations

    def discard(self) -> None:
        """Forget the operations since the base (the store went back to it)."""
        self.current = dict(self.base)
        self.records = []

    def collapse(self, observed: dict[bytes, Any]) -> None:
        """Make the verified recovered state the new base; forget the operations before it."""
        base: dict[bytes, Any] = {}
        for key in self.keys:
            got = observed.get(key)
            if isinstance(got, tuple) and got and got[0] in ("garbage", "corrupt", "error"):
                base[key] = UNKNOWN
            else:
                base[key] = got
        self.base = base
        self.current = dict(base)
        self.records = []


def _allowed(cands: list[tuple[int, Any]], at_ms: int) -> str:
    seen = []
    for _i, s in cands:
        d = describe_state(visible(s, at_ms))
        if d not in seen:
            seen.append(d)
    return " | ".join(seen)
