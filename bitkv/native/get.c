/* Reader, in bitkv._native: the get kernel, Store.get's common case in one C call.
 *
 * The store binds a Reader's ``get`` as its instance's ``get`` (store.py, _bind_reader), so
 * ``db.get(k)`` runs no Python frame when the record is the common case: a bytes key, indexed
 * in the IndexMap, without a TTL, whose record is below 4 KiB (the entry has a size hint),
 * plain (not compressed or encrypted), in a segment whose read-only map covers it, and intact
 * (header, key and CRC-32C check out). Everything else calls the pure-Python ``Store.get``
 * (the reference, which repeats the lookup): str keys, keys with a TTL (the store's clock,
 * seeing_expired() and the replica's held keys stay Python's), big or encoded records,
 * records past the map, closed maps and any failed check (Python decides between a race
 * and damage and raises what the reference raises).
 *
 * Memory safety against compaction and close, which replace and close segment maps while
 * gets run in other threads: the kernel holds the GIL from start to end and calls no Python
 * code between taking the map's buffer and copying the value out. The map is found afresh on
 * each get (slots[slot].mm), its buffer taken with PyObject_GetBuffer, which fails on a
 * closed mmap (-> the Python path) and, while held, makes mmap.close() raise BufferError
 * (Segment.close allows for that). Every read is bounded by the buffer's own length, not by
 * anything the Python side says about it.
 *
 * ``detach()`` (close, refresh) makes every later call take the Python path, so a ``get``
 * bound before close still raises ClosedError as the reference does.
 */
#include "native.h"
#include <structmember.h>


typedef struct {
    BitkvBound bound;   /* owner: the Store; fallback: Store.get(store, key, default) */
    PyObject *entries;  /* IndexMap, or NULL once detached */
    PyObject *expiries; /* dict: key -> expiry_ms, only keys with a TTL */
    PyObject *slots;    /* list: slot -> Segment or None (the SegmentTable's own list) */
    int plain_ok;       /* 0 in a strict encrypted store: no plain record is served here */
} Reader;

static PyObject *str_mm; /* interned "mm" */

/* Segment declares __slots__, so its ``mm`` is a member at a fixed offset in the instance.
 * Reading it there saves an attribute lookup per get (~10% of one); the offset is taken
 * from the class's own member descriptor, once per class, and used only for instances of
 * exactly that class (anything else goes through getattr). */
static PyTypeObject *mm_owner;   /* strong reference */
static Py_ssize_t mm_offset = -1;

static PyObject *
segment_mm(PyObject *seg)
{
    PyTypeObject *tp = Py_TYPE(seg);
    if (tp != mm_owner) {
        PyObject *descr = _PyType_Lookup(tp, str_mm); /* borrowed */
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type
            || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX
            || ((PyMemberDescrObject *)descr)->d_common.d_type != tp) {
            return PyObject_GetAttr(seg, str_mm);
        }
        Py_INCREF(tp);
        Py_XSETREF(mm_owner, tp);
        mm_offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    PyObject *mm = *(PyObject **)((char *)seg + mm_offset);
    if (mm == NULL) { /* never assigned: what getattr would raise */
        return PyObject_GetAttr(seg, str_mm);
    }
    Py_INCREF(mm);
    return mm;
}

static int
reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", "expiries", "slots", "store", "fallback", "plain_ok",
                             NULL};
    PyObject *entries, *expiries, *slots, *store, *fallback;
    int plain_ok;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!OOp:Reader", kwlist, &IndexMap_Type,
                                     &entries, &PyDict_Type, &expiries, &PyList_Type, &slots,
                                     &store, &fallback, &plain_ok)) {
        return -1;
    }
    if (bitkv_bound_init(&self->bound, store, fallback,
                         "the store this get belonged to is gone") < 0) {
        return -1;
    }
    Py_INCREF(entries);
    Py_INCREF(expiries);
    Py_INCREF(slots);
    Py_XSETREF(self->entries, entries);
    Py_XSETREF(self->expiries, expiries);
    Py_XSETREF(self->slots, slots);
    self->plain_ok = plain_ok;
    return 0;
}

static int
reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->expiries);
    Py_VISIT(self->slots);
    return bitkv_bound_traverse((PyObject *)self, visit, arg);
}

static int
reader_clear(Reader *self)
{
    Py_CLEAR(self->entries);
    Py_CLEAR(self->expiries);
    Py_CLEAR(self->slots);
    return bitkv_bound_clear((PyObject *)self);
}

enum { GM_FALLBACK, GM_LOOKUP, GM_DONE, GM_READ }; /* a key's state in get_many (below) */

