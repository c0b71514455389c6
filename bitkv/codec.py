"""Value encodings: memcached client flags, zstandard compression and AES-256-GCM encryption
at rest.

Encoding order is append the client flags (if any), compress, then encrypt (ciphertext does
not compress). Each record says in
its flags which encodings apply, so one store may mix plain, compressed and encrypted records.

Encryption: each value is sealed with a fresh random 96-bit nonce. In a version-2 store (one
whose key-check file is version 2) the associated data binds the record's key, flags (without
the batch bits), seq and expiry, so a sealed value moved under another key, replayed under
another seq, or given other flags or another expiry fails to open; a version-1 store (written
before that) binds only the key. Keys, value sizes, sequence numbers and expiry times stay
visible on disk (see docs/format.md, "What encryption protects").
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import threading
from collections.abc import Iterable
from typing import NamedTuple

import zstandard

from . import record as rec
from . import segment as seg_mod
from .crc import crc32c
from .errors import CorruptionError, EncryptionError, Error, IntegrityError
from .fileio import DEFAULT_FILEIO, FileIO
from .names import DICT_PREFIX as DICT_PREFIX
from .names import DICT_SUFFIX as DICT_SUFFIX
from .names import KEYCHECK_NAME as KEYCHECK_NAME
from .names import dict_name as dict_name
from .names import is_dict_name as is_dict_name

KEYCHECK_MAGIC = b"BITKVENC"  # version 1: records' associated data is the key alone
KEYCHECK_MAGIC_V2 = b"BITKVEN2"  # version 2: associated data is _AAD_V2 + the key
NONCE_SIZE = 12
TAG_SIZE = 16
DEFAULT_COMPRESSION_MIN_SIZE = 256
_KEYCHECK_PLAINTEXT = b"bitkv encryption key check v1"
# Version 2 says in its (sealed, so unforgeable) plaintext whether records without the
# ENCRYPTED flag are legitimate: only in a store that held plain records when it was first
# opened with a key ("mixed"). In a "strict" store a plain record can only be an injection.
_KEYCHECK_PLAINTEXT_V2 = b"bitkv encryption key check v2 strict"
_KEYCHECK_PLAINTEXT_V2_MIXED = b"bitkv encryption key check v2 mixed"
_KEYCHECK_PLAINTEXTS = {KEYCHECK_MAGIC: (_KEYCHECK_PLAINTEXT,),
                        KEYCHECK_MAGIC_V2: (_KEYCHECK_PLAINTEXT_V2, _KEYCHECK_PLAINTEXT_V2_MIXED)}

# The associated data of a value sealed in a version-2 store: this, then the record's key.
# The magic keeps it apart from every other associated data bitkv uses (a version-1 key, the
# key-check magics, dictionary file names) unless a user key starts with these 8 bytes.
# Memcached client flags (record.CLIENT_FLAGS): a big-endian u32 after the value, inside what
# is compressed and encrypted (docs/format.md, "Client flags").
_CLIENT_FLAGS = struct.Struct(">I")
CLIENT_FLAGS_SIZE = _CLIENT_FLAGS.size
MAX_CLIENT_FLAGS = 0xFFFFFFFF

_AAD_V2 = struct.Struct("<8sBQQ")  # magic, flags & ~BATCH_FLAGS, seq, expiry_ms
AAD_V2_MAGIC = b"BITKVAD2"


class KeyCheck(NamedTuple):
    """What a store's key-check file says about how its records are sealed."""

    version: int  # 1: the key alone is the associated data; 2: _AAD_V2 + key
    plain_allowed: bool  # records without ENCRYPTED are legitimate (version 1, or "mixed")


KEYCHECK_V2_STRICT = KeyCheck(2, False)


