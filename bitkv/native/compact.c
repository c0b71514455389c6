/* Compaction's loops in C, in bitkv._native: copy_live (bitkv/compaction.py's copy_live is
 * the reference: same arguments, same results, same bytes) and switch_copies (the reference is
 * keydir.KeyDir.switch_copies), plus release_gil, how both let a waiting writer in.
 *
 * copy_live walks the input a batch of records at a time, in three steps:
 *
 *   1. without the GIL: check each record's header and CRC-32C exactly as record.scan does
 *      (plausible, inside ``end``, no batch flag), stopping at the first one that is not a
 *      plain intact record (COPY_ODD: Python's record.scan judges it); hash its key;
 *   2. with the GIL: prefetch the batch's slots and keys in the IndexMap, then look each key
 *      up (the map is only ever read with the GIL held: the writers change it under the GIL
 *      and the store's lock, and the lock-free read path relies on each operation being
 *      atomic under the GIL), decide live, dead or expired, list the expired ones, give each
 *      live record its offset in the output, stop before a record that does not fit
 *      (COPY_FULL), and grow the output's three bytearrays;
 *   3. without the GIL: copy the live records (runs of adjacent ones with one memcpy), write
 *      their hint entries and keys into the grown buffers.
 *
 * Safety: every length is validated against ``end`` (itself checked against the buffer's
 * length) before any byte it covers is read. The source buffer and the three bytearrays are
 * held by buffer exports while the GIL is released, so nothing can close, resize or free
 * them meanwhile (an mmap with exports refuses close(); a bytearray refuses resizing).
 */
#include "native.h"

#include <time.h>

#define SEGMENT_HEADER_SIZE 40 /* segment.HEADER_SIZE: an output holding only it is empty */
#define PLAIN_FLAGS (BITKV_TOMBSTONE | BITKV_COMPRESSED | BITKV_ENCRYPTED | BITKV_CLIENT_FLAGS)
#define COPY_DONE 0
#define COPY_FULL 1
#define COPY_ODD 2
#define NO_OUTPUT ((int64_t)1 << 62)
/* Records per batch: bounds how long the GIL is held for lookups (~BATCH * 0.1 us with the
 * prefetches) and the stack the batch takes. */
#define BATCH 128

enum { DEAD = 0, LIVE = 1, EXPIRED = 2 };

typedef struct {
    size_t off;  /* in the input */
    size_t size; /* of the whole record */
    uint64_t seq;
    uint64_t expiry_ms;
    uint64_t hash; /* of the key, for the IndexMap */
    uint32_t value_len;
    uint32_t out_off; /* in the output, for a live record */
    uint16_t key_len;
    uint8_t flags;
    uint8_t fate; /* DEAD, LIVE, EXPIRED */
} Rec;

/* Step 1: check up to ``max`` records from ``pos`` (stopping at ``limit``); return how many
 * are plain intact records, *stop the position after them, *odd whether the walk stopped at a
 * record that is not one. Reads only src[pos:end]. No Python API: runs without the GIL. */
static size_t
scan_batch(const unsigned char *src, size_t pos, size_t limit, size_t end, Rec *recs,
           size_t max, size_t *stop, int *odd)
{
    size_t n = 0;
    *odd = 0;
    while (pos < limit && n < max) {
        if (end - pos < BITKV_HEADER_SIZE) {
            *odd = 1;
            break;
        }
        BitkvHeader h;
        bitkv_read_header(src + pos, &h);
        size_t size = BITKV_HEADER_SIZE + (size_t)h.key_len + (size_t)h.value_len;
        /* the same checks, in the same order of effect, as compaction.copy_live */
        if (size > end - pos || h.reserved || (h.flags & ~PLAIN_FLAGS) || h.key_len == 0
            || h.value_len > BITKV_MAX_STORED_VALUE_SIZE
            || ((h.flags & BITKV_TOMBSTONE) && h.value_len)
            || bitkv_crc32c_extend(0, src + pos + 4, size - 4) != h.crc) {
            *odd = 1;
            break;
        }
        Rec *r = &recs[n++];
        r->off = pos;
        r->size = size;
        r->seq = h.seq;
        r->expiry_ms = h.expiry_ms;
        r->value_len = h.value_len;
        r->key_len = h.key_len;
        r->flags = h.flags;
        r->fate = DEAD;
        r->hash = bitkv_index_hash(src + pos + BITKV_HEADER_SIZE, h.key_len);
        pos += size;
    }
    *stop = pos;
    return n;
}

