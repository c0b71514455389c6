"""The encryption key of an encrypted store, from a file or the environment -- never argv.

A command-line argument is visible to every user of the machine (``ps``, ``/proc/*/cmdline``),
so there is no option that takes the key itself. In order of precedence:

1. ``--key-file PATH`` (every command, ``bitkv serve`` too), or ``BITKV_KEY_FILE=PATH``;
2. ``BITKV_ENCRYPTION_KEY``: the key as 64 hex digits (the environment of a process is
   readable only by its user and root, in ``/proc/PID/environ``).

A key file holds the 32-byte key either raw (exactly 32 bytes) or as 64 hex digits (spaces
and a trailing newline allowed), as ``openssl rand -hex 32 > key`` or ``bitkv keygen`` write
it. Like ssh with a private key, bitkv **refuses** a key file that its group or others may
read, write or execute (any of the mode bits 0o077): fix it with ``chmod 600 FILE``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from .errors import EXIT_USAGE, CliError

KEY_FILE_ENV = "BITKV_KEY_FILE"
KEY_ENV = "BITKV_ENCRYPTION_KEY"
KEY_SIZE = 32
_MAX_KEY_FILE = 4096  # a key file is 32 or ~65 bytes; anything far larger is the wrong file


def parse_hex_key(text: str, where: str) -> bytes:
    """The 32-byte key written as 64 hex digits in ``text`` (whitespace ignored); ``where``
    names the source in the error."""
    digits = "".join(text.split())
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise CliError(f"{where} is not a key: expected 64 hex digits (a 32-byte AES-256 key)",
                       EXIT_USAGE) from None
    if len(key) != KEY_SIZE:
        raise CliError(f"{where} holds {len(key)} bytes of hex; an encryption key is 32 bytes "
                       "(64 hex digits)", EXIT_USAGE)
    return key


def read_key_file(path: str) -> bytes:
    """Read the key in ``path``; refuse a file that is not regular, or that group or others
    have any permission on (the check is on the opened file, so a swap after it is moot)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CliError(f"cannot read key file {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CliError(f"key file {path} is not a regular file", EXIT_USAGE)
        if st.st_mode & 0o077:
            raise CliError(
                f"key file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): refused, as ssh refuses such private keys; "
                f"run: chmod 600 {path}", EXIT_USAGE)
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) == KEY_SIZE:
        return data  # raw key bytes (e.g. head -c 32 /dev/urandom)
    if len(data) > _MAX_KEY_FILE:
        raise CliError(f"key file {path} is too large to be a key", EXIT_USAGE)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"key file {path} is not a key: expected exactly 32 raw bytes or 64 hex "
                       f"digits, found {len(data)} bytes", EXIT_USAGE) from None
    return parse_hex_key(text, f"key file {path}")


def load_key(key_file: str | None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The encryption key the user gave, or None: ``key_file`` (the option, else
    ``BITKV_KEY_FILE``), else ``BITKV_ENCRYPTION_KEY``. An empty variable counts as unset."""
    env = os.environ if environ is None else environ
    path = key_file or env.get(KEY_FILE_ENV) or None
    if path:
        return read_key_file(path)
    text = env.get(KEY_ENV)
    if text:
        return parse_hex_key(text, f"${KEY_ENV}")
    return None


def write_key_file(path: str, key: bytes) -> None:
    """Create ``path`` (never overwriting) with ``key`` as hex and a newline, mode 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; bitkv keygen never overwrites a key (a lost key is a "
                       "lost store)", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
