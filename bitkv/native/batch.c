/* The batch kernel, in bitkv._native: encode a batch's records into one buffer, and apply
 * records written back to back to the index.
 *
 *   encode_batch(ops, first_seq, now_ms) -> bytes | None
 *       The records Store._commit_batch writes for ``ops`` (key, value or None, expiry) when
 *       no value encoding is configured: seqs from first_seq, the batch flags, an expiry
 *       from a ttl (float seconds, relative to now_ms) or absolute ms (int). None for
 *       anything the kernel does not handle (the caller then runs the Python loop, the
 *       reference), so that both modes raise the same errors for the same input.
 *   apply_batch(entries, expiries, hidden, slots, seg, slot, start, ops, data, now_ms)
 *       -> (end, live_delta, min_expiry)
 *       KeyDir.apply for each record of ``data`` (records back to back, the i-th of key
 *       ops[i][0]) at offsets from ``start``: see keydir.py, KeyDir.apply_batch, which owns
 *       the rule and keeps the Python reference next to this call.
 *   BatchPut(ops, batch, fallback).put(key, value, ...)
 *       Batch.put's common case (bytes key and value within their limits, no ttl or
 *       expiry, the batch still open): append (key, value, None) to ``ops``; anything else
 *       is fallback(batch, key, value, ...), the Python Batch.put. batch.py binds it as the
 *       batch's instance ``put`` and detaches it when the batch commits or is discarded.
 */
#include "native.h"
#include <math.h>

/* The expiry in ms of one op, as Store._commit_batch computes it; 0 = none. Returns 0 on
 * success, 1 if the kernel does not handle this expiry (the Python loop does). */
static int
op_expiry(PyObject *expiry, uint64_t now_ms, uint64_t *out)
{
    if (expiry == Py_None) {
        *out = 0;
        return 0;
    }
    if (PyLong_CheckExact(expiry)) { /* absolute ms (Batch.put's expires_at_ms) */
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(expiry, &overflow);
        if (overflow || v < 0 || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 1;
        }
        *out = (uint64_t)v;
        return 0;
    }
    if (PyFloat_CheckExact(expiry)) { /* ttl in seconds */
        double ttl = PyFloat_AS_DOUBLE(expiry);
        if (ttl == 0.0) {
            *out = 0; /* "if expiry" is false for 0.0 */
            return 0;
        }
        /* round() of a float rounds half to even, as nearbyint does in the default mode;
         * bounds keep the conversion exact (Batch.put allows at most 100 years). */
        double ms = nearbyint(ttl * 1000.0);
        if (!(ms >= -1e15 && ms <= 1e15)) {
            return 1;
        }
        int64_t add = (int64_t)ms;
        if (add < 1) {
            add = 1;
        }
        *out = now_ms + (uint64_t)add;
        return 0;
    }
    return 1;
}

