"""The master's replication backlog: the store's log, read back as Redis's replication stream.

Redis keeps the stream it sent in a memory buffer (the backlog), so a master that restarts
cannot continue a replica's stream. bitkv's log already holds every write in order (the
change feed, :mod:`bitkv.history`), so the stream is *regenerated* from it: each record
becomes one command (``SET k v`` / ``SET k v PXAT ms`` / ``DEL k``; a collection's records
the element commands of their type, see :func:`encode_collection`; a batch is wrapped in
``MULTI``/``EXEC``), the encoding is a pure function of the record, and the replication offset
of any record follows from a known point by adding up command lengths.

The known points are kept in the *journal* (the file ``REPLICATION`` in the store directory,
docs/replication.md "The journal"):

* the replication id of this history;
* anchors, ``(seq, offset)``: the command of record ``seq`` starts at stream ``offset`` --
  written every :data:`ANCHOR_EVERY` bytes of stream and at a clean shutdown, so that
  finding any offset regenerates at most that much;
* injections, ``(seq, offset, bytes)``: bytes that are in the stream but not in the log
  (PING keepalives, ``REPLCONF GETACK``), sent at ``offset`` just before record ``seq``.
  An injection is fsynced before its bytes are sent: a replica's offset counts them, so
  they must be regenerated exactly, whatever happens to the master afterwards;
* boots: the kernel boot id of each run that wrote to the journal.

The stream after a restart continues where it stopped, with the same replication id, after
``SHUTDOWN`` and after ``kill -9`` alike (the log and the journal were written before the
replicas got the bytes, and a killed process loses nothing the kernel holds). After a power
loss (the boot id changed and the last run did not shut down cleanly) writes the replicas
received may be missing from the log and their seqs reused by new writes: the old stream
cannot be continued, so a new replication id starts and every replica resyncs in full.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from dataclasses import dataclass

import bitkv
from bitkv import names
from bitkv.crc import crc32c
from bitkv.fileio import DEFAULT_FILEIO, FileIO
from bitkv.history import Change, Cursor
from bitkv.record import BATCH_FIRST, BATCH_LAST
from bitkv.structures import encoding as layout

log = logging.getLogger("bitkv.server")

MAGIC = b"BKVREPL1"
HEADER = struct.Struct("<8s40sI")  # magic, replication id (hex), crc32c of the two
ENTRY = struct.Struct("<IBQQI")  # crc32c, kind, seq, offset, data length; then the data
ANCHOR, INJECT, BOOT, CLEAN = 1, 2, 3, 4
MAX_ENTRY_DATA = 4096
# An anchor every this many bytes of stream: reaching any offset regenerates at most this.
ANCHOR_EVERY = 4 << 20
# The journal is rewritten without reclaimed history when it holds more entries than this.
MAX_ENTRIES = 20000
# Records read from the log per step of a reader.
READ_RECORDS = 1024

MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"
GETACK = b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n"


class StreamDiverged(bitkv.Error):
    """The journal and the log disagree (or the records are gone): the stream from this
    point cannot be regenerated, so a replica needs a full resync."""


def _command(*args: bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def format_score(score: float) -> bytes:
    """A sorted-set score as text that parses back to the same double (``repr``: the
    shortest that round-trips; ``inf``/``-inf`` as Redis's ZADD reads them)."""
    return repr(score).encode("ascii")


def encode_collection(key: bytes, value: bytes | None, expiry_ms: int) -> bytes:
    """The command a collection record becomes (structures/encoding.py lays them out).

    An element put or delete is the command that writes or removes that one element on any
    replica (HSET/HDEL, SADD/SREM, ZADD/ZREM); list elements have positions no Redis command
    names, so they become ``BITKV.LPUT key pos value`` / ``BITKV.LDEL key pos``, which only
    a bitkv replica's master link runs (a Redis replica refuses them: it gets no lists). A
    header put carries the key's TTL (``PEXPIREAT``, or ``PERSIST`` when it has none); a
    header delete is ``DEL``. A write batches elements before the header, and deletes the
    elements before the header too, so the commands apply in that order: the element
    commands create the key on the replica, the header command sets its TTL, the ``DEL``
    finds it gone already (or removes what a diverged replica kept). A malformed internal
    key (nothing bitkv writes) becomes no command.
    """
    parsed = layout.parse(key)
    if parsed is None:
        return b""
    type_byte, name, sub = parsed
    if sub is None:  # the header
        if value is None:
            return _command(b"DEL", name)
        if expiry_ms:
            return _command(b"PEXPIREAT", name, b"%d" % expiry_ms)
        return _command(b"PERSIST", name)
    if type_byte == layout.HASH:
        return _command(b"HDEL", name, sub) if value is None else \
            _command(b"HSET", name, sub, value)
    if type_byte == layout.SET:
        return _command(b"SREM", name, sub) if value is None else _command(b"SADD", name, sub)
    if type_byte == layout.ZSET:
        if value is None:
            return _command(b"ZREM", name, sub)
        try:
            score = layout.unpack_score(value)
        except layout.LayoutError:
            return b""
        return _command(b"ZADD", name, format_score(score), sub)
    try:  # a list
        pos = b"%d" % layout.unpack_position(sub)
    except layout.LayoutError:
        return b""
    return _command(b"BITKV.LDEL", name, pos) if value is None else \
        _command(b"BITKV.LPUT", name, pos, value)


def encode(change: Change) -> bytes:
    """The command a change becomes in the replication stream (without MULTI/EXEC)."""
    k, v = change.key, change.value
    if k.startswith(layout.PREFIX):
        return encode_collection(k, v, change.expiry_ms)
    if v is None:
        return b"*2\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n" % (len(k), k)
    if change.expiry_ms:
        at = b"%d" % change.expiry_ms
        return b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%b\r\n" % (
            len(k), k, len(v), v, len(at), at)
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(v), v)


