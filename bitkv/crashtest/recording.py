"""Power-loss simulation: a FileIO that logs every mutating call, and a model of what a disk
may hold after power is cut at any point of that log.

:class:`RecordingFileIO` performs each call for real (the store runs normally) and appends an
event to ``events``: creations, writes with their offset and bytes, truncations, fsyncs,
renames, unlinks and directory fsyncs, plus the harness's own ``mark`` events (an operation's
intent and acknowledgement) so crash points line up with the workload.

:class:`DiskModel` replays a prefix of the log and materialises a *crash state*: the files a
power loss at that instant may leave. The model is the usual one for POSIX file systems:

* ``fsync(fd)`` makes the file's current bytes durable; bytes written since may be lost,
  partly kept, or (a torn sector) replaced by garbage or zeros.
* Creating, renaming or removing a directory entry is durable only after ``fsync`` of the
  directory; until then any of those changes may be undone.
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..fileio import FileIO
from ..lock import LOCK_NAME

Event = tuple[Any, ...]

POLICIES = ("synced", "torn_tail", "metadata", "reorder")


class RecordingFileIO(FileIO):
    """A :class:`FileIO` that records every mutating call made on files inside ``root``.

    Files present in ``root`` when the recorder is made form its initial, durable state.
    ``current_op`` (per thread) attributes writes to the harness operation in progress.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._lock = threading.RLock()
        self._local = threading.local()
        self.events: list[Event] = []
        self.initial: dict[str, bytes] = {}
        self._names: dict[str, int] = {}
        self._fds: dict[int, int] = {}
        self._next_ino = 1
        if os.path.isdir(self.root):
            for name in sorted(os.listdir(self.root)):
                full = os.path.join(self.root, name)
                if name == LOCK_NAME or not os.path.isfile(full):
                    continue
                with open(full, "rb") as fh:
                    self.initial[name] = fh.read()
                self._names[name] = self._new_ino()

    def initial_inodes(self) -> dict[str, int]:
        """Name -> inode of the initial files (inodes are numbered in sorted name order)."""
        return {name: i + 1 for i, name in enumerate(sorted(self.initial))}

    def _new_ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _name(self, path: str) -> str | None:
        full = os.path.abspath(path)
        if os.path.dirname(full) != self.root:
            return None
        return os.path.basename(full)

    # -- harness annotations -------------------------------------------------------------------

    @property
    def current_op(self) -> int | None:
        return getattr(self._local, "op", None)

    @current_op.setter
    def current_op(self, op: int | None) -> None:
        self._local.op = op

    def mark(self, what: str, op_id: int) -> int:
        """Log an annotation; return its index in ``events``."""
        with self._lock:
            self.events.append(("mark", what, op_id, time.monotonic()))
            return len(self.events) - 1

    # -- FileIO --------------------------------------------------------------------------------

    def create(self, path: str) -> int:
        with self._lock:
            fd = super().create(path)
            name = self._name(path)
            if name is not None and name != LOCK_NAME:
                ino = self._new_ino()
                self._names[name] = ino
                self._fds[fd] = ino
                self.events.append(("create", name, ino))
            return fd

    def open_rw(self, path: str) -> int:
        with self._lock:
            fd = super().open_rw(path)
            self._track(fd, path)
            return fd

    def open_read(self, path: str) -> int:
        with self._lock:
            fd = super().open_read(path)
            self._track(fd, path)
            return fd

    def _track(self, fd: int, path: str) -> None:
        name = self._name(path)
        if name is not None and name in self._names:
            self._fds[fd] = self._names[name]
        else:
            self._fds.pop(fd, None)

    def write(self, fd: int, data: bytes) -> None:
        with self._lock:
            ino = self._fds.get(fd)
            if ino is None:
                super().write(fd, data)
                return
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            try:
                super().write(fd, data)
            finally:
                end = os.lseek(fd, 0, os.SEEK_CUR)
                if end > offset:
                    self.events.append(("write", ino, offset, bytes(data[: end - offset]),
                                        self._op_for(ino)))

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        with self._lock:
            super().pwrite(fd, data, offset)
            ino = self._fds.get(fd)
            if ino is not None:  # sync="always" appends are pwrites: attributed like writes
                self.events.append(("write", ino, offset, bytes(data), self._op_for(ino)))

    def _op_for(self, ino: int) -> int | None:
        """The operation a write belongs to, for the durability oracle: only the bytes of
        its records count. A MANIFEST or hint written on its way (a rotation, a close) is
        the store's own bookkeeping, which another thread may legitimately replace before
        the operation is acknowledged."""
        for name, known in self._names.items():
            if known == ino:
                return self.current_op if name.endswith(".data") else None
        return None

    def fsync(self, fd: int) -> None:
        with self._lock:
            super().fsync(fd)
            ino = self._fds.get(fd)
            if ino is not None:
                self.events.append(("fsync", ino))

    def fdatasync(self, fd: int) -> None:
        # As durable as fsync for this model: data, length and extents (times are not kept).
        with self._lock:
            super().fdatasync(fd)
            ino = self._fds.get(fd)
            if ino is not None:
                self.events.append(("fsync", ino))

    def allocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            super().allocate(fd, offset, length)
            ino = self._fds.get(fd)
            if ino is not None:
                self.events.append(("allocate", ino, offset + length))

    def map_write(self, mm: mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        # A store into a shared map is a write the disk has not seen until the next fsync or
        # fdatasync of the file (or msync): the model treats it exactly as a pwrite.
        with self._lock:
            super().map_write(mm, fd, offset, data)
            ino = self._fds.get(fd)
            if ino is not None:
                self.events.append(("write", ino, offset, bytes(data), self._op_for(ino)))

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            super().fsync_dir(path)
            if os.path.abspath(path) == self.root:
                self.events.append(("fsync_dir",))

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            super().truncate(fd, size)
            ino = self._fds.get(fd)
            if ino is not None:
                self.events.append(("truncate", ino, size))

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            super().rename(src, dst)
            s, d = self._name(src), self._name(dst)
            if s is not None and d is not None and s in self._names:
                ino = self._names.pop(s)
                self._names[d] = ino
                self.events.append(("rename", s, d, ino))

    def unlink(self, path: str) -> None:
        with self._lock:
            super().unlink(path)
            name = self._name(path)
            if name is not None and name in self._names:
                ino = self._names.pop(name)
                self.events.append(("unlink", name, ino))

    def close(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)
            super().close(fd)


@dataclass
class _Inode:
    durable: bytearray = field(default_factory=bytearray)
    current: bytearray = field(default_factory=bytearray)
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # since the last fsync
    synced_at: int = 0  # how many events had been applied when it was last fsynced


def _write_into(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _resize(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


def _torn_prefix(node: _Inode, rng: random.Random) -> bytes:
    """The file after its unsynced changes were applied in order up to a random byte of its
    unsynced writes: appends keep a random part of the tail, and writes into preallocated
    room (pwrite, or stores into a shared map) are torn the same way."""
    if not node.pending:
        return bytes(node.durable)
    budget = rng.randint(0, sum(len(op[2]) for op in node.pending if op[0] == "write"))
    buf = bytearray(node.durable)
    for op in node.pending:
        if op[0] == "truncate":
            _resize(buf, op[1])
            continue
        if budget <= 0:
            break
        _w, offset, data = op
        _write_into(buf, offset, data[:budget])
        budget -= len(data)
    return bytes(buf)


class DiskModel:
    """Replays a :class:`RecordingFileIO` log and builds the crash states a power loss allows."""

    def __init__(self, initial: dict[str, bytes]) -> None:
        self.inodes: dict[int, _Inode] = {}
        self.durable_names: dict[str, int] = {}
        for i, name in enumerate(sorted(initial)):
            ino = i + 1
            data = initial[name]
            self.inodes[ino] = _Inode(bytearray(data), bytearray(data))
            self.durable_names[name] = ino
        self.names = dict(self.durable_names)
        self.pending_meta: list[Event] = []
        self.applied = 0

    def apply(self, ev: Event) -> None:
        self.applied += 1
        kind = ev[0]
        if kind == "write":
            _, ino, offset, data, _op = ev
            node = self.inodes[ino]
            _write_into(node.current, offset, data)
            node.pending.append(("write", offset, data))
        elif kind == "fsync":
            node = self.inodes[ev[1]]
            node.durable = bytearray(node.current)
            node.pending = []
            node.synced_at = self.applied
        elif kind == "allocate":
            # posix_fallocate: the file grows with zeros to ``end`` if it is shorter (until
            # an fsync, a power loss may undo that like any other unsynced change).
            node = self.inodes[ev[1]]
            if ev[2] > len(node.current):
                _resize(node.current, ev[2])
                node.pending.append(("truncate", ev[2]))
        elif kind == "truncate":
            node = self.inodes[ev[1]]
            _resize(node.current, ev[2])
            node.pending.append(("truncate", ev[2]))
        elif kind == "create":
            self.inodes[ev[2]] = _Inode()
            self.names[ev[1]] = ev[2]
            self.pending_meta.append(ev)
        elif kind == "rename":
            _, src, dst, ino = ev
            self.names.pop(src, None)
            self.names[dst] = ino
            self.pending_meta.append(ev)
        elif kind == "unlink":
            self.names.pop(ev[1], None)
            self.pending_meta.append(ev)
        elif kind == "fsync_dir":
            self.durable_names = dict(self.names)
            self.pending_meta = []

    def is_durable(self, ino: int, end: int, written_at: int | None = None) -> bool:
        """Whether bytes up to ``end`` of inode ``ino`` are durable under a durable name; with
        ``written_at`` (the index in the event log of the write that put them there), whether
        that write is: an fsync of the file came after it. A length alone proves nothing in a
        preallocated file, whose zeros are durable long before the records written over them."""
        node = self.inodes.get(ino)
        return (node is not None and len(node.durable) >= end
                and (written_at is None or node.synced_at > written_at + 1)
                and ino in self.durable_names.values())

    # -- crash states --------------------------------------------------------------------------

    def _namespace(self, rng: random.Random, how: str) -> dict[str, int]:
        if how == "durable" or not self.pending_meta:
            return dict(self.durable_names)
        if how == "current":
            return dict(self.names)
        names = dict(self.durable_names)
        if how == "prefix":
            chosen = self.pending_meta[: rng.randint(0, len(self.pending_meta))]
        else:
            chosen = [ev for ev in self.pending_meta if rng.random() < 0.5]
        for ev in chosen:
            if ev[0] == "create":
                names[ev[1]] = ev[2]
            elif ev[0] == "rename":
                _, src, dst, ino = ev
                if names.get(src) == ino:
                    del names[src]
                    names[dst] = ino
            elif ev[0] == "unlink" and names.get(ev[1]) == ev[2]:
                del names[ev[1]]
        return names

    def crash_state(self, rng: random.Random, policy: str) -> tuple[dict[str, bytes], str]:
        """Return (name -> content, description) of one state a power loss now may leave.

        ``policy`` is one of :data:`POLICIES`, or ``"kill"``: what a process crash (not a power
        loss) leaves, every write and directory change exactly as made.
        """
        if policy == "kill":
            return ({n: bytes(self.inodes[i].current) for n, i in self.names.items()},
                    "process killed: everything written so far is kept")
        if policy == "synced":
            names = self._namespace(rng, "durable")
            files = {n: bytes(self.inodes[i].durable) for n, i in names.items()}
            return files, "every file cut to its last fsync, directory as of its last fsync"
        if policy == "torn_tail":
            how = rng.choice(("durable", "current", "prefix"))
            names = self._namespace(rng, how)
            files = {}
            for n, i in names.items():
                files[n] = _torn_prefix(self.inodes[i], rng)
            return files, (f"a random prefix of each file's unsynced writes kept, the last "
                           f"one cut anywhere, directory {how}")
        if policy == "metadata":
            how = rng.choice(("durable", "prefix", "subset"))
            names = self._namespace(rng, how)
            files = {n: bytes(self.inodes[i].current) for n, i in names.items()}
            return files, (f"all data written, directory changes since its last fsync: "
                           f"{'reverted' if how == 'durable' else how + ' kept'}")
        if policy == "reorder":
            how = rng.choice(("durable", "current", "prefix", "subset"))
            names = self._namespace(rng, how)
            files = {}
            fates: dict[str, int] = {}
            for n, i in names.items():
                node = self.inodes[i]
                buf = bytearray(node.durable)
                durable_len = len(node.durable)
                for op in node.pending:
                    if op[0] == "truncate":
                        _resize(buf, op[1])
                        continue
                    _w, offset, data = op
                    fate = rng.choice(("keep", "keep", "drop", "garbage", "zeros"))
                    fates[fate] = fates.get(fate, 0) + 1
                    if fate == "keep":
                        _write_into(buf, offset, data)
                    elif fate in ("garbage", "zeros"):
                        sector = rng.choice((512, 4096))
                        end = offset + len(data)
                        lo = max(offset // sector * sector, durable_len)
                        hi = max(end, min(-(-end // sector) * sector, len(buf)))
                        if hi > lo:
                            fill = (rng.randbytes(hi - lo) if fate == "garbage"
                                    else bytes(hi - lo))
                            _write_into(buf, lo, fill)
                files[n] = bytes(buf)
            detail = ", ".join(f"{v} {k}" for k, v in sorted(fates.items())) or "none"
            return files, f"unsynced writes kept/dropped/torn per sector ({detail}), " \
                          f"directory {how}"
        raise ValueError(f"unknown crash policy {policy!r}")


def write_state(directory: str, files: dict[str, bytes]) -> None:
    """Materialise a crash state as a fresh directory."""
    os.makedirs(directory)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as fh:
            fh.write(data)
