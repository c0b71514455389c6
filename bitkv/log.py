"""The write side of the log: the segment table, the active segment, appends, rotation, group
commit, the DURABLE mark, the MANIFEST commits, and the refuse-writes state.

One :class:`LogWriter` per writable store. The store holds its writer lock around every call
that changes the log (``append``, ``rotate``, ``install``); ``wait_durable`` never holds it, so
writers keep appending while the disk works, and concurrent writers share one fdatasync (group
commit): the first to arrive is the *leader* and syncs everything appended so far; those
arriving meanwhile wait on a condition and, woken together when it is done, either find their
record covered or elect the next leader, whose one fdatasync covers all of them. A writer that
no fdatasync in flight covers may lead one at once while another is still in flight
(``LogWriter.max_syncs_in_flight``, two): a flush queued behind another waits for both,
overlapping ones are served together. Plain ``sync="always"`` puts do not come here one by
one: the store's write queue (writequeue.py) appends a whole group of them with one write and
calls ``wait_durable`` once for it, so their followers never wake on this condition.

After a failed fsync (anywhere: the store's FileIO is wrapped in :class:`fileio.FsyncGuard`,
which reports to :meth:`LogWriter.fail`), or when what is on disk is otherwise in doubt, the
log refuses every later write until the store is reopened: a later fsync that succeeds proves
nothing (PostgreSQL's "fsyncgate"), and a reopen recovers from what is really on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from . import durable, keydir, killpoints, manifest
from . import segment as seg_mod
from .errors import Error
from .fileio import FileIO, advise_huge_pages
from .segment import Segment, SegmentHeader

log = logging.getLogger("bitkv")

# The active segment is preallocated a step past the boundary its data reaches
# (docs/format.md, "The zero tail"): one posix_fallocate and one remap per step of appends,
# and at most STEP + ALIGN - 1 zeros for a crash to leave or a reader to scan.
#
# Where records are copied into a shared map (sync "interval" and "never"), the room ends on
# a 2 MiB boundary (the size of an x86-64 huge page) and grows 2 MiB at a time, so that the
# page cache holds the segment in 2 MiB folios, which a read map then maps with one
# page-table entry each: a folio never straddles the file's end, where the kernel would have
# to fall back to 4 KiB pages (docs/performance.md, "Gets at scale: huge folios").
MAPPED_PREALLOC_STEP = 2 << 20
MAPPED_PREALLOC_ALIGN = 2 << 20
# Where records are pwritten and fdatasynced (sync "always"), the room is written with zeros
# that the next fdatasync must flush: a 1 MiB step past the page, as small as keeps the
# allocations rare (~7,000 records of 144 bytes a step). The 2 MiB geometry there made the
# first fdatasync of every segment flush 4 MiB of zeros: 8 durable writers 15% slower
# (docs/performance.md).
PREALLOC_STEP = 1 << 20
PREALLOC_ALIGN = 4096


def room_geometry(map_writes: bool) -> tuple[int, int]:
    """(alignment, step) of the active segment's preallocated room: see above."""
    if map_writes:
        return MAPPED_PREALLOC_ALIGN, MAPPED_PREALLOC_STEP
    return PREALLOC_ALIGN, PREALLOC_STEP


# How a leader whose fdatasync woke waiting writers lets them take the GIL (wait_durable).
# Compiled: the GIL released for HANDOFF_US of spinning (bitkv/native/compact.c's
# release_gil, compaction's handoff); time.sleep(0) would give the CPU away too, which on a
# busy machine costs a scheduler tick (0.5-6 ms measured: 5-60 fdatasyncs here).
HANDOFF_US = 20


def _sleep(microseconds: int) -> None:
    time.sleep(0)


yield_gil: Callable[[int], None] = _sleep
if keydir.IMPLEMENTATION == "native":
    from ._native import release_gil as _compiled_release_gil

    yield_gil = _compiled_release_gil


class SegmentTable:
    """The open segments: their slots (the 16-bit number a keydir entry names; slots are
    reused, ids are not), the load order, and the id counter."""

    def __init__(self, slots: list[Segment | None], segments: list[Segment], next_id: int
                 ) -> None:
        self.slots = slots  # shared with the KeyDir, which finds an entry's segment here
        self.free_slots: list[int] = []
        self.segments = segments  # load order; the active segment (if any) last
        self.next_id = next_id

    def allocate_id(self) -> int:
        segment_id = self.next_id
        self.next_id += 1
        return segment_id

    def attach(self, seg: Segment) -> None:
        if self.free_slots:
            seg.slot = self.free_slots.pop()
            self.slots[seg.slot] = seg
        else:
            if len(self.slots) >= keydir.MAX_SLOTS:
                raise Error(f"too many segments open ({keydir.MAX_SLOTS}); compact the store")
            seg.slot = len(self.slots)
            self.slots.append(seg)

    def detach(self, seg: Segment) -> None:
        self.slots[seg.slot] = None
        self.free_slots.append(seg.slot)