def boot_id() -> str:
    """This kernel's boot id ("" where the platform has none: every unclean stop then
    counts as a possible power loss)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()[:64]
    except OSError:
        return ""


@dataclass(frozen=True)
class Entry:
    kind: int
    seq: int  # the record whose command comes next
    offset: int  # where ``data`` starts in the stream (for an anchor: where the record starts)
    data: bytes = b""

    @property
    def end(self) -> int:
        return self.offset + len(self.data) if self.kind == INJECT else self.offset


class Journal:
    """The file ``REPLICATION``: a header with the replication id, then CRC'd entries."""

    def __init__(self, directory: str, io: FileIO = DEFAULT_FILEIO) -> None:
        self.path = os.path.join(directory, names.REPLICATION_NAME)
        self.directory = directory
        self.io = io
        self.replid = ""
        self.entries: list[Entry] = []
        self.fd = -1

    def load(self) -> bool:
        """Read the journal; False if there is none (or its header is unreadable)."""
        try:
            fd = self.io.open_read(self.path)
        except FileNotFoundError:
            return False
        try:
            data = self.io.pread(fd, self.io.size(fd), 0)
        finally:
            self.io.close(fd)
        if len(data) < HEADER.size:
            log.warning("replication journal %s is cut short; starting a new history",
                        self.path)
            return False
        magic, replid, crc = HEADER.unpack_from(data)
        if magic != MAGIC or crc32c(data[:48]) != crc:
            log.warning("replication journal %s has a damaged header; starting a new history",
                        self.path)
            return False
        self.replid = replid.decode("ascii")
        pos = HEADER.size
        entries = []
        while pos + ENTRY.size <= len(data):
            crc, kind, seq, offset, length = ENTRY.unpack_from(data, pos)
            end = pos + ENTRY.size + length
            if length > MAX_ENTRY_DATA or end > len(data) or crc32c(data[pos + 4 : end]) != crc:
                break  # a torn last entry (or damage): what follows cannot be trusted
            entries.append(Entry(kind, seq, offset, bytes(data[pos + ENTRY.size : end])))
            pos = end
        if pos != len(data):
            log.warning("replication journal %s: %d bytes after the last intact entry "
                        "are ignored", self.path, len(data) - pos)
        self.entries = entries
        self._open(truncate_to=pos)
        return True

    def create(self, replid: str, entries: list[Entry] | None = None) -> None:
        """Start a new journal with replication id ``replid`` (a new history, or the same one
        rewritten with only ``entries``), replacing the file atomically."""
        self.close()
        header = MAGIC + replid.encode("ascii")
        data = [header, struct.pack("<I", crc32c(header))]
        data.extend(_encode_entry(e) for e in entries or ())
        blob = b"".join(data)
        self.io.replace_file(self.directory, names.REPLICATION_NAME, blob)
        self.replid = replid
        self.entries = list(entries or ())
        self._open(truncate_to=len(blob))

    def _open(self, truncate_to: int) -> None:
        self.close()
        self.fd = self.io.open_rw(self.path)
        if self.io.size(self.fd) != truncate_to:
            self.io.truncate(self.fd, truncate_to)
            os.lseek(self.fd, truncate_to, os.SEEK_SET)

    def append(self, entry: Entry, *, durable: bool) -> None:
        """Add ``entry``; with ``durable``, on stable storage before this returns."""
        self.io.write(self.fd, _encode_entry(entry))
        if durable:
            self.io.fsync(self.fd)
        self.entries.append(entry)

    def close(self) -> None:
        if self.fd >= 0:
            self.io.close(self.fd)
            self.fd = -1


