/* The single-put kernel: Store.put(key, value) for the common case in one C call.
 *
 * put(store, key, value) -> bool. True: the record was written into the active segment's
 * shared map and indexed, exactly as the Python path in Store.put would have done it (the
 * reference: its inlined LogWriter.append and KeyDir.apply). False: nothing was done, for the
 * Python path to do everything (a key or value that is not plain bytes in range, writes
 * refused, no room before the preallocated end, a rotation due, a map that is not writable).
 *
 * Writer(store, fallback) binds the same kernel with no Python frame in between: the store
 * makes a Writer's ``put`` its instance's ``put`` (store.py, _bind_writer), as it does with
 * the get kernel's Reader, so ``db.put(k, v)`` is one C call; any other call (options, a
 * declined put) goes to ``fallback``, the pure-Python ``Store.put``.
 *
 * The store's writer lock (the threading.Lock every Python-level change of the log and the
 * index takes) is held from the first read of the log's state to the last update, so this
 * interleaves with incr, batches, rotation and compaction's switch as a Python put does.
 * Every length is checked against the map's real length (the buffer's, not the attribute's)
 * before a byte is stored, and holding the buffer keeps the map from being closed meanwhile.
 *
 * The ~15 attributes a put reads and the 4 it writes are reached through FastAttr: a
 * __slots__ member (Segment, KeyDir) at its fixed offset, an instance attribute (Store,
 * LogWriter) straight in the instance's dict, each checked once per class and valid while the
 * class is unchanged (its type version tag); anything else goes through getattr/setattr.
 */
#include "native.h"
#include <structmember.h>

#define KEY_MAX 65535u

/* -- attributes the fast way ------------------------------------------------------------ */

/* How one attribute name is reached on instances of one class: a __slots__ member at
 * ``offset`` (>= 0), or the instance dict (-1, when no class in the MRO defines the name, so
 * getattr would look in the instance dict and nowhere else). Valid while ``type`` keeps the
 * version tag ``version`` (CPython gives a class a new tag whenever it changes). */
typedef struct {
    const char *text;
    PyObject *name;     /* interned */
    PyTypeObject *type; /* strong reference; NULL: nothing cached */
    unsigned int version;
    Py_ssize_t offset;
} FastAttr;

/* 1 if fa now describes ``tp``; 0 if getattr/setattr must be used. Never fails. */
static int
fast_resolve(FastAttr *fa, PyTypeObject *tp)
{
    if (tp == fa->type && fa->version != 0 && tp->tp_version_tag == fa->version) {
        return 1;
    }
    PyObject *descr = _PyType_Lookup(tp, fa->name); /* borrowed; gives tp a version tag */
    unsigned int version = tp->tp_version_tag;
    if (version == 0) {
        return 0;
    }
    Py_ssize_t offset;
    if (descr == NULL) {
        if (tp->tp_dictoffset == 0) {
            return 0; /* no instance dict: getattr raises AttributeError */
        }
        offset = -1;
    }
    else if (Py_TYPE(descr) == &PyMemberDescr_Type
             && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
             && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY)
             && PyType_IsSubtype(tp, ((PyMemberDescrObject *)descr)->d_common.d_type)) {
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    else {
        return 0;
    }
    Py_INCREF(tp);
    Py_XSETREF(fa->type, tp);
    fa->version = version;
    fa->offset = offset;
    return 1;
}

/* getattr(obj, name): a new reference, or NULL with an error set. */
static PyObject *
fast_get(FastAttr *fa, PyObject *obj)
{
    if (fast_resolve(fa, Py_TYPE(obj))) {
        if (fa->offset >= 0) {
            PyObject *v = *(PyObject **)((char *)obj + fa->offset);
            if (v != NULL) {
                Py_INCREF(v);
                return v;
            }
        }
        else {
            PyObject *dict = PyObject_GenericGetDict(obj, NULL);
            if (dict == NULL) {
                return NULL;
            }
            PyObject *v = PyDict_Check(dict) ? PyDict_GetItemWithError(dict, fa->name) : NULL;
            Py_XINCREF(v);
            Py_DECREF(dict);
            if (v != NULL || PyErr_Occurred()) {
                return v;
            }
        }
    } /* unset (getattr raises what it raises), or not a class we can read directly */
    return PyObject_GetAttr(obj, fa->name);
}

