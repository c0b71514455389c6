/* The single-put kernel: Store.put(key, value) for the common case in one C call.
 *
 * put(store, key, value) -> bool. True: the record was written into the active segment's
 * shared map and indexed, exactly as the Python path in Store.put would have done it (the
 * reference: its inlined LogWriter.append and KeyDir.apply). False: nothing was done, for the
 * Python path to do everything (a key or value that is not plain bytes in range, writes
 * refused, no room before the preallocated end, a rotation due, a map that is not writable).
 *
 * The store's writer lock (the threading.Lock every Python-level change of the log and the
 * index takes) is held from the first read of the log's state to the last update, so this
 * interleaves with incr, batches, rotation and compaction's switch as a Python put does.
 * Every length is checked against the map's real length (the buffer's, not the attribute's)
 * before a byte is stored, and holding the buffer keeps the map from being closed meanwhile.
 */
#include "native.h"

#define KEY_MAX 65535u
#define VALUE_MAX (64u * 1024 * 1024)
#define SIZE_BITS 12
#define SIZE_MASK ((1u << SIZE_BITS) - 1)
#define SLOT_SHIFT (32 + SIZE_BITS)
#define MAX_OFFSET 0xFFFFFFFFull
#define MAX_SLOTS 65536

static PyObject *s_lock, *s_log, *s_refused, *s_active, *s_size, *s_allocated, *s_mm, *s_slot,
    *s_live_bytes, *s_keydir, *s_entries, *s_slots, *s_hidden, *s_expiries, *s_next_seq,
    *s_max_segment_size, *s_acquire, *s_release, *s_forget;

/* An int attribute as a C value in [0, limit]; -1 (no error set) if it is anything else. */
static long long
int_attr(PyObject *obj, PyObject *name, long long limit)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -2;
    }
    long long r = -1;
    if (PyLong_CheckExact(v)) {
        r = PyLong_AsLongLong(v);
        if (r == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            r = -1;
        }
        else if (r < 0 || r > limit) {
            r = -1;
        }
    }
    Py_DECREF(v);
    return r;
}

static int
set_int_attr(PyObject *obj, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) {
        return -1;
    }
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* Add delta to obj.name (an int). */
static int
add_int_attr(PyObject *obj, PyObject *name, long long delta)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -1;
    }
    PyObject *d = PyLong_FromLongLong(delta);
    if (d == NULL) {
        Py_DECREF(v);
        return -1;
    }
    PyObject *sum = PyNumber_Add(v, d);
    Py_DECREF(v);
    Py_DECREF(d);
    if (sum == NULL) {
        return -1;
    }
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

/* Remove key from a dict attribute if the dict is non-empty (dict.pop(key, None)). */
static int
discard_from(PyObject *owner, PyObject *name, PyObject *key)
{
    PyObject *d = PyObject_GetAttr(owner, name);
    if (d == NULL) {
        return -1;
    }
    int r = 0;
    if (PyDict_Check(d) && PyDict_GET_SIZE(d) > 0) {
        PyObject *found = PyDict_GetItemWithError(d, key);
        if (found != NULL) {
            r = PyDict_DelItem(d, key);
        }
        else if (PyErr_Occurred()) {
            r = -1;
        }
    }
    else if (d != Py_None && !PyDict_Check(d)) {
        PyObject *res = PyObject_CallMethod(d, "pop", "OO", key, Py_None);
        if (res == NULL) {
            r = -1;
        }
        Py_XDECREF(res);
    }
    Py_DECREF(d);
    return r;
}