static PyObject *
py_encode_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_batch(ops: list, first_seq, now_ms)");
        return NULL;
    }
    PyObject *ops = args[0];
    uint64_t first_seq = PyLong_AsUnsignedLongLong(args[1]);
    if (first_seq == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    long long now = PyLong_AsLongLong(args[2]);
    if (now == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (now < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(ops);
    if (n == 0) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if ((uint64_t)n > UINT64_MAX - first_seq) {
        Py_RETURN_NONE;
    }
    /* First pass: check every op and size the buffer, so the second pass cannot fail. */
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PyList_GET_ITEM(ops, i);
        if (!PyTuple_CheckExact(op) || PyTuple_GET_SIZE(op) != 3) {
            Py_RETURN_NONE;
        }
        PyObject *k = PyTuple_GET_ITEM(op, 0), *v = PyTuple_GET_ITEM(op, 1);
        if (!PyBytes_CheckExact(k) || PyBytes_GET_SIZE(k) == 0 || PyBytes_GET_SIZE(k) > 0xFFFF
            || (v != Py_None && (!PyBytes_CheckExact(v)
                                 || (uint64_t)PyBytes_GET_SIZE(v) > BITKV_MAX_STORED_VALUE_SIZE))) {
            Py_RETURN_NONE;
        }
        uint64_t exp;
        if (v != Py_None && op_expiry(PyTuple_GET_ITEM(op, 2), (uint64_t)now, &exp)) {
            Py_RETURN_NONE;
        }
        size_t size = BITKV_HEADER_SIZE + (size_t)PyBytes_GET_SIZE(k)
                      + (v == Py_None ? 0 : (size_t)PyBytes_GET_SIZE(v));
        if (total > (size_t)PY_SSIZE_T_MAX - size) {
            Py_RETURN_NONE;
        }
        total += size;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    uint8_t batch_bits = n > 1 ? BITKV_BATCH : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PyList_GET_ITEM(ops, i);
        PyObject *k = PyTuple_GET_ITEM(op, 0), *v = PyTuple_GET_ITEM(op, 1);
        size_t klen = (size_t)PyBytes_GET_SIZE(k);
        size_t vlen = v == Py_None ? 0 : (size_t)PyBytes_GET_SIZE(v);
        uint64_t exp = 0;
        uint8_t flags = 0;
        if (v == Py_None) {
            flags = BITKV_TOMBSTONE;
        }
        else {
            (void)op_expiry(PyTuple_GET_ITEM(op, 2), (uint64_t)now, &exp); /* checked above */
        }
        if (batch_bits) {
            flags |= batch_bits | (i == 0 ? BITKV_BATCH_FIRST : 0)
                     | (i == n - 1 ? BITKV_BATCH_LAST : 0);
        }
        p += bitkv_write_record(p, flags, PyBytes_AS_STRING(k), klen,
                                v == Py_None ? NULL : PyBytes_AS_STRING(v), vlen,
                                first_seq + (uint64_t)i, exp);
    }
    return out;
}

static PyObject *
py_apply_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_batch(entries, expiries, hidden, slots, seg, slot, start, ops, "
                        "data, now_ms)");
        return NULL;
    }
    PyObject *entries = args[0], *expiries = args[1], *hidden = args[2], *slots = args[3];
    PyObject *seg = args[4], *ops = args[7];
    if (!BitkvIndexMap_Check(entries) || !PyDict_CheckExact(expiries)
        || (hidden != Py_None && !PyDict_CheckExact(hidden)) || !PyList_CheckExact(slots)
        || !PyList_CheckExact(ops)) {
        PyErr_SetString(PyExc_TypeError, "apply_batch: wrong argument types");
        return NULL;
    }
    uint64_t slot = PyLong_AsUnsignedLongLong(args[5]);
    if (slot == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t pos = PyLong_AsUnsignedLongLong(args[6]);
    if (pos == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    long long now_ms = PyLong_AsLongLong(args[9]);
    if (now_ms == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (slot >= (UINT64_C(1) << 16)) {
        PyErr_SetString(PyExc_ValueError, "apply_batch: slot out of range");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[8], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    size_t left = (size_t)view.len;
    long long live_delta = 0; /* bytes of ``seg`` made live (+) or dead (-) */
    uint64_t min_expiry = 0;
    Py_ssize_t n = PyList_GET_SIZE(ops);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PyList_GET_ITEM(ops, i);
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) < 1
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(op, 0))) {
            PyErr_SetString(PyExc_TypeError, "apply_batch: each op must start with a bytes key");
            goto fail;
        }
        PyObject *key = PyTuple_GET_ITEM(op, 0);
        Py_INCREF(key); /* held across calls that may run Python code */
        const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
        size_t klen = (size_t)PyBytes_GET_SIZE(key);
        BitkvHeader h;
        size_t size;
        if (left < BITKV_HEADER_SIZE) {
            goto bad_data;
        }
        bitkv_read_header(p, &h);
        size = BITKV_HEADER_SIZE + (size_t)h.key_len + (size_t)h.value_len;
        if (size > left || h.key_len != klen || memcmp(p + BITKV_HEADER_SIZE, k, klen) != 0
            || pos > BITKV_MAX_OFFSET) {
            goto bad_data;
        }
        uint64_t old;
        int found = bitkv_index_lookup(entries, k, klen, &old);
        if (found < 0) {
            goto fail_key;
        }
        if (found) { /* KeyDir.forget(old) */
            size_t oslot = (size_t)bitkv_entry_slot(old);
            if (oslot >= (size_t)PyList_GET_SIZE(slots)) {
                PyErr_SetString(PyExc_IndexError, "apply_batch: entry names no open slot");
                goto fail_key;
            }
            PyObject *owner = PyList_GET_ITEM(slots, (Py_ssize_t)oslot);
            Py_INCREF(owner);
            uint64_t osize;
            if (bitkv_entry_record_size(owner, old, &osize) < 0) {
                Py_DECREF(owner);
                goto fail_key;
            }
            if (owner == seg) {
                live_delta -= (long long)osize;
            }
            else if (bitkv_add_live_bytes(owner, -(int64_t)osize) < 0) {
                Py_DECREF(owner);
                goto fail_key;
            }
            Py_DECREF(owner);
        }
        int tomb = h.flags & BITKV_TOMBSTONE;
        if (tomb || (h.expiry_ms && (long long)h.expiry_ms >= 0
                     && (long long)h.expiry_ms <= now_ms)) {
            if (found) {
                if (bitkv_index_delete(entries, k, klen) < 0) {
                    goto fail_key;
                }
                if (PyDict_GET_SIZE(expiries) && bitkv_dict_discard(expiries, key) < 0) {
                    goto fail_key;
                }
            }
            if (hidden != Py_None) {
                PyObject *why = Py_BuildValue("(KnnK)", (unsigned long long)pos, (Py_ssize_t)size,
                                              (Py_ssize_t)tomb, (unsigned long long)h.expiry_ms);
                if (why == NULL || PyDict_SetItem(hidden, key, why) < 0) {
                    Py_XDECREF(why);
                    goto fail_key;
                }
                Py_DECREF(why);
            }
        }
        else {
            if (hidden != Py_None && PyDict_GET_SIZE(hidden)
                && bitkv_dict_discard(hidden, key) < 0) {
                goto fail_key;
            }
            uint64_t entry = bitkv_entry(slot, pos, size);
            int had_old;
            uint64_t prev;
            if (bitkv_index_set(entries, key, entry, &had_old, &prev) < 0) {
                goto fail_key;
            }
            live_delta += (long long)size;
            if (h.expiry_ms) {
                PyObject *e = PyLong_FromUnsignedLongLong(h.expiry_ms);
                if (e == NULL || PyDict_SetItem(expiries, key, e) < 0) {
                    Py_XDECREF(e);
                    goto fail_key;
                }
                Py_DECREF(e);
                if (!min_expiry || h.expiry_ms < min_expiry) {
                    min_expiry = h.expiry_ms;
                }
            }
            else if (found && PyDict_GET_SIZE(expiries) && bitkv_dict_discard(expiries, key) < 0) {
                goto fail_key;
            }
        }
        Py_DECREF(key);
        p += size;
        left -= size;
        pos += size;
        continue;
    bad_data:
        PyErr_SetString(PyExc_ValueError, "apply_batch: data does not hold the ops' records");
    fail_key:
        Py_DECREF(key);
        goto fail;
    }
    PyBuffer_Release(&view);
    if (left) {
        PyErr_SetString(PyExc_ValueError, "apply_batch: data holds more records than ops");
        return NULL;
    }
    return Py_BuildValue("(KLK)", (unsigned long long)pos, live_delta,
                         (unsigned long long)min_expiry);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* The batch is held strongly until detach: ``db.batch().put(...)`` must find its batch
 * alive. That is a cycle (the batch's instance dict holds the bound put), broken by detach at
 * commit and discard, else left to the cyclic GC (tp_traverse); after detach a put bound
 * earlier reaches the batch through its BitkvBound's weak reference (the Python put then
 * raises). */
