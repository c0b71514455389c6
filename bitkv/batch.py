"""Atomic batches: operations collected in memory, then written with one write call.

The store's commit (given as ``commit`` by :meth:`Store.batch`) frames them with the batch
flags (docs/format.md), so after a crash at any point either every operation of a batch is
visible or none is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import record as rec
from .errors import Error
from .kernels import NATIVE
from .validate import KeyLike, ValueLike, check_expires_at_ms, check_ttl, to_key, to_value

# (key, value or None for a delete, expiry): the expiry is a ttl in seconds (float), an
# absolute time in Unix milliseconds (int, from ``expires_at_ms``), or None for none.
Operation = tuple[bytes, bytes | None, float | int | None]

_MAX_KEY = rec.MAX_KEY_SIZE
_MAX_VALUE = rec.MAX_VALUE_SIZE
_BatchPut: Any = None
if NATIVE:
    from ._native import BatchPut as _NativeBatchPut

    _BatchPut = _NativeBatchPut


class Batch:
    """Operations collected for one atomic write; see :meth:`Store.batch`."""

    def __init__(self, commit: Callable[[list[Operation]], None]) -> None:
        self._commit = commit
        self._ops: list[Operation] = []
        self._done = False
        # Native mode: put's common case (bytes key and value, no expiry) is one C call that
        # appends the operation (bitkv/native/batch.c, BatchPut), bound as this instance's
        # put; everything else reaches the method below, the reference. A bulk load through
        # a batch spends about a fifth of its time in put, so it is worth a kernel.
        self._fast: Any = None
        if _BatchPut is not None:
            self._fast = _BatchPut(self._ops, self, Batch.put)
            self.put = self._fast.put  # type: ignore[method-assign]

    def put(self, key: KeyLike, value: ValueLike, *, ttl: float | None = None,
            expires_at_ms: int | None = None) -> None:
        """Add a put to the batch (written when the batch commits).

        ``ttl`` is in seconds from the commit; ``expires_at_ms`` is an absolute expiry in Unix
        milliseconds instead (a time in the past writes the key already expired), as in
        :meth:`Store.put`.
        """
        if self._done:
            self._check_open()
        expiry: float | int | None = None
        if ttl is not None:
            if expires_at_ms is not None:
                raise ValueError("expires_at_ms excludes ttl")
            expiry = float(check_ttl(ttl))  # a float: the commit tells the two apart by type
        elif expires_at_ms is not None:
            expiry = check_expires_at_ms(expires_at_ms)
        k = key if type(key) is bytes and key and len(key) <= _MAX_KEY else to_key(key)
        v = value if type(value) is bytes and len(value) <= _MAX_VALUE else to_value(value)
        self._ops.append((k, v, expiry))

    def delete(self, key: KeyLike) -> None:
        """Add a delete to the batch (a key with no value is simply absent afterwards)."""
        self._check_open()
        self._ops.append((to_key(key), None, None))

    def _check_open(self) -> None:
        if self._done:
            raise Error("this batch was already committed or discarded")

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> None:
        """Write every collected operation atomically. A batch commits once."""
        if self._done:
            raise Error("this batch was already committed or discarded")
        self._finish()
        self._commit(self._ops)

    def discard(self) -> None:
        """Drop every operation of the batch without writing any; the batch is finished."""
        self._finish()
        self._ops = []

    def _finish(self) -> None:
        self._done = True
        if self._fast is not None:
            self._fast.detach()  # later puts go through Python, which raises

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._done:
            return  # committed or discarded explicitly inside the block
        if exc_type is None:
            self.commit()
        else:
            self.discard()