/* Step 3: append the live records of recs[0:n] to ``data`` and their hint entries and keys to
 * ``fixed`` and ``keys`` (each pointing at room grown for exactly them). No Python API. */
static void
emit_batch(const unsigned char *src, const Rec *recs, size_t n, unsigned char *data,
           unsigned char *fixed, unsigned char *keys)
{
    size_t i = 0;
    while (i < n) {
        if (recs[i].fate != LIVE) {
            i++;
            continue;
        }
        size_t run = recs[i].off, len = 0;
        for (; i < n && recs[i].fate == LIVE && recs[i].off == run + len; i++) {
            const Rec *r = &recs[i];
            fixed[0] = r->flags;
            fixed[1] = 0;
            bitkv_put_le16(fixed + 2, r->key_len);
            bitkv_put_le32(fixed + 4, r->value_len);
            bitkv_put_le32(fixed + 8, r->out_off);
            bitkv_put_le64(fixed + 12, r->seq);
            bitkv_put_le64(fixed + 20, r->expiry_ms);
            fixed += BITKV_HINT_ENTRY_SIZE;
            memcpy(keys, src + r->off + BITKV_HEADER_SIZE, r->key_len);
            keys += r->key_len;
            len += r->size;
        }
        memcpy(data, src + run, len);
        data += len;
    }
}

/* Grow ``buf`` (a bytearray) by ``add`` bytes and export it writable; *room points at the new
 * bytes. 0, or -1 with an exception set (nothing exported). */
static int
grow(PyObject *buf, size_t add, Py_buffer *view, unsigned char **room)
{
    Py_ssize_t old = PyByteArray_GET_SIZE(buf);
    if (add > (size_t)(PY_SSIZE_T_MAX - old)) {
        PyErr_NoMemory();
        return -1;
    }
    if (add && PyByteArray_Resize(buf, old + (Py_ssize_t)add) < 0) {
        return -1;
    }
    if (PyObject_GetBuffer(buf, view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (view->len != old + (Py_ssize_t)add) { /* cannot happen: nothing ran in between */
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_SystemError, "bitkv._native: a buffer changed size");
        return -1;
    }
    *room = (unsigned char *)view->buf + old;
    return 0;
}

static int
arg_ssize(PyObject *o, const char *name, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t *out)
{
    Py_ssize_t v = PyNumber_AsSsize_t(o, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "copy_live: %s out of range", name);
        return -1;
    }
    *out = v;
    return 0;
}

