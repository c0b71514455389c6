"""The API reference (issue 16): built from the docstrings (CI runs `sphinx -W` over
docs/api), so what it shows must be there: every option of `bitkv.open` is a typed keyword
with a `:param:` entry (no `**options: Any`), and every public method of the documented
classes has a docstring."""

from __future__ import annotations

import inspect

import bitkv


def test_open_lists_every_option_typed_and_documented():
    sig = inspect.signature(bitkv.open)
    doc = bitkv.open.__doc__ or ""
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in sig.parameters.values())
    for name, param in list(sig.parameters.items())[1:]:  # after the path
        assert param.kind is param.KEYWORD_ONLY, name
        assert param.annotation is not inspect.Parameter.empty, name
        assert f":param {name}:" in doc, f"bitkv.open's docstring does not describe {name}"


def test_documented_classes_have_a_docstring_on_every_public_method():
    for cls in (bitkv.Store, bitkv.Batch, bitkv.JsonView, bitkv.Namespace):
        assert (cls.__doc__ or "").strip(), cls
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not (inspect.isfunction(member)
                                            or isinstance(member, property)):
                continue
            assert (member.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"
