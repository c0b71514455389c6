"""The record of the store's last compaction, kept across restarts (file ``COMPACTION``).

Without it ``stats()`` and ``INFO`` of a fresh process said "none recorded" for a store that
had been compacted a minute earlier. The file is small JSON (docs/format.md, "COMPACTION"),
replaced whole (temporary file, fsync, rename, directory fsync) after each compaction. It is
informational: a missing, unreadable or malformed file means "none recorded", never an error
that stops an open.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .fileio import O_CLOEXEC, O_NOFOLLOW, FileIO
from .names import LAST_COMPACTION_NAME

VERSION = 1
MAX_SIZE = 64 * 1024  # read no more than this: the file is a few hundred bytes
# The summary fields kept (compaction.CompactionSummary, plus finished_at): numbers only.
FIELDS = ("segments_in", "segments_out", "bytes_in", "bytes_out", "bytes_reclaimed",
          "keys_kept", "records_dropped", "corrupt_records", "seconds", "finished_at")

log = logging.getLogger("bitkv")


def save(directory: str, io: FileIO, summary: dict[str, Any]) -> None:
    """Durably record ``summary`` as the last compaction. Raises OSError on failure."""
    doc: dict[str, Any] = {"version": VERSION}
    for name in FIELDS:
        value = summary.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            doc[name] = value
    data = (json.dumps(doc, sort_keys=True) + "\n").encode("ascii")
    io.replace_file(directory, LAST_COMPACTION_NAME, data)


def load(directory: str) -> dict[str, Any] | None:
    """The last compaction recorded in ``directory``, or None (none, or not readable)."""
    path = os.path.join(directory, LAST_COMPACTION_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)  # never through a symlink
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("bitkv store %s: cannot read %s (%s); last compaction unknown", directory,
                    LAST_COMPACTION_NAME, exc)
        return None
    try:
        data = os.read(fd, MAX_SIZE + 1)
    except OSError as exc:
        log.warning("bitkv store %s: cannot read %s (%s); last compaction unknown", directory,
                    LAST_COMPACTION_NAME, exc)
        return None
    finally:
        os.close(fd)
    try:
        if len(data) > MAX_SIZE:
            raise ValueError("larger than any record bitkv writes")
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError("not a version-1 record")
    except ValueError as exc:
        log.warning("bitkv store %s: %s is malformed (%s); last compaction unknown", directory,
                    LAST_COMPACTION_NAME, exc)
        return None
    return {name: doc[name] for name in FIELDS
            if isinstance(doc.get(name), (int, float)) and not isinstance(doc.get(name), bool)}