typedef struct {
    BitkvBound bound; /* owner: the Batch; fallback: Batch.put(batch, key, value, **options) */
    PyObject *ops;    /* the batch's list of operations; NULL once detached */
    PyObject *batch;  /* the Batch; NULL once detached */
} BatchPut;

static int
batchput_init(BatchPut *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ops", "batch", "fallback", NULL};
    PyObject *ops, *batch, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:BatchPut", kwlist, &PyList_Type, &ops,
                                     &batch, &fallback)) {
        return -1;
    }
    if (bitkv_bound_init(&self->bound, batch, fallback,
                         "the batch this put belonged to is gone") < 0) {
        return -1;
    }
    Py_INCREF(ops);
    Py_INCREF(batch);
    Py_XSETREF(self->ops, ops);
    Py_XSETREF(self->batch, batch);
    return 0;
}

static int
batchput_traverse(BatchPut *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ops);
    Py_VISIT(self->batch);
    return bitkv_bound_traverse((PyObject *)self, visit, arg);
}

static int
batchput_clear(BatchPut *self)
{
    Py_CLEAR(self->ops);
    Py_CLEAR(self->batch);
    return bitkv_bound_clear((PyObject *)self);
}

static PyObject *
batchput_put(BatchPut *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->ops != NULL && nargs == 2 && kwnames == NULL && PyBytes_CheckExact(args[0])
        && PyBytes_GET_SIZE(args[0]) > 0 && PyBytes_GET_SIZE(args[0]) <= 0xFFFF
        && PyBytes_CheckExact(args[1])
        && (uint64_t)PyBytes_GET_SIZE(args[1]) <= BITKV_MAX_VALUE_SIZE) {
        PyObject *op = PyTuple_Pack(3, args[0], args[1], Py_None);
        if (op == NULL) {
            return NULL;
        }
        int rc = PyList_Append(self->ops, op);
        Py_DECREF(op);
        if (rc < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* Options, other types, or a committed or discarded batch: the reference. */
    return bitkv_bound_fallback(&self->bound, args, nargs, kwnames);
}

/* Also lets go of the operations and the batch (the cycle). */
static PyObject *
batchput_detach(BatchPut *self, PyObject *Py_UNUSED(ignored))
{
    self->bound.attached = 0;
    Py_CLEAR(self->ops);
    Py_CLEAR(self->batch);
    Py_RETURN_NONE;
}

static PyMethodDef batchput_methods[] = {
    {"put", (PyCFunction)(void (*)(void))batchput_put, METH_FASTCALL | METH_KEYWORDS,
     "put(key, value, *, ttl=None, expires_at_ms=None): Batch.put."},
    {"detach", (PyCFunction)batchput_detach, METH_NOARGS,
     "Send every later put to the Python Batch.put (committed or discarded)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchPut_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.BatchPut",
    .tp_basicsize = sizeof(BatchPut),
    .tp_doc = "BatchPut(ops, batch, fallback): Batch.put's common case in C.",
    .tp_init = (initproc)batchput_init,
    .tp_traverse = (traverseproc)batchput_traverse,
    .tp_clear = (inquiry)batchput_clear,
    .tp_methods = batchput_methods,
    BITKV_BOUND_TYPE_SLOTS,
};

static PyMethodDef batch_methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))py_encode_batch, METH_FASTCALL,
     "encode_batch(ops, first_seq, now_ms) -> bytes | None: a plain batch's records."},
    {"apply_batch", (PyCFunction)(void (*)(void))py_apply_batch, METH_FASTCALL,
     "apply_batch(entries, expiries, hidden, slots, seg, slot, start, ops, data, now_ms) -> "
     "(end, live_delta, min_expiry): KeyDir.apply for each record of data."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_batch_init(PyObject *m)
{
    if (PyModule_AddType(m, &BatchPut_Type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, batch_methods);
}
