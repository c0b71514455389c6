"""Write each target's seed inputs to ``DIR/<target>/`` (default ``fuzz/corpus``) for atheris.

Usage: ``python fuzz/make_corpus.py [DIR]``
"""

from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzz_batch
import fuzz_codec_native
import fuzz_compact
import fuzz_get
import fuzz_get_many
import fuzz_hint
import fuzz_indexmap
import fuzz_items_in
import fuzz_prefix
import fuzz_rdb
import fuzz_rdb_types
import fuzz_record
import fuzz_replay
import fuzz_server_parser
import fuzz_store


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus")
    for name, module in (("record", fuzz_record), ("hint", fuzz_hint), ("store", fuzz_store),
                         ("server_parser", fuzz_server_parser), ("rdb", fuzz_rdb),
                         ("rdb_types", fuzz_rdb_types),
                         ("indexmap", fuzz_indexmap), ("items_in", fuzz_items_in),
                         ("prefix", fuzz_prefix), ("get", fuzz_get), ("get_many", fuzz_get_many),
                         ("codec_native", fuzz_codec_native), ("batch", fuzz_batch),
                         ("compact", fuzz_compact), ("replay", fuzz_replay)):
        where = os.path.join(root, name)
        os.makedirs(where, exist_ok=True)
        for data in module.seeds():
            digest = hashlib.sha1(data).hexdigest()
            with open(os.path.join(where, digest), "wb") as fh:
                fh.write(data)
        print(f"{where}: {len(os.listdir(where))} inputs")


if __name__ == "__main__":
    main()