/* setattr(obj, name, value): 0, or -1 with an error set. */
static int
fast_set(FastAttr *fa, PyObject *obj, PyObject *value)
{
    if (fast_resolve(fa, Py_TYPE(obj))) {
        if (fa->offset >= 0) {
            PyObject **p = (PyObject **)((char *)obj + fa->offset);
            PyObject *old = *p;
            Py_INCREF(value);
            *p = value;
            Py_XDECREF(old);
            return 0;
        }
        PyObject *dict = PyObject_GenericGetDict(obj, NULL);
        if (dict == NULL) {
            return -1;
        }
        int r = PyDict_Check(dict) ? PyDict_SetItem(dict, fa->name, value)
                                   : PyObject_SetAttr(obj, fa->name, value);
        Py_DECREF(dict);
        return r;
    }
    return PyObject_SetAttr(obj, fa->name, value);
}

#define FAST_ATTR(var, text_) static FastAttr var = {.text = text_}
FAST_ATTR(a_lock, "_lock");
FAST_ATTR(a_log, "_log");
FAST_ATTR(a_refused, "refused");
FAST_ATTR(a_active, "active");
FAST_ATTR(a_size, "size");
FAST_ATTR(a_allocated, "allocated");
FAST_ATTR(a_mm, "mm");
FAST_ATTR(a_slot, "slot");
FAST_ATTR(a_live_bytes, "live_bytes");
FAST_ATTR(a_keydir, "_keydir");
FAST_ATTR(a_entries, "entries");
FAST_ATTR(a_slots, "slots");
FAST_ATTR(a_hidden, "hidden");
FAST_ATTR(a_expiries, "expiries");
FAST_ATTR(a_next_seq, "_next_seq");
FAST_ATTR(a_max_segment_size, "max_segment_size");
static FastAttr *all_attrs[] = {
    &a_lock, &a_log, &a_refused, &a_active, &a_size, &a_allocated, &a_mm, &a_slot,
    &a_live_bytes, &a_keydir, &a_entries, &a_slots, &a_hidden, &a_expiries, &a_next_seq,
    &a_max_segment_size,
};
static PyObject *s_acquire, *s_release, *s_forget, *s_pop;

/* An int attribute as a C value in [0, limit]; -1 (no error set) if it is anything else,
 * -2 if reading it failed (error set). */
static long long
int_attr(FastAttr *fa, PyObject *obj, long long limit)
{
    PyObject *v = fast_get(fa, obj);
    if (v == NULL) {
        return -2;
    }
    long long r = -1;
    if (PyLong_CheckExact(v)) {
        int overflow;
        r = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || r < 0 || r > limit) {
            r = -1;
        }
    }
    Py_DECREF(v);
    return r;
}

static int
set_int_attr(FastAttr *fa, PyObject *obj, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) {
        return -1;
    }
    int r = fast_set(fa, obj, v);
    Py_DECREF(v);
    return r;
}

/* obj.name += delta (an int: in C while it fits in 64 bits, else Python's addition). */
static int
add_int_attr(FastAttr *fa, PyObject *obj, long long delta)
{
    PyObject *v = fast_get(fa, obj);
    if (v == NULL) {
        return -1;
    }
    PyObject *sum = NULL;
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        long long s;
        if (!overflow && !(x == -1 && PyErr_Occurred()) && !__builtin_add_overflow(x, delta, &s)) {
            sum = PyLong_FromLongLong(s);
            Py_DECREF(v);
            v = NULL;
        }
    }
    if (v != NULL) {
        PyObject *d = PyLong_FromLongLong(delta);
        if (d != NULL) {
            sum = PyNumber_Add(v, d);
            Py_DECREF(d);
        }
        Py_DECREF(v);
    }
    if (sum == NULL) {
        return -1;
    }
    int r = fast_set(fa, obj, sum);
    Py_DECREF(sum);
    return r;
}

/* Remove key from a dict attribute if the dict is non-empty (dict.pop(key, None)). */
static int
discard_from(FastAttr *fa, PyObject *owner, PyObject *key)
{
    PyObject *d = fast_get(fa, owner);
    if (d == NULL) {
        return -1;
    }
    int r = 0;
    if (PyDict_CheckExact(d)) {
        if (PyDict_GET_SIZE(d) > 0) {
            r = bitkv_dict_discard(d, key);
        }
    }
    else if (d != Py_None && PyObject_IsTrue(d) != 0) { /* as the Python path: "if kd.hidden" */
        if (PyErr_Occurred()) {
            r = -1;
        }
        else {
            PyObject *res = PyObject_CallMethodObjArgs(d, s_pop, key, Py_None, NULL);
            if (res == NULL) {
                r = -1;
            }
            Py_XDECREF(res);
        }
    }
    Py_DECREF(d);
    return r;
}