class LogWriter:
    """Appends to the active segment of one store directory (see the module doc)."""

    # How many group-commit fdatasyncs may be in flight at once (wait_durable). Two: while
    # one is in flight, the writers that appended after it began need not wait for it to
    # end before theirs starts (a virtio disk serves overlapping flushes in about the time of
    # one: 8 writers measured ~1.3x-2x the rate they get with one at a time, 0.3 ms-4 ms
    # flushes), yet each costs CPU, so not one per writer as uncoordinated fsyncs would.
    max_syncs_in_flight = 2

    def __init__(self, directory: str, io: FileIO, table: SegmentTable, *,
                 max_segment_size: int, next_seq: Callable[[], int],
                 marker: durable.DurableMarker | None, manifest_generation: int,
                 before_rotate: Callable[[], None],
                 on_rotate: Callable[[Segment], None], map_writes: bool = False) -> None:
        self.directory = directory
        # Records are copied into a writable shared map of the active segment (sync modes
        # "interval" and "never": the page cache keeps them through a kill -9, which is those
        # modes' promise) instead of pwrite (sync="always": fdatasync write-protects mapped
        # pages again, so every next store into the map would fault; docs/performance.md).
        self.map_writes = map_writes
        # Preallocated room is written with zeros where every write is fdatasynced (pwrite
        # mode): see make_room.
        self.zero_fill = not map_writes
        self.io = io
        self.table = table
        self.max_segment_size = max_segment_size
        self._next_seq = next_seq  # the store's: a new segment's order_seq
        self.marker = marker
        self.manifest_generation = manifest_generation
        self._before_rotate = before_rotate  # the store checks its lock is still its own
        self._on_rotate = on_rotate  # the store starts the new segment's hidden records
        self.active: Segment | None = None
        # Group commit (wait_durable). The condition's lock guards the two fields below and
        # the DURABLE marker; it is *not* held across an fdatasync, so writers can queue on
        # the condition meanwhile. Anything else that fsyncs the active segment (rotation,
        # close) waits until no fdatasync is in flight and holds the lock through its own
        # (exclusive_sync).
        self.sync_cond = threading.Condition(threading.Lock())
        # (segment, the length it is being fdatasynced up to), one per fdatasync in flight
        self.syncs_in_flight: list[tuple[Segment, int]] = []
        self.sync_waiters = 0  # writers waiting on the condition (to yield the GIL to them)
        # Set once, cleared only by a reopen: why the log refuses writes.
        self.sync_failure: str | None = None  # an fsync failed, or the disk is in doubt
        self.write_refusal: str | None = None  # any other reason (a lost lock, a failed undo)
        self.refused = False  # either of the two: one check on the hot path
        self.last_sync_error: str | None = None
        self._logged_failure: BaseException | None = None  # fail() logs each exception once

    # -- the refuse-writes state ---------------------------------------------------------------

    def fail(self, exc: BaseException, what: str = "an fsync failed") -> None:
        """An fsync failed (or what is on disk is in doubt: ``what`` says why): refuse every
        later write until the store is reopened. The first reason is kept. Each failure is
        logged once, at ERROR (a caller reporting again an exception already reported, as
        the MANIFEST's install does after its fsync failed, adds no line)."""
        if exc is self._logged_failure:
            return
        self._logged_failure = exc
        reason = f"{what} ({type(exc).__name__}: {exc})"
        if self.sync_failure is None:
            self.sync_failure = reason
            log.error("bitkv store %s: %s; refusing writes until reopened", self.directory,
                      reason)
        else:
            log.error("bitkv store %s: %s (writes were already refused)", self.directory,
                      reason)
        self.last_sync_error = self.sync_failure
        self.refused = True

    def refuse(self, reason: str) -> None:
        """Refuse every later write for a reason other than the disk's (the first is kept)."""
        if self.write_refusal is None:
            self.write_refusal = reason
        self.refused = True

    def refusal(self) -> str | None:
        """Why writes are refused, as a sentence; None if they are not."""
        if self.sync_failure is not None:
            return (f"{self.sync_failure}; what is on disk may differ from what this process "
                    "knows. Close and reopen the store to recover from what is.")
        if self.write_refusal is not None:
            return f"{self.write_refusal}. Close and reopen the store."
        return None

    def check(self) -> None:
        reason = self.refusal()
        if reason is not None:
            raise Error(f"store {self.directory!r} refuses writes: {reason}")

    # -- segments --------------------------------------------------------------------------

    def new_segment(self) -> Segment:
        """Create, durably, an empty append segment and attach it (not yet active).

        The caller commits it to the MANIFEST before anything is written into it: until then
        it is an orphan that the next open removes, which is safe because it holds nothing.
        """
        segment_id = self.table.allocate_id()
        path = seg_mod.segment_path(self.directory, segment_id)
        order_seq = self._next_seq()
        header = SegmentHeader.new(seg_mod.KIND_APPEND, order_seq, order_seq)
        fd = self.io.create(path)
        try:
            self.io.write(fd, header.encode())
            self.io.fsync(fd)
            if killpoints.ENABLED:
                killpoints.hit("rotate.after_create")
            self.io.fsync_dir(self.directory)
        except BaseException:
            self.io.close(fd)
            try:  # a segment that never got its header durably holds nothing: drop it
                self.io.unlink(path)
            except OSError:
                pass
            raise
        seg = Segment(self.io, segment_id, path, fd, header, seg_mod.HEADER_SIZE)
        self.table.attach(seg)
        self.table.segments.append(seg)
        return seg

    def seal_for_open(self, seg: Segment, durable_end: int | None) -> None:
        """Make a segment a crash left immutable: fsync what it holds past its last fsync
        before the MANIFEST records it as sealed at this size. ``durable_end``: what it is
        known durable up to, if not its whole length (damage a crash left past its mark)."""
        fd = self.io.open_rw(seg.path)
        try:
            self.io.fsync(fd)
        finally:
            self.io.close(fd)
        seg.synced_size = seg.size
        seg.durable_end = seg.size if durable_end is None else durable_end

    def make_room(self, seg: Segment, end: int) -> None:
        """Preallocate the active segment so that it holds at least ``end`` bytes, a step
        ahead (docs/format.md, "The zero tail"), and map it shared over its new length.

        Raises the OS's error (ENOSPC) before any byte of a record is written: the put fails
        cleanly and the store stays writable. A partial allocation the OS may leave is zeros
        past the data, a zero tail like any other."""
        cap = max(self.max_segment_size, end)
        align, step = room_geometry(self.map_writes)
        new = min(cap, -(-end // align) * align + step)
        self.io.allocate(seg.fd, seg.allocated, new - seg.allocated)
        if self.zero_fill:
            # Write the zeros too: fallocate leaves *unwritten* extents, and the first write
            # into each block of one makes the next fdatasync commit a journal transaction
            # to convert it; zeros written once (and synced with the next record) spare
            # every later fdatasync that (docs/performance.md).
            self.io.pwrite(seg.fd, bytes(new - seg.allocated), seg.allocated)
        mm = self.io.map_shared(seg.fd, new, writable=self.map_writes)
        # Records copied into this map fault its pages in: asked for huge pages, the kernel
        # reads the room into the page cache as 2 MiB folios, not 4 KiB pages.
        advise_huge_pages(mm)
        seg.allocated = new
        seg.grow_map(mm)

    def cut_zero_tail(self, seg: Segment) -> None:
        """Truncate the active segment's preallocated zeros away (before it is sealed or the
        store closes): sealed segments and cleanly closed stores keep exactly their data. A
        failed cut leaves the file's end in doubt: refuse writes (a reopen recovers)."""
        if seg.allocated <= seg.size:
            return
        try:
            self.io.truncate(seg.fd, seg.size)
        except OSError as exc:
            self.refuse(f"the preallocated tail of {os.path.basename(seg.path)} could not be "
                        f"cut ({type(exc).__name__}: {exc})")
            raise
        seg.allocated = seg.size

    def continue_segment(self, seg: Segment) -> None:
        """Make ``seg`` (the newest append segment, at open) the active one."""
        fd = self.io.open_rw(seg.path)
        if seg.fd >= 0:
            self.io.close(seg.fd)
        seg.fd = fd
        # Recovery cut any zero tail, so the file ends at the data; the first append
        # preallocates and maps it shared (until then reads use recovery's read-only map).
        seg.allocated = seg.size
        self.active = seg

    def commit_manifest(self) -> None:
        """Durably record the current segment set (the commit point of a rotation, a
        compaction, an upgrade). A failure while staging the new MANIFEST changes nothing (a
        failed fsync still refuses writes, as every one does); a failure while installing it
        leaves unknown which MANIFEST a crash would show: refuse writes."""
        self.manifest_generation += 1
        listed = manifest.listing(self.table.segments, self.active, self.manifest_generation)
        staged = manifest.stage(self.directory, self.io, listed)
        try:
            manifest.install(self.directory, self.io, staged)
        except OSError as exc:
            self.fail(exc, "the MANIFEST could not be installed")
            raise

    # -- appending -------------------------------------------------------------------------

    def append(self, data: bytes) -> tuple[Segment, int]:
        """Append ``data`` (whole records) with one write; return (segment, offset). The
        caller holds the store's writer lock."""
        seg = self.active
        if seg is None:
            raise Error("internal error: the log has no active segment")
        if seg.size + len(data) > self.max_segment_size and seg.size > seg_mod.HEADER_SIZE:
            seg = self.rotate()
        offset = seg.size
        end = offset + len(data)
        if end > keydir.MAX_OFFSET:
            raise Error("segment offset limit reached")
        if end > seg.allocated:
            self.make_room(seg, end)  # nothing written yet if this fails
        try:
            if self.map_writes:
                self.io.map_write(seg.mm, seg.fd, offset, data)  # type: ignore[arg-type]
            else:
                self.io.pwrite(seg.fd, data, offset)
        except BaseException:
            self.undo(seg, offset)
            raise
        seg.size = end
        if killpoints.ENABLED:
            killpoints.hit("append.after_write")
        return seg, offset

    def undo(self, seg: Segment, offset: int) -> None:
        """After a failed or short write, cut the segment back so no half record stays."""
        try:
            self.io.truncate(seg.fd, offset)
            seg.allocated = offset  # the next append preallocates (and maps) afresh
        except OSError as exc:
            # Part of a record may remain at ``offset`` and the file position is unknown: a
            # later append would land somewhere the index does not point (its reads then
            # fail and compaction drops it as corrupt). Stop here; a reopen's recovery cuts
            # the half record as a torn tail.
            self.refuse(f"a failed write could not be undone ({type(exc).__name__}: {exc}); "
                        f"the end of {os.path.basename(seg.path)} is unknown")
            try:
                os.lseek(seg.fd, offset, os.SEEK_SET)
            except OSError:
                pass

    def rotate(self) -> Segment:
        """Seal the active segment (fsync, map) and start a new one. Writer lock held."""
        self._before_rotate()
        old = self.active
        if old is None:
            raise Error("internal error: no active segment to rotate")
        with self.exclusive_sync():
            self.check()
            self.cut_zero_tail(old)
            self.io.fsync(old.fd)
            old.synced_size = old.size
            old.durable_end = old.size
        if killpoints.ENABLED:
            killpoints.hit("rotate.after_sync")
        # Sealed: a read-only map of exactly its data replaces the shared one over the zeros.
        old.growing = False
        old.set_map(self.io.map(old.fd, old.size))
        new = self.new_segment()
        self.active = new
        try:
            self.commit_manifest()
        except BaseException:
            # Writes are refused now; keep the old segment as the one reads expect to grow.
            self.active = old
            self.table.segments.remove(new)
            self.table.detach(new)
            new.close()
            raise
        if killpoints.ENABLED:
            killpoints.hit("rotate.after_manifest")
        old.release_fd()
        self._on_rotate(new)
        return new

    @contextlib.contextmanager
    def exclusive_sync(self) -> Iterator[None]:
        """Hold the sync lock with no group-commit fdatasync in flight: for fsyncs of the
        active segment that must not overlap one (rotation, close), and that waiters of
        :meth:`wait_durable` then find done."""
        with self.sync_cond:
            while self.syncs_in_flight:
                # Counted as a waiter, or the fdatasync finishing would not notify it.
                self.sync_waiters += 1
                try:
                    self.sync_cond.wait()
                finally:
                    self.sync_waiters -= 1
            yield

    def wait_durable(self, seg: Segment, end: int) -> None:
        """Return once ``seg`` is fsynced up to ``end`` (group commit: see the module doc).
        After every fdatasync of the active segment the DURABLE mark records how far it
        reached. Raises if the fdatasync fails, or failed before (for every waiter: nothing
        after a failed fsync can be promised durable)."""
        if seg.synced_size >= end:
            return
        cond = self.sync_cond
        in_flight = self.syncs_in_flight
        with cond:
            while True:
                if seg.synced_size >= end:
                    return
                if self.sync_failure is not None:
                    self.check()  # no fsync after a failed one can promise anything
                # Wait for an fdatasync in flight that covers ``end``; else start one, unless
                # as many as allowed are in flight already (then wait for one to finish).
                if len(in_flight) < self.max_syncs_in_flight and not any(
                        s is seg and target >= end for s, target in in_flight):
                    break
                self.sync_waiters += 1
                try:
                    cond.wait()
                finally:
                    self.sync_waiters -= 1
            # This thread leads an fdatasync that covers everything appended so far.
            ticket = (seg, seg.size)
            in_flight.append(ticket)
        try:
            # fdatasync: the data and what is needed to read it back (the length, extents);
            # in a preallocated segment nothing else changed, so no journal commit is needed.
            # No lock is held: writers append (under the writer lock) and queue meanwhile.
            # Each fdatasync makes durable every page dirty or under writeback when it was
            # called, whatever another one in flight does, so each covers its own target.
            self.io.fdatasync(seg.fd)
        except BaseException:
            with cond:  # the FsyncGuard made the log refuse writes: every waiter raises
                in_flight.remove(ticket)
                cond.notify_all()
            raise
        with cond:
            in_flight.remove(ticket)
            # The kernel reports a writeback error once per open file: when two fdatasyncs of
            # the file overlap, the *other* one may be told about a page this one covered,
            # and this one return 0. So this success counts only once every fdatasync in
            # flight beside it has ended, and none failed (then sync_failure is set).
            beside = [t for t in in_flight if t[0] is seg]
            while any(t is b for t in in_flight for b in beside):
                self.sync_waiters += 1
                try:
                    cond.wait()
                finally:
                    self.sync_waiters -= 1
            if self.sync_failure is not None:
                cond.notify_all()
                self.check()  # raises: nothing after a failed fsync is promised durable
            target = ticket[1]
            if target > seg.synced_size:  # a later-started fdatasync may have finished first
                seg.synced_size = target
                if self.marker is not None and seg is self.active:
                    try:
                        self.marker.record(seg.id, seg.header.nonce, target)
                    except OSError as exc:
                        # Only the torn-tail classification gets weaker (docs/format.md); the
                        # write itself is durable.
                        self.last_sync_error = f"durable mark: {type(exc).__name__}: {exc}"
            waiting = self.sync_waiters
            if waiting:
                cond.notify_all()
        if waiting:
            # The writers woken need the GIL to return (or to lead the next fdatasync);
            # yield it rather than make them wait out the interpreter's switch interval
            # (5 ms, 50x an fdatasync here) while this thread encodes its next write. Only
            # then: a lone writer's yield costs a trip through the scheduler per write.
            yield_gil(HANDOFF_US)
        if killpoints.ENABLED:
            killpoints.hit("append.after_sync")

    def sync_for_close(self) -> None:
        """The last fsync of the active segment, and of the DURABLE mark vouching for it."""
        active = self.active
        if active is None or active.closed or self.sync_failure is not None:
            return  # after a failed fsync nothing is fsynced again (it could promise nothing)
        with self.exclusive_sync():
            self.cut_zero_tail(active)
            self.io.fsync(active.fd)
            active.synced_size = active.size
            if self.marker is not None:
                try:
                    self.marker.record(active.id, active.header.nonce, active.size)
                    self.marker.sync()
                except OSError as exc:  # the segment is durable regardless
                    self.last_sync_error = f"durable mark: {exc}"

    # -- compaction's commit ---------------------------------------------------------------

    def install(self, inputs: list[Segment], outputs: list[Segment]) -> None:
        """The commit point of a compaction: the outputs replace the inputs in the segment
        list and the MANIFEST. Writer lock held. The inputs stay attached (the keydir still
        points into them until the switch). Raises, with the list unchanged in memory, if
        the MANIFEST could not be written (writes are then refused if it is in doubt)."""
        self.check()
        segments = self.table.segments
        if any(seg not in segments for seg in inputs) or (
                self.active is not None and self.active in inputs):
            raise Error("internal error: compaction inputs changed while it ran")
        before = list(segments)
        for seg in outputs:
            self.table.attach(seg)
        kept = [s for s in segments if s not in inputs]
        kept.extend(outputs)
        kept.sort(key=lambda s: (s.order_seq, s.id))
        if self.active is not None and kept[-1] is not self.active:
            for seg in outputs:
                self.table.detach(seg)
            raise Error("internal error: a compaction output would load after the active "
                        "segment")
        self.table.segments = kept
        try:
            self.commit_manifest()
        except BaseException:
            self.table.segments = before
            for seg in outputs:
                self.table.detach(seg)
            raise

    def close(self) -> None:
        if self.marker is not None:
            try:
                self.marker.close()
            except OSError:
                pass
            self.marker = None
