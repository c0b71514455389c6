"""The write queue (bitkv/writequeue.py) on its own: groups hold what queued behind a commit,
in order and within their bound; a failed commit fails exactly its group's writers and the
queue goes on; an interrupted writer neither loses its write nor the lead."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from bitkv.writequeue import WriteQueue


class _GatedCommits:
    """The commit callback: records each group; while ``gate`` is clear, the next commit
    blocks in it (``entered`` is set), so that writers queue up behind it."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.groups: list[list[int]] = []
        self.fail = fail or set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def hold_next(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def __call__(self, payloads: list[int]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.groups.append(list(payloads))
        failing = self.fail & set(payloads)
        if failing:
            raise OSError(5, f"injected failure of the group holding {sorted(failing)}")


def _wait_queued(queue: WriteQueue[int], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(queue) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(queue) == n


def _submit_in_threads(queue: WriteQueue[int], payloads: list[int], size: int = 1
                       ) -> tuple[list[threading.Thread], dict[int, BaseException | None]]:
    outcome: dict[int, BaseException | None] = {}

    def submit(payload: int) -> None:
        try:
            queue.submit(payload, size)
            outcome[payload] = None
        except BaseException as exc:  # the outcome is what is checked
            outcome[payload] = exc

    threads = [threading.Thread(target=submit, args=(p,)) for p in payloads]
    for th in threads:
        th.start()
    return threads, outcome


def _submit_alone(queue: WriteQueue[int], payload: int) -> None:
    """Submit from a thread and fail (rather than hang) if no one commits it."""
    th = threading.Thread(target=queue.submit, args=(payload, 1), daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "the queue lost its leader: nothing commits any more"


def _hold_a_commit(queue: WriteQueue[int], commits: _GatedCommits, payload: int
                   ) -> tuple[list[threading.Thread], dict[int, BaseException | None]]:
    """Start a writer of ``payload`` whose commit blocks until ``commits.gate`` is set."""
    commits.hold_next()
    started = _submit_in_threads(queue, [payload])
    assert commits.entered.wait(10)
    return started


def test_writers_queued_behind_a_commit_are_the_next_group_in_order():
    commits = _GatedCommits()
    queue: WriteQueue[int] = WriteQueue(commits)
    first, first_outcome = _hold_a_commit(queue, commits, 0)
    waiting = []
    for payload in range(1, 6):  # one at a time, so the queue's order is known
        threads, _ = _submit_in_threads(queue, [payload])
        waiting += threads
        _wait_queued(queue, payload)
    commits.gate.set()
    for th in first + waiting:
        th.join(10)
    assert commits.groups == [[0], [1, 2, 3, 4, 5]]
    assert first_outcome == {0: None}
    assert len(queue) == 0
    _submit_alone(queue, 6)  # the lead was given back: a lone writer commits at once
    assert commits.groups[-1] == [6]


def test_a_group_stays_within_its_bound_in_bytes():
    commits = _GatedCommits()
    queue: WriteQueue[int] = WriteQueue(commits, max_group_bytes=250)
    first, _ = _hold_a_commit(queue, commits, 0)
    waiting = []
    for payload in range(1, 6):
        threads, _ = _submit_in_threads(queue, [payload], size=100)
        waiting += threads
        _wait_queued(queue, payload)
    commits.gate.set()
    for th in first + waiting:
        th.join(10)
    assert commits.groups == [[0], [1, 2], [3, 4], [5]]


def test_a_failed_commit_fails_its_whole_group_and_the_queue_goes_on():
    commits = _GatedCommits(fail={2})
    queue: WriteQueue[int] = WriteQueue(commits)
    first, outcome = _hold_a_commit(queue, commits, 0)
    threads, queued = _submit_in_threads(queue, [1, 2, 3])
    _wait_queued(queue, 3)
    commits.gate.set()
    for th in first + threads:
        th.join(10)
    assert outcome == {0: None}
    assert all(isinstance(queued[p], OSError) for p in (1, 2, 3)), queued
    _submit_alone(queue, 4)  # not stuck: the next writer leads and commits
    assert commits.groups[-1] == [4]


def test_an_interrupted_waiting_writer_keeps_its_write_and_raises_after_it():
    """A KeyboardInterrupt while a writer waits in the queue is raised only once its group
    is committed: the write is queued, so it happens, and if the writer had been told to
    lead, no one else would ever commit the queue."""
    commits = _GatedCommits()
    queue: WriteQueue[int] = WriteQueue(commits)
    first, _ = _hold_a_commit(queue, commits, 0)
    # Interrupt the main thread once it waits in the queue, then let the commit go on.
    def interrupt_then_release() -> None:
        _wait_queued(queue, 1)
        # A real signal, so that it wakes the main thread's wait (interrupt_main would not).
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        time.sleep(0.05)
        commits.gate.set()

    helper = threading.Thread(target=interrupt_then_release)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        queue.submit(1, 1)  # queued behind 0: told to lead, it commits itself, then raises
    helper.join(10)
    for th in first:
        th.join(10)
    assert commits.groups == [[0], [1]]
    _submit_alone(queue, 2)
    assert commits.groups[-1] == [2]
