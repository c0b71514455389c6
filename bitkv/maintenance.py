"""A store's background threads, and when they run.

* The **flusher** (``sync="interval"``): every ``sync_interval`` seconds, fsync the active
  segment if anything new was written, and check the store's lock is still its own.
* The **maintenance thread** (``auto_compact=True``): wakes on every rotation, and every
  ``MAINTENANCE_PERIOD`` seconds otherwise; checks the lock, writes hints for sealed segments
  that have none, and compacts when the thresholds are crossed.

The threads hold only a weak reference to the store (through a :class:`MaintenanceHost`
that returns False once the store is gone), so a store dropped without ``close()`` is still
collected, and its ``__del__`` releases the lock. What each step does is the store's
business; this module only decides when.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from .segment import Segment

MAINTENANCE_PERIOD = 5.0  # seconds between maintenance rounds without a rotation to wake it


class MaintenanceHost(Protocol):
    """The work the threads do; each returns False when the store is gone (stop)."""

    def flush(self) -> bool:
        """The flusher's round: fsync what is new, check the lock."""

    def maintain(self) -> bool:
        """The maintenance round: check the lock, hints for sealed segments, compaction."""


class Maintenance:
    """Starts, wakes and stops a store's background threads."""

    def __init__(self, host: MaintenanceHost, *, flush_interval: float | None,
                 maintain: bool) -> None:
        self.stop_event = threading.Event()  # set when the store closes
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        if flush_interval is not None:
            self._threads.append(threading.Thread(
                target=_flusher, args=(host, self.stop_event, flush_interval),
                name="bitkv-flusher", daemon=True))
        if maintain:
            self._threads.append(threading.Thread(
                target=_maintainer, args=(host, self.stop_event, self._wake),
                name="bitkv-compactor", daemon=True))

    @property
    def runs_maintenance(self) -> bool:
        return any(t.name == "bitkv-compactor" for t in self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Run a maintenance round now (after a rotation: a sealed segment wants a hint)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the threads and wait for them (but never for the calling thread itself:
        ``__del__`` may run on one of them)."""
        self.stop_event.set()
        self._wake.set()
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me and thread.is_alive():
                thread.join()

    def is_thread(self, thread: threading.Thread) -> bool:
        return thread in self._threads


def _flusher(host: MaintenanceHost, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        if not host.flush():
            return


def _maintainer(host: MaintenanceHost, stop: threading.Event, wake: threading.Event) -> None:
    while True:
        wake.wait(timeout=MAINTENANCE_PERIOD)
        wake.clear()
        if stop.is_set() or not host.maintain():
            return


def compaction_due(sealed: Iterable[Segment], min_dead_bytes: int, dead_ratio: float) -> bool:
    """Whether the maintenance thread compacts now: over the sealed segments, dead bytes are
    at least ``min_dead_bytes`` and at least ``dead_ratio`` of their total size."""
    dead = total = 0
    for seg in sealed:
        dead += seg.dead_bytes
        total += seg.size
    return bool(total) and dead >= min_dead_bytes and dead >= dead_ratio * total
