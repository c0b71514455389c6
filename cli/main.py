"""The ``bitkv`` command: a click group with one subcommand per store operation.

Read commands (get, exists, ttl, scan, stats, export, backup) open the store read-only: they never
create one, and they work while another process holds the store open for writing. ``put`` and
``import`` create the store if it is missing; the other write commands do not.

Every verb reaches the store through :func:`open_store`, which opens it for one command, or
hands out the store ``bitkv shell`` opened once (``Settings.store``): so a verb is the same
code, with the same parsing and output, from the command line and from the shell
(:func:`run_verb` runs one against an open store).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

import bitkv
from bitkv.check import check as check_store
from bitkv.check import repair as repair_store

from .encoding import (
    LineError,
    check_value,
    decode_import_line,
    encode_line,
    parse_key,
    parse_key_bytes,
    parse_prefix,
    show_bytes,
    show_key,
    ttl_problem,
)
from .errors import (
    EXIT_CODES_HELP,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORE,
    EXIT_USAGE,
    CliError,
    NotFound,
)
from .keyfile import KEY_ENV, KEY_FILE_ENV, KEY_SIZE, load_key, write_key_file

DEFAULT_DIR = "bitkv-data"
IMPORT_BATCH_RECORDS = 1000
IMPORT_BATCH_BYTES = 4 * 2**20
CRASHTEST_MODES = ("kill", "whitebox", "powerloss", "faults", "powerfaults", "replication")


# -- plumbing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """What every verb is told: the store, how keys are written, and (in the shell) the store
    already open."""

    directory: str
    hex_mode: bool
    # From --key-file / $BITKV_KEY_FILE / $BITKV_ENCRYPTION_KEY (never from argv).
    encryption_key: bytes | None = dataclasses.field(default=None, repr=False)
    # bitkv shell: the store it opened, used by every verb instead of opening one.
    store: bitkv.Store | None = None
    # Inside the shell stdin holds the commands, so no verb may read data from it.
    in_shell: bool = False

    def key(self, text: str, what: str = "KEY") -> bytes:
        return parse_key(text, self.hex_mode, what)

    def show(self, key: bytes) -> str:
        return show_key(key, self.hex_mode)

    def stdin_for(self, what: str) -> None:
        """Refuse to read ``what`` from stdin inside the shell, where stdin is the commands."""
        if self.in_shell:
            raise CliError(f"in the shell, stdin holds the commands: give {what} another way "
                           "(an argument or a FILE)", EXIT_USAGE)


def _translate(exc: BaseException) -> CliError | None:
    """The one-line error (and exit status) for an expected failure, else None."""
    if isinstance(exc, bitkv.LockError):
        message = str(exc).split(";")[0]
        return CliError(f"{message}; try again when it has finished (read commands work "
                        "meanwhile)", EXIT_LOCKED)
    if isinstance(exc, bitkv.StoreNotFoundError):
        return CliError(f"{exc} (choose the store with --dir or BITKV_DIR)", EXIT_STORE)
    if isinstance(exc, bitkv.EncryptionError) and "open it with its encryption_key" in str(exc):
        # The library's wording names its keyword; at a shell, say how to give the key.
        return CliError(f"store is encrypted: give its key with --key-file FILE, "
                        f"${KEY_FILE_ENV} or ${KEY_ENV} ({exc})", EXIT_STORE)
    if isinstance(exc, (bitkv.NotAStoreError, bitkv.FormatVersionError, bitkv.EncryptionError)):
        return CliError(str(exc), EXIT_STORE)
    if isinstance(exc, bitkv.CorruptionError):
        return CliError(f"{exc} (run 'bitkv check')", EXIT_DATA)
    if isinstance(exc, bitkv.Error):
        return CliError(str(exc), EXIT_DATA)
    if isinstance(exc, OSError):
        return CliError(str(exc), EXIT_DATA)
    return None


_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())

# Commands imported only when used: `serve` loads the server (asyncio, ssl, the command
# table), which took `import bitkv_cli.main` from ~82 to ~107 ms, a cost every other command
# would pay at startup; `shell` (cmd, shlex, readline) builds on this module.
LAZY_COMMANDS = ("serve", "shell")


class BitkvGroup(click.Group):
    """Turns every expected failure into one line on stderr and a documented exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name == "serve":
            from .serve import serve  # lazily, see LAZY_COMMANDS

            return serve
        if command is None and cmd_name == "shell":
            from .shell import shell  # lazily, see LAZY_COMMANDS

            return shell
        return command

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        sys.exit(run_guarded(lambda: super(BitkvGroup, self).main(
            args, prog_name or "bitkv", complete_var, False, **extra)))


