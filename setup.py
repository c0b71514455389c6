"""The optional compiled accelerator, bitkv._native (bitkv/native/*.c); the rest: pyproject.toml.

Where no C compiler (or no Python headers) exists, the build of the extension fails, this
prints one line, and the install goes on in pure-Python mode: ``bitkv.IMPLEMENTATION`` is then
"python". ``BITKV_PURE_PYTHON=1`` forces that mode where the extension is built.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build each extension if possible; if not, one notice, and the install still succeeds."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (distutils raises several kinds)
            self._notice(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._notice(exc)

    @staticmethod
    def _notice(exc: BaseException) -> None:
        print(f"bitkv: compiled accelerator not built ({type(exc).__name__}); "
              "installing in pure-Python mode", file=sys.stderr)


extra = ["-O2", "-Wall", "-Wextra", "-std=c99"] if os.name == "posix" else []
setup(
    ext_modules=[Extension("bitkv._native", sorted(glob.glob("bitkv/native/*.c")), optional=True,
                           depends=glob.glob("bitkv/native/*.h"),
                           extra_compile_args=extra)],
    cmdclass={"build_ext": OptionalBuildExt},
)
