/* bitkv._native: the compiled kernels, one extension module built from bitkv/native/*.c.
 *
 * Each kernel file defines an init function that adds its types and functions to the module
 * (module.c calls them in turn) and, where other kernels need it, a C API declared here. The
 * pure-Python reference of every kernel stays complete; see docs/architecture.md.
 */
#ifndef BITKV_NATIVE_H
#define BITKV_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* indexmap.c: the KeyDir's map, bytes -> u64. */
extern PyTypeObject IndexMap_Type;
#define BitkvIndexMap_Check(o) (Py_TYPE(o) == &IndexMap_Type)
int bitkv_indexmap_init(PyObject *module);
/* 1 and *value set if present, 0 if absent, -1 on error (set). ``map`` must be an IndexMap. */
int bitkv_index_lookup(PyObject *map, const unsigned char *key, size_t len, uint64_t *value);
/* Set key (bytes) -> value; *had_old/*old tell the previous value. 0, or -1 on error (set). */
int bitkv_index_set(PyObject *map, PyObject *key, uint64_t value, int *had_old, uint64_t *old);
/* 1 if removed, 0 if absent, -1 on error (set). */
int bitkv_index_delete(PyObject *map, const unsigned char *key, size_t len);

#endif
