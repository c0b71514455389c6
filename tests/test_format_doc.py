"""docs/format.md and docs/architecture.md must not drift from the code.

* The worked example in docs/format.md is exactly what scripts/format_example.py prints.
* Every table marked ``<!-- struct: NAME -->`` lists the fields of the ``struct.Struct`` NAME
  with the right offsets, sizes and types, and the struct is little-endian.
* The ``<!-- flags -->`` table matches bitkv.record's flag bits, and covers all of them.
* Every ``<!-- constants -->`` table row names a value the code really has.
* The ``<!-- settings: bitkv.store.Store -->`` table documents every option with its default;
  the ``<!-- sync-modes -->`` table every sync mode; the ``<!-- keydir -->`` table the packing.
* The CRC-32C parameters stated in the doc reproduce bitkv's CRC.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import bitkv
from bitkv import keydir, record
from bitkv.crc import crc32c, crc32c_reference
from bitkv.store import SYNC_MODES, Store

ROOT = Path(__file__).resolve().parent.parent
FORMAT_MD = ROOT / "docs" / "format.md"
ARCHITECTURE_MD = ROOT / "docs" / "architecture.md"
EXAMPLE = ROOT / "scripts" / "format_example.py"
EXAMPLE_MARKER = "<!-- output of scripts/format_example.py, verbatim -->"

TYPE_NAMES = {"B": "u8", "H": "u16", "I": "u32", "Q": "u64"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _resolve(dotted: str) -> object:
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _table_after(text: str, marker: str) -> list[list[str]]:
    """Return the body rows (cells stripped) of the markdown table right after ``marker``,
    which must stand on a line of its own (mentions of a marker in prose do not count)."""
    found = re.search(rf"^{re.escape(marker)}$", text, re.MULTILINE)
    assert found, f"no line {marker!r}"
    lines = text[found.end() :].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert len(rows) >= 3, f"no table after {marker}"
    return rows[2:]  # skip the heading and the |---| line


def _markers(text: str, prefix: str) -> list[str]:
    return re.findall(rf"^<!-- {prefix}[^>]*-->$", text, re.MULTILINE)


def _unquote(cell: str) -> str:
    return cell.strip("`").strip()


def _struct_fields(st: struct.Struct) -> list[tuple[int, int, str]]:
    """(offset, size, doc type) of each field of a little-endian, unpadded struct format."""
    fmt = st.format
    assert fmt[0] == "<", f"{fmt!r} is not little-endian without padding"
    fields = []
    offset = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n = int(count) if count else 1
        if code == "s":
            fields.append((offset, n, f"bytes[{n}]"))
            offset += n
            continue
        for _ in range(n):
            size = struct.calcsize("<" + code)
            fields.append((offset, size, TYPE_NAMES[code]))
            offset += size
    assert offset == st.size
    return fields


# -- the worked example ------------------------------------------------------------------------


def test_worked_example_is_the_scripts_output_verbatim() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert output.strip(), "the example printed nothing"
    text = _text(FORMAT_MD)
    assert text.count(EXAMPLE_MARKER) == 1
    after = text[text.index(EXAMPLE_MARKER) + len(EXAMPLE_MARKER) :]
    fence = "\n```text\n"
    assert after.startswith(fence), "the example must be a ```text block right after its marker"
    pasted = after[len(fence) : after.index("\n```\n", len(fence)) + 1]
    # On mismatch pytest shows the diff; regenerate with
    #   python scripts/format_example.py  and paste its output into docs/format.md.
    assert pasted == output


def test_example_script_is_deterministic() -> None:
    runs = {subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                           cwd=ROOT, timeout=120, check=True).stdout for _ in range(2)}
    assert len(runs) == 1


# -- struct tables -----------------------------------------------------------------------------


STRUCTS = ["bitkv.segment.HEADER", "bitkv.record.HEADER", "bitkv.hint.HEADER",
           "bitkv.hint.ENTRY", "bitkv.hint.TRAILER", "bitkv.codec._DICT_HEADER",
           "bitkv.codec._AAD_V2", "bitkv.manifest.HEADER", "bitkv.manifest.ENTRY",
           "bitkv.manifest.TRAILER", "bitkv.durable.SLOT", "bitkv.server.backlog.HEADER",
           "bitkv.server.backlog.ENTRY", "bitkv.settings.LAYOUT",
           "bitkv.settings.LAYOUT_V1"]


def test_every_struct_table_is_checked() -> None:
    documented = [m[len("<!-- struct: ") : -len(" -->")]
                  for m in _markers(_text(FORMAT_MD), "struct: ")]
    assert sorted(documented) == sorted(STRUCTS)


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_table_matches_code(name: str) -> None:
    st = _resolve(name)
    assert isinstance(st, struct.Struct)
    rows = _table_after(_text(FORMAT_MD), f"<!-- struct: {name} -->")
    fixed = [(int(r[0]), int(r[1]), _unquote(r[2]), _unquote(r[3]))
             for r in rows if r[0].isdigit() and r[1].isdigit()]
    assert [(off, size, typ) for off, size, typ, _field in fixed] == _struct_fields(st), name
    # Variable-length parts (key, value, dictionary) may follow the fixed fields.
    assert len(rows) - len(fixed) <= 2


def test_struct_sizes_stated_in_prose() -> None:
    text = _text(FORMAT_MD)
    assert f"{bitkv.segment.HEADER_SIZE}-byte header" in text
    assert f"{record.HEADER_SIZE}-byte header" in text
    assert f"{bitkv.hint.ENTRY_SIZE}-byte entries" in text
    assert (f"`{bitkv.hint.HEADER_SIZE} + {bitkv.hint.ENTRY_SIZE} * count + sum(key_len) + "
            f"{bitkv.hint.TRAILER.size}`") in text
    assert "CRC-32C of bytes 0..35" in text
    assert bitkv.segment.HEADER.size - 4 == 36


def test_record_header_field_names_match_the_decoder() -> None:
    rows = _table_after(_text(FORMAT_MD), "<!-- struct: bitkv.record.HEADER -->")
    names = [_unquote(r[3]) for r in rows if r[1].isdigit()]
    assert names == list(record.Header._fields)


# -- flags -------------------------------------------------------------------------------------


def test_flags_table_matches_code() -> None:
    rows = _table_after(_text(FORMAT_MD), "<!-- flags -->")
    seen = 0
    for bit, value, name, _meaning in (r[:4] for r in rows):
        flag = int(_unquote(value), 16)
        assert flag == 1 << int(bit)
        assert getattr(record, _unquote(name)) == flag, name
        seen |= flag
    assert seen == record.KNOWN_FLAGS


# -- constants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [FORMAT_MD, ARCHITECTURE_MD], ids=lambda p: p.name)
def test_constants_tables_match_code(doc: Path) -> None:
    rows = _table_after(_text(doc), "<!-- constants -->")
    assert rows
    for name_cell, value_cell in (r[:2] for r in rows):
        name = _unquote(name_cell)
        expected = ast.literal_eval(_unquote(value_cell))
        actual = _resolve(name)
        assert actual == expected and type(actual) is type(expected), name


def test_marker_text_in_prose_is_the_real_marker() -> None:
    text = _text(FORMAT_MD)
    marker = bitkv.recovery.MARKER_TEXT.decode("ascii")
    assert f"```text\n{marker}```" in text
    assert f"Exactly these {len(bitkv.recovery.MARKER_TEXT)} bytes" in text


# -- CRC-32C -----------------------------------------------------------------------------------


def _crc32c_from_the_doc(data: bytes) -> int:
    """CRC-32C exactly as docs/format.md states it, bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc_parameters_stated_in_the_doc() -> None:
    text = _text(FORMAT_MD)
    for stated in ("0x1EDC6F41", "0x82F63B78", "0xFFFFFFFF", "0xE3069283"):
        assert stated in text
    # The reflected form is the bit reversal of the polynomial.
    assert int(f"{0x1EDC6F41:032b}"[::-1], 2) == 0x82F63B78
    for data in (b"123456789", b"", b"\x00" * 40, bytes(range(256))):
        assert crc32c(data) == crc32c_reference(data) == _crc32c_from_the_doc(data)
    assert crc32c(b"123456789") == 0xE3069283