static int
arg_u64(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "copy_live: expected an int");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* The source segment's buffer, which must hold its first ``end`` bytes (every read is bounded
 * by it): 0, or -1 with an error set (``who``: the function, for the ValueError's text). */
static int
source_buffer(PyObject *src, Py_ssize_t end, const char *who, Py_buffer *in)
{
    if (PyObject_GetBuffer(src, in, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (end > in->len) {
        PyBuffer_Release(in);
        PyErr_Format(PyExc_ValueError, "%s: end is past the buffer's end", who);
        return -1;
    }
    return 0;
}

static int
check_bytearray(PyObject *o, const char *name)
{
    if (!PyByteArray_CheckExact(o)) {
        PyErr_Format(PyExc_TypeError, "copy_live: %s must be a bytearray", name);
        return -1;
    }
    return 0;
}

/* Step 2 for one batch: the fate of each record, the output offsets of the live ones, the
 * expired ones appended to ``expired``. Returns how many records of the batch were decided
 * (fewer than n when a live record does not fit: *full is then set), or -1 on error (set).
 * GIL held. */
static Py_ssize_t
decide_batch(PyObject *entries, const unsigned char *src, Rec *recs, size_t n, uint64_t slot,
             uint64_t now_ms, int64_t *out_size, int64_t max_size, uint64_t *min_seq,
             uint64_t *max_seq, PyObject *expired, size_t *copied, size_t *dropped,
             size_t *data_add, size_t *keys_add, int *full)
{
    *full = 0;
    /* The index is far larger than the CPU's caches: a lookup is a cache (and TLB) miss or
     * two. Asking for a batch's slots, then their keys, before the first lookup overlaps those
     * misses instead of paying them one after another (measured: ~3x fewer ns a record). */
    for (size_t i = 0; i < n; i++) {
        bitkv_index_prefetch(entries, recs[i].hash);
    }
    for (size_t i = 0; i < n; i++) {
        bitkv_index_prefetch_key(entries, recs[i].hash);
    }
    for (size_t i = 0; i < n; i++) {
        Rec *r = &recs[i];
        uint64_t entry = bitkv_entry(slot, r->off, r->size);
        uint64_t found;
        int hit = bitkv_index_lookup_hashed(entries, src + r->off + BITKV_HEADER_SIZE,
                                            r->key_len, r->hash, &found);
        if (hit < 0) {
            return -1;
        }
        int points_here = hit && found == entry;
        int has_expired = r->expiry_ms && r->expiry_ms <= now_ms;
        if (!points_here || has_expired) {
            if (points_here) { /* live, but expired: the caller unindexes it */
                PyObject *pair = Py_BuildValue(
                    "(y#K)", (const char *)src + r->off + BITKV_HEADER_SIZE,
                    (Py_ssize_t)r->key_len, (unsigned long long)entry);
                if (pair == NULL) {
                    return -1;
                }
                int rc = PyList_Append(expired, pair);
                Py_DECREF(pair);
                if (rc < 0) {
                    return -1;
                }
                r->fate = EXPIRED;
            }
            (*dropped)++;
            continue;
        }
        /* out_size <= NO_OUTPUT and max_size < 2**32, so neither side overflows */
        if ((int64_t)r->size > max_size - *out_size && *out_size > SEGMENT_HEADER_SIZE) {
            *full = 1;
            return (Py_ssize_t)i;
        }
        r->fate = LIVE;
        r->out_off = (uint32_t)*out_size; /* < max_size < 2**32 unless the output is empty */
        *out_size += (int64_t)r->size;
        (*copied)++;
        *data_add += r->size;
        *keys_add += r->key_len;
        if (r->seq > *max_seq) {
            *max_seq = r->seq;
        }
        if (r->seq < *min_seq || *min_seq == 0) {
            *min_seq = r->seq;
        }
    }
    return (Py_ssize_t)n;
}

static PyObject *
copy_live(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "copy_live takes 15 arguments");
        return NULL;
    }
    PyObject *entries = args[5], *data = args[7], *fixed = args[8], *keys = args[9];
    PyObject *expired = args[14];
    if (!BitkvIndexMap_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "copy_live: entries must be an IndexMap");
        return NULL;
    }
    if (check_bytearray(data, "data") < 0 || check_bytearray(fixed, "fixed") < 0
        || check_bytearray(keys, "keys") < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(expired)) {
        PyErr_SetString(PyExc_TypeError, "copy_live: expired must be a list");
        return NULL;
    }
    Py_ssize_t pos, limit, end, slot, out_size_arg, max_size_arg;
    uint64_t now_ms, min_seq, max_seq;
    /* offsets live in 32 bits of a keydir entry, a slot in 16 */
    if (arg_ssize(args[1], "pos", 0, UINT32_MAX, &pos) < 0
        || arg_ssize(args[2], "limit", 0, UINT32_MAX, &limit) < 0
        || arg_ssize(args[3], "end", 0, UINT32_MAX, &end) < 0
        || arg_ssize(args[4], "slot", 0, 0xFFFF, &slot) < 0
        || arg_u64(args[6], &now_ms) < 0
        || arg_ssize(args[10], "out_size", 0, (Py_ssize_t)NO_OUTPUT, &out_size_arg) < 0
        || arg_ssize(args[11], "max_size", 0, UINT32_MAX, &max_size_arg) < 0
        || arg_u64(args[12], &min_seq) < 0 || arg_u64(args[13], &max_seq) < 0) {
        return NULL;
    }
    if (limit > end) {
        PyErr_SetString(PyExc_ValueError, "copy_live: limit is past end");
        return NULL;
    }
    Py_buffer in;
    if (source_buffer(args[0], end, "copy_live", &in) < 0) {
        return NULL;
    }
    const unsigned char *src = (const unsigned char *)in.buf;
    int64_t out_size = (int64_t)out_size_arg, max_size = (int64_t)max_size_arg;
    size_t at = (size_t)pos, copied = 0, dropped = 0;
    int status = COPY_DONE;
    Rec recs[BATCH];
    size_t n = 0, stop = at;
    int odd = 0;

    Py_BEGIN_ALLOW_THREADS
    n = scan_batch(src, at, (size_t)limit, (size_t)end, recs, BATCH, &stop, &odd);
    Py_END_ALLOW_THREADS
    for (;;) {
        size_t data_add = 0, keys_add = 0;
        int full;
        Py_ssize_t decided = decide_batch(entries, src, recs, n, (uint64_t)slot, now_ms, &out_size,
                                          max_size, &min_seq, &max_seq, expired, &copied,
                                          &dropped, &data_add, &keys_add, &full);
        if (decided < 0) {
            goto error;
        }
        size_t live = 0;
        for (Py_ssize_t i = 0; i < decided; i++) {
            live += recs[i].fate == LIVE;
        }
        Py_buffer dv, fv, kv;
        unsigned char *d, *f, *k;
        if (grow(data, data_add, &dv, &d) < 0) {
            goto error;
        }
        if (grow(fixed, live * BITKV_HINT_ENTRY_SIZE, &fv, &f) < 0) {
            PyBuffer_Release(&dv);
            goto error;
        }
        if (grow(keys, keys_add, &kv, &k) < 0) {
            PyBuffer_Release(&dv);
            PyBuffer_Release(&fv);
            goto error;
        }
        if (full) {
            at = recs[decided].off;
            status = COPY_FULL;
        }
        else {
            at = stop;
            if (odd) {
                status = COPY_ODD;
            }
            else if (at >= (size_t)limit) {
                status = COPY_DONE;
            }
        }
        int more = status == COPY_DONE && at < (size_t)limit && !odd && !full;
        Py_BEGIN_ALLOW_THREADS
        emit_batch(src, recs, (size_t)decided, d, f, k);
        if (more) {
            n = scan_batch(src, at, (size_t)limit, (size_t)end, recs, BATCH, &stop, &odd);
        }
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&dv);
        PyBuffer_Release(&fv);
        PyBuffer_Release(&kv);
        if (!more) {
            break;
        }
    }
    PyBuffer_Release(&in);
    return Py_BuildValue("(inLnnKK)", status, (Py_ssize_t)at, (long long)out_size,
                         (Py_ssize_t)copied, (Py_ssize_t)dropped, (unsigned long long)min_seq,
                         (unsigned long long)max_seq);
