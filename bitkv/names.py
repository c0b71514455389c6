"""Every file name of a store directory, in one place (docs/format.md, "The store directory").

The modules that own each file's contents import its name from here; nothing else spells a
store file's name.
"""

from __future__ import annotations

import os

MARKER_NAME = "BITKV"  # "this directory is a bitkv store" (recovery.py)
LOCK_NAME = "LOCK"  # the single-writer lock (lock.py)
MANIFEST_NAME = "MANIFEST"  # the segments the store consists of (manifest.py)
DURABLE_NAME = "DURABLE"  # how far the active segment is fsynced (durable.py)
KEYCHECK_NAME = "ENCRYPTION"  # the encryption key check (codec.py)
SETTINGS_NAME = "SETTINGS"  # store-wide write settings: compression (settings.py)
LAST_COMPACTION_NAME = "COMPACTION"  # the last compaction's summary (lastcompaction.py)
DICT_PREFIX = "zstd-"  # zstd-NNNNNNNNNN.dict: a trained dictionary (codec.py)
DICT_SUFFIX = ".dict"
DATA_SUFFIX = ".data"  # NNNNNN.data: a segment (segment.py)
HINT_SUFFIX = ".hint"  # NNNNNN.hint: its hint (hint.py)
TMP_SUFFIX = ".tmp"  # a file being written, renamed into place when whole
DAMAGED_DIR_PREFIX = "damaged-"  # damaged-<UTC time>/: files repair moved aside (check.py)
REPAIR_NOTE_NAME = "REPAIR.txt"  # inside it: what repair found and did
# In a backup directory (backup.py): which store it is a backup of and what it held; the
# identity an incremental backup checks. The store itself never reads it.
BACKUP_NOTE_NAME = "BACKUP"
REPLICATION_NAME = "REPLICATION"  # a master's replication journal (server/backlog.py)
# A replica's state: its master, the replication id and offset its data reached, whether it
# stopped cleanly, the role CONFIG REWRITE persisted (server/replica_state.py).
REPLICA_STATE_NAME = "REPLICA"
# replica-sync-<pid>.rdb.tmp: an RDB being received from a master (server/replica.py); a
# leftover is removed by the next writable open, like every other temporary file.
REPLICA_RDB_PREFIX = "replica-sync-"
REPLICA_RDB_SUFFIX = ".rdb" + TMP_SUFFIX


def data_name(segment_id: int) -> str:
    return f"{segment_id:06d}{DATA_SUFFIX}"


def hint_name(segment_id: int) -> str:
    return f"{segment_id:06d}{HINT_SUFFIX}"


def segment_path(directory: str, segment_id: int) -> str:
    return os.path.join(directory, data_name(segment_id))


def parse_id(name: str, suffix: str) -> int | None:
    """Return the id of a file named like ``000042<suffix>``, else None."""
    if not name.endswith(suffix):
        return None
    stem = name[: -len(suffix)]
    if len(stem) < 6 or not stem.isdigit() or not stem.isascii():
        return None
    segment_id = int(stem)
    if stem != f"{segment_id:06d}":
        return None  # not a name bitkv writes (e.g. 0000001.data): not ours
    return segment_id


def list_segment_ids(names: list[str]) -> list[int]:
    return sorted(i for i in (parse_id(n, DATA_SUFFIX) for n in names) if i is not None)


def dict_name(dict_id: int) -> str:
    return f"{DICT_PREFIX}{dict_id:010d}{DICT_SUFFIX}"


def is_dict_name(name: str) -> bool:
    stem = name[len(DICT_PREFIX) : -len(DICT_SUFFIX)]
    return name.startswith(DICT_PREFIX) and name.endswith(DICT_SUFFIX) and stem.isdigit()


SNAPSHOT_PREFIX = "replication-"  # replication-<pid>-<n>.rdb.tmp: a snapshot being sent
SNAPSHOT_SUFFIX = ".rdb" + TMP_SUFFIX


def snapshot_tmp_name(pid: int, n: int) -> str:
    return f"{SNAPSHOT_PREFIX}{pid}-{n}{SNAPSHOT_SUFFIX}"


def is_snapshot_tmp_name(name: str) -> bool:
    return name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX)


def replica_rdb_tmp_name(pid: int) -> str:
    return f"{REPLICA_RDB_PREFIX}{pid}{REPLICA_RDB_SUFFIX}"


def is_replica_rdb_tmp_name(name: str) -> bool:
    stem = name[len(REPLICA_RDB_PREFIX) : -len(REPLICA_RDB_SUFFIX)]
    return (name.startswith(REPLICA_RDB_PREFIX) and name.endswith(REPLICA_RDB_SUFFIX)
            and stem.isdigit())