/* KeyDir.forget(old): the overwritten record's bytes become dead in their segment. */
static int
forget(PyObject *keydir, uint64_t old)
{
    unsigned size = (unsigned)bitkv_entry_size(old);
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
    PyObject *slots = fast_get(&a_slots, keydir);
    if (slots == NULL) {
        return -1;
    }
    Py_ssize_t slot = (Py_ssize_t)bitkv_entry_slot(old);
    int r;
    if (!PyList_Check(slots) || slot >= PyList_GET_SIZE(slots)
        || PyList_GET_ITEM(slots, slot) == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "bitkv: an index entry names a free segment slot");
        r = -1;
    }
    else {
        PyObject *owner = PyList_GET_ITEM(slots, slot);
        Py_INCREF(owner);
        r = add_int_attr(&a_live_bytes, owner, -(long long)size);
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
    const unsigned char *kbytes = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t key_len = (size_t)PyBytes_GET_SIZE(key);
    size_t value_len = (size_t)PyBytes_GET_SIZE(value);

    keydir = fast_get(&a_keydir, store);
    if (keydir == NULL) {
        goto done;
    }
    entries = fast_get(&a_entries, keydir);
    if (entries == NULL) {
        goto done;
    }
    if (!BitkvIndexMap_Check(entries)) { /* a dict index: the Python path */
        result = 0;
        goto done;
    }
    /* The key's home slot in the index is fetched from memory while the record is encoded
     * (at 200k keys and more it is a cache miss, the largest single cost of an overwrite). */
    uint64_t hash = bitkv_index_hash(kbytes, key_len);
    bitkv_index_prefetch(entries, hash);

    log = fast_get(&a_log, store);
    if (log == NULL) {
        goto done;
    }
    PyObject *refused = fast_get(&a_refused, log);
    if (refused == NULL) {
        goto done;
    }
    int is_refused = refused != Py_False;
    Py_DECREF(refused);
    if (is_refused) {  /* the Python path explains why */
        result = 0;
        goto done;
    }
    long long seq = int_attr(&a_next_seq, store, INT64_MAX - 1);
    long long max_size = int_attr(&a_max_segment_size, store, (long long)BITKV_MAX_OFFSET);
    seg = fast_get(&a_active, log);
    if (seq == -2 || max_size == -2 || seg == NULL) {
        goto done;
    }
    if (seq < 0 || max_size < 0 || seg == Py_None) {
        result = 0;
        goto done;
    }
    long long offset = int_attr(&a_size, seg, (long long)BITKV_MAX_OFFSET);
    long long allocated = int_attr(&a_allocated, seg, (long long)BITKV_MAX_OFFSET);
    long long slot = int_attr(&a_slot, seg, BITKV_MAX_SLOTS - 1);
    if (offset == -2 || allocated == -2 || slot == -2) {
        goto done;
    }
    long long size = (long long)(BITKV_HEADER_SIZE + key_len + value_len);
    long long end = offset + size;
    if (offset < 0 || allocated < 0 || slot < 0 || end > max_size || end > allocated) {
        result = 0;  /* a rotation or a preallocation is due: the Python path does it */
        goto done;
    }
    mm = fast_get(&a_mm, seg);
    if (mm == NULL) {
        goto done;
    }
    if (mm == Py_None || PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();  /* a read-only map: the Python path */
        result = 0;
        goto done;
    }
    have_view = 1;
    if (view.len < end) {  /* the map is shorter than the segment claims: not ours to fix */
        result = 0;
        goto done;
    }

    /* The record (docs/format.md, "Data records"), encoded in place: no flags, no expiry. */
    bitkv_write_record((unsigned char *)view.buf + offset, 0, kbytes, key_len,
                       PyBytes_AS_STRING(value), value_len, (uint64_t)seq, 0);
    PyBuffer_Release(&view);
    have_view = 0;
    /* The home slot is in cache by now: fetch the key it holds (if its hash bits match, an
     * overwrite) while the segment's size and the seq are updated. */
    bitkv_index_prefetch_key(entries, hash);

    /* As the Python path: the segment's size, the seq, then the index and accounting. */
    if (set_int_attr(&a_size, seg, end) < 0 || set_int_attr(&a_next_seq, store, seq + 1) < 0) {
        goto done;
    }
    uint64_t entry = bitkv_entry((uint64_t)slot, (uint64_t)offset, (uint64_t)size);
    int had_old = 0;
    uint64_t old = 0;
    if (bitkv_index_set_hashed(entries, kbytes, key_len, hash, entry, &had_old, &old) < 0) {
        goto done;
    }
    if (had_old && forget(keydir, old) < 0) {
        goto done;
    }
    /* A key in ``hidden`` is never indexed (KeyDir's rules move a key from one to the other;
     * replay.c relies on the same), so only a new key can be there: an overwrite skips it. */
    if (add_int_attr(&a_live_bytes, seg, size) < 0
        || (!had_old && discard_from(&a_hidden, keydir, key) < 0)
        || discard_from(&a_expiries, keydir, key) < 0) {
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

/* A key and a value the kernel takes (anything else is converted and checked, with its
 * error, by the Python path). */
static inline int
plain_pair(PyObject *key, PyObject *value)
{
    return PyBytes_CheckExact(key) && PyBytes_CheckExact(value) && PyBytes_GET_SIZE(key) > 0
           && (size_t)PyBytes_GET_SIZE(key) <= KEY_MAX
           && (size_t)PyBytes_GET_SIZE(value) <= BITKV_MAX_VALUE_SIZE;
}

/* put_locked under the store's writer lock: 1 done, 0 declined, -1 error (set). */
static int
put_with_lock(PyObject *store, PyObject *key, PyObject *value)
{
    PyObject *lock = fast_get(&a_lock, store);
    if (lock == NULL) {
        return -1;
    }
    /* Blocking acquire through the lock's own method: it waits with the GIL released. */
    PyObject *got = PyObject_CallMethodNoArgs(lock, s_acquire);
    if (got == NULL) {
        Py_DECREF(lock);
        return -1;
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
        return -1;
    }
    Py_DECREF(released);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return r;
}

static PyObject *
native_put(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "put(store, key, value) takes 3 arguments");
        return NULL;
    }
    if (!plain_pair(args[1], args[2])) {
        Py_RETURN_FALSE;
    }
    int r = put_with_lock(args[0], args[1], args[2]);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

/* -- Writer: the kernel bound as a store's ``put`` ----------------------------------------- */

typedef struct {
    BitkvBound bound; /* owner: the Store; fallback: Store.put(store, key, value, **options) */
} Writer;

static int
writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"store", "fallback", NULL};
    PyObject *store, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Writer", kwlist, &store, &fallback)) {
        return -1;
    }
    return bitkv_bound_init(&self->bound, store, fallback,
                            "the store this put belonged to is gone");
}