error:
    PyBuffer_Release(&in);
    return NULL;
}

/* switch_copies: KeyDir.switch_inputs for the records of a compacted output, read back from
 * its map (keydir.KeyDir.switch_copies is the reference). GIL held throughout: it changes the
 * index, under the store's lock the caller holds. */
static PyObject *
switch_copies(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "switch_copies takes 7 arguments");
        return NULL;
    }
    PyObject *entries = args[3], *inputs = args[5];
    if (!BitkvIndexMap_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "switch_copies: entries must be an IndexMap");
        return NULL;
    }
    if (!PyBytes_CheckExact(inputs) || PyBytes_GET_SIZE(inputs) != 8192) {
        PyErr_SetString(PyExc_TypeError,
                        "switch_copies: inputs must be a bitmap of 65,536 slots (8,192 bytes)");
        return NULL;
    }
    Py_ssize_t pos, end, slot, max_keys;
    if (arg_ssize(args[1], "pos", 0, UINT32_MAX, &pos) < 0
        || arg_ssize(args[2], "end", 0, UINT32_MAX, &end) < 0
        || arg_ssize(args[4], "slot", 0, 0xFFFF, &slot) < 0
        || arg_ssize(args[6], "max_keys", 0, PY_SSIZE_T_MAX, &max_keys) < 0) {
        return NULL;
    }
    const unsigned char *bitmap = (const unsigned char *)PyBytes_AS_STRING(inputs);
    Py_buffer in;
    if (source_buffer(args[0], end, "switch_copies", &in) < 0) {
        return NULL;
    }
    const unsigned char *src = (const unsigned char *)in.buf;
    size_t at = (size_t)pos, live = 0;
    Py_ssize_t switched = 0;
    Py_ssize_t left = max_keys;
    int damaged = 0; /* the records before damage are switched, then ValueError */
    while (left > 0 && at < (size_t)end && !damaged) {
        /* a batch: parse, hash and prefetch, then look up and switch (see decide_batch) */
        size_t offs[BATCH], sizes[BATCH], key_lens[BATCH];
        uint64_t hashes[BATCH];
        size_t n = 0;
        for (; n < BATCH && (Py_ssize_t)n < left && at < (size_t)end; n++) {
            size_t avail = (size_t)end - at;
            if (avail < BITKV_HEADER_SIZE) {
                damaged = 1;
                break;
            }
            size_t key_len = bitkv_le16(src + at + 6);
            size_t size = BITKV_HEADER_SIZE + key_len + bitkv_le32(src + at + 8);
            if (size > avail) {
                damaged = 1;
                break;
            }
            offs[n] = at;
            sizes[n] = size;
            key_lens[n] = key_len;
            hashes[n] = bitkv_index_hash(src + at + BITKV_HEADER_SIZE, key_len);
            bitkv_index_prefetch(entries, hashes[n]);
            at += size;
        }
        for (size_t i = 0; i < n; i++) {
            bitkv_index_prefetch_key(entries, hashes[i]);
        }
        for (size_t i = 0; i < n; i++) {
            const unsigned char *key = src + offs[i] + BITKV_HEADER_SIZE;
            uint64_t entry = bitkv_entry((uint64_t)slot, offs[i], sizes[i]), old = 0;
            int hit = bitkv_index_lookup_hashed(entries, key, key_lens[i], hashes[i], &old);
            if (hit < 0) {
                goto error;
            }
            uint64_t old_slot = bitkv_entry_slot(old);
            if (!hit || old_slot > 0xFFFF || !(bitmap[old_slot >> 3] >> (old_slot & 7) & 1)
                || bitkv_entry_size(old) != bitkv_entry_size(entry)) {
                continue;
            }
            /* Nothing runs between the lookup and this set (no Python object is made), so the
             * key still holds ``old``: the conditional put is exact. */
            int had_old;
            if (bitkv_index_set_hashed(entries, key, key_lens[i], hashes[i], entry, &had_old,
                                       &old) < 0) {
                goto error;
            }
            live += sizes[i];
            switched++;
        }
        left -= (Py_ssize_t)n;
    }
    if (damaged) {
        PyErr_Format(PyExc_ValueError, "switch_copies: no whole record at offset %zu", at);
        goto error;
    }
    PyBuffer_Release(&in);
    return Py_BuildValue("(nnn)", (Py_ssize_t)at, switched, (Py_ssize_t)live);