/* KeyDir.forget(old): the overwritten record's bytes become dead in their segment. */
static int
forget(PyObject *keydir, uint64_t old)
{
    unsigned size = (unsigned)(old & SIZE_MASK);
    if (size == 0) {  /* no size hint: the record's header says it; the Python rule reads it */
        PyObject *o = PyLong_FromUnsignedLongLong(old);
        if (o == NULL) {
            return -1;
        }
        PyObject *res = PyObject_CallMethodOneArg(keydir, s_forget, o);
        Py_DECREF(o);
        Py_XDECREF(res);
        return res == NULL ? -1 : 0;
    }
    PyObject *slots = PyObject_GetAttr(keydir, s_slots);
    if (slots == NULL) {
        return -1;
    }
    Py_ssize_t slot = (Py_ssize_t)(old >> SLOT_SHIFT);
    int r;
    if (!PyList_Check(slots) || slot >= PyList_GET_SIZE(slots)
        || PyList_GET_ITEM(slots, slot) == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "bitkv: an index entry names a free segment slot");
        r = -1;
    }
    else {
        PyObject *owner = PyList_GET_ITEM(slots, slot);
        Py_INCREF(owner);
        r = add_int_attr(owner, s_live_bytes, -(long long)size);
        Py_DECREF(owner);
    }
    Py_DECREF(slots);
    return r;
}

/* The part under the writer lock: 1 done, 0 fall back (nothing changed), -1 error. */
static int
put_locked(PyObject *store, PyObject *key, PyObject *value)
{
    int result = -1;
    PyObject *log = NULL, *seg = NULL, *mm = NULL, *keydir = NULL, *entries = NULL;
    Py_buffer view = {0};
    int have_view = 0;

    log = PyObject_GetAttr(store, s_log);
    if (log == NULL) {
        goto done;
    }
    PyObject *refused = PyObject_GetAttr(log, s_refused);
    if (refused == NULL) {
        goto done;
    }
    int is_refused = refused != Py_False;
    Py_DECREF(refused);
    if (is_refused) {  /* the Python path explains why */
        result = 0;
        goto done;
    }
    long long seq = int_attr(store, s_next_seq, INT64_MAX - 1);
    long long max_size = int_attr(store, s_max_segment_size, (long long)MAX_OFFSET);
    seg = PyObject_GetAttr(log, s_active);
    if (seq == -2 || max_size == -2 || seg == NULL) {
        goto done;
    }
    if (seq < 0 || max_size < 0 || seg == Py_None) {
        result = 0;
        goto done;
    }
    long long offset = int_attr(seg, s_size, (long long)MAX_OFFSET);
    long long allocated = int_attr(seg, s_allocated, (long long)MAX_OFFSET);
    long long slot = int_attr(seg, s_slot, MAX_SLOTS - 1);
    if (offset == -2 || allocated == -2 || slot == -2) {
        goto done;
    }
    size_t key_len = (size_t)PyBytes_GET_SIZE(key);
    size_t value_len = (size_t)PyBytes_GET_SIZE(value);
    long long size = (long long)(BITKV_HEADER_SIZE + key_len + value_len);
    long long end = offset + size;
    if (offset < 0 || allocated < 0 || slot < 0 || end > max_size || end > allocated) {
        result = 0;  /* a rotation or a preallocation is due: the Python path does it */
        goto done;
    }
    mm = PyObject_GetAttr(seg, s_mm);
    keydir = PyObject_GetAttr(store, s_keydir);
    if (mm == NULL || keydir == NULL) {
        goto done;
    }
    entries = PyObject_GetAttr(keydir, s_entries);
    if (entries == NULL) {
        goto done;
    }
    if (mm == Py_None || !BitkvIndexMap_Check(entries)
        || PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();  /* a read-only map, or a dict index: the Python path */
        result = 0;
        goto done;
    }
    have_view = 1;
    if (view.len < end) {  /* the map is shorter than the segment claims: not ours to fix */
        result = 0;
        goto done;
    }

    /* The record (docs/format.md, "Data records"), encoded in place. */
    unsigned char *p = (unsigned char *)view.buf + offset;
    p[4] = 0;  /* flags */
    p[5] = 0;  /* reserved */
    bitkv_put_le16(p + 6, (uint16_t)key_len);
    bitkv_put_le32(p + 8, (uint32_t)value_len);
    bitkv_put_le64(p + 12, (uint64_t)seq);
    bitkv_put_le64(p + 20, 0);  /* expiry_ms */
    memcpy(p + BITKV_HEADER_SIZE, PyBytes_AS_STRING(key), key_len);
    memcpy(p + BITKV_HEADER_SIZE + key_len, PyBytes_AS_STRING(value), value_len);
    bitkv_put_le32(p, bitkv_crc32c_extend(0, p + 4, (size_t)size - 4));
    PyBuffer_Release(&view);
    have_view = 0;

    /* As the Python path: the segment's size, the seq, then the index and accounting. */
    if (set_int_attr(seg, s_size, end) < 0 || set_int_attr(store, s_next_seq, seq + 1) < 0) {
        goto done;
    }
    uint64_t entry = ((uint64_t)slot << SLOT_SHIFT) | ((uint64_t)offset << SIZE_BITS)
                     | (size <= (long long)SIZE_MASK ? (uint64_t)size : 0);
    int had_old = 0;
    uint64_t old = 0;
    if (bitkv_index_set(entries, key, entry, &had_old, &old) < 0) {
        goto done;
    }
    if (had_old && forget(keydir, old) < 0) {
        goto done;
    }
    if (add_int_attr(seg, s_live_bytes, size) < 0 || discard_from(keydir, s_hidden, key) < 0
        || discard_from(keydir, s_expiries, key) < 0) {
        goto done;
    }
    result = 1;
done:
    if (have_view) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(entries);
    Py_XDECREF(keydir);
    Py_XDECREF(mm);
    Py_XDECREF(seg);
    Py_XDECREF(log);
    return result;
}

