"""The ``SETTINGS`` file: store-wide write settings every opener follows (docs/format.md).

Today it records one thing, how new values are compressed (``compression`` and
``compression_min_size``), so that the CLI, the server and any program that opens the store
without naming a compression write the way the store was set up (issue 16). Readers never
need it: every record says in its flags how its value is encoded.

Rules (:func:`resolve`), applied at every open:

* An option left at ``None`` takes the recorded value, else the default (no compression,
  256 bytes).
* An option given explicitly wins over the record (``compression="none"`` turns compression
  off), and a writable open records the result when it differs from what was recorded (the
  last explicit choice is what later openers follow). A read-only open writes nothing.
* A store that never had anything but the defaults has no ``SETTINGS`` file.

The file is 24 bytes, replaced whole (temporary file, fsync, rename, directory fsync) under
the writer's lock. One bitkv cannot read (damaged, or of a newer version) makes a writable
open fail unless it names the compression itself (which rewrites a damaged file); a reader
ignores it.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from .codec import DEFAULT_COMPRESSION_MIN_SIZE
from .crc import crc32c
from .errors import CorruptionError, FormatVersionError
from .fileio import FileIO
from .names import SETTINGS_NAME

MAGIC = b"BITKVSET"
VERSION = 1
# magic, version, compression (0 none, 1 zstd), reserved (0), compression_min_size, and the
# CRC-32C of the 20 bytes before it
LAYOUT = struct.Struct("<8sHBBQI")
SIZE = LAYOUT.size
_COVERED = SIZE - 4
_ALGORITHMS = {0: None, 1: "zstd"}
_CODES = {name: code for code, name in _ALGORITHMS.items()}
CHOICES = (None, "none", "zstd")
MAX_MIN_SIZE = 2**64 - 1


class Compression(NamedTuple):
    """How new values are compressed: ``algorithm`` None (not at all) or ``"zstd"``, for
    values of at least ``min_size`` bytes."""

    algorithm: str | None
    min_size: int


DEFAULT = Compression(None, DEFAULT_COMPRESSION_MIN_SIZE)


def encode(compression: Compression) -> bytes:
    body = LAYOUT.pack(MAGIC, VERSION, _CODES[compression.algorithm], 0,
                       compression.min_size, 0)[:_COVERED]
    return body + crc32c(body).to_bytes(4, "little")


def decode(blob: bytes, path: str) -> Compression:
    """Parse a settings file; raise :class:`CorruptionError` or :class:`FormatVersionError`
    saying what is wrong with it."""
    if len(blob) >= 10 and blob[:8] == MAGIC:
        version = int.from_bytes(blob[8:10], "little")
        if version > VERSION:
            raise FormatVersionError(f"{path} is version {version}; this bitkv knows only "
                                     f"version {VERSION}: upgrade bitkv to write to this store")
    if len(blob) != SIZE:
        raise CorruptionError(f"{path} is damaged: {len(blob)} bytes, not {SIZE}")
    magic, version, code, reserved, min_size, crc = LAYOUT.unpack(blob)
    if magic != MAGIC:
        raise CorruptionError(f"{path} is damaged: wrong magic {magic!r}")
    if crc != crc32c(blob[:_COVERED]):
        raise CorruptionError(f"{path} is damaged: its CRC does not match")
    if version != VERSION or code not in _ALGORITHMS or reserved:
        raise CorruptionError(f"{path} is damaged: version {version}, compression {code}, "
                              f"reserved {reserved} are not values bitkv writes")
    return Compression(_ALGORITHMS[code], min_size)


def read(directory: str, io: FileIO) -> Compression | None:
    """The recorded settings, or None if the store has no settings file."""
    path = os.path.join(directory, SETTINGS_NAME)
    try:
        blob = io.read_file(path, 4096)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise CorruptionError(f"{path} is damaged: larger than a settings file") from None
        raise
    return decode(blob, path)


def write(directory: str, io: FileIO, compression: Compression) -> None:
    """Record ``compression`` durably (atomically replaced; see the module doc)."""
    io.replace_file(directory, SETTINGS_NAME, encode(compression))


def resolve(directory: str, io: FileIO, compression: str | None, min_size: int | None, *,
            writable: bool) -> Compression:
    """The compression an opener writes with, recording it when ``writable`` and it changed
    (the rules are in the module doc). ``compression`` is None (as recorded), ``"none"`` or
    ``"zstd"``; ``min_size`` None (as recorded) or bytes."""
    if compression not in CHOICES:
        raise ValueError(f"compression must be None, 'none' or 'zstd', not {compression!r}")
    damaged = False
    try:
        recorded = read(directory, io)
    except FormatVersionError:
        if writable:  # never overwritten: a newer bitkv's file may say more than we know
            raise
        recorded = None  # a reader writes no values: the setting does not concern it
    except CorruptionError:
        # Without a choice of its own, a writer cannot know how it should write.
        if writable and compression is None:
            raise
        recorded, damaged = None, True
    base = recorded or DEFAULT
    effective = Compression(
        base.algorithm if compression is None else
        (None if compression == "none" else compression),
        base.min_size if min_size is None else min_size)
    if writable and (damaged or effective != base):
        write(directory, io, effective)
    return effective
