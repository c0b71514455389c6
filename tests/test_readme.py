"""The README's Python examples run as written (except those that need a running deployment).
"""

from __future__ import annotations

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that open relative paths make them here
    code = python_blocks()[index]
    if '"/srv/' in code:
        pytest.skip("needs the deployment the README sets up before it (a replica in /srv/b)")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