# -- architecture.md ---------------------------------------------------------------------------


def _default_text(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if callable(value):
        return f"`{value.__module__}.{value.__name__}`"
    return f"`{value!r}`"


def test_settings_table_documents_every_option() -> None:
    rows = _table_after(_text(ARCHITECTURE_MD), "<!-- settings: bitkv.store.Store -->")
    by_name = {_unquote(r[0]): r for r in rows}
    params = {n: p for n, p in inspect.signature(Store.__init__).parameters.items()
              if n != "self"}
    assert set(by_name) == set(params), "options missing from / extra in the settings table"
    for name, param in params.items():
        default_cell = by_name[name][3]
        if param.default is inspect.Parameter.empty:
            assert default_cell == "required", name
        else:
            assert default_cell.startswith(_default_text(param.default)), (name, default_cell)


def test_bitkv_open_passes_the_same_defaults() -> None:
    store_params = inspect.signature(Store.__init__).parameters
    for name, param in inspect.signature(bitkv.open).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.POSITIONAL_OR_KEYWORD):
            continue
        assert param.default == store_params[name].default, name


def test_sync_modes_table() -> None:
    rows = _table_after(_text(ARCHITECTURE_MD), "<!-- sync-modes -->")
    documented = [re.match(r'`"(\w+)"`', r[0]).group(1) for r in rows]  # type: ignore[union-attr]
    assert documented == list(SYNC_MODES)


def test_keydir_table_matches_packing() -> None:
    rows = _table_after(_text(ARCHITECTURE_MD), "<!-- keydir -->")
    fields = {_unquote(r[2]): (r[0], int(r[1])) for r in rows}
    assert fields["size"] == (f"0..{keydir.SIZE_BITS - 1}", keydir.SIZE_BITS)
    assert fields["offset"] == (f"{keydir.SIZE_BITS}..{keydir.SLOT_SHIFT - 1}",
                                keydir.OFFSET_BITS)
    top = keydir.SLOT_SHIFT + keydir.SLOT_BITS - 1
    assert fields["slot"] == (f"{keydir.SLOT_SHIFT}..{top}", keydir.SLOT_BITS)
    entry = keydir.pack(keydir.MAX_SLOTS - 1, keydir.MAX_OFFSET, keydir.SIZE_MASK)
    assert entry < 2**60
    assert keydir.unpack(entry) == (keydir.MAX_SLOTS - 1, keydir.MAX_OFFSET, keydir.SIZE_MASK)
    assert keydir.unpack(keydir.pack(3, 40, 4096)) == (3, 40, 0)
    text = _text(ARCHITECTURE_MD)
    assert f"entry = slot << {keydir.SLOT_SHIFT} | offset << {keydir.SIZE_BITS}" in text
