"""The one place that chooses between the compiled kernels and their pure-Python references.

``bitkv._native`` (bitkv/native/*.c) is used when it was built and ``BITKV_PURE_PYTHON`` is
unset (or "0"); ``BITKV_PURE_PYTHON=1`` forces the pure-Python modules, which stay complete:
they are the reference every kernel is tested against, and the fallback where no compiler
was found at install time. ``IMPLEMENTATION`` (also ``bitkv.IMPLEMENTATION``) is "native" or
"python"; ``NATIVE`` is True in native mode. The modules using a kernel (keydir: the index
map; record: the codec; store: the get and batch kernels) test ``NATIVE`` here and then
import what they use from ``bitkv._native``.
"""

from __future__ import annotations

import os

NATIVE = False
if os.environ.get("BITKV_PURE_PYTHON", "") in ("", "0"):
    try:
        from ._native import IndexMap  # noqa: F401  (imported to learn whether it was built)
    except ImportError:  # not built (no compiler at install time): pure Python it is
        pass
    else:
        NATIVE = True
IMPLEMENTATION = "native" if NATIVE else "python"
