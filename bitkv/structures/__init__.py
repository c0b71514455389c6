"""Hashes, sets, lists and sorted sets over a store's records (the Redis collection types).

:class:`Structures` owns them; :mod:`.encoding` lays out their records; :mod:`.collection` is
the in-memory index of each. The server's command modules are the users (docs/format.md,
"Collections"; docs/cluster.md for the commands).
"""

from .collection import KINDS, Collection, HashIndex, ListIndex, SetIndex, ZSetIndex
from .encoding import PREFIX, LayoutError, is_internal
from .space import Edit, ReservedKeyError, Structures, WrongTypeError, check_user_key

__all__ = ["KINDS", "PREFIX", "Collection", "Edit", "HashIndex", "LayoutError", "ListIndex",
           "ReservedKeyError", "SetIndex", "Structures", "WrongTypeError", "ZSetIndex",
           "check_user_key", "is_internal"]