static PyObject *
writer_put(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *store = bitkv_bound_owner(&self->bound);
    if (store == NULL) {
        return NULL;
    }
    if (self->bound.attached && nargs == 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)
        && plain_pair(args[0], args[1])) {
        int r = put_with_lock(store, args[0], args[1]);
        if (r != 0) {
            Py_DECREF(store);
            if (r < 0) {
                return NULL;
            }
            Py_RETURN_TRUE;
        }
    }
    /* Options, a key or value to convert, or a put the kernel declined: the reference. */
    PyObject *result = bitkv_bound_call(&self->bound, store, args, nargs, kwnames);
    Py_DECREF(store);
    return result;
}

static PyMethodDef writer_methods[] = {
    {"put", (PyCFunction)(void (*)(void))writer_put, METH_FASTCALL | METH_KEYWORDS,
     "put(key, value, **options): Store.put's result; the common case in C (the put kernel), "
     "everything else through the store's Python put."},
    {"detach", bitkv_bound_detach, METH_NOARGS,
     "Send every later put to the store's Python put (the store closed)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Writer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_doc = "Writer(store, fallback): Store.put in C, bound as the store's put.",
    .tp_init = (initproc)writer_init,
    .tp_traverse = bitkv_bound_traverse, /* a Writer holds nothing beyond its BitkvBound */
    .tp_clear = bitkv_bound_clear,
    .tp_methods = writer_methods,
    BITKV_BOUND_TYPE_SLOTS,
};

static PyMethodDef put_methods[] = {
    {"put", (PyCFunction)(void (*)(void))native_put, METH_FASTCALL,
     "put(store, key, value) -> bool: Store.put's common case in one call (bitkv/native/put.c);"
     " False if the Python path must do it."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_put_init(PyObject *m)
{
    for (size_t i = 0; i < sizeof(all_attrs) / sizeof(all_attrs[0]); i++) {
        all_attrs[i]->name = PyUnicode_InternFromString(all_attrs[i]->text);
        if (all_attrs[i]->name == NULL) {
            return -1;
        }
    }
    s_acquire = PyUnicode_InternFromString("acquire");
    s_release = PyUnicode_InternFromString("release");
    s_forget = PyUnicode_InternFromString("forget");
    s_pop = PyUnicode_InternFromString("pop");
    if (s_acquire == NULL || s_release == NULL || s_forget == NULL || s_pop == NULL
        || PyModule_AddType(m, &Writer_Type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, put_methods);
}
