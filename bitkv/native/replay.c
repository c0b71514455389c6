/* The indexing loops of opening a store, in bitkv._native: hint entries and plain runs of
 * records applied straight into the KeyDir's IndexMap (issue 14).
 *
 * bitkv/indexing.py holds the pure-Python reference of each function and chooses between the
 * two; the results (the index, ``expiries``, ``hidden``, every segment's ``live_bytes``, the
 * return values) are the same, which tests/test_native_replay.py checks on random stores.
 *
 *   hint_check(fixed, keys, covered) -> bool
 *   hint_apply(keydir, slot, fixed, keys, covered, now_ms, helper=False) -> (ok, loaded)
 *   plain_run(keydir, slot, buf, pos, end, max_seq, now_ms) -> (stop, max_seq, loaded)
 *
 * The rules are KeyDir.apply's (bitkv/keydir.py): the record applied last wins; a tombstone or
 * an expired record removes the key and, while ``hidden`` is a dict (the segment that becomes
 * the active one), is remembered there; the bytes of the record a key leaves are taken from
 * the live bytes of the segment it was in. No Python object is made for a key unless a dict
 * needs it (a key with a TTL, a hidden record, a key leaving ``expiries``/``hidden``).
 *
 * Safety: every length is checked against the buffer before it is used (records against
 * ``end``, which must lie inside ``buf``; hint keys against the key area), so no input reads
 * past a buffer. Live-byte changes are summed per slot in C and added to each segment's
 * ``live_bytes`` once at the end, also when an error stops the loop, so that what was applied
 * is accounted.
 */

#include "native.h"

/* The positional-argument count check of a METH_FASTCALL function (public API only). */
static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", name, want,
                     nargs);
        return 0;
    }
    return 1;
}

/* The state of one call: the KeyDir's parts (strong references) and the accounting. */
typedef struct {
    PyObject *entries;  /* IndexMap */
    PyObject *expiries; /* dict */
    PyObject *hidden;   /* dict, or NULL for None */
    PyObject *slots;    /* list of segments (or None) */
    Py_ssize_t nslots;
    int64_t *delta; /* live-byte change per slot */
    Py_ssize_t slot;
    uint64_t now_ms; /* 0: nothing is expired (expiry_ms 0 means never) */
    Py_ssize_t loaded;
} Apply;

static void
apply_release(Apply *a)
{
    Py_CLEAR(a->entries);
    Py_CLEAR(a->expiries);
    Py_CLEAR(a->hidden);
    Py_CLEAR(a->slots);
    PyMem_Free(a->delta);
    a->delta = NULL;
}

/* Take the KeyDir's parts; -1 on error (set). */
static int
apply_init(Apply *a, PyObject *keydir, PyObject *slot_obj, PyObject *now_obj)
{
    memset(a, 0, sizeof(*a));
    a->slot = PyLong_AsSsize_t(slot_obj);
    if (a->slot == -1 && PyErr_Occurred()) {
        return -1;
    }
    long long now = PyLong_AsLongLong(now_obj);
    if (now == -1 && PyErr_Occurred()) {
        return -1;
    }
    a->now_ms = now > 0 ? (uint64_t)now : 0; /* a clock before 1970 expires nothing */
    a->entries = PyObject_GetAttrString(keydir, "entries");
    a->expiries = a->entries ? PyObject_GetAttrString(keydir, "expiries") : NULL;
    a->hidden = a->expiries ? PyObject_GetAttrString(keydir, "hidden") : NULL;
    a->slots = a->hidden ? PyObject_GetAttrString(keydir, "slots") : NULL;
    if (a->slots == NULL) {
        apply_release(a);
        return -1;
    }
    if (a->hidden == Py_None) {
        Py_CLEAR(a->hidden);
    }
    if (!BitkvIndexMap_Check(a->entries) || !PyDict_CheckExact(a->expiries)
        || (a->hidden != NULL && !PyDict_CheckExact(a->hidden)) || !PyList_CheckExact(a->slots)) {
        PyErr_SetString(PyExc_TypeError,
                        "keydir needs an IndexMap, dicts for expiries and hidden, a list of slots");
        apply_release(a);
        return -1;
    }
    a->nslots = PyList_GET_SIZE(a->slots);
    if (a->slot < 0 || a->slot >= a->nslots || a->nslots > BITKV_MAX_SLOTS) {
        PyErr_SetString(PyExc_IndexError, "segment slot out of range");
        apply_release(a);
        return -1;
    }
    a->delta = PyMem_Calloc((size_t)a->nslots, sizeof(int64_t));
    if (a->delta == NULL) {
        PyErr_NoMemory();
        apply_release(a);
        return -1;
    }
    return 0;
}