class _Cipher:
    def __init__(self, key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - depends on the environment
            raise Error("encryption needs the 'cryptography' package: "
                        "pip install 'bitkv[crypto]'") from None
        self._aead = AESGCM(key)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, sealed: bytes, what: str) -> bytes:
        """Open ``sealed``; ``what`` names it in errors (a key, a file)."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise EncryptionError(f"{what}: sealed value is too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag:
            raise EncryptionError(
                f"{what}: value does not open with this encryption key (wrong key, or the "
                "value, its flags, seq or expiry were tampered with, or it was moved)") from None


def keycheck_problem(blob: bytes) -> str | None:
    """Why ``blob`` is not a key-check file bitkv writes, or None (checks its shape only)."""
    plaintexts = _KEYCHECK_PLAINTEXTS.get(blob[: len(KEYCHECK_MAGIC)])
    if plaintexts is None:
        return "it does not start with BITKVENC or BITKVEN2"
    sizes = sorted({len(KEYCHECK_MAGIC) + NONCE_SIZE + len(p) + TAG_SIZE for p in plaintexts})
    if len(blob) not in sizes:
        return f"it is {len(blob)} bytes long, not {' or '.join(map(str, sizes))}"
    return None


def _holds_records(directory: str) -> tuple[bool, bool]:
    """(any intact record, any intact ENCRYPTED record) in the store's segments.

    Only needed when a key is given to a store without a key-check file: a rare event (the
    first keyed open of a store), so reading every segment once is acceptable.
    """
    any_record = False
    try:
        names = os.listdir(directory)
    except OSError:
        return False, False
    for seg_id in seg_mod.list_segment_ids(names):
        try:
            with open(os.path.join(directory, seg_mod.data_name(seg_id)), "rb") as fh:
                if os.fstat(fh.fileno()).st_size <= seg_mod.HEADER_SIZE:
                    continue
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    for r in rec.scan(buf, seg_mod.HEADER_SIZE):
                        if isinstance(r, rec.ScannedRecord):
                            any_record = True
                            if r.flags & rec.ENCRYPTED:
                                return True, True
        except FileNotFoundError:
            continue  # removed by a compaction running beside us
    return any_record, False


def check_encryption_key(directory: str, key: bytes | None, *, create: bool,
                         io: FileIO = DEFAULT_FILEIO) -> KeyCheck | None:
    """Verify ``key`` against the store's key-check file, creating it when allowed.

    Return how the store's records are sealed (None when ``key`` is None). A store that has a
    key-check file refuses to open without the right key; a store opened with a key for the
    first time gets a version-2 one (written atomically, fsynced): "strict" if it held no
    record yet, "mixed" if it held plain records (they stay readable). A key-check file that
    is not one bitkv writes fails the open, with or without a key: the store cannot tell
    whether it is encrypted.
    """
    path = os.path.join(directory, KEYCHECK_NAME)
    if key is not None:
        key = validate_key(key)  # before anything is written with it
    try:
        with open(path, "rb") as fh:
            blob: bytes | None = fh.read(4096)
    except FileNotFoundError:
        blob = None
    if blob is not None:
        problem = keycheck_problem(blob)
        if problem is not None:
            raise EncryptionError(
                f"{path} is not a valid bitkv key-check file ({problem}), so whether this "
                "store is encrypted is unknown: restore the file from a backup (or, if the "
                "store was never encrypted, remove it)")
    if key is None:
        if blob is not None:
            raise EncryptionError(f"store {directory!r} is encrypted: open it with its "
                                  "encryption_key")
        return None
    cipher = _Cipher(key)
    if blob is not None:
        magic = blob[: len(KEYCHECK_MAGIC)]
        try:
            plain = cipher.open(magic, blob[len(magic) :], path)
        except EncryptionError:
            raise EncryptionError(f"wrong encryption key for store {directory!r}") from None
        if plain not in _KEYCHECK_PLAINTEXTS[magic]:
            raise EncryptionError(f"wrong encryption key for store {directory!r}")
        if magic == KEYCHECK_MAGIC:
            return KeyCheck(1, plain_allowed=True)
        return KeyCheck(2, plain_allowed=plain == _KEYCHECK_PLAINTEXT_V2_MIXED)
    # No key-check file. If sealed records exist, it was lost or removed: recreating it could
    # downgrade the store (strict -> mixed, or version 1 -> 2 making old values unreadable),
    # so refuse rather than guess.
    any_record, any_sealed = _holds_records(directory)
    if any_sealed:
        raise EncryptionError(
            f"store {directory!r} holds encrypted records but its {KEYCHECK_NAME} key-check "
            "file is missing: restore it from a backup (bitkv does not recreate it)")
    if not create:
        # A reader creates nothing; with no key check, nothing says plain records are forged.
        return KeyCheck(2, plain_allowed=True)
    # "strict" for a store with no record yet; "mixed" keeps its plain records readable.
    plaintext = _KEYCHECK_PLAINTEXT_V2_MIXED if any_record else _KEYCHECK_PLAINTEXT_V2
    blob = KEYCHECK_MAGIC_V2 + cipher.seal(KEYCHECK_MAGIC_V2, plaintext)
    io.replace_file(directory, KEYCHECK_NAME, blob)
    return KeyCheck(2, plain_allowed=any_record)


def validate_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"encryption_key must be 32 bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != 32:
        raise ValueError(f"encryption_key must be 32 bytes (AES-256), not {len(key)}")
    return key


_DICT_HEADER = struct.Struct("<8sII")  # magic, dict id, crc32c of the dictionary bytes
DICT_MAGIC = b"BITKVZDC"
DICT_MAGIC_SEALED = b"BITKVZDS"  # the dictionary bytes are AES-256-GCM sealed


class ValueCodec:
    """Turns user values into stored bytes and back, per the store's options."""

    def __init__(self, directory: str, *, compression: str | None = None,
                 compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE,
                 compression_level: int = 3, encryption_key: bytes | None = None,
                 keycheck: KeyCheck | None = None, io: FileIO = DEFAULT_FILEIO) -> None:
        self._io = io
        if compression not in (None, "zstd"):
            raise ValueError(f"compression must be None or 'zstd', not {compression!r}")
        if encryption_key is not None:
            encryption_key = validate_key(encryption_key)
        self.directory = directory
        self.compression = compression
        self.compression_min_size = compression_min_size
        self.compression_level = compression_level
        self._cipher = _Cipher(encryption_key) if encryption_key is not None else None
        keycheck = keycheck or KEYCHECK_V2_STRICT
        self._aad_v2 = keycheck.version >= 2
        # A plain (not ENCRYPTED) record is refused in a strict encrypted store: with write
        # access and the unkeyed CRC anyone could append one.
        self.refuses_plain = self._cipher is not None and not keycheck.plain_allowed
        self._local = threading.local()  # zstd contexts are not thread-safe
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._bad_dicts: dict[str, str] = {}  # file name -> why it did not load
        self._active_dict: zstandard.ZstdCompressionDict | None = None
        self._load_dicts()

    @property
    def active(self) -> bool:
        return self.compression is not None or self._cipher is not None

    @property
    def encrypting(self) -> bool:
        return self._cipher is not None

    # -- dictionaries ------------------------------------------------------------------------

    def _load_dicts(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.directory) if is_dict_name(n))
        except OSError:
            return
        for name in names:  # ids grow in training order, so the last is the newest
            with open(os.path.join(self.directory, name), "rb") as fh:
                blob = fh.read()
            try:
                d = _decode_dict(blob, name, self._cipher)
            except ValueError as exc:
                # Kept so that a value needing it says "damaged", not "missing".
                self._bad_dicts[name] = str(exc)
                continue
            self._bad_dicts.pop(name, None)
            self._dicts[d.dict_id()] = d
            self._active_dict = d  # the newest trained dictionary compresses new values

    def train(self, samples: Iterable[bytes], dict_size: int = 16 * 1024) -> int:
        """Train a dictionary from ``samples``, store it durably, use it from now on."""
        # (typed as zstandard's stub wants: it takes a list, which is invariant)
        data: list[bytes | bytearray | memoryview[int]] = [s for s in samples if s]
        if len(data) < 8:
            raise ValueError("training a dictionary needs at least 8 non-empty sample values")
        # Ids above 32767 are free for private use; counting up keeps "newest" well defined.
        dict_id = max(self._dicts, default=32767) + 1
        try:
            d = zstandard.train_dictionary(dict_size, data, dict_id=dict_id)
        except zstandard.ZstdError as exc:
            raise Error(f"zstd could not train a dictionary from these samples: {exc}") from None
        raw = d.as_bytes()
        name = dict_name(d.dict_id())
        if self._cipher is not None:
            # A dictionary is made of value fragments: in an encrypted store it is sealed too.
            blob = _DICT_HEADER.pack(DICT_MAGIC_SEALED, d.dict_id(), crc32c(raw)) + \
                self._cipher.seal(name.encode(), raw)
        else:
            blob = _DICT_HEADER.pack(DICT_MAGIC, d.dict_id(), crc32c(raw)) + raw
        if not os.path.exists(os.path.join(self.directory, name)):
            self._io.replace_file(self.directory, name, blob)
        self._dicts[d.dict_id()] = d
        self._active_dict = d
        self._local = threading.local()
        return d.dict_id()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "compressor", None)
        if c is None:
            c = zstandard.ZstdCompressor(level=self.compression_level, dict_data=self._active_dict,
                                         write_content_size=True)
            self._local.compressor = c
        return c

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        cache = getattr(self._local, "decompressors", None)
        if cache is None:
            cache = self._local.decompressors = {}
        d = cache.get(dict_id)
        if d is None:
            dict_data = None
            if dict_id:
                dict_data = self._dicts.get(dict_id)
                if dict_data is None:
                    self._load_dicts()
                    dict_data = self._dicts.get(dict_id)
                if dict_data is None:
                    name = dict_name(dict_id)
                    if os.path.exists(os.path.join(self.directory, name)):
                        why = self._bad_dicts.get(name, "it does not load")
                        raise CorruptionError(
                            f"value was compressed with zstd dictionary {dict_id}, whose file "
                            f"{name} is damaged: {why}")
                    raise Error(f"value was compressed with zstd dictionary {dict_id}, "
                                f"whose file {name} is missing from the store")
            d = cache[dict_id] = zstandard.ZstdDecompressor(dict_data=dict_data)
        return d

    # -- values ------------------------------------------------------------------------------
    #
    # Writing is two steps because the associated data includes the seq, known only under the
    # store's lock: compress() (outside the lock, it is the slow part), then seal() once the
    # seq is taken. Reading is decode() = unseal() then decompress.

    def compress(self, value: bytes) -> tuple[bytes, int]:
        """Return (value or its zstd frame, COMPRESSED or 0)."""
        if self.compression is not None and len(value) >= self.compression_min_size:
            packed = self._compressor().compress(value)
            if len(packed) < len(value):
                return packed, rec.COMPRESSED
        return value, 0

    def aad(self, key: bytes, flags: int, seq: int, expiry_ms: int) -> bytes:
        """The associated data of a value sealed for this record (docs/format.md)."""
        if not self._aad_v2:
            return key
        return _AAD_V2.pack(AAD_V2_MAGIC, flags & ~rec.BATCH_FLAGS, seq, expiry_ms) + key

    def seal(self, key: bytes, value: bytes, flags: int, seq: int, expiry_ms: int
             ) -> tuple[bytes, int]:
        """Encrypt ``value`` (from :meth:`compress`) for the record it will be written in.

        Returns (stored value, flags with ENCRYPTED); unchanged without an encryption key.
        ``flags`` may carry batch bits: they are left out of the associated data, since
        compaction clears them when it copies a record.
        """
        if self._cipher is None:
            return value, flags
        flags |= rec.ENCRYPTED
        return self._cipher.seal(self.aad(key, flags, seq, expiry_ms), value), flags

    def unseal(self, key: bytes, flags: int, seq: int, expiry_ms: int, stored: bytes
               ) -> tuple[bytes, int]:
        """Undo :meth:`seal`: return (the value, maybe compressed; flags without ENCRYPTED).

        Raises :class:`IntegrityError` for a plain value in a strict encrypted store, and
        :class:`EncryptionError` for a sealed one that does not open.
        """
        if flags & rec.ENCRYPTED:
            if self._cipher is None:
                raise EncryptionError(f"key {key!r}: value is encrypted; open the store with "
                                      "its encryption_key")
            stored = self._cipher.open(self.aad(key, flags, seq, expiry_ms), stored,
                                       f"key {key!r}")
            return stored, flags & ~rec.ENCRYPTED
        if self.refuses_plain and not flags & rec.TOMBSTONE:
            raise IntegrityError(f"key {key!r}: record at seq {seq} is not encrypted, in a "
                                 "store where every value is: refused (tampering)")
        return stored, flags

    def decode(self, key: bytes, flags: int, seq: int, expiry_ms: int, stored: bytes) -> bytes:
        """The user's value of a record (client flags, if any, removed)."""
        return self.decode_item(key, flags, seq, expiry_ms, stored)[0]

    def decode_item(self, key: bytes, flags: int, seq: int, expiry_ms: int, stored: bytes
                    ) -> tuple[bytes, int]:
        """The user's value of a record and its memcached client flags (0 when none)."""
        value = self._decode_plaintext(key, flags, seq, expiry_ms, stored)
        return split_client_flags(key, flags, value)

    def _decode_plaintext(self, key: bytes, flags: int, seq: int, expiry_ms: int,
                          stored: bytes) -> bytes:
        stored, flags = self.unseal(key, flags, seq, expiry_ms, stored)
        if flags & rec.COMPRESSED:
            try:
                params = zstandard.get_frame_parameters(stored)
                # zstandard ignores max_output_size when the frame declares its size, so
                # check the declaration: a damaged frame must not make us allocate gigabytes.
                if params.content_size > rec.MAX_VALUE_SIZE:
                    raise Error(f"key {key!r}: compressed value declares {params.content_size} "
                                "bytes, over the value size limit")
                return self._decompressor(params.dict_id).decompress(
                    stored, max_output_size=rec.MAX_VALUE_SIZE)
            except zstandard.ZstdError as exc:
                raise Error(f"key {key!r}: compressed value does not decompress: {exc}") from None
        return stored


