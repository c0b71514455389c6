"""Sphinx configuration of bitkv's API reference (built from the docstrings).

    pip install -e '.[docs]' && sphinx-build -W -b html docs/api /tmp/bitkv-api

CI builds it with warnings as errors (-W), so a docstring that does not render is a failure.
"""

from __future__ import annotations

project = "bitkv"
author = "the bitkv authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
# The package's own names, shown without the module path in signatures.
add_module_names = False
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
