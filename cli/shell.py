"""``bitkv shell``: open the store once, then run many commands against it.

Each line is a ``bitkv`` verb with its arguments, split as a POSIX shell splits words
(``shlex``: quotes and backslashes work as in sh), run by :func:`bitkv_cli.main.run_verb`,
the same code as the one-shot command, against the open store. So the verbs, their options,
their output and their error lines are the CLI's. What differs is said in :data:`HELP`.

Line editing is the standard library's: :mod:`cmd` with :mod:`readline` when the platform has
it (GNU readline or libedit). A third-party line editor (prompt_toolkit) would add a
dependency and ~100 ms to every start of the ``bitkv`` command for colours and multi-line
editing that a one-command-a-line shell does not need; readline already gives history
(``~/.bitkv_history``, mode 0600) and completion of verbs, options and keys (by prefix).

Read from a terminal, the shell prompts; read from a pipe or file (``bitkv shell < cmds``)
it prints no prompt or banner, only the commands' output, and exits with the status of the
first command that failed (0 if none did), after running every line.
"""

from __future__ import annotations

import cmd
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterable
from typing import IO, Any

import click

from .errors import EXIT_OK, EXIT_USAGE, CliError
from .main import Settings, cli, open_db, run_guarded, run_verb

# Verbs that do not run inside the shell, and why.
UNAVAILABLE = {
    "shell": "already in the shell",
    "serve": "the server opens the store itself: quit the shell and run 'bitkv serve'",
    "keygen": "run 'bitkv keygen FILE' from the command line",
}
# Verbs whose positional arguments are keys (completed from the store); for the others in
# POSITIONAL_KEYS only the first argument is a key.
KEY_VERBS = {"get", "delete", "exists", "ttl", "persist"}
FIRST_ARG_KEY_VERBS = {"put", "expire"}
PREFIX_OPTIONS = {"--prefix", "-p"}
MAX_COMPLETIONS = 1000  # a prefix matching more keys than this offers the first ones, sorted
HISTORY_ENV = "BITKV_HISTORY"
HISTORY_LENGTH = 1000

HELP = """\
Commands are the bitkv verbs with their options, against the store opened once:
  get KEY...  put KEY VALUE  delete KEY...  exists KEY  ttl KEY  expire KEY SECONDS
  persist KEY  scan  stats  compact  check  export  import FILE
'VERB --help' shows a verb's help. Words are split as sh splits them: quote values
with spaces ("hello, world"). Also:
  hex on|off   keys given and shown as hex (like the global --hex)
  help [VERB]  this text, or a verb's help
  quit, exit [N], Ctrl-D   leave (exit status N)
Unlike the one-shot commands: stdin holds the commands, so VALUE, import and
--keys-from are never read from it; get always ends a value with a newline.
"""