def _encode_entry(entry: Entry) -> bytes:
    body = struct.pack("<BQQI", entry.kind, entry.seq, entry.offset, len(entry.data)) \
        + entry.data
    return struct.pack("<I", crc32c(body)) + body


class StreamReader:
    """Produces the stream from a given offset by reading the log and the journal.

    ``bound`` is the head: a reader never produces past it (the head decides the stream's
    bytes; readers replay them). The head itself has no bound.
    """

    def __init__(self, db: bitkv.Store, journal: Journal, entry_index: int, skip: int,
                 bound: StreamReader | None) -> None:
        entry = journal.entries[entry_index]
        self.db = db
        self.journal = journal
        self.cursor = Cursor(entry.seq)
        self.pos = entry.offset  # the offset of the next byte produced (before skipping)
        self.next_entry = entry_index
        self.skip = skip
        self.bound = bound
        self.in_batch = False

    def follower(self) -> StreamReader:
        """A reader where this one (the head) stands now, bounded by it."""
        reader = StreamReader.__new__(StreamReader)
        reader.db, reader.journal = self.db, self.journal
        reader.cursor = Cursor(self.cursor.next_seq)
        reader.cursor.segment_id, reader.cursor.offset = self.cursor.segment_id, \
            self.cursor.offset
        reader.pos, reader.next_entry, reader.skip = self.pos, self.next_entry, 0
        reader.bound, reader.in_batch = self, self.in_batch
        return reader

    @property
    def offset(self) -> int:
        """How much of the stream this reader has produced (Redis's replication offset)."""
        return self.pos

    def read(self, max_bytes: int = 1 << 20) -> bytes:
        """The stream's next bytes, up to the head (or the log's end, for the head)."""
        out: list[bytes] = []
        produced = 0
        entries = self.journal.entries
        bound = self.bound
        # The head stops only between batches (a PING injected there must not land inside
        # MULTI/EXEC); a batch is appended whole, so the rest of one is always in the log.
        while produced < max_bytes or (self.in_batch and bound is None):
            if bound is not None and self.pos >= bound.pos:
                break
            entry = entries[self.next_entry] if self.next_entry < len(entries) else None
            if entry is not None and entry.seq == self.cursor.next_seq and not self.in_batch:
                if entry.offset != self.pos:
                    raise StreamDiverged(
                        f"the journal puts seq {entry.seq} at offset {entry.offset}, the log "
                        f"at {self.pos}")
                self.next_entry += 1
                if entry.data and entry.kind == INJECT:
                    out.append(entry.data)
                    produced += len(entry.data)
                    self.pos += len(entry.data)
                continue
            limit = READ_RECORDS
            if entry is not None:
                if entry.seq < self.cursor.next_seq:
                    raise StreamDiverged(f"the journal has an entry for seq {entry.seq} behind "
                                         f"the reader at seq {self.cursor.next_seq}")
                limit = min(limit, entry.seq - self.cursor.next_seq)
            if bound is not None:
                limit = min(limit, bound.cursor.next_seq - self.cursor.next_seq)
                if limit <= 0:
                    raise StreamDiverged(f"a reader at offset {self.pos} is short of the head "
                                         f"at {bound.pos} with no record left to read")
            try:
                changes = self.db.changes(self.cursor, max_records=limit)
            except bitkv.HistoryGone as exc:
                raise StreamDiverged(str(exc)) from None
            if not changes:
                break
            for ch in changes:
                if ch.batch & BATCH_FIRST:
                    out.append(MULTI)
                    produced += len(MULTI)
                    self.pos += len(MULTI)
                    self.in_batch = True
                cmd = encode(ch)
                out.append(cmd)
                produced += len(cmd)
                self.pos += len(cmd)
                if ch.batch & BATCH_LAST:
                    out.append(EXEC)
                    produced += len(EXEC)
                    self.pos += len(EXEC)
                    self.in_batch = False
        data = b"".join(out)
        if self.skip:
            cut = min(self.skip, len(data))
            self.skip -= cut
            data = data[cut:]
        return data