/* One key's read, by get and get_many alike: the key, and once its record is taken, the
 * segment map's buffer held and the record in it. ``state`` and ``h`` are get_many's. */
typedef struct {
    int state;
    const unsigned char *key; /* the key's bytes (the keys tuple keeps the object alive) */
    size_t klen;
    uint64_t h;
    PyObject *mm; /* GM_READ: a strong reference to the map, whose buffer ``view`` is held */
    Py_buffer view;
    const unsigned char *record; /* GM_READ: inside view, ``size`` bytes */
    size_t size;
} KeyRead;

/* For a key whose candidate entry is ``entry`` (get_many's step 2): take its segment's
 * buffer, and if the entry's size hint lies inside it, prefetch the record and return 1 (the
 * buffer held, for record_value, then release_record); 0 (nothing held) where the fast path
 * declines. Never fails. */
static inline int
take_record(Reader *self, KeyRead *g, uint64_t entry)
{
    size_t size = (size_t)bitkv_entry_size(entry);
    size_t slot = (size_t)bitkv_entry_slot(entry);
    size_t offset = (size_t)bitkv_entry_offset(entry);
    if (size < BITKV_HEADER_SIZE || !self->plain_ok
        || slot >= (size_t)PyList_GET_SIZE(self->slots)) {
        return 0;
    }
    PyObject *seg = PyList_GET_ITEM(self->slots, (Py_ssize_t)slot); /* borrowed */
    if (seg == Py_None) {
        return 0;
    }
    Py_INCREF(seg);
    PyObject *mm = segment_mm(seg);
    Py_DECREF(seg);
    if (mm == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (mm == Py_None || PyObject_GetBuffer(mm, &g->view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* a closed map (compaction, close()): the reference decides */
        Py_DECREF(mm);
        return 0;
    }
    /* offset + size cannot overflow: both came from a 44-bit field. */
    if (g->view.len < 0 || offset + size > (size_t)g->view.len) {
        PyBuffer_Release(&g->view);
        Py_DECREF(mm);
        return 0;
    }
    g->mm = mm;
    g->record = (const unsigned char *)g->view.buf + offset;
    g->size = size;
    __builtin_prefetch(g->record);
    __builtin_prefetch(g->record + size - 1); /* a record may straddle two cache lines */
    return 1;
}

static inline void
release_record(KeyRead *g)
{
    PyBuffer_Release(&g->view);
    Py_CLEAR(g->mm);
    g->state = GM_FALLBACK;
}

/* The value if the record taken is an intact plain record of the key (get_many's step 3),
 * else NULL with no error set (the fallback decides), or NULL with MemoryError. */
static inline PyObject *
record_value(const KeyRead *g)
{
    const unsigned char *p = g->record;
    BitkvHeader h;
    bitkv_read_header(p, &h);
    /* Batch bits are fine (the record is a plain value); any other flag is not. */
    if (!(h.flags & (uint8_t)~BITKV_BATCH_FLAGS) && h.key_len == g->klen
        && BITKV_HEADER_SIZE + g->klen + (size_t)h.value_len == g->size
        && memcmp(p + BITKV_HEADER_SIZE, g->key, g->klen) == 0
        && bitkv_crc32c_extend(0, p + 4, g->size - 4) == h.crc) {
        return PyBytes_FromStringAndSize((const char *)p + BITKV_HEADER_SIZE + g->klen,
                                         (Py_ssize_t)h.value_len);
    }
    return NULL;
}

/* The value of the record at ``entry`` if the fast path can serve it, else NULL with no
 * error set (the caller falls back). NULL with an error set only for MemoryError. A get is
 * get_many's steps 2 and 3 for a group of one: the same bounds, the same checks. */
static PyObject *
read_plain(Reader *self, const unsigned char *key, size_t klen, uint64_t entry)
{
    KeyRead r; /* not zeroed (~16 stores a get): take_record sets what release_record reads */
    r.key = key;
    r.klen = klen;
    if (!take_record(self, &r, entry)) {
        return NULL;
    }
    PyObject *value = record_value(&r);
    release_record(&r);
    return value;
}

static PyObject *
reader_get(Reader *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || nargs < 1 || nargs > 2) {
        /* get(key=..., default=...), or a wrong call: rare; the reference parses it (and
         * says what is wrong, in its words). */
        return bitkv_bound_fallback(&self->bound, args, nargs, kwnames);
    }
    PyObject *key = args[0], *dflt = nargs == 2 ? args[1] : Py_None;
    if (self->entries == NULL || !PyBytes_CheckExact(key)) {
        return bitkv_bound_fallback(&self->bound, args, nargs, NULL);
    }
    Py_ssize_t klen = PyBytes_GET_SIZE(key);
    if (klen == 0 || klen > 0xFFFF) { /* the reference raises what it raises */
        return bitkv_bound_fallback(&self->bound, args, nargs, NULL);
    }
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    /* The candidate entry, found without reading the key's bytes in the index's arena (one
     * cache miss fewer, ~15% of a get at 200k keys): read_plain compares the key with the
     * record's, whose CRC covers it, so an entry of another key with the same hash bits is
     * never served; it fails that check and the Python path looks the key up exactly. An
     * entry always points at a record of its own key (or at damage, which fails the CRC). */
    uint64_t entry;
    if (!bitkv_index_candidate(self->entries, k, (size_t)klen, &entry)) {
        Py_INCREF(dflt); /* no slot with the key's hash bits: certainly absent */
        return dflt;
    }
    if (PyDict_GET_SIZE(self->expiries)) {
        int has_ttl = PyDict_Contains(self->expiries, key);
        if (has_ttl < 0) {
            return NULL;
        }
        if (has_ttl) { /* the clock is the store's */
            return bitkv_bound_fallback(&self->bound, args, nargs, NULL);
        }
    }
    PyObject *value = read_plain(self, k, (size_t)klen, entry);
    if (value != NULL) {
        return value;
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    return bitkv_bound_fallback(&self->bound, args, nargs, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* get_many: Store.get_many's kernel, many gets in one call, their DRAM misses overlapped.
 *
 * At tens of millions of keys a get takes two dependent cache misses (the IndexMap slot, then
 * the record's first bytes in the segment map) and a single get cannot overlap them. A batch
 * can (memory-level parallelism, as RocksDB's MultiGet): for a group of GET_MANY_GROUP keys,
 * (1) hash each key and prefetch its home slot, (2) read each slot and take its segment's
 * buffer and prefetch the record, (3) verify and copy each record. Each key gets exactly what
 * reader_get gives it: the same candidate lookup, the same TTL rule, the same checks, and
 * everything else goes to the same fallback, Store.get, one key at a time.
 *
 * The memory-safety rules of reader_get hold per group: the GIL is held from (2) to the end
 * of (3) and no Python code runs in between (the fallbacks of a group run after its buffers
 * are released; only segment_mm's getattr, for a segment of another class than the store's,
 * could run some, and even then a held buffer makes mmap.close() fail and the index is held
 * by a strong reference), every buffer is taken with PyObject_GetBuffer and every read
 * bounded by its length. The keys are first copied into a tuple of our own (a caller's list may change while
 * a fallback runs Python code); the result list is allocated before any buffer is taken (an
 * allocation of a GC-tracked object may run the collector, hence finalizers). Every
 * GET_MANY_YIELD_KEYS keys, with no buffer held, other threads may take the GIL. */
#ifndef GET_MANY_GROUP
#define GET_MANY_GROUP 16
#endif
#ifndef GET_MANY_YIELD_KEYS
#define GET_MANY_YIELD_KEYS 4096
#endif

/* The one call to the reference for a key the kernel does not serve (Store.get). */
static PyObject *
get_many_fallback(Reader *self, PyObject *key, PyObject *dflt)
{
    PyObject *args[2] = {key, dflt};
    return bitkv_bound_fallback(&self->bound, args, 2, NULL);
}

/* Fill out[start : start + n] with the results of keys[start : start + n] (n at most
 * GET_MANY_GROUP). 0, or -1 with an error set (every buffer released). */
static int
get_many_group(Reader *self, PyObject *keys, Py_ssize_t start, Py_ssize_t n, PyObject *dflt,
               PyObject *out)
{
    KeyRead group[GET_MANY_GROUP];
    /* NULL once detached: every key to the fallback. A strong reference for the group:
     * segment_mm's getattr (a Segment that is not the usual class) may run Python code, and
     * another thread could then detach the reader and drop the last reference. */
    PyObject *entries = self->entries;
    Py_XINCREF(entries);
    int has_ttls = PyDict_GET_SIZE(self->expiries) > 0;
    /* (1) hash and prefetch the home slots */
    for (Py_ssize_t i = 0; i < n; i++) {
        KeyRead *g = &group[i];
        PyObject *key = PyTuple_GET_ITEM(keys, start + i);
        g->state = GM_FALLBACK;
        g->mm = NULL;
        if (entries != NULL && PyBytes_CheckExact(key)) {
            Py_ssize_t klen = PyBytes_GET_SIZE(key);
            if (klen > 0 && klen <= 0xFFFF) { /* else the reference raises what it raises */
                g->key = (const unsigned char *)PyBytes_AS_STRING(key);
                g->klen = (size_t)klen;
                g->h = bitkv_index_hash(g->key, g->klen);
                bitkv_index_prefetch(entries, g->h);
                g->state = GM_LOOKUP;
            }
        }
    }
    /* (2) read the slots, take the maps' buffers, prefetch the records */
    for (Py_ssize_t i = 0; i < n; i++) {
        KeyRead *g = &group[i];
        if (g->state != GM_LOOKUP) {
            continue;
        }
        uint64_t entry;
        if (!bitkv_index_candidate_hashed(entries, g->h, &entry)) {
            Py_INCREF(dflt); /* no slot with the key's hash bits: certainly absent */
            PyList_SET_ITEM(out, start + i, dflt);
            g->state = GM_DONE;
            continue;
        }
        g->state = GM_FALLBACK;
        if (has_ttls) {
            int has_ttl = PyDict_Contains(self->expiries, PyTuple_GET_ITEM(keys, start + i));
            if (has_ttl < 0) {
                goto error;
            }
            if (has_ttl) {
                continue; /* the clock is the store's */
            }
        }
        if (take_record(self, g, entry)) {
            g->state = GM_READ;
        }
    }
    /* (3) verify and copy */
    for (Py_ssize_t i = 0; i < n; i++) {
        KeyRead *g = &group[i];
        if (g->state != GM_READ) {
            continue;
        }
        PyObject *value = record_value(g);
        release_record(g);
        if (value != NULL) {
            PyList_SET_ITEM(out, start + i, value);
            g->state = GM_DONE;
        } else if (PyErr_Occurred()) {
            goto error;
        }
    }
    /* every buffer released: now Python code may run */
    Py_XDECREF(entries);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (group[i].state == GM_FALLBACK) {
            PyObject *value = get_many_fallback(self, PyTuple_GET_ITEM(keys, start + i), dflt);
            if (value == NULL) {
                return -1;
            }
            PyList_SET_ITEM(out, start + i, value);
        }
    }
    return 0;
error:
    for (Py_ssize_t i = 0; i < n; i++) {
        if (group[i].state == GM_READ) {
            release_record(&group[i]);
        }
    }
    Py_XDECREF(entries);
    return -1;
}

static PyObject *
reader_get_many(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get_many() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (self->expiries == NULL || self->slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader is not initialised");
        return NULL;
    }
    PyObject *dflt = nargs == 2 ? args[1] : Py_None;
    PyObject *keys = PySequence_Tuple(args[0]); /* our own: no caller can change it */
    if (keys == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    PyObject *out = PyList_New(n); /* NULL items until filled; a failure frees it as is */
    if (out == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    Py_ssize_t since_yield = 0;
    for (Py_ssize_t start = 0; start < n; start += GET_MANY_GROUP) {
        Py_ssize_t len = n - start < GET_MANY_GROUP ? n - start : GET_MANY_GROUP;
        if (get_many_group(self, keys, start, len, dflt, out) < 0) {
            Py_DECREF(out);
            Py_DECREF(keys);
            return NULL;
        }
        since_yield += len;
        if (since_yield >= GET_MANY_YIELD_KEYS && start + len < n) {
            /* a long batch lets other threads in, as a loop of gets would */
            since_yield = 0;
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
    }
    Py_DECREF(keys);
    return out;
}

/* Also lets go of the index: a store's reader is replaced at refresh, and one bound earlier
 * must not keep the old index alive. */
static PyObject *
reader_detach(Reader *self, PyObject *Py_UNUSED(ignored))
{
    self->bound.attached = 0;
    Py_CLEAR(self->entries);
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"get", (PyCFunction)(void (*)(void))reader_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None): Store.get's result for key; the common case in C, the rest "
     "through the store's Python get."},
    {"get_many", (PyCFunction)(void (*)(void))reader_get_many, METH_FASTCALL,
     "get_many(keys, default=None): the list of get(key, default) for each of keys, in "
     "order; many gets' memory accesses overlapped, the rest through the store's Python get."},
    {"detach", (PyCFunction)reader_detach, METH_NOARGS,
     "Send every later get to the store's Python get (the store closed or reloaded)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Reader_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_doc = "Reader(entries, expiries, slots, store, fallback, plain_ok): Store.get in C.",
    .tp_init = (initproc)reader_init,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_methods = reader_methods,
    BITKV_BOUND_TYPE_SLOTS,
};

int
bitkv_get_init(PyObject *m)
{
    str_mm = PyUnicode_InternFromString("mm");
    if (str_mm == NULL || PyModule_AddType(m, &Reader_Type) < 0) {
        return -1;
    }
    return 0;
}