class Shell(cmd.Cmd):
    """The command loop; :meth:`run_script` for a pipe, :meth:`cmdloop` for a terminal."""

    identchars = cmd.Cmd.identchars + "-"

    def __init__(self, settings: Settings, *, stdin: IO[str] | None = None,
                 stdout: IO[str] | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.settings = settings
        self.status = EXIT_OK  # the first failure's status
        self.exit_status: int | None = None  # set by `exit N`
        self.prompt = "bitkv> "

    # -- running commands ----------------------------------------------------------------------

    def _fail(self, message: str, code: int = EXIT_USAGE) -> None:
        CliError(message, code).show()
        self._note(code)

    def _note(self, code: int) -> None:
        if code != EXIT_OK and self.status == EXIT_OK:
            self.status = code

    def onecmd(self, line: str) -> bool:
        """Run one line; True means leave the shell."""
        line = line.strip()
        if not line or line.startswith("#"):
            return False
        if line == "EOF":  # what cmdloop passes at the end of input (Ctrl-D)
            click.echo("", err=True)
            return True
        try:
            argv = shlex.split(line)
        except ValueError as exc:  # e.g. "No closing quotation"
            self._fail(f"cannot split the line: {exc}")
            return False
        if not argv:
            return False
        verb, args = argv[0], argv[1:]
        if verb in ("quit", "exit"):
            if args:
                try:
                    self.exit_status = int(args[0])
                except ValueError:
                    self._fail(f"exit takes a number, not {args[0]!r}")
                    return False
            return True
        if verb in ("help", "?"):
            if args:
                self._note(run_verb(self.settings, [args[0], "--help"]))
            else:
                click.echo(HELP, nl=False)
            return False
        if verb == "hex":
            if args not in (["on"], ["off"]):
                self._fail("hex takes 'on' or 'off'")
                return False
            self.settings.hex_mode = args == ["on"]
            return False
        if verb in UNAVAILABLE:
            self._fail(f"{verb} is not available in the shell: {UNAVAILABLE[verb]}")
            return False
        if verb == "check" and "--repair" in args:
            self._fail("check --repair needs the store closed: quit the shell first")
            return False
        self._note(run_verb(self.settings, argv))
        return False

    def run_script(self, lines: Iterable[bytes]) -> int:
        """Run every line of ``lines`` (bytes: keys need not be UTF-8, as in argv); return
        the shell's exit status."""
        for raw in lines:
            # As the OS hands argv to Python: undecodable bytes survive as surrogates, and
            # parse_key's os.fsencode turns them back into the same bytes.
            line = os.fsdecode(raw.removesuffix(b"\n").removesuffix(b"\r"))
            if self.onecmd(line):
                break
        return self.final_status()

    def final_status(self) -> int:
        return self.status if self.exit_status is None else self.exit_status

    def emptyline(self) -> bool:
        return False  # cmd's default repeats the last command: not for `delete`

    # -- completion ----------------------------------------------------------------------------

    def verbs(self) -> list[str]:
        ctx = click.Context(cli, obj=self.settings)
        names = [n for n in cli.list_commands(ctx) if n not in UNAVAILABLE]
        return sorted([*names, "exit", "help", "hex", "quit"])

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [n for n in self.verbs() if n.startswith(text)]

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self.complete_argument(text, line[:begidx])

    def complete_argument(self, text: str, before: str) -> list[str]:
        """Completions of the word ``text`` that follows ``before`` on the line: an option
        of the verb, or a key of the store when the word is a key (or a --prefix)."""
        try:
            words = shlex.split(before)
        except ValueError:
            return []
        if not words:
            return self.completenames(text)
        verb = words[0]
        if text.startswith("-"):
            return self.complete_option(verb, text)
        previous = words[-1] if len(words) > 1 else ""
        positional = [w for w in words[1:] if not w.startswith("-")]
        if previous in PREFIX_OPTIONS or verb in KEY_VERBS or (
                verb in FIRST_ARG_KEY_VERBS and not positional):
            return self.complete_key(text)
        return []

    def complete_option(self, verb: str, text: str) -> list[str]:
        ctx = click.Context(cli, obj=self.settings)
        command = cli.get_command(ctx, verb) if verb not in UNAVAILABLE else None
        if command is None:
            return []
        options = {o for p in command.params if isinstance(p, click.Option)
                   for o in (*p.opts, *p.secondary_opts)}
        return sorted(o for o in options | {"--help"} if o.startswith(text))

    def complete_key(self, text: str) -> list[str]:
        """The store's live keys that start with ``text``, written as they are typed (hex
        in hex mode; quoted for the shell's word splitting when they need it), sorted, at
        most MAX_COMPLETIONS."""
        db = self.settings.store
        if db is None:
            return []
        quote = text[:1] if text[:1] in ("'", '"') else ""
        typed = text[len(quote):]
        if self.settings.hex_mode:
            typed = typed.lower()
            try:
                prefix = bytes.fromhex(typed[: len(typed) // 2 * 2])
            except ValueError:
                return []
            found = sorted(k.hex() for k in db.keys(prefix=prefix))
            return [k for k in found if k.startswith(typed)][:MAX_COMPLETIONS]
        words = [os.fsdecode(k) for k in
                 sorted(db.keys(prefix=os.fsencode(typed)))[:MAX_COMPLETIONS]]
        if quote:
            return [quote + w for w in words]
        return [shlex.quote(w) for w in words]

    # -- the terminal ----------------------------------------------------------------------------

    def interact(self) -> int:
        """Prompt and run commands until quit or end of input; history and completion
        through readline where available."""
        readline = _readline()
        history = _history_path() if readline is not None else None
        if readline is not None:
            # Keys hold ':', '-', '/' ...: only whitespace separates words to complete.
            readline.set_completer_delims(" \t\n")
            if history:
                try:
                    readline.read_history_file(history)
                except OSError:
                    pass  # none yet, or unreadable: start without
                readline.set_history_length(HISTORY_LENGTH)
        db = self.settings.store
        mode = " (read-only)" if db is not None and db.readonly else ""
        keys = len(db) if db is not None else 0
        click.echo(f"bitkv shell on {self.settings.directory}{mode}: {keys} keys. 'help' "
                   "lists the commands; Ctrl-D or 'quit' leaves.", err=True)
        try:
            while True:
                try:
                    self.cmdloop()
                    break
                except KeyboardInterrupt:  # Ctrl-C drops the line being typed, as sh does
                    click.echo("^C", err=True)
        finally:
            if readline is not None and history:
                _save_history(readline, history)
        return self.final_status()

    def complete_help(self, text: str, *ignored: Any) -> list[str]:
        return self.completenames(text)


def _stdin_lines() -> Iterable[bytes]:
    binary: Iterable[bytes] | None = getattr(sys.stdin, "buffer", None)
    if binary is not None:
        return binary
    if sys.stdin is None:
        return []
    return (line.encode("utf-8", "surrogateescape") for line in sys.stdin)


def _readline() -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return None
    return readline


def _history_path() -> str | None:
    """$BITKV_HISTORY, else ~/.bitkv_history; an empty $BITKV_HISTORY keeps no history."""
    path = os.environ.get(HISTORY_ENV)
    if path is None:
        return os.path.join(os.path.expanduser("~"), ".bitkv_history")
    return path or None


def _save_history(readline: Any, path: str) -> None:
    # The history holds the lines typed, values included: readable by its owner only.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        readline.write_history_file(path)
    except OSError as exc:
        click.echo(f"bitkv: history not saved to {path}: {exc.strerror}", err=True)


@click.command("shell")
@click.option("--readonly", is_flag=True,
              help="Open the store read-only: works beside another writer; write verbs fail.")
@click.option("--create", is_flag=True, help="Create the store if it does not exist.")
@click.pass_obj
def shell(settings: Settings, readonly: bool, create: bool) -> None:
    """Open the store once and run many commands: the bitkv verbs, one a line.

    Interactive on a terminal (history in ~/.bitkv_history or $BITKV_HISTORY, Tab completes
    verbs, options and keys); from a pipe or file it runs every line and exits with the
    status of the first command that failed (0 if none did). Type 'help' inside.

    \b
    Examples:
      bitkv shell
      printf 'put a 1\\nget a\\n' | bitkv shell --create
    """
    if readonly and create:
        raise CliError("--readonly and --create exclude each other (a reader creates "
                       "nothing)", EXIT_USAGE)
    db = open_db(settings, write=not readonly, create=create)
    try:
        inner = dataclasses.replace(settings, store=db, in_shell=True)
        session = Shell(inner)
        if sys.stdin is not None and sys.stdin.isatty():
            status = session.interact()
        else:
            status = session.run_script(_stdin_lines())
    finally:
        db.close()
    click.get_current_context().exit(status)


__all__ = ["Shell", "run_guarded", "shell"]
