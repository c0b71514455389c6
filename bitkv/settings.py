"""The ``SETTINGS`` file: store-wide write settings every opener follows (docs/format.md).

It records how new values are compressed (``compression`` and ``compression_min_size``,
issue 16) and the size bound of a cache (``max_bytes`` and ``eviction``, issue 15), so that
the CLI, the server and any program that opens the store without naming them write the way
the store was set up. Readers never need it: every record says in its flags how its value
is encoded, and a reader never evicts.

Rules (:func:`resolve`), applied at every open:

* An option left at ``None`` takes the recorded value, else the default (no compression,
  256 bytes, no bound, ``noeviction``).
* An option given explicitly wins over the record (``compression="none"`` turns compression
  off), and a writable open records the result when it differs from what was recorded (the
  last explicit choice is what later openers follow). A read-only open writes nothing.
* A store that never had anything but the defaults has no ``SETTINGS`` file.

The file is 24 bytes (version 1) while no bound is set, so that an older bitkv can still
write to the store, and 32 bytes (version 2) with one; it is replaced whole (temporary file,
fsync, rename, directory fsync) under the writer's lock. One bitkv cannot read (damaged, or
of a newer version) makes a writable open fail unless it names the compression itself (which
rewrites a damaged file, with the bound this open names); a reader ignores it.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from .codec import DEFAULT_COMPRESSION_MIN_SIZE
from .crc import crc32c
from .errors import CorruptionError, FormatVersionError
from .eviction import POLICIES
from .fileio import FileIO
from .names import SETTINGS_NAME

MAGIC = b"BITKVSET"
VERSION = 2
# Version 2: magic, version, compression (0 none, 1 zstd), eviction policy (an index into
# eviction.POLICIES), compression_min_size, max_bytes (0: no bound), and the CRC-32C of the
# 28 bytes before it.
LAYOUT = struct.Struct("<8sHBBQQI")
SIZE = LAYOUT.size
# Version 1 (still written while no bound is set): the same without max_bytes, and the
# eviction byte reserved (0).
LAYOUT_V1 = struct.Struct("<8sHBBQI")
SIZE_V1 = LAYOUT_V1.size
_ALGORITHMS = {0: None, 1: "zstd"}
_CODES = {name: code for code, name in _ALGORITHMS.items()}
CHOICES = (None, "none", "zstd")
MAX_MIN_SIZE = 2**64 - 1
MAX_BYTES_LIMIT = 2**64 - 1


class Compression(NamedTuple):
    """How new values are compressed: ``algorithm`` None (not at all) or ``"zstd"``, for
    values of at least ``min_size`` bytes."""

    algorithm: str | None
    min_size: int


DEFAULT = Compression(None, DEFAULT_COMPRESSION_MIN_SIZE)


class Bound(NamedTuple):
    """A cache's size bound: at most ``max_bytes`` live bytes (0: no bound), kept by the
    ``eviction`` policy (one of :data:`bitkv.eviction.POLICIES`; docs/cache.md)."""

    max_bytes: int
    eviction: str


NO_BOUND = Bound(0, "noeviction")


class Settings(NamedTuple):
    """Everything the file records."""

    compression: Compression
    bound: Bound


def encode(compression: Compression, bound: Bound = NO_BOUND) -> bytes:
    """The file's bytes: version 1 without a bound (so older bitkv can still write), else 2."""
    if bound == NO_BOUND:
        body = LAYOUT_V1.pack(MAGIC, 1, _CODES[compression.algorithm], 0,
                              compression.min_size, 0)[:SIZE_V1 - 4]
    else:
        body = LAYOUT.pack(MAGIC, VERSION, _CODES[compression.algorithm],
                           POLICIES.index(bound.eviction), compression.min_size,
                           bound.max_bytes, 0)[:SIZE - 4]
    return body + crc32c(body).to_bytes(4, "little")


def decode(blob: bytes, path: str) -> Settings:
    """Parse a settings file; raise :class:`CorruptionError` or :class:`FormatVersionError`
    saying what is wrong with it."""
    version = 0
    if len(blob) >= 10 and blob[:8] == MAGIC:
        version = int.from_bytes(blob[8:10], "little")
        if version > VERSION:
            raise FormatVersionError(f"{path} is version {version}; this bitkv knows only "
                                     f"versions 1 and {VERSION}: upgrade bitkv to write to "
                                     "this store")
    expected = SIZE_V1 if version == 1 else SIZE
    if len(blob) != expected:
        raise CorruptionError(f"{path} is damaged: {len(blob)} bytes, not {expected}")
    if version == 1:
        magic, version, code, policy, min_size, crc = LAYOUT_V1.unpack(blob)
        max_bytes = 0
    else:
        magic, version, code, policy, min_size, max_bytes, crc = LAYOUT.unpack(blob)
    if magic != MAGIC:
        raise CorruptionError(f"{path} is damaged: wrong magic {magic!r}")
    if crc != crc32c(blob[:-4]):
        raise CorruptionError(f"{path} is damaged: its CRC does not match")
    if (version not in (1, VERSION) or code not in _ALGORITHMS or policy >= len(POLICIES)
            or (version == 1 and policy)):
        raise CorruptionError(f"{path} is damaged: version {version}, compression {code}, "
                              f"eviction {policy} are not values bitkv writes")
    return Settings(Compression(_ALGORITHMS[code], min_size),
                    Bound(max_bytes, POLICIES[policy]))


def read(directory: str, io: FileIO) -> Settings | None:
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


def write(directory: str, io: FileIO, compression: Compression,
          bound: Bound = NO_BOUND) -> None:
    """Record the settings durably (atomically replaced; see the module doc)."""
    io.replace_file(directory, SETTINGS_NAME, encode(compression, bound))


def check_bound(max_bytes: int | None, eviction: str | None) -> None:
    """Raise ValueError (TypeError) unless these are a valid bound and policy (None: as
    recorded)."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)):
        raise TypeError(f"max_bytes must be an int (bytes) or None, not "
                        f"{type(max_bytes).__name__}")
    if max_bytes is not None and not 0 <= max_bytes <= MAX_BYTES_LIMIT:
        raise ValueError(f"max_bytes must be 0 (no bound) to {MAX_BYTES_LIMIT}, not {max_bytes}")
    if eviction is not None and eviction not in POLICIES:
        raise ValueError(f"eviction must be one of {', '.join(POLICIES)}, not {eviction!r}")


def resolve(directory: str, io: FileIO, compression: str | None, min_size: int | None, *,
            writable: bool, max_bytes: int | None = None,
            eviction: str | None = None) -> Settings:
    """The settings an opener writes with, recording them when ``writable`` and they
    changed (the rules are in the module doc). ``compression`` is None (as recorded),
    ``"none"`` or ``"zstd"``; ``min_size`` None (as recorded) or bytes; ``max_bytes`` None
    (as recorded), 0 (no bound) or bytes; ``eviction`` None (as recorded) or a policy."""
    if compression not in CHOICES:
        raise ValueError(f"compression must be None, 'none' or 'zstd', not {compression!r}")
    check_bound(max_bytes, eviction)
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
    base = recorded or Settings(DEFAULT, NO_BOUND)
    effective = Settings(
        Compression(base.compression.algorithm if compression is None else
                    (None if compression == "none" else compression),
                    base.compression.min_size if min_size is None else min_size),
        Bound(base.bound.max_bytes if max_bytes is None else max_bytes,
              base.bound.eviction if eviction is None else eviction))
    if writable and (damaged or effective != base):
        write(directory, io, *effective)
    return effective
