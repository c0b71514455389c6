"""What bitkv/dbm.py and the README say about ``shelve.open`` (issue 16): the standard
library cannot pick bitkv, so shelve.open(path) makes a separate stdlib database beside the
store and never touches it. If a Python release adds a way to register a backend, these
tests fail and the documentation (and maybe bitkv.dbm) should change."""

from __future__ import annotations

import dbm
import os
import shelve

import bitkv
import bitkv.dbm as bdbm


def test_stdlib_dbm_does_not_recognise_a_store(db_path):
    bitkv.open(db_path).close()
    assert dbm.whichdb(db_path) is None  # "cannot be opened", so 'c' creates a new one
    assert not hasattr(dbm, "register")  # no public hook to add a backend


def test_shelve_open_writes_beside_the_store_not_into_it(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"k", b"v")
    before = sorted(os.listdir(db_path))
    with shelve.open(db_path) as shelf:
        shelf["x"] = 1
    assert sorted(os.listdir(db_path)) == before  # the store is untouched...
    beside = [n for n in os.listdir(os.path.dirname(db_path)) if n != os.path.basename(db_path)]
    assert beside  # ...and a stdlib database appeared next to it
    assert all(n.startswith(os.path.basename(db_path) + ".") for n in beside)
    with bitkv.open(db_path, readonly=True) as db:
        assert list(db.keys()) == [b"k"]


def test_the_documented_way(db_path):
    with shelve.Shelf(bdbm.open(db_path, "c")) as shelf:
        shelf["x"] = {"n": 1}
    assert os.listdir(os.path.dirname(db_path)) == [os.path.basename(db_path)]
    with shelve.Shelf(bdbm.open(db_path, "r")) as shelf:
        assert shelf["x"] == {"n": 1}