/* Add each slot's live-byte change to its segment; keeps an error already set. 0 or -1. */
static int
apply_flush(Apply *a)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int rc = 0;
    for (Py_ssize_t i = 0; i < a->nslots && rc == 0; i++) {
        if (a->delta[i] == 0) {
            continue;
        }
        if (i >= PyList_GET_SIZE(a->slots)) {
            PyErr_SetString(PyExc_IndexError, "segment slot out of range");
            rc = -1;
            break;
        }
        PyObject *owner = PyList_GET_ITEM(a->slots, i);
        Py_INCREF(owner);
        rc = bitkv_add_live_bytes(owner, a->delta[i]);
        Py_DECREF(owner);
        a->delta[i] = 0;
    }
    if (type != NULL) {
        if (rc < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return rc;
}

/* The end of a call, whatever ended its loop: each slot's live-byte change added to its
 * segment (also after an error, so that what was applied is accounted), the KeyDir's parts let
 * go. The entries indexed, or -1 with an error set if ``rc`` was -1 or the accounting failed. */
static Py_ssize_t
apply_finish(Apply *a, int rc)
{
    if (apply_flush(a) < 0) {
        rc = -1;
    }
    Py_ssize_t loaded = a->loaded;
    apply_release(a);
    return rc < 0 ? -1 : loaded;
}

/* The size of the record the old entry points at: its size hint, else its header (the
 * segment's record_size_at). -1 on error. */
static int64_t
old_size(Apply *a, uint64_t old, Py_ssize_t *owner_slot)
{
    uint64_t slot = bitkv_entry_slot(old);
    if (slot >= (uint64_t)a->nslots) {
        PyErr_SetString(PyExc_IndexError, "keydir entry points at a slot that does not exist");
        return -1;
    }
    *owner_slot = (Py_ssize_t)slot;
    PyObject *owner = PyList_GET_ITEM(a->slots, (Py_ssize_t)slot);
    Py_INCREF(owner);
    uint64_t size;
    int rc = bitkv_entry_record_size(owner, old, &size);
    Py_DECREF(owner);
    if (rc == 0 && size > INT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "record_size_at: size out of range");
        rc = -1;
    }
    return rc < 0 ? -1 : (int64_t)size;
}

/* Make the key object once, when a dict first needs it. */
static inline PyObject *
key_object(PyObject **kobj, const unsigned char *k, size_t len)
{
    if (*kobj == NULL) {
        *kobj = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)len);
    }
    return *kobj;
}

/* d.pop(key, None), the key object made only if d is not empty. 0 or -1 on error (set). */
static inline int
discard_key(PyObject *d, PyObject **kobj, const unsigned char *k, size_t len)
{
    if (PyDict_GET_SIZE(d) == 0) {
        return 0;
    }
    if (key_object(kobj, k, len) == NULL) {
        return -1;
    }
    return bitkv_dict_discard(d, *kobj);
}

/* d[key] = value, a new reference this takes over (NULL: making it failed, error set). 0 or
 * -1 on error (set). */
static inline int
set_key(PyObject *d, PyObject **kobj, const unsigned char *k, size_t len, PyObject *value)
{
    if (value == NULL || key_object(kobj, k, len) == NULL) {
        Py_XDECREF(value);
        return -1;
    }
    int rc = PyDict_SetItem(d, *kobj, value);
    Py_DECREF(value);
    return rc;
}