def run_guarded(run: Callable[[], Any]) -> int:
    """Call ``run`` (a click ``main`` in non-standalone mode) and return its exit status,
    every expected failure shown as one line on stderr: the one error policy of the command
    line and of the shell."""
    try:
        rv = run()
        return rv if isinstance(rv, int) else EXIT_OK
    except _NO_ARGS_IS_HELP as exc:  # `bitkv` alone: the help, as click prints it
        exc.show()
        return EXIT_USAGE
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"bitkv: error: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("bitkv: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = _translate(exc)
        if error is None:
            raise
        error.show()
        return error.exit_code


def run_verb(settings: Settings, argv: list[str]) -> int:
    """Run one verb (``argv[0]``, e.g. ``get``) with its arguments against ``settings`` (in
    the shell: its open store); return the exit status the one-shot command would have."""
    ctx = click.Context(cli, info_name="bitkv", obj=settings)
    command = cli.get_command(ctx, argv[0])
    if command is None:
        click.echo(f"bitkv: error: no such command {argv[0]!r} (try 'help')", err=True)
        return EXIT_USAGE
    return run_guarded(lambda: command.main(argv[1:], prog_name=argv[0],
                                            standalone_mode=False, obj=settings))


@contextmanager
def open_store(settings: Settings, *, write: bool, create: bool = False
               ) -> Iterator[bitkv.Store]:
    """Open the store: read-only (never creates, works beside a writer) or for writing; in
    the shell, the store it holds open (left open)."""
    if settings.store is not None:
        if write and settings.store.readonly:
            raise CliError("this shell opened the store read-only (--readonly): writes need "
                           "'bitkv shell' without it", EXIT_USAGE)
        # A read-only shell lives beside a writer: each command sees its writes so far, as
        # a one-shot command opened now would.
        settings.store.refresh()
        yield settings.store
        return
    db = open_db(settings, write=write, create=create)
    try:
        yield db
    finally:
        db.close()


def open_db(settings: Settings, *, write: bool, create: bool = False) -> bitkv.Store:
    """Open the store in ``settings.directory``: for writing (created only if ``create``) or
    read-only (never creates; works beside a writer). The caller closes it."""
    if write:
        return bitkv.open(settings.directory, create=create,
                          encryption_key=settings.encryption_key)
    return bitkv.open(settings.directory, readonly=True,
                      encryption_key=settings.encryption_key)


def read_keys(settings: Settings, source: str) -> list[bytes]:
    """The keys in file ``source`` ('-': stdin), one a line (a trailing \\n or \\r\\n ends
    it; blank lines are skipped; hex with --hex); every one checked before any is used."""
    if source == "-":
        settings.stdin_for("--keys-from")
        stream = _stdin_bytes()
        name = "stdin"
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror}", EXIT_USAGE) from None
        name = source
    keys = []
    try:
        for lineno, line in enumerate(stream, start=1):
            raw = line.removesuffix(b"\n").removesuffix(b"\r")
            if not raw.strip():
                continue
            keys.append(parse_key_bytes(raw, settings.hex_mode, f"{name} line {lineno}: key"))
    finally:
        if source != "-":
            stream.close()
    return keys


def _missing(settings: Settings, keys: list[bytes]) -> NotFound:
    shown = ", ".join(settings.show(k) for k in keys[:10])
    more = f" (and {len(keys) - 10} more)" if len(keys) > 10 else ""
    return NotFound(f"key not found: {shown}{more}")


def _interactive() -> bool:
    """Progress bars only when a person is watching: stdout and stderr are terminals."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A click progress bar on stderr, created at the first report (when the total is known)
    and only when interactive."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = _interactive() if enabled is None else enabled
        self._bar: Any = None
        self._pos = 0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=max(1, total or 1), label=self.label,
                                          file=sys.stderr)
            self._bar.__enter__()
        step = done - self._pos
        if step > 0:
            self._bar.update(step)
            self._pos = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _write_stdout(data: bytes) -> None:
    click.echo(data, nl=False)  # bytes go to the binary buffer of stdout, unchanged


class _LineWriter:
    """Buffers output lines and writes them to stdout in large chunks (one flush per chunk,
    not per line: listing a million keys stays fast)."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def line(self, text: str) -> None:
        data = text.encode("utf-8") + b"\n"
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            _write_stdout(b"".join(self._parts))
            self._parts = []
            self._size = 0

    def __enter__(self) -> _LineWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.flush()


def _stdin_bytes() -> Any:
    return getattr(sys.stdin, "buffer", sys.stdin)


