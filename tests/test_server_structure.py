"""Structural contracts of the server and the CLI (issue 12), checked on their source (AST).

* Command handlers reach the server through ``conn.control`` (the ServerControl protocol),
  never through ``conn.server``; no module of bitkv.server touches another object's private
  (``_name``) attribute or imports another module's private name.
* No import fallback "for older trees" of this repository: bitkv imports its own modules
  directly (optional third-party modules, hiredis and uvloop, may still be guarded).
* The CLI calls bitkv's typed API: no ``hasattr``, ``importlib`` or ``__import__``, and
  ``getattr`` only on the standard library and click (their versions differ).

Each checker is also run on a small bad example, so that a checker that silently finds
nothing fails too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "bitkv" / "server"
COMMANDS = SERVER / "commands"
CLI = ROOT / "cli"

# getattr(x, ...) is allowed when x is one of these (not bitkv's API): version differences
# of click, and sys.stdin replaced by something without .buffer.
GETATTR_OK_ROOTS = {"click", "sys"}


def sources(directory: pathlib.Path) -> list[pathlib.Path]:
    found = sorted(directory.rglob("*.py"))
    assert found, f"no Python files under {directory}"
    return found


def parse(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def root_name(node: ast.expr) -> str | None:
    """``a`` for ``a.b.c``; None when the chain does not start at a plain name."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_attribute_uses(tree: ast.AST) -> list[str]:
    """``obj._name`` where obj is not ``self`` or ``cls``."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


def private_imports(tree: ast.AST) -> list[str]:
    """``from module import _name``: another module's private name."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if is_private(alias.name):
                    bad.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    return bad


def server_attribute_uses(tree: ast.AST) -> list[str]:
    """Any ``x.server`` (handlers must use ``conn.control``)."""
    return [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "server"]


def _own_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in ("bitkv", "bitkv_cli")
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in ("bitkv", "bitkv_cli") for a in node.names)
    return False


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError")
               for t in types)


def guarded_own_imports(tree: ast.AST) -> list[str]:
    """``try: <import of bitkv itself> except ImportError: ...``: guessing at the tree."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for stmt in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                if isinstance(stmt, ast.stmt) and _own_import(stmt):
                    bad.append(f"line {stmt.lineno}: {ast.unparse(stmt)}")
    return bad


def api_guessing(tree: ast.AST) -> list[str]:
    """hasattr, importlib, __import__, and getattr on anything but the stdlib/click."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "importlib"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("importlib"):
            bad.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            guessed_getattr = name == "getattr" and bool(node.args) \
                and root_name(node.args[0]) not in GETATTR_OK_ROOTS
            if name in ("hasattr", "__import__") or guessed_getattr:
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


def report(paths: list[pathlib.Path], check: object) -> list[str]:
    assert callable(check)
    out = []
    for path in paths:
        out += [f"{path.relative_to(ROOT)} {problem}" for problem in check(parse(path))]
    return out


# -- the checks ------------------------------------------------------------------------------


def test_server_touches_no_private_attribute_of_another_object() -> None:
    assert report(sources(SERVER), private_attribute_uses) == []


def test_server_and_cli_import_no_private_names() -> None:
    assert report(sources(SERVER) + sources(CLI), private_imports) == []


def test_command_handlers_reach_the_server_only_through_control() -> None:
    assert report(sources(COMMANDS), server_attribute_uses) == []


def test_no_import_fallbacks_for_older_trees() -> None:
    assert report(sources(SERVER) + sources(CLI), guarded_own_imports) == []


def test_cli_does_not_guess_at_bitkvs_api() -> None:
    assert report(sources(CLI), api_guessing) == []


def test_the_command_table_is_split_by_group() -> None:
    from bitkv.server.commands import COMMANDS as TABLE
    from bitkv.server.commands import INFOS

    groups = {path.stem for path in COMMANDS.glob("*.py")} - {"__init__", "registry"}
    assert {"connection", "transactions", "strings", "keyspace", "admin"} <= groups
    # Every command is registered (both spellings) and comes from one of those modules.
    assert len(TABLE) == 2 * len(INFOS)
    for spec in TABLE.values():
        assert spec[0].__module__.rsplit(".", 1)[-1] in groups, spec[3]


def test_the_server_implements_the_control_protocol() -> None:
    import inspect

    from bitkv.server.app import Server
    from bitkv.server.control import ServerControl

    # mypy checks the types (app.py assigns a Server to a ServerControl attribute); this
    # checks that every method the protocol lists exists with the same kind of call.
    for name, member in vars(ServerControl).items():
        if callable(member) and not name.startswith("_"):
            impl = getattr(Server, name)
            assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(member), name


# -- the checkers find what they look for ----------------------------------------------------

BAD_EXAMPLES = [
    (private_attribute_uses, "def f(c):\n    return c.server._clients\n"),
    (private_attribute_uses, "def f(conn):\n    conn._unresolved += 1\n"),
    (private_imports, "from bitkv.store import _helper\n"),
    (server_attribute_uses, "def cmd(c, args):\n    return c.server.port\n"),
    (guarded_own_imports, "try:\n    from ..validate import X\nexcept ImportError:\n"
                          "    from ..store import X\n"),
    (api_guessing, "def f(db):\n    return hasattr(db, 'batch')\n"),
    (api_guessing, "import importlib\n"),
    (api_guessing, "def f(h):\n    return getattr(h, 'run', None)\n"),
    (api_guessing, "def f(il):\n    return il.import_module('bitkv.crashtest')\n"),
]

GOOD_EXAMPLES = [
    (private_attribute_uses, "class A:\n    def f(self):\n        return self._x\n"),
    (guarded_own_imports, "try:\n    import hiredis\nexcept ImportError:\n    hiredis = None\n"),
    (api_guessing, "import sys\nx = getattr(sys.stdin, 'buffer', sys.stdin)\n"),
]


@pytest.mark.parametrize(("check", "code"), BAD_EXAMPLES)
def test_checker_flags_the_pattern(check: object, code: str) -> None:
    assert callable(check)
    assert check(ast.parse(code)), code


@pytest.mark.parametrize(("check", "code"), GOOD_EXAMPLES)
def test_checker_allows_the_legitimate_form(check: object, code: str) -> None:
    assert callable(check)
    assert check(ast.parse(code)) == [], code