/* KeyDir.apply for one record of the segment at a->slot. 0 or -1 on error (set). */
static int
apply_one(Apply *a, const unsigned char *k, size_t len, uint64_t h, uint64_t offset,
          uint64_t size, unsigned flags, uint64_t expiry_ms)
{
    PyObject *kobj = NULL;
    uint64_t old;
    int had;
    Py_ssize_t owner;
    int64_t gone;
    int rc = -1;
    if ((flags & BITKV_TOMBSTONE) || (expiry_ms && expiry_ms <= a->now_ms)) {
        had = bitkv_index_lookup_hashed(a->entries, k, len, h, &old);
        if (had < 0) {
            return -1;
        }
        if (had) {
            gone = old_size(a, old, &owner);
            if (gone < 0) {
                return -1;
            }
            a->delta[owner] -= gone;
            if (bitkv_index_delete(a->entries, k, len) < 0) {
                return -1;
            }
            if (discard_key(a->expiries, &kobj, k, len) < 0) {
                goto done;
            }
        }
        if (a->hidden != NULL
            && set_key(a->hidden, &kobj, k, len,
                       Py_BuildValue("(KKIK)", (unsigned long long)offset,
                                     (unsigned long long)size, flags & BITKV_TOMBSTONE,
                                     (unsigned long long)expiry_ms)) < 0) {
            goto done;
        }
        rc = 0;
        goto done;
    }
    uint64_t entry = bitkv_entry((uint64_t)a->slot, offset, size);
    if (bitkv_index_set_hashed(a->entries, k, len, h, entry, &had, &old) < 0) {
        goto done;
    }
    /* A hidden key is never indexed (these rules remove it from one when they add it to the
     * other), so only a key that was not indexed can be in ``hidden``: an overwrite, nearly
     * every record of a segment with history, makes no key object for this. */
    if (!had && a->hidden != NULL && discard_key(a->hidden, &kobj, k, len) < 0) {
        goto done;
    }
    if (had) {
        gone = old_size(a, old, &owner);
        if (gone < 0) {
            goto done;
        }
        a->delta[owner] -= gone;
    }
    a->delta[a->slot] += (int64_t)size;
    a->loaded++;
    if (expiry_ms) {
        if (set_key(a->expiries, &kobj, k, len, PyLong_FromUnsignedLongLong(expiry_ms)) < 0) {
            goto done;
        }
    }
    else if (had && discard_key(a->expiries, &kobj, k, len) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(kobj);
    return rc;
}

/* Keys are applied in a pipeline: a table of millions of slots is far bigger than the caches,
 * so each lookup would wait ~100 ns for memory. The key PREFETCH_AHEAD places ahead is hashed
 * and its home slot fetched, and the one KEY_AHEAD places ahead has the arena record of a slot
 * with its tag fetched (an overwrite compares keys), while this one is applied. Measured on
 * 1M keys: see docs/performance.md, "Reopen and scale". */
#define RING 32 /* a power of two, > PREFETCH_AHEAD */
#define PREFETCH_AHEAD 16
#define KEY_AHEAD 4

/* ---------------------------------------------------------------------------------------- */
/* Hints (bitkv/hint.py; docs/format.md, "Hint files").                                      */

typedef struct {
    unsigned flags;
    size_t key_len;
    uint64_t value_len, offset, expiry_ms;
} HintEntry;

static inline void
read_hint_entry(const unsigned char *p, HintEntry *e)
{
    e->flags = p[0];
    e->key_len = bitkv_le16(p + 2);
    e->value_len = bitkv_le32(p + 4);
    e->offset = bitkv_le32(p + 8);
    e->expiry_ms = bitkv_le64(p + 20);
}

/* hint.walk's bounds check of one entry: 1 if it lies inside the keys and the covered bytes. */
static inline int
hint_entry_ok(const HintEntry *e, size_t pos, size_t keys_len, uint64_t covered)
{
    return e->key_len != 0 && e->key_len <= keys_len - pos
           && e->offset + BITKV_HEADER_SIZE + e->key_len + e->value_len <= covered;
}

static int
get_buffers(PyObject *fixed, PyObject *keys, Py_buffer *fb, Py_buffer *kb)
{
    if (PyObject_GetBuffer(fixed, fb, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (PyObject_GetBuffer(keys, kb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(fb);
        return -1;
    }
    if (fb->len % BITKV_HINT_ENTRY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "hint entry table is not a whole number of entries");
        PyBuffer_Release(fb);
        PyBuffer_Release(kb);
        return -1;
    }
    return 0;
}

static int
parse_covered(PyObject *obj, uint64_t *covered)
{
    unsigned long long c = PyLong_AsUnsignedLongLong(obj);
    if (c == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *covered = c;
    return 0;
}

PyDoc_STRVAR(hint_check_doc,
"hint_check(fixed, keys, covered, /) -> bool\n\n"
"True if every entry of a hint's entry table lies inside its key area and the ``covered``\n"
"bytes of the segment, and the entries use the key area exactly (bitkv.hint.check_bounds).");

static PyObject *
hint_check(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("hint_check", nargs, 3)) {
        return NULL;
    }
    uint64_t covered;
    if (parse_covered(args[2], &covered) < 0) {
        return NULL;
    }
    Py_buffer fb, kb;
    if (get_buffers(args[0], args[1], &fb, &kb) < 0) {
        return NULL;
    }
    const unsigned char *f = fb.buf;
    size_t n = (size_t)fb.len / BITKV_HINT_ENTRY_SIZE, keys_len = (size_t)kb.len, pos = 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        HintEntry e;
        read_hint_entry(f + i * BITKV_HINT_ENTRY_SIZE, &e);
        if (!hint_entry_ok(&e, pos, keys_len, covered)) {
            ok = 0;
            break;
        }
        pos += e.key_len;
    }
    PyBuffer_Release(&fb);
    PyBuffer_Release(&kb);
    return PyBool_FromLong(ok && pos == keys_len);
}

/* A helper thread hashes a big hint's keys ahead of the apply loop, on another core: the hash
 * is a pure function of the key's bytes (and the process's hash key), so whichever thread
 * computes it, the loop applies the same entries in the same order to the same index; what
 * moves off the loop's thread is SipHash and the first touch of the hint's pages. The helper
 * uses no Python object and runs without the GIL; the loop hashes an entry itself whenever
 * the helper has not got there yet (a busy machine may not run it at all). */
#if defined(__GNUC__) || defined(__clang__)
/* Below this many entries, starting a thread costs more than it saves. scripts/asan_native.sh
 * builds with 1, so that the fuzz target's small hints run the helper too. */
#ifndef HELPER_MIN_ENTRIES
#define HELPER_MIN_ENTRIES 65536
#endif
#define HELPER_PUBLISH 1024      /* entries hashed between two updates of ``ready`` */

typedef struct {
    const unsigned char *fixed, *keys; /* the hint's buffers, held by the caller until joined */
    size_t n, keys_len;
    uint64_t *hashes; /* hashes[i] of entry i, valid for i < ready */
    size_t ready;     /* written by the helper (release), read by the loop (acquire) */
    int stop;         /* set by the loop: no more hashes are wanted */
    PyThread_type_lock done; /* held while the helper runs; released as its last act */
} Hasher;

static void
hasher_run(void *arg)
{
    Hasher *hs = arg;
    size_t pos = 0, i = 0;
    for (; i < hs->n; i++) {
        if (i % HELPER_PUBLISH == 0) {
            __atomic_store_n(&hs->ready, i, __ATOMIC_RELEASE);
            if (__atomic_load_n(&hs->stop, __ATOMIC_RELAXED)) {
                break;
            }
        }
        size_t key_len = bitkv_le16(hs->fixed + i * BITKV_HINT_ENTRY_SIZE + 2);
        if (key_len > hs->keys_len - pos) {
            break; /* out of bounds: the loop stops at this entry (or before) itself */
        }
        hs->hashes[i] = bitkv_index_hash(hs->keys + pos, key_len);
        pos += key_len;
    }
    __atomic_store_n(&hs->ready, i, __ATOMIC_RELEASE);
    PyThread_release_lock(hs->done);
}

/* Stop the helper, if one was started, and wait for it (it is between two checks of ``stop``:
 * a few microseconds), then free what it used; hs is then an empty Hasher (no helper), as
 * hasher_start may leave it. The one place a helper is waited for and its memory freed: after
 * the loop whatever stopped it (the end, a corrupt entry, an error), and for a start that
 * failed halfway. The GIL is let go meanwhile. */
static void
hasher_join(Hasher *hs)
{
    if (hs->done != NULL) {
        __atomic_store_n(&hs->stop, 1, __ATOMIC_RELAXED);
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(hs->done, WAIT_LOCK);
        Py_END_ALLOW_THREADS
        PyThread_release_lock(hs->done);
        PyThread_free_lock(hs->done);
    }
    PyMem_RawFree(hs->hashes);
    memset(hs, 0, sizeof(*hs));
}

/* Set hs up for the n entries: with a helper running if ``wanted`` and the hint is big
 * enough, else empty (hasher_get then hashes every key in the loop). Never fails: without
 * memory or a thread the loop hashes every key itself, as without a helper. Whatever it
 * leaves, hasher_join ends. */
static void
hasher_start(Hasher *hs, int wanted, const unsigned char *fixed, const unsigned char *keys,
             size_t n, size_t keys_len)
{
    memset(hs, 0, sizeof(*hs));
    if (!wanted || n < HELPER_MIN_ENTRIES || n > SIZE_MAX / sizeof(uint64_t)) {
        return;
    }
    hs->hashes = PyMem_RawMalloc(n * sizeof(uint64_t));
    hs->done = hs->hashes != NULL ? PyThread_allocate_lock() : NULL;
    if (hs->done == NULL) {
        hasher_join(hs); /* frees the hashes, if they were allocated */
        return;
    }
    hs->fixed = fixed;
    hs->keys = keys;
    hs->n = n;
    hs->keys_len = keys_len;
    PyThread_acquire_lock(hs->done, WAIT_LOCK); /* free: it was just made */
    if (PyThread_start_new_thread(hasher_run, hs) == PYTHREAD_INVALID_THREAD_ID) {
        PyThread_release_lock(hs->done); /* as the helper's last act would: none to wait for */
        hasher_join(hs);
    }
}

/* The hash of entry i (its key at ``key``): the helper's if it is there yet, else computed. */
static inline uint64_t
hasher_get(Hasher *hs, size_t *ready, size_t i, const unsigned char *key, size_t len)
{
    if (hs->hashes != NULL
        && (i < *ready || i < (*ready = __atomic_load_n(&hs->ready, __ATOMIC_ACQUIRE)))) {
        return hs->hashes[i];
    }
    return bitkv_index_hash(key, len);
}
#else
typedef struct {
    uint64_t *hashes;
} Hasher;
static void
hasher_start(Hasher *hs, int wanted, const unsigned char *fixed, const unsigned char *keys,
             size_t n, size_t keys_len)
{
    (void)wanted, (void)fixed, (void)keys, (void)n, (void)keys_len;
    hs->hashes = NULL;
}
static inline uint64_t
hasher_get(Hasher *hs, size_t *ready, size_t i, const unsigned char *key, size_t len)
{
    (void)hs, (void)ready, (void)i;
    return bitkv_index_hash(key, len);
}
static void
hasher_join(Hasher *hs)
{
    (void)hs;
}
#endif

PyDoc_STRVAR(hint_apply_doc,
"hint_apply(keydir, slot, fixed, keys, covered, now_ms, helper=False, /) -> (ok, loaded)\n\n"
"Apply a hint's entries (the entry table and the key area) to ``keydir`` as records of the\n"
"segment at ``slot``, each by KeyDir.apply's rules. Stops at the first entry outside the key\n"
"area or the ``covered`` bytes, with those before it applied; ``ok`` is False then, or when\n"
"the key area is longer than the entries use. ``loaded``: the entries indexed. ``helper``:\n"
"hash the keys of a big hint ahead in a second thread (the same result either way).");

static PyObject *
hint_apply(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 && !check_nargs("hint_apply", nargs, 6)) {
        return NULL;
    }
    int want_helper = nargs == 7 ? PyObject_IsTrue(args[6]) : 0;
    if (want_helper < 0) {
        return NULL;
    }
    uint64_t covered;
    if (parse_covered(args[4], &covered) < 0) {
        return NULL;
    }
    Apply a;
    if (apply_init(&a, args[0], args[1], args[5]) < 0) {
        return NULL;
    }
    Py_buffer fb, kb;
    if (get_buffers(args[2], args[3], &fb, &kb) < 0) {
        apply_release(&a);
        return NULL;
    }
    const unsigned char *f = fb.buf, *keys = kb.buf;
    size_t n = (size_t)fb.len / BITKV_HINT_ENTRY_SIZE, keys_len = (size_t)kb.len, pos = 0;
    int ok = 1, rc = 0;
    uint64_t ring[RING];
    size_t ahead = 0, ahead_pos = 0; /* the next entry to hash, and where its key starts */
    Hasher hs;
    size_t ready = 0; /* entries the helper is known to have hashed */
    hasher_start(&hs, want_helper, f, keys, n, keys_len);
    for (size_t i = 0; i < n; i++) {
        /* Hash and prefetch ahead, as far as the entries are in bounds (checked again below,
         * where they count). */
        while (ahead < n && ahead < i + PREFETCH_AHEAD) {
            HintEntry e;
            read_hint_entry(f + ahead * BITKV_HINT_ENTRY_SIZE, &e);
            if (e.key_len > keys_len - ahead_pos) {
                break;
            }
            uint64_t h = hasher_get(&hs, &ready, ahead, keys + ahead_pos, e.key_len);
            ring[ahead % RING] = h;
            bitkv_index_prefetch(a.entries, h);
            ahead_pos += e.key_len;
            ahead++;
        }
        if (i + KEY_AHEAD < ahead) {
            bitkv_index_prefetch_key(a.entries, ring[(i + KEY_AHEAD) % RING]);
        }
        HintEntry e;
        read_hint_entry(f + i * BITKV_HINT_ENTRY_SIZE, &e);
        if (!hint_entry_ok(&e, pos, keys_len, covered)) {
            ok = 0;
            break;
        }
        /* in bounds, so the cursor ahead passed it: its hash is in the ring */
        uint64_t size = BITKV_HEADER_SIZE + e.key_len + e.value_len;
        if (apply_one(&a, keys + pos, e.key_len, ring[i % RING], e.offset, size, e.flags,
                      e.expiry_ms) < 0) {
            rc = -1;
            break;
        }
        pos += e.key_len;
    }
    hasher_join(&hs); /* before the buffers it reads are let go */
    PyBuffer_Release(&fb);
    PyBuffer_Release(&kb);
    Py_ssize_t loaded = apply_finish(&a, rc);
    if (loaded < 0) {
        return NULL;
    }
    return Py_BuildValue("(On)", ok && pos == keys_len ? Py_True : Py_False, loaded);
}

/* ---------------------------------------------------------------------------------------- */
/* Plain runs of records (recovery's fast path under replay.replay: replay.PlainRun).        */

PyDoc_STRVAR(plain_run_doc,
"plain_run(keydir, slot, buf, pos, end, max_seq, now_ms, /) -> (stop, max_seq, loaded)\n\n"
"Index the intact records of ``buf[pos:end]`` (the segment at ``slot``, at their file\n"
"offsets), whole batches included, by KeyDir.apply's rules, until the first record that is\n"
"damaged, breaks the batch rule or carries an unknown flag; return where the run stops (the\n"
"start of the batch holding it, if inside one), the largest seq up to there and the records\n"
"indexed. The pure-Python reference is bitkv.indexing.plain_run.");

/* Apply the records of buf[from, to), intact and committed (checked by the caller), in order,
 * in the pipeline described above. 0 or -1 on error (set). */
static int
apply_records(Apply *a, const unsigned char *buf, Py_ssize_t from, Py_ssize_t to)
{
    uint64_t ring[RING];
    Py_ssize_t ahead = from; /* the next record to hash */
    size_t i = 0, hashed = 0;
    for (Py_ssize_t at = from; at < to; i++) {
        for (; ahead < to && hashed < i + PREFETCH_AHEAD; hashed++) {
            const unsigned char *p = buf + ahead;
            size_t key_len = bitkv_le16(p + 6);
            uint64_t h = bitkv_index_hash(p + BITKV_HEADER_SIZE, key_len);
            ring[hashed % RING] = h;
            bitkv_index_prefetch(a->entries, h);
            ahead += (Py_ssize_t)(BITKV_HEADER_SIZE + key_len + bitkv_le32(p + 8));
        }
        if (i + KEY_AHEAD < hashed) {
            bitkv_index_prefetch_key(a->entries, ring[(i + KEY_AHEAD) % RING]);
        }
        BitkvHeader h;
        bitkv_read_header(buf + at, &h);
        size_t size = BITKV_HEADER_SIZE + (size_t)h.key_len + (size_t)h.value_len;
        if (apply_one(a, buf + at + BITKV_HEADER_SIZE, h.key_len, ring[i % RING], (uint64_t)at,
                      size, h.flags, h.expiry_ms) < 0) {
            return -1;
        }
        at += (Py_ssize_t)size;
    }
    return 0;
}

/* Records checked per stretch before the committed ones are applied: the stretch's bytes stay
 * in the cache between the CRC pass and the indexing pass. */
#define STRETCH_RECORDS 4096

static PyObject *
plain_run(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("plain_run", nargs, 7)) {
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[3]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[4]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long long max_seq = PyLong_AsUnsignedLongLong(args[5]);
    if (max_seq == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[2], &b, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pos < 0 || end > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "plain_run: the run lies outside the buffer");
        return NULL;
    }
    Apply a;
    if (apply_init(&a, args[0], args[1], args[6]) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    const unsigned char *buf = b.buf;
    int rc = 0, stop = 0;
    /* Records up to ``committed`` (max_seq ``committed_max``) are intact and committed; a
     * batch pending from ``batch_start`` (if >= 0) is not yet. */
    Py_ssize_t committed = pos;
    uint64_t committed_max = max_seq;
    while (!stop) {
        Py_ssize_t stretch = committed, batch_start = -1;
        uint64_t pending_seq = 0;
        int checked = 0;
        stop = 1; /* unless the stretch ends at its length, at a commit */
        while (pos < end && end - pos >= BITKV_HEADER_SIZE) {
            BitkvHeader h;
            size_t size = bitkv_intact_record(buf + pos, (size_t)(end - pos), &h);
            if (size == 0) {
                break;
            }
            if (h.flags & BITKV_BATCH) {
                if (h.flags & BITKV_BATCH_FIRST) {
                    if (batch_start >= 0) {
                        break; /* an unfinished batch: the general path drops it */
                    }
                    batch_start = pos;
                }
                else if (batch_start < 0 || pending_seq == UINT64_MAX
                         || h.seq != pending_seq + 1) {
                    break; /* (no seq follows 2**64 - 1: Python's ints do not wrap) */
                }
                pending_seq = h.seq;
            }
            else if (batch_start >= 0) {
                break;
            }
            if (h.seq > max_seq) {
                max_seq = h.seq;
            }
            pos += (Py_ssize_t)size;
            if ((h.flags & BITKV_BATCH) && !(h.flags & BITKV_BATCH_LAST)) {
                continue;
            }
            batch_start = -1;
            committed = pos;
            committed_max = max_seq;
            if (++checked >= STRETCH_RECORDS) {
                stop = 0;
                break;
            }
        }
        if (apply_records(&a, buf, stretch, committed) < 0) {
            rc = -1;
            break;
        }
        /* What follows the last commit is the general path's (a pending batch included). */
        pos = committed;
        max_seq = committed_max;
    }
    PyBuffer_Release(&b);
    Py_ssize_t loaded = apply_finish(&a, rc);
    if (loaded < 0) {
        return NULL;
    }
    return Py_BuildValue("(nKn)", committed, committed_max, loaded);
}

static PyMethodDef replay_methods[] = {
    {"hint_check", (PyCFunction)(void (*)(void))hint_check, METH_FASTCALL, hint_check_doc},
    {"hint_apply", (PyCFunction)(void (*)(void))hint_apply, METH_FASTCALL, hint_apply_doc},
    {"plain_run", (PyCFunction)(void (*)(void))plain_run, METH_FASTCALL, plain_run_doc},
    {NULL, NULL, 0, NULL},
};

int
bitkv_replay_init(PyObject *m)
{
    return PyModule_AddFunctions(m, replay_methods);
}
