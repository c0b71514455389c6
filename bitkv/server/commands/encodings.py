"""What ``OBJECT ENCODING`` answers for a collection, one rule per type.

Redis names the in-memory representation of a collection (``listpack``, ``hashtable``,
``intset``, ``skiplist``, ``quicklist``) after its size and the ``*-max-listpack-*`` tuning
parameters, converting small to big once and never back while it runs. bitkv keeps every
collection the same way (an index in memory, elements on disk), but clients and Redis's own
tests read the encoding to tell small from big, so each type's command module registers the
rule Redis 7.0 applies (with :func:`rule`), and ``OBJECT ENCODING`` asks :func:`encoding_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...structures import Collection
from . import tuning

if TYPE_CHECKING:
    from ..control import ServerControl

Rule = Callable[[Collection, dict[str, str]], str]
_RULES: dict[type[Collection], Rule] = {}


def rule(cls: type[Collection]) -> Callable[[Rule], Rule]:
    """Register ``fn(collection, tuning values) -> encoding name`` for type ``cls``."""

    def register(fn: Rule) -> Rule:
        _RULES[cls] = fn
        return fn

    return register


def encoding_of(control: ServerControl, c: Collection) -> str:
    fn = _RULES.get(type(c))
    if fn is None:
        return "hashtable"
    return fn(c, tuning.values(control))


def tuning_int(values: dict[str, str], name: str) -> int:
    """A tuning parameter's value as an int (the table holds INT parameters as text)."""
    try:
        return int(values[name])
    except (KeyError, ValueError):
        return int(tuning.TUNING[name][1])