def _print_mapping(data: Mapping[str, Any], indent: str = "") -> None:
    width = max((len(str(k)) for k in data), default=0)
    for k, v in data.items():
        if isinstance(v, Mapping):
            click.echo(f"{indent}{k}:")
            _print_mapping(v, indent + "  ")
        else:
            click.echo(f"{indent}{str(k) + ':':<{width + 1}} {v}")


if TYPE_CHECKING:
    # click's ParamType is generic over the converted value in recent releases, not in 8.1
    # (which pyproject allows), so it is subscripted for the type checker only.
    _SecondsParam = click.ParamType[float]
else:
    _SecondsParam = click.ParamType


class TTL(_SecondsParam):
    """A TTL in seconds: a positive, finite number, at most 100 years."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        problem = ttl_problem(number)
        if problem:
            self.fail(f"{value!r} {problem}", param, ctx)
        return number


# -- the group --------------------------------------------------------------------------------


@click.group(cls=BitkvGroup, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dir", "directory", metavar="PATH", envvar="BITKV_DIR", default=None,
              help=f"Store directory. Default: $BITKV_DIR, else ./{DEFAULT_DIR}.")
@click.option("--hex", "hex_mode", is_flag=True,
              help="Keys (and --prefix) are given and printed as hex, for binary keys.")
@click.option("--key-file", metavar="FILE", default=None,
              help=f"Encryption key of an encrypted store: 32 raw bytes or 64 hex digits, "
                   f"mode 0600. Default: ${KEY_FILE_ENV}, else the hex key in ${KEY_ENV}. "
                   "Never on the command line itself (ps shows it).")
@click.version_option(bitkv.__version__, "-V", "--version", prog_name="bitkv")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, hex_mode: bool, key_file: str | None
        ) -> None:
    """bitkv: a persistent, log-structured key-value store.

    \b
    Examples:
      bitkv put greeting "hello, world" && bitkv get greeting
      echo -n secret | bitkv put token --ttl 3600
      bitkv --dir /var/lib/sessions scan --prefix session: --limit 10
      bitkv export > backup.jsonl && bitkv --dir copy import backup.jsonl
      bitkv --dir /var/lib/app backup /backups/app-2026-12-04
      bitkv shell
    """
    if ctx.invoked_subcommand == "keygen":
        key = None  # keygen makes a key; a bad one configured must not stop it
    else:
        key = load_key(key_file)
    ctx.obj = Settings(directory or DEFAULT_DIR, hex_mode, encryption_key=key)
    serve_defaults: dict[str, Any] = {}
    if directory:  # `bitkv --dir X serve` (or BITKV_DIR) serves X unless serve --dir says else
        serve_defaults["directory"] = directory
    if key_file:  # likewise `bitkv --key-file K serve`
        serve_defaults["key_file"] = key_file
    if serve_defaults:
        ctx.default_map = {**(ctx.default_map or {}), "serve": serve_defaults}


# -- keys and values --------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option("--ttl", type=TTL(), default=None, help="Expire the key after SECONDS.")
@click.pass_obj
def put(settings: Settings, key: str, value: str | None, ttl: float | None) -> None:
    """Store VALUE under KEY (creating the store if needed).

    VALUE is taken from the argument, or read from stdin (binary-safe) when it is '-' or
    absent. Put '--' before a VALUE that starts with '-'.

    \b
    Examples:
      bitkv put greeting "hello, world"
      bitkv put session:42 '{"user": 42}' --ttl 3600
      bitkv put avatar < avatar.png
    """
    k = settings.key(key)
    if value is None or value == "-":
        settings.stdin_for("VALUE")
        stdin = _stdin_bytes()
        if value is None and stdin.isatty():
            raise CliError("no VALUE given and stdin is a terminal: pass VALUE, pipe it in, "
                           "or use '-' to type it (end with Ctrl-D)", EXIT_USAGE)
        data = stdin.read()
    else:
        data = os.fsencode(value)
    check_value(data)
    with open_store(settings, write=True, create=True) as db:
        db.put(k, data, ttl=ttl)


@cli.command()
@click.argument("keys", nargs=-1, metavar="KEY...")
@click.option("--keys-from", metavar="FILE", default=None,
              help="Also the keys in FILE, one a line ('-': stdin; hex with --hex).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines, one {\"key\", \"value\"} object per key found (exact bytes).")
@click.pass_obj
def get(settings: Settings, keys: tuple[str, ...], keys_from: str | None,
        as_json: bool) -> None:
    """Print the value of each KEY.

    With one KEY: the value exactly as stored (binary-safe); a newline is added only when
    stdout is a terminal (or in the shell) and the value does not end in one. With several
    (or --keys-from): one line per key found, in the order given, KEY, a tab, the value,
    escaped as 'scan --values' prints them; --json for exact bytes. Missing or expired keys
    are named on stderr and the exit status is 1 (after the others are printed).

    \b
    Examples:
      bitkv get greeting
      bitkv get user:1 user:2 --json
      bitkv scan --prefix tmp: | bitkv get --keys-from -
    """
    ks = [settings.key(k) for k in keys]
    if keys_from is not None:
        ks += read_keys(settings, keys_from)
    elif not ks:
        raise CliError("give at least one KEY, or --keys-from FILE", EXIT_USAGE)
    single = len(ks) == 1 and keys_from is None and not as_json
    missing = []
    with open_store(settings, write=False) as db, _LineWriter() as out:
        for k in ks:
            value = db.get(k)
            if value is None:
                missing.append(k)
            elif single:
                if (settings.in_shell or _interactive()) and not value.endswith(b"\n"):
                    value += b"\n"
                _write_stdout(value)
            elif as_json:
                out.line(encode_line(k, value, None, hex_keys=settings.hex_mode,
                                     with_ttl=False))
            else:
                out.line(f"{settings.show(k)}\t{show_bytes(value)}")
    if missing:
        raise _missing(settings, missing)


@cli.command()
@click.argument("keys", nargs=-1, metavar="KEY...")
@click.option("--keys-from", metavar="FILE", default=None,
              help="Also the keys in FILE, one a line ('-': stdin; hex with --hex).")
@click.option("-f", "--force", is_flag=True, help="Do not fail when a key does not exist.")
@click.pass_obj
def delete(settings: Settings, keys: tuple[str, ...], keys_from: str | None,
           force: bool) -> None:
    """Delete one or more keys.

    Every key is checked before any is deleted. Exits 1 (after deleting the others) if a
    key did not exist, unless --force.

    \b
    Examples:
      bitkv delete session:41 session:42
      bitkv scan --prefix tmp: | bitkv delete --keys-from -
    """
    ks = [settings.key(k) for k in keys]
    if keys_from is not None:
        ks += read_keys(settings, keys_from)
    elif not ks:
        raise CliError("give at least one KEY, or --keys-from FILE", EXIT_USAGE)
    missing = []
    with open_store(settings, write=True) as db:
        for k in ks:
            if not db.delete(k):
                missing.append(k)
    if missing and not force:
        raise _missing(settings, missing)


@cli.command()
@click.argument("key")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit status.")
@click.pass_obj
def exists(settings: Settings, key: str, quiet: bool) -> None:
    """Exit 0 and print 'yes' if KEY exists (and has not expired), else exit 1 ('no').

    \b
    Example:
      bitkv exists -q session:42 && echo logged in
    """
    k = settings.key(key)
    with open_store(settings, write=False) as db:
        found = k in db
    if not quiet:
        click.echo("yes" if found else "no")
    if not found:
        click.get_current_context().exit(EXIT_NOT_FOUND)


@cli.command()
@click.argument("key")
@click.pass_obj
def ttl(settings: Settings, key: str) -> None:
    """Print the seconds KEY has left, or 'none' if it never expires.

    \b
    Example:
      bitkv ttl session:42
    """
    k = settings.key(key)
    with open_store(settings, write=False) as db:
        try:
            left = db.ttl(k)
        except KeyError:
            raise NotFound(f"key not found: {settings.show(k)}") from None
    click.echo("none" if left is None else f"{left:.3f}")


@cli.command()
@click.argument("key")
@click.argument("seconds", type=TTL())
@click.pass_obj
def expire(settings: Settings, key: str, seconds: float) -> None:
    """Make KEY expire SECONDS from now (replacing any TTL it had).

    \b
    Example:
      bitkv expire session:42 600
    """
    k = settings.key(key)
    with open_store(settings, write=True) as db:
        done = db.expire(k, seconds)
    if not done:
        raise NotFound(f"key not found: {settings.show(k)}")


@cli.command()
@click.argument("key")
@click.pass_obj
def persist(settings: Settings, key: str) -> None:
    """Remove the TTL of KEY so that it never expires.

    \b
    Example:
      bitkv persist session:42
    """
    k = settings.key(key)
    with open_store(settings, write=True) as db:
        if k not in db:
            raise NotFound(f"key not found: {settings.show(k)}")
        had_ttl = db.persist(k)
    if not had_ttl:
        click.echo(f"bitkv: {settings.show(k)} had no TTL", err=True)


@cli.command()
@click.option("--prefix", "-p", metavar="P", default=None, help="Only keys starting with P.")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N keys.")
@click.option("--values", "with_values", is_flag=True, help="Print each value after its key.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines, one {\"key\", \"value\"} object per key (exact bytes).")
@click.pass_obj
def scan(settings: Settings, prefix: str | None, limit: int | None, with_values: bool,
         as_json: bool) -> None:
    """List keys in sorted (bytewise) order.

    Plain output is one key per line (with --values: key, a tab, the value), control bytes
    and invalid UTF-8 escaped as \\xNN; use --json or --hex for exact bytes.

    \b
    Examples:
      bitkv scan --prefix session: --limit 10
      bitkv scan --values --json | jq .
    """
    p = parse_prefix(prefix, settings.hex_mode)
    with open_store(settings, write=False) as db, _LineWriter() as out:
        keys = sorted(db.keys(prefix=p))
        shown = 0
        for k in keys:
            if limit is not None and shown >= limit:
                break
            value = None
            if with_values:
                value = db.get(k)
                if value is None:  # expired meanwhile
                    continue
            if as_json:
                line = encode_line(k, value, None, hex_keys=settings.hex_mode, with_ttl=False)
            elif with_values:
                assert value is not None
                line = f"{settings.show(k)}\t{show_bytes(value)}"
            else:
                line = settings.show(k)
            out.line(line)
            shown += 1


# -- maintenance ------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def compact(settings: Settings, as_json: bool) -> None:
    """Rewrite the store without overwritten, deleted or expired records.

    Shows a progress bar when run in a terminal, then the summary.

    \b
    Example:
      bitkv compact
    """
    with open_store(settings, write=True) as db, Progress("compacting") as progress:
        summary = db.compact(progress=progress)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    shown = dict(summary)
    for name in ("bytes_in", "bytes_out", "bytes_reclaimed"):
        if isinstance(shown.get(name), int):
            shown[name] = f"{shown[name]} ({_human(shown[name])})"
    if isinstance(shown.get("seconds"), float):
        shown["seconds"] = f"{shown['seconds']:.3f}"
    _print_mapping(shown)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print every counter as JSON.")
@click.pass_obj
def stats(settings: Settings, as_json: bool) -> None:
    """Show keys, segments, live/dead/disk bytes, fragmentation and the last compaction.

    Fragmentation is dead / (live + dead) bytes: the share compaction would reclaim.

    \b
    Example:
      bitkv stats --json
    """
    with open_store(settings, write=False) as db:
        data = dict(db.stats())
        # The store's recorded setting (SETTINGS), which every writer follows.
        data["compression"] = {"algorithm": db.compression.algorithm or "none",
                               "min_size": db.compression.min_size}
    live = int(data.get("live_bytes") or 0)
    dead = int(data.get("dead_bytes") or 0)
    data["fragmentation"] = round(dead / (live + dead), 4) if live + dead else 0.0
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    last = data.get("last_compaction")
    if isinstance(last, Mapping):
        last_text = ", ".join(f"{k}={v}" for k, v in last.items())
    else:
        last_text = "none recorded"
    rows = [
        ("keys", f"{data.get('keys')}"),
        ("segments", f"{data.get('segments')}"),
        ("live bytes", f"{live} ({_human(live)})"),
        ("dead bytes", f"{dead} ({_human(dead)})"),
        ("disk bytes", f"{data.get('disk_bytes')} ({_human(int(data.get('disk_bytes') or 0))})"),
        ("fragmentation", f"{data['fragmentation'] * 100:.1f} %"),
        ("compression", "none" if db.compression.algorithm is None else
         f"{db.compression.algorithm} (values of {db.compression.min_size} bytes or more)"),
        ("last compaction", last_text),
    ]
    bound = int(data.get("max_bytes") or 0)
    if bound:  # cache mode (docs/cache.md)
        rows.insert(5, ("cache bound", f"{bound} ({_human(bound)}) of live bytes, eviction "
                        f"{data.get('eviction')}"))
    recovered = data.get("recovery")
    if isinstance(recovered, Mapping) and (recovered.get("corrupt_bytes")
                                           or recovered.get("truncated_bytes")):
        rows.append(("damage seen", f"{recovered.get('corrupt_bytes', 0)} corrupt bytes, "
                     f"{recovered.get('truncated_bytes', 0)} torn bytes (run 'bitkv check')"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


def _print_check(report: bitkv.CheckReport) -> None:
    click.echo(f"store:     {report.path}")
    click.echo(f"segments:  {report.segments} ({_human(report.bytes_checked)} checked), "
               f"{report.records} intact records")
    click.echo(f"hints:     {report.hints_ok} ok, {report.hints_bad} bad")
    click.echo(f"damage:    {report.corrupt_bytes} corrupt bytes in {report.corrupt_regions} "
               f"region(s), {report.damaged_segment_headers} damaged segment header(s), "
               f"{report.incomplete_batch_records} record(s) of uncommitted batches")
    note = " (normal after a crash; the next write open truncates it)" \
        if report.torn_tail_bytes else ""
    click.echo(f"torn tail: {report.torn_tail_bytes} bytes{note}")
    for issue in report.issues:
        click.echo(f"  {issue}")


@cli.command("check")
@click.option("--repair", "do_repair", is_flag=True,
              help="If damaged, salvage every intact record into a clean store; the old "
                   "files are moved (never deleted) into damaged-<time>/ inside the store.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def check_cmd(settings: Settings, do_repair: bool, as_json: bool) -> None:
    """Verify every record, segment header and hint file; report damage by file and offset.

    Read-only without --repair (works beside a running writer). Exits 0 if the store is
    healthy, 1 if it is damaged; with --repair, 0 once the repaired store checks healthy.
    A torn tail after a crash is reported but is not damage.

    \b
    Examples:
      bitkv check
      bitkv check --repair
    """
    report = check_store(settings.directory)
    repaired = None
    if do_repair and not report.healthy:
        repaired = repair_store(settings.directory)
    if as_json:
        out = report.as_dict()
        if repaired is not None:
            out = {"check": out, "repair": repaired.as_dict()}
        click.echo(json.dumps(out, indent=2))
    else:
        _print_check(report)
        if repaired is not None:
            click.echo(f"repaired:  {repaired.keys_salvaged} keys salvaged into "
                       f"{repaired.segments_written} new segment(s) "
                       f"({_human(repaired.bytes_written)})")
            click.echo(f"moved:     {len(repaired.moved_aside)} old file(s) to "
                       f"{repaired.damaged_dir}")
        final = repaired.after if repaired is not None else report
        if final is None or not final.healthy:
            click.echo("result:    DAMAGED" + ("" if do_repair else
                                               " (run 'bitkv check --repair' to salvage)"))
        elif repaired is not None:
            click.echo("result:    repaired, healthy")
        else:
            click.echo("result:    healthy")
    final = repaired.after if repaired is not None else report
    if final is None or not final.healthy:
        click.get_current_context().exit(EXIT_NOT_FOUND)


# -- export / import --------------------------------------------------------------------------


@cli.command()
@click.option("--prefix", "-p", metavar="P", default=None, help="Only keys starting with P.")
@click.option("--absolute-expiry", is_flag=True,
              help='Write each expiry as "expires_at_ms" (absolute Unix milliseconds) '
                   'instead of "ttl" (seconds left), so a later import keeps it exactly.')
@click.pass_obj
def export(settings: Settings, prefix: str | None, absolute_expiry: bool) -> None:
    """Write every live key as JSON Lines to stdout, sorted by key.

    \b
    Each line: {"key": ..., "value": ..., "ttl": seconds-left-or-null}; with
    --absolute-expiry, "expires_at_ms": unix-ms-or-null instead of "ttl" (a "ttl"
    counts from the import, so importing an old export extends every TTL).
    Bytes that are not UTF-8 are base64, marked "key_encoding"/"value_encoding":
    "base64" (with --hex, keys are hex: "key_encoding": "hex").

    \b
    Example:
      bitkv export --prefix session: > sessions.jsonl
      bitkv export --absolute-expiry > dump.jsonl
    """
    p = parse_prefix(prefix, settings.hex_mode)
    unreadable = 0
    with open_store(settings, write=False) as db, _LineWriter() as out:
        for k in sorted(db.keys(prefix=p)):
            try:
                if absolute_expiry:
                    exact = db.get_with_expiry(k)
                    if exact is not None:
                        out.line(encode_line(k, exact[0], None, hex_keys=settings.hex_mode,
                                             expires_at_ms=exact[1]))
                    continue  # None: expired or deleted meanwhile
                got = db.get_with_ttl(k)
            except bitkv.CorruptionError as exc:
                click.echo(f"bitkv: skipped {settings.show(k)}: {exc}", err=True)
                unreadable += 1
                continue
            if got is None:  # expired meanwhile
                continue
            value, left = got
            out.line(encode_line(k, value, left, hex_keys=settings.hex_mode))
    if unreadable:
        raise CliError(f"{unreadable} key(s) could not be read (damaged); run 'bitkv check'",
                       EXIT_DATA)


ImportRecord = tuple[bytes, bytes, float | None, int | None]  # key, value, ttl, expires_at_ms


@cli.command("import")
@click.argument("file", metavar="FILE")
@click.pass_obj
def import_cmd(settings: Settings, file: str) -> None:
    """Load JSON Lines (as written by export) from FILE, or stdin if FILE is '-'.

    Creates the store if needed; an existing key is overwritten. Records are written in
    atomic batches. A line that cannot be used stops the import with its line number;
    the lines before it stay imported. A line with "expires_at_ms" (export
    --absolute-expiry) keeps that expiry; one already past it is skipped and counted.

    \b
    Example:
      bitkv export > backup.jsonl && bitkv --dir restored import backup.jsonl
    """
    if file == "-":
        settings.stdin_for("the import")
        stream = _stdin_bytes()
        total = None
        name = "stdin"
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}", EXIT_USAGE) from None
        total = os.fstat(stream.fileno()).st_size if os.path.isfile(file) else None
        name = file
    imported = 0
    expired = 0
    try:
        with open_store(settings, write=True, create=True) as db, \
                Progress("importing", enabled=_interactive() and bool(total)) as progress:
            pending: list[ImportRecord] = []
            pending_bytes = 0
            read = 0
            for lineno, line in enumerate(stream, start=1):
                read += len(line)
                try:
                    parsed = decode_import_line(line)
                except LineError as exc:
                    imported += _write_batch(db, pending)
                    raise CliError(f"{name} line {lineno}: {exc}; {imported} record(s) "
                                   "before it were imported", EXIT_USAGE) from None
                if parsed is None:
                    continue
                expires_at_ms = parsed[3]
                if expires_at_ms is not None and expires_at_ms <= int(time.time() * 1000):
                    expired += 1  # already expired: writing it would only add a dead record
                    continue
                pending.append(parsed)
                pending_bytes += len(parsed[0]) + len(parsed[1])
                if len(pending) >= IMPORT_BATCH_RECORDS or pending_bytes >= IMPORT_BATCH_BYTES:
                    imported += _write_batch(db, pending)
                    pending_bytes = 0
                    progress(read, total)
            imported += _write_batch(db, pending)
            progress(read, total)
    finally:
        if file != "-":
            stream.close()
    skipped = f", skipped {expired} already expired" if expired else ""
    click.echo(f"imported {imported} record(s){skipped}")


def _write_batch(db: bitkv.Store, pending: list[ImportRecord]) -> int:
    """Write and clear ``pending`` as one atomic batch."""
    n = len(pending)
    if not n:
        return 0
    with db.batch() as batch:
        for key, value, ttl, expires_at_ms in pending:
            if expires_at_ms is not None:
                batch.put(key, value, expires_at_ms=expires_at_ms)
            else:
                batch.put(key, value, ttl=ttl)
    pending.clear()
    return n


# -- backup -----------------------------------------------------------------------------------


@cli.command()
@click.argument("dest", metavar="DEST")
@click.option("--incremental", is_flag=True,
              help="DEST is an earlier backup of this store: copy only the segments it "
                   "lacks, drop those the store no longer has.")
@click.option("--no-link", "no_link", is_flag=True,
              help="Copy sealed segments even where they could be hard links (a link shares "
                   "its disk blocks with the store: no protection against losing that disk).")
@click.option("--verify", is_flag=True,
              help="Then run `bitkv check` on DEST; exit 1 if it is not healthy.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def backup(settings: Settings, dest: str, incremental: bool, no_link: bool, verify: bool,
           as_json: bool) -> None:
    """Copy the store, as it is now, into DEST: a complete store (hot and consistent).

    Works while another process writes to the store (it reads beside the writer). DEST
    must be new or empty, or, with --incremental, an earlier backup of this store. The
    backup holds every write that returned before it started; it opens with
    `bitkv --dir DEST ...` and passes `bitkv --dir DEST check`. An interrupted backup never
    looks complete. See docs/backup.md.

    \b
    Examples:
      bitkv --dir /var/lib/app backup /backups/app-2026-12-04
      bitkv --dir /var/lib/app backup --incremental /backups/app-latest
    """
    with open_store(settings, write=False) as db, Progress("backing up") as progress:
        report = db.backup(dest, incremental=incremental, link=not no_link, progress=progress)
    checked = check_store(dest) if verify else None
    if as_json:
        out = report.as_dict()
        if checked is not None:
            out["check"] = checked.as_dict()
        click.echo(json.dumps(out, indent=2))
    else:
        kept = f", {report.reused} kept, {report.removed} dropped" if incremental else ""
        click.echo(f"backup:   {report.destination} ({'incremental' if incremental else 'full'})")
        click.echo(f"segments: {report.segments} ({report.linked} linked, {report.copied} "
                   f"copied{kept}), {_human(report.bytes_copied)} copied")
        click.echo(f"holds:    every write up to seq {report.last_seq}")
        if report.linked:
            click.echo(f"note:     {report.linked} segment(s) are hard links, on the store's "
                       "disk; --no-link (or another file system) for an independent copy")
        if checked is not None:
            click.echo(f"check:    {'healthy' if checked.healthy else 'DAMAGED'}")
    if checked is not None and not checked.healthy:
        click.get_current_context().exit(EXIT_NOT_FOUND)


# -- keys -------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", metavar="FILE")
def keygen(file: str) -> None:
    """Write a new random encryption key to FILE (64 hex digits, mode 0600).

    FILE must not exist: a key is never overwritten (a lost key is a lost store). Use it
    with --key-file FILE or BITKV_KEY_FILE=FILE; the first writable open of a store with a
    key encrypts every value written from then on.

    \b
    Example:
      bitkv keygen ~/.config/bitkv/prod.key && bitkv --key-file ~/.config/bitkv/prod.key put a 1
    """
    import secrets

    write_key_file(file, secrets.token_bytes(KEY_SIZE))
    click.echo(f"wrote a new key to {file} (mode 0600); keep a copy: without it the store's "
               "values cannot be read", err=True)


# -- crash test -------------------------------------------------------------------------------


@cli.command()
@click.option("--dir", "directory", metavar="PATH", default=None,
              help="Scratch directory for the test stores (new or empty). Default: a new "
                   "temporary directory, removed if the test passes. Never the store of "
                   "the global --dir.")
@click.option("--cycles", type=click.IntRange(min=1), default=20, show_default=True,
              help="Crash/recover cycles to run.")
@click.option("--mode", type=click.Choice(CRASHTEST_MODES), default="kill", show_default=True,
              help="kill: SIGKILL a writer process; whitebox: die at engine kill points; "
                   "powerloss: drop writes that were not fsynced; faults: fail file "
                   "operations (EIO, ENOSPC, short writes) and damage segment and LOCK "
                   "files; powerfaults: powerloss with a failing fsync; replication: "
                   "SIGKILL a bitkv serve master and its replica under WAIT, check they "
                   "converge.")
@click.option("--seed", type=int, default=None, help="Random seed (to reproduce a run).")
@click.option("--sync", type=click.Choice(("always", "interval", "never")), default=None,
              help="Sync mode of the store under test (harness default: always).")
@click.option("--ops-per-cycle", type=click.IntRange(min=1), default=None, metavar="N",
              help="Operations between crashes (harness default).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def crashtest(directory: str | None, cycles: int, mode: str, seed: int | None,
              sync: str | None, ops_per_cycle: int | None, as_json: bool) -> None:
    """Crash a writer again and again and verify every acknowledged write survives.

    Exits 0 if no violation was found, 1 otherwise (printing the seed and the command that
    reproduces the run).

    \b
    Example:
      bitkv crashtest --cycles 50 --mode whitebox --seed 7

    --dir must be new, empty, or left by an earlier crash test (its content is deleted).
    """
    # Imported here, not at the top: the harness adds ~7 ms to every other command's start.
    from bitkv import crashtest as harness

    temporary = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="bitkv-crashtest-")
    extra: dict[str, Any] = {}
    if sync is not None:
        extra["sync"] = sync
    if ops_per_cycle is not None:
        extra["ops_per_cycle"] = ops_per_cycle
    try:
        with Progress(f"crashtest ({mode})") as progress:
            result = harness.run(directory, mode=mode, cycles=cycles, seed=seed,
                                 progress=progress, **extra)
    except (FileExistsError, NotADirectoryError) as exc:
        # The harness refuses a directory it did not make: it deletes what it finds there.
        raise CliError(f"crashtest --dir: {exc}", EXIT_USAGE) from None
    summary = dataclasses.asdict(result)
    violations = list(summary.get("violations") or [])
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        for name in ("cycles", "operations_acknowledged", "operations_verified", "seed"):
            if name in summary:
                click.echo(f"{name.replace('_', ' ')}: {summary[name]}")
        click.echo(f"violations: {len(violations)}")
        for violation in violations[:20]:
            click.echo(f"  {violation}")
        if len(violations) > 20:
            click.echo(f"  ... and {len(violations) - 20} more")
    if violations:
        click.echo(f"bitkv: crashtest FAILED with seed {summary.get('seed', seed)}; reproduce "
                   f"with: {summary.get('reproduce_command', '?')}", err=True)
        click.echo(f"bitkv: the test's files are kept in {directory}", err=True)
        click.get_current_context().exit(EXIT_NOT_FOUND)
    if temporary:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (or exits with) the exit status."""
    try:
        cli.main(args=argv, prog_name="bitkv")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return EXIT_OK
        if isinstance(code, int):
            return code
        click.echo(str(code), err=True)
        return EXIT_DATA
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
