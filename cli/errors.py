"""Exit statuses and the one-line error every user mistake turns into."""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_NOT_FOUND = 1   # key not found, `exists` false, damage found, crash test violations
EXIT_USAGE = 2       # bad arguments: unknown option, bad hex, bad TTL, bad import line, key file
EXIT_STORE = 3       # no store there, not a store, newer format, encrypted store without its key
EXIT_LOCKED = 4      # another process holds the store open for writing
EXIT_DATA = 5        # damaged data read, I/O error, other store errors
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\b
Exit status:
  0  success
  1  key not found (get, ttl, expire, persist, delete), `exists` is false,
     `check` found damage, `crashtest` found violations
  2  usage error: bad option or argument, bad hex key, bad TTL,
     unreadable import line or key list, bad or unprotected key file,
     a write in a read-only shell, crash harness not installed
  3  no store at the path (read commands never create one), the path is
     not a bitkv store, newer on-disk format, or an encrypted store
     without its key (or with a wrong one)
  4  the store is locked for writing by another process
  5  damaged data, an I/O error, or another store error
"""


class CliError(click.ClickException):
    """A user-facing failure: printed as one line on stderr, then exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        # click's recent releases type exit_code as a ClassVar, yet click reads it from the
        # instance; one exception class serves every exit status, so it is set per instance.
        self.exit_code = exit_code  # type: ignore[misc, unused-ignore]

    def show(self, file: object = None) -> None:
        click.echo(f"bitkv: error: {self.format_message()}", err=True)


class NotFound(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND)

    def show(self, file: object = None) -> None:
        click.echo(f"bitkv: {self.format_message()}", err=True)
