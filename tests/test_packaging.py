"""The package list in pyproject.toml names every package of the source tree: a package left
out installs without it (`pip install .` then fails at import; found when the server's command
table became the package bitkv.server.commands)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "bitkv").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert "bitkv_cli" in listed and (ROOT / "cli" / "__init__.py").exists()