static PyObject *
native_put(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "put(store, key, value) takes 3 arguments");
        return NULL;
    }
    PyObject *store = args[0], *key = args[1], *value = args[2];
    if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value) || PyBytes_GET_SIZE(key) == 0
        || (size_t)PyBytes_GET_SIZE(key) > KEY_MAX
        || (size_t)PyBytes_GET_SIZE(value) > VALUE_MAX) {
        Py_RETURN_FALSE;  /* converted and checked (with its error) by the Python path */
    }
    PyObject *lock = PyObject_GetAttr(store, s_lock);
    if (lock == NULL) {
        return NULL;
    }
    /* Blocking acquire through the lock's own method: it waits with the GIL released. */
    PyObject *got = PyObject_CallMethodNoArgs(lock, s_acquire);
    if (got == NULL) {
        Py_DECREF(lock);
        return NULL;
    }
    Py_DECREF(got);
    int r = put_locked(store, key, value);
    /* Release even after an error, keeping that error. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *released = PyObject_CallMethodNoArgs(lock, s_release);
    Py_DECREF(lock);
    if (released == NULL) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc_value);
        Py_XDECREF(exc_tb);
        return NULL;
    }
    Py_DECREF(released);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyMethodDef put_methods[] = {
    {"put", (PyCFunction)(void (*)(void))native_put, METH_FASTCALL,
     "put(store, key, value) -> bool: Store.put's common case in one call (bitkv/native/put.c);"
     " False if the Python path must do it."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_put_init(PyObject *m)
{
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_lock, "_lock"}, {&s_log, "_log"}, {&s_refused, "refused"}, {&s_active, "active"},
        {&s_size, "size"}, {&s_allocated, "allocated"}, {&s_mm, "mm"}, {&s_slot, "slot"},
        {&s_live_bytes, "live_bytes"}, {&s_keydir, "_keydir"}, {&s_entries, "entries"},
        {&s_slots, "slots"}, {&s_hidden, "hidden"}, {&s_expiries, "expiries"},
        {&s_next_seq, "_next_seq"}, {&s_max_segment_size, "max_segment_size"},
        {&s_acquire, "acquire"}, {&s_release, "release"}, {&s_forget, "forget"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL) {
            return -1;
        }
    }
    return PyModule_AddFunctions(m, put_methods);
}