def join_client_flags(value: bytes, client_flags: int) -> tuple[bytes, int]:
    """Return (the plaintext to store, its record flags) for a value with memcached client
    flags: unchanged and 0 for client flags 0, else the value with its flags appended and
    ``CLIENT_FLAGS``."""
    if not client_flags:
        return value, 0
    return value + _CLIENT_FLAGS.pack(client_flags), rec.CLIENT_FLAGS


def split_client_flags(key: bytes, flags: int, plaintext: bytes) -> tuple[bytes, int]:
    """Undo :func:`join_client_flags` on a record's decoded plaintext: (value, client flags)."""
    if not flags & rec.CLIENT_FLAGS:
        return plaintext, 0
    if len(plaintext) < CLIENT_FLAGS_SIZE:
        raise CorruptionError(f"key {key!r}: value marked with client flags is only "
                              f"{len(plaintext)} bytes long")
    cut = len(plaintext) - CLIENT_FLAGS_SIZE
    return plaintext[:cut], _CLIENT_FLAGS.unpack_from(plaintext, cut)[0]


def _decode_dict(blob: bytes, name: str, cipher: _Cipher | None
                 ) -> zstandard.ZstdCompressionDict:
    """Decode a dictionary file; raise ValueError saying what is wrong with it."""
    if len(blob) < _DICT_HEADER.size:
        raise ValueError(f"{len(blob)} bytes, shorter than its {_DICT_HEADER.size}-byte header")
    magic, dict_id, crc = _DICT_HEADER.unpack_from(blob)
    raw = blob[_DICT_HEADER.size :]
    if magic == DICT_MAGIC_SEALED:
        if cipher is None:
            raise ValueError("it is sealed and the store was opened without an encryption key")
        try:
            raw = cipher.open(name.encode(), raw, name)
        except EncryptionError:
            raise ValueError("it is sealed and does not open with this encryption key") from None
    elif magic != DICT_MAGIC:
        raise ValueError(f"wrong magic {magic!r}")
    if crc32c(raw) != crc:
        raise ValueError("its CRC does not match")
    try:
        d = zstandard.ZstdCompressionDict(raw)
        got = d.dict_id()
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd rejects it: {exc}") from None
    if got != dict_id:
        raise ValueError(f"it holds dictionary {got}, its header says {dict_id}")
    return d
