"""Value encodings: zstandard compression and AES-256-GCM encryption at rest.

Encoding order is compress, then encrypt (ciphertext does not compress). Each record says in
its flags which encodings apply, so one store may mix plain, compressed and encrypted records.

Encryption: each value is sealed with a fresh random 96-bit nonce; the record's key is the
associated data, so a sealed value copied under another key fails to open. Keys, value sizes,
sequence numbers and expiry times stay visible on disk (see docs/format.md).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
from collections.abc import Iterable

import zstandard

from . import record as rec
from .crc import crc32c
from .errors import EncryptionError, Error
from .fileio import DEFAULT_FILEIO, FileIO

DICT_PREFIX = "zstd-"
DICT_SUFFIX = ".dict"
KEYCHECK_NAME = "ENCRYPTION"
KEYCHECK_MAGIC = b"BITKVENC"
NONCE_SIZE = 12
TAG_SIZE = 16
DEFAULT_COMPRESSION_MIN_SIZE = 256
_KEYCHECK_PLAINTEXT = b"bitkv encryption key check v1"


def dict_name(dict_id: int) -> str:
    return f"{DICT_PREFIX}{dict_id:010d}{DICT_SUFFIX}"


def is_dict_name(name: str) -> bool:
    stem = name[len(DICT_PREFIX) : -len(DICT_SUFFIX)]
    return name.startswith(DICT_PREFIX) and name.endswith(DICT_SUFFIX) and stem.isdigit()


class _Cipher:
    def __init__(self, key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - depends on the environment
            raise Error("encryption needs the 'cryptography' package: "
                        "pip install 'bitkv[crypto]'") from None
        self._aead = AESGCM(key)

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, key)

    def open(self, key: bytes, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise EncryptionError(f"key {key!r}: sealed value is too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], key)
        except InvalidTag:
            raise EncryptionError(
                f"key {key!r}: value does not open with this encryption key "
                "(wrong key, or the value was tampered with or moved)") from None


def check_encryption_key(directory: str, key: bytes | None, *, create: bool,
                         io: FileIO = DEFAULT_FILEIO) -> None:
    """Verify ``key`` against the store's key-check file, creating it when allowed.

    A store that has a key-check file refuses to open without the right key; a store opened
    with a key for the first time gets one (written atomically, fsynced).
    """
    path = os.path.join(directory, KEYCHECK_NAME)
    exists = os.path.exists(path)
    if key is not None:
        key = validate_key(key)  # before anything is written with it
    if key is None:
        if exists:
            raise EncryptionError(f"store {directory!r} is encrypted: open it with its "
                                  "encryption_key")
        return
    cipher = _Cipher(key)
    if exists:
        with open(path, "rb") as fh:
            blob = fh.read()
        if not blob.startswith(KEYCHECK_MAGIC):
            raise EncryptionError(f"{path}: not a bitkv key-check file")
        try:
            plain = cipher.open(KEYCHECK_MAGIC, blob[len(KEYCHECK_MAGIC):])
        except EncryptionError:
            raise EncryptionError(f"wrong encryption key for store {directory!r}") from None
        if plain != _KEYCHECK_PLAINTEXT:
            raise EncryptionError(f"wrong encryption key for store {directory!r}")
        return
    if not create:
        return
    blob = KEYCHECK_MAGIC + cipher.seal(KEYCHECK_MAGIC, _KEYCHECK_PLAINTEXT)
    io.replace_file(directory, KEYCHECK_NAME, blob)


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
                 io: FileIO = DEFAULT_FILEIO) -> None:
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
        self._local = threading.local()  # zstd contexts are not thread-safe
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._active_dict: zstandard.ZstdCompressionDict | None = None
        self._load_dicts()

    @property
    def active(self) -> bool:
        return self.compression is not None or self._cipher is not None

    # -- dictionaries ------------------------------------------------------------------------

    def _load_dicts(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.directory) if is_dict_name(n))
        except OSError:
            return
        for name in names:  # ids grow in training order, so the last is the newest
            with open(os.path.join(self.directory, name), "rb") as fh:
                blob = fh.read()
            d = _decode_dict(blob, name, self._cipher)
            if d is not None:
                self._dicts[d.dict_id()] = d
                self._active_dict = d  # the newest trained dictionary compresses new values

    def train(self, samples: Iterable[bytes], dict_size: int = 16 * 1024) -> int:
        """Train a dictionary from ``samples``, store it durably, use it from now on."""
        data = [s for s in samples if s]
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
                    raise Error(f"value was compressed with zstd dictionary {dict_id}, "
                                f"whose file {dict_name(dict_id)} is missing from the store")
            d = cache[dict_id] = zstandard.ZstdDecompressor(dict_data=dict_data)
        return d

    # -- values ------------------------------------------------------------------------------

    def encode(self, key: bytes, value: bytes) -> tuple[bytes, int]:
        flags = 0
        if self.compression is not None and len(value) >= self.compression_min_size:
            packed = self._compressor().compress(value)
            if len(packed) < len(value):
                value = packed
                flags |= rec.COMPRESSED
        if self._cipher is not None:
            value = self._cipher.seal(key, value)
            flags |= rec.ENCRYPTED
        return value, flags

    def decode(self, key: bytes, flags: int, stored: bytes) -> bytes:
        if flags & rec.ENCRYPTED:
            if self._cipher is None:
                raise EncryptionError(f"key {key!r}: value is encrypted; open the store with "
                                      "its encryption_key")
            stored = self._cipher.open(key, stored)
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


def _decode_dict(blob: bytes, name: str, cipher: _Cipher | None
                 ) -> zstandard.ZstdCompressionDict | None:
    if len(blob) < _DICT_HEADER.size:
        return None
    magic, dict_id, crc = _DICT_HEADER.unpack_from(blob)
    raw = blob[_DICT_HEADER.size :]
    if magic == DICT_MAGIC_SEALED:
        if cipher is None:
            return None
        try:
            raw = cipher.open(name.encode(), raw)
        except EncryptionError:
            return None
    elif magic != DICT_MAGIC:
        return None
    if crc32c(raw) != crc:
        return None
    d = zstandard.ZstdCompressionDict(raw)
    return d if d.dict_id() == dict_id else None
