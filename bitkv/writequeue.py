"""The queue of durable writers (``sync="always"``): LevelDB's writer queue (``DBImpl::Write``
and ``BuildBatchGroup``) for threads that each wait for their own write to reach the disk.

A writer queues its request. If no group is being committed it *leads*: it takes every request
queued so far (the group, up to ``max_group_bytes``), has ``commit`` write all of them (the
store appends their records with one write under its writer lock, then fdatasyncs once), and
wakes each member with the outcome. Writers that queued meanwhile wait; the first of them is
woken as the next leader and commits whatever queued up behind it in the same way. A follower
does no I/O and takes no lock but its own: woken once, it returns (or raises the group's
error), which is what lets concurrent writers share an fdatasync instead of each spending a
system call, a GIL handoff and a wakeup on it (docs/performance.md, "Group commit").

This module only coordinates; what a request is and how a group is written is the caller's.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import Error

T = TypeVar("T")

# A group's bound in bytes: what LevelDB allows (1 MiB), so one commit neither builds nor
# copies an unbounded buffer; a group always holds at least its leader's request.
MAX_GROUP_BYTES = 1 << 20


class _Request(Generic[T]):
    __slots__ = ("error", "lead", "payload", "size", "woken")

    def __init__(self, payload: T, size: int) -> None:
        self.payload = payload
        self.size = size
        # Held until the request's group is committed or it is told to lead: acquiring it
        # is the follower's one wait (with the GIL released).
        self.woken = threading.Lock()
        self.woken.acquire()
        self.error: BaseException | None = None  # the group's failure, set before waking
        self.lead = False  # woken to lead the next group (not yet committed)


class WriteQueue(Generic[T]):
    """Serialises ``commit`` calls and gives each the payloads of every request queued
    since the last one began (see the module doc)."""

    def __init__(self, commit: Callable[[list[T]], None],
                 max_group_bytes: int = MAX_GROUP_BYTES) -> None:
        self._commit = commit
        self.max_group_bytes = max_group_bytes
        self._mutex = threading.Lock()  # guards the two fields below; never held for I/O
        self._queue: deque[_Request[T]] = deque()  # not yet taken into a group, in order
        self._leading = False  # a leader is committing, or has been woken to

    def __len__(self) -> int:
        """Requests queued and not yet taken into a group."""
        return len(self._queue)

    def submit(self, payload: T, size: int) -> None:
        """Commit ``payload`` (``size`` bytes, for the group's bound) in the next group and
        return once that group is committed; raise what its commit raised."""
        request = _Request(payload, size)
        with self._mutex:
            self._queue.append(request)
            leads = not self._leading
            self._leading = True
        if not leads:
            self._wait(request)
            if not request.lead:
                if request.error is not None:
                    raise request.error
                return
        self._lead()
        if request.error is not None:
            raise request.error

    def _wait(self, request: _Request[T]) -> None:
        """Wait until ``request`` is committed or told to lead. An interrupt (KeyboardInterrupt
        in the main thread) is held until then and raised after: the request is queued, so
        its group will write it, and a leader's role handed to it must not be lost, or no
        one would commit the queue again."""
        interrupted: BaseException | None = None
        while True:
            try:
                request.woken.acquire()
                break
            except BaseException as exc:  # re-raised below, once the wait is over
                interrupted = exc
        if interrupted is not None:
            if request.lead:
                self._lead()
            raise interrupted

    def _lead(self) -> None:
        """Commit the group at the front of the queue (the leader's own request first), wake
        its members, and hand the lead to the next request queued, if any."""
        with self._mutex:
            queue = self._queue
            # The head is the leader's own request: it queued into an empty queue with no
            # leader, or was handed the lead as the head of what was left. So group[0] is the
            # caller's, and group[1:] are the writers waiting in _wait.
            group = [queue.popleft()]
            size = group[0].size
            while queue and size + queue[0].size <= self.max_group_bytes:
                request = queue.popleft()
                size += request.size
                group.append(request)
        error: BaseException | None = None
        try:
            self._commit([request.payload for request in group])
        except BaseException as exc:  # every member raises it (as Future.result does)
            error = exc
        finally:
            with self._mutex:
                successor = queue[0] if queue else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._leading = False
            # The successor first: the disk idles until it starts the next commit.
            if successor is not None:
                successor.woken.release()
            if error is not None and not isinstance(error, Exception):
                # KeyboardInterrupt or SystemExit is the leader's own; the other writers
                # learn that their commit was cut short, not that they were interrupted.
                for request in group[1:]:
                    request.error = Error(
                        f"the group commit of this write was interrupted in another thread "
                        f"({type(error).__name__}); it may or may not be on disk")
                group[0].error = error
            else:
                for request in group:
                    request.error = error
            for request in group[1:]:
                request.woken.release()