error:
    PyBuffer_Release(&in);
    return NULL;
}

/* release_gil(microseconds): let another thread take the GIL, which a thread that releases
 * and retakes it at once rarely lets happen: the waiter must first be woken, and on a busy
 * machine that takes longer than the release lasts; worse, a waiter asks the holder to drop
 * the GIL (its 5 ms switch interval) only if no thread took it meanwhile, so a holder that
 * keeps retaking it starves the waiter indefinitely. The GIL is released for ``microseconds``
 * of spinning: sleeping instead would give the CPU away for a scheduler tick when the machine
 * is busy (time.sleep(0) measured 0.5-6 ms a call under load). */
static PyObject *
release_gil(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long us = PyLong_AsLong(arg);
    if (us == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (us < 0 || us > 1000000) {
        PyErr_SetString(PyExc_ValueError, "release_gil: 0 to 1,000,000 microseconds");
        return NULL;
    }
    struct timespec t0, t;
    Py_BEGIN_ALLOW_THREADS
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef compact_methods[] = {
    {"release_gil", (PyCFunction)release_gil, METH_O,
     "release_gil(microseconds): release the GIL for that long (spinning), so that a thread "
     "waiting for it takes it."},
    {"copy_live", (PyCFunction)(void (*)(void))copy_live, METH_FASTCALL,
     "copy_live(src, pos, limit, end, slot, entries, now_ms, data, fixed, keys, out_size, "
     "max_size, min_seq, max_seq, expired) -> (status, pos, out_size, copied, dropped, "
     "min_seq, max_seq): compaction.copy_live in C, for an IndexMap ``entries``; the GIL is "
     "released while records are checked and copied."},
    {"switch_copies", (PyCFunction)(void (*)(void))switch_copies, METH_FASTCALL,
     "switch_copies(src, pos, end, entries, slot, inputs, max_keys) -> (pos, switched, "
     "live_bytes): KeyDir.switch_copies in C, for an IndexMap ``entries`` and ``inputs`` a "
     "bitmap of slots."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_compact_init(PyObject *m)
{
    return PyModule_AddFunctions(m, compact_methods);
}