class Backlog:
    """The replication id and the stream of one store (see the module doc)."""

    def __init__(self, db: bitkv.Store) -> None:
        self.db = db
        self.journal = Journal(db.path)
        self.replid = ""
        self.head: StreamReader  # set by open()
        self._since_anchor = 0
        self.new_history_reason: str | None = None  # why open() started a new history

    @property
    def offset(self) -> int:
        """``master_repl_offset``: the bytes of stream produced so far (the head may lag
        the log while no replica is attached: :meth:`catch_up` brings it to the end)."""
        return self.head.pos

    def open(self) -> None:
        """Load the journal and bring the head to the end of the log."""
        journal = self.journal
        reason = None
        if not journal.load():
            reason = "no replication journal yet"
        elif not journal.entries:
            reason = "the journal holds no entries"
        else:
            boots = [e for e in journal.entries if e.kind == BOOT]
            last = journal.entries[-1]
            previous_boot = boots[-1].data.decode("ascii", "replace") if boots else ""
            here = boot_id()
            if last.kind != CLEAN and (not here or previous_boot != here):
                reason = ("the last run did not stop cleanly and the machine restarted since "
                          "(writes a replica received may be lost from the log)")
        start_offset = journal.entries[-1].end if journal.entries else 0
        if reason is None:
            # The head starts at the journal's last point and reads the log from there
            # only when a replica needs it (catch_up): a store served without replicas
            # pays nothing for the backlog, at open or per write.
            self._start_head_from_journal()
        if reason is not None:
            self._new_history(start_offset, reason)
        elif len(journal.entries) > MAX_ENTRIES:
            self._trim()
        self.replid = journal.replid
        journal.append(Entry(BOOT, self.head.cursor.next_seq, self.head.pos,
                             boot_id().encode("ascii")), durable=False)
        self._since_anchor = 0

    def _trim(self) -> None:
        """Rewrite the journal without the entries of history compaction reclaimed (they
        can no longer serve a PSYNC): it stays small however long the store lives."""
        entries = self.journal.entries
        oldest = self.db.history_start()
        first = 0
        if oldest is not None:
            for i, e in enumerate(entries):
                if e.seq <= oldest:
                    first = i  # the last point at or before the oldest record kept
        keep = entries[first:]
        if len(keep) > MAX_ENTRIES // 2:  # still long: keep only every point's last anchor
            keep = keep[-(MAX_ENTRIES // 2):]
        self.journal.create(self.journal.replid, keep)
        self._start_head_from_journal()

    def _start_head_from_journal(self) -> None:
        entries = self.journal.entries
        # Start from the newest anchor-like point: every entry kind fixes (seq, offset).
        i = len(entries) - 1
        head = StreamReader(self.db, self.journal, i, 0, None)
        # The head stands after that point: past an injection's bytes, which the stream
        # already holds (entries appended from here on are placed at the head).
        head.pos = entries[i].end
        head.next_entry = i + 1
        self.head = head

    def _new_history(self, start_offset: int, reason: str) -> None:
        replid = secrets.token_hex(20)
        if self.journal.replid:
            log.warning("replication: new replication id %s (%s); replicas of %s resync in "
                        "full", replid, reason, self.journal.replid)
        self.new_history_reason = reason
        self.journal.create(replid)
        self.journal.append(Entry(ANCHOR, self.db.last_seq + 1, start_offset), durable=True)
        self.head = StreamReader(self.db, self.journal, 0, 0, None)

    def catch_up(self, max_bytes: int = 1 << 62) -> bytes:
        """Advance the head over the writes since the last call (about ``max_bytes`` of
        stream at most, ending between batches); return their stream bytes (those every
        replica that was at the head receives). Raises StreamDiverged if the log lost
        records the head had not read (the caller starts a new history)."""
        data = self.head.read(max_bytes)
        if data:
            self._since_anchor += len(data)
            if self._since_anchor >= ANCHOR_EVERY:
                self.journal.append(Entry(ANCHOR, self.head.cursor.next_seq, self.head.pos),
                                    durable=False)
                self._since_anchor = 0
        return data

    def inject(self, data: bytes) -> bytes:
        """Put ``data`` (a PING, a GETACK) into the stream at the head; durable before this
        returns (a replica's offset will count it). Returns ``data`` for the caller to send."""
        self.journal.append(Entry(INJECT, self.head.cursor.next_seq, self.head.pos, data),
                            durable=True)
        self.head.next_entry = len(self.journal.entries)
        self.head.pos += len(data)
        self._since_anchor += len(data)
        return data

    def reader_at(self, offset: int) -> StreamReader | None:
        """A reader whose first byte is stream byte ``offset`` (0-based: what a replica that
        has ``offset`` bytes needs next), or None if that point is not in the backlog."""
        if offset > self.head.pos or offset < 0:
            return None
        if offset == self.head.pos:
            return self.head.follower()
        entries = self.journal.entries
        best = None
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].offset <= offset:
                best = i
                break
        if best is None:
            return None
        start = entries[best]
        if start.seq <= self.db.last_seq:
            oldest = self.db.history_start()
            if oldest is None or start.seq < oldest:
                return None  # compaction reclaimed the records from there
        return StreamReader(self.db, self.journal, best, offset - start.offset, self.head)

    def seq_at(self, offset: int) -> int:
        """The seq a reader from ``offset`` starts reading the log at (the journal point at
        or before it): what compaction must keep for that reader."""
        for e in reversed(self.journal.entries):
            if e.offset <= offset:
                return e.seq
        return self.journal.entries[0].seq if self.journal.entries else self.head.cursor.next_seq

    def first_offset(self) -> int:
        """The oldest offset a replica can continue from (for INFO)."""
        start = self.db.history_start()
        for e in self.journal.entries:
            if start is not None and e.seq >= start:
                return e.offset
        return self.head.pos

    def close(self, *, clean: bool) -> None:
        """Record a clean stop (the replicas' next PSYNC continues) and close the file."""
        if self.journal.fd < 0:
            return
        try:
            if clean:
                self.journal.append(Entry(CLEAN, self.head.cursor.next_seq, self.head.pos),
                                    durable=True)
        finally:
            self.journal.close()
