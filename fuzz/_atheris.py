"""Shared atheris set-up: instrument bitkv's own code only (instrumenting every loaded module
takes minutes and mostly measures the standard library)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable


def instrument_bitkv() -> int:
    """Add coverage instrumentation to every function and method of the loaded bitkv modules."""
    import atheris

    done = 0
    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "bitkv" or name.startswith("bitkv.")):
            continue
        for obj in list(vars(module).values()):
            targets: list[Callable[..., object]] = []
            if inspect.isfunction(obj) and obj.__module__ == name:
                targets.append(obj)
            elif inspect.isclass(obj) and obj.__module__ == name:
                for attr in vars(obj).values():
                    fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
                    if inspect.isfunction(fn):
                        targets.append(fn)
            for fn in targets:
                if id(fn) not in seen:
                    seen.add(id(fn))
                    atheris.instrument_func(fn)
                    done += 1
    return done


def fuzz(check_one: Callable[[bytes], None]) -> None:
    import atheris

    instrument_bitkv()
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()
