"""The compiled RESP request parser, when this process uses it: ``bitkv._native.RespParser``
(``bitkv/native/resp.c``), or None where the extension is not built or ``BITKV_PURE_PYTHON=1``
forces the pure-Python mode.

The server (``bitkv.server.protocol``) holds the reference, ``PyParser``, and builds this one
through ``protocol.native_parser``; this module only decides, in one place and as the keydir
decides for its index map, whether the compiled twin is there to use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._native import RespParser

RESP_PARSER: type[RespParser] | None = None
if os.environ.get("BITKV_PURE_PYTHON", "") in ("", "0"):
    try:
        from ._native import RespParser as _Compiled
    except ImportError:  # not built (no compiler at install time): PyParser it is
        pass
    else:
        RESP_PARSER = _Compiled
