"""What a replica keeps in its store directory between runs: the ``REPLICA`` file.

One small JSON file (named by :data:`bitkv.names.REPLICA_STATE_NAME`) holds two things:

* **the resume point** -- the master's address, its replication id and the offset the local
  data reached, and whether the server stopped cleanly. A clean stop (SHUTDOWN, SIGTERM)
  first fsyncs the store, then writes ``"clean": true``; the data then holds exactly the
  stream up to ``offset``, and the next start asks the master to continue from there
  (``PSYNC <replid> <offset+1>``). While the link applies the stream the file says
  ``"clean": false``: after a kill -9 or a power loss the store may hold writes past the
  offset or short of it, and a Redis master's stream is not idempotent (``INCR``), so the
  next start asks for a full resync (``PSYNC ? -1``). During a full resync the file holds
  no replication id at all, so an interrupted load is never resumed from.
* **the role** persisted by ``CONFIG REWRITE`` (``replicaof``, and the replica settings set
  with ``CONFIG SET``), which ``bitkv serve`` reads at start, as Redis reads its config
  file: a server Sentinel made a replica comes back as one. ``--replicaof`` given on the
  command line wins; ``REPLICAOF NO ONE`` followed by ``CONFIG REWRITE`` clears it.

The file is replaced atomically: written under a temporary name, fsynced, renamed over the
old one, and the directory fsynced. A file that cannot be read is reported and ignored (the
replica then does a full resync, which is always safe).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from bitkv.names import REPLICA_STATE_NAME, TMP_SUFFIX

log = logging.getLogger("bitkv.server")

STATE_VERSION = 1


@dataclass
class ResumePoint:
    """Where the local data stands in a master's replication stream."""

    host: str
    port: int
    replid: str  # 40 hex characters
    offset: int  # the last byte of the stream applied (Redis's slave_repl_offset)
    clean: bool  # the data holds exactly the stream up to ``offset``


@dataclass
class ReplicaState:
    """The contents of the REPLICA file (see the module docstring)."""

    resume: ResumePoint | None = None
    replicaof: tuple[str, int] | None = None  # the role persisted by CONFIG REWRITE
    settings: dict[str, str] = field(default_factory=dict)  # CONFIG SET values rewritten

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"version": STATE_VERSION,
                               "resume": asdict(self.resume) if self.resume else None,
                               "replicaof": list(self.replicaof) if self.replicaof else None,
                               "settings": self.settings}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReplicaState:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} replica state")
        resume = None
        r = doc.get("resume")
        if r is not None:
            resume = ResumePoint(str(r["host"]), int(r["port"]), str(r["replid"]),
                                 int(r["offset"]), bool(r["clean"]))
            if len(resume.replid) != 40 or resume.offset < 0:
                raise ValueError("bad replication id or offset")
        replicaof = None
        if doc.get("replicaof") is not None:
            host, port = doc["replicaof"]
            replicaof = (str(host), int(port))
        settings = {str(k): str(v) for k, v in (doc.get("settings") or {}).items()}
        return cls(resume, replicaof, settings)


def state_path(directory: str) -> str:
    return os.path.join(directory, REPLICA_STATE_NAME)


def load(directory: str) -> ReplicaState:
    """The state in ``directory``; an empty state if there is none or it is unreadable."""
    path = state_path(directory)
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except FileNotFoundError:
        return ReplicaState()
    except OSError as exc:
        log.error("replication: cannot read %s (%s); starting without a resume point", path,
                  exc)
        return ReplicaState()
    try:
        return ReplicaState.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("replication: %s is unreadable (%s); ignoring it (a replica then does a "
                  "full resync)", path, exc)
        return ReplicaState()


# The link (in worker threads) and CONFIG REWRITE (on the event loop) both save: one at a
# time, so neither renames the other's half-written temporary file.
_save_lock = threading.Lock()


def save(directory: str, state: ReplicaState) -> None:
    """Replace the file atomically and durably (temp, fsync, rename, directory fsync)."""
    with _save_lock:
        _save(directory, state.to_json())


def _save(directory: str, data: bytes) -> None:
    path = state_path(directory)
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold masterauth
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
