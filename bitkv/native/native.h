/* bitkv._native: the compiled kernels, one extension module built from the C files here.
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
/* The value of the first slot of key's probe sequence whose stored hash bits (28 of them) match
 * key's, without reading the key's bytes (one cache miss fewer): 1 and *value set, or 0 if no
 * slot matches, and then key is certainly absent. The value may belong to another key with
 * the same bits (about 1 in 2**28 per probed slot), so a caller must verify the key itself,
 * as the get kernel does against the record's key, and use bitkv_index_lookup if that fails.
 * Never fails. ``map`` must be an IndexMap. */
int bitkv_index_candidate(PyObject *map, const unsigned char *key, size_t len, uint64_t *value);
/* The same for a key hashed with bitkv_index_hash (get_many hashes a group of keys first and
 * prefetches their slots with bitkv_index_prefetch before it looks any of them up). */
int bitkv_index_candidate_hashed(PyObject *map, uint64_t h, uint64_t *value);

/* Set key (bytes) -> value; had_old and old tell the previous value. 0, or -1 on error (set). */
int bitkv_index_set(PyObject *map, PyObject *key, uint64_t value, int *had_old, uint64_t *old);
/* Batched access, for loops over many keys (replay.c): hash a key once, prefetch its home
 * slot's cache line some keys ahead (and, nearer, the arena record of a slot whose tag matches,
 * an overwrite), then look it up or set it with the hash. A key passed as raw bytes must not
 * lie inside the map's own memory; no bytes object is needed. Prefetches never fail and change
 * nothing; the map may change in between (they are then merely useless). */
uint64_t bitkv_index_hash(const unsigned char *key, size_t len);
void bitkv_index_prefetch(PyObject *map, uint64_t h);
void bitkv_index_prefetch_key(PyObject *map, uint64_t h);
int bitkv_index_lookup_hashed(PyObject *map, const unsigned char *key, size_t len, uint64_t h,
                              uint64_t *value);
int bitkv_index_set_hashed(PyObject *map, const unsigned char *key, size_t len, uint64_t h,
                           uint64_t value, int *had_old, uint64_t *old);
/* 1 if removed, 0 if absent, -1 on error (set). */
int bitkv_index_delete(PyObject *map, const unsigned char *key, size_t len);

/* get.c: Reader, the get kernel (Store.get's common case). */
int bitkv_get_init(PyObject *module);

/* batch.c: encode_batch and apply_batch, the batch kernel (Store._commit_batch). */
int bitkv_batch_init(PyObject *module);

/* record.c: encode_record, decode_record, intact_size_at (record.py's codec). */
int bitkv_record_init(PyObject *module);

/* crc32c.c: CRC-32C (crc is the CRC-32C of the bytes before data; 0 to start). */
int bitkv_crc32c_init(PyObject *module);
uint32_t bitkv_crc32c_extend(uint32_t crc, const void *data, size_t len);

/* put.c: Store.put's common case (a map write and the index update) in one call. */
int bitkv_put_init(PyObject *module);

/* compact.c: compaction's copy loop (copy_live). */
int bitkv_compact_init(PyObject *module);

/* replay.c: the indexing loops of opening a store (hint entries, plain runs of records). */
int bitkv_replay_init(PyObject *module);

/* resp.c: RespParser, the server's RESP request parser (protocol.PyParser's twin). */
int bitkv_resp_init(PyObject *module);

/* bound.c: the part every compiled method bound to a Python object, its owner, shares
 * (get.c's Reader, put.c's Writer, batch.c's BatchPut). Such a type's struct begins with a
 * BitkvBound, its type object has BITKV_BOUND_TYPE_SLOTS, its tp_init calls
 * bitkv_bound_init, its tp_traverse and tp_clear call (or are) bitkv_bound_traverse and
 * bitkv_bound_clear, and whatever its kernel does not serve goes to bitkv_bound_fallback. */
typedef struct {
    PyObject_HEAD
    /* Weak: the owner holds the bound method (its instance's ``get``, ``put``), so a strong
     * reference back would make a cycle that only the cyclic GC could free. */
    PyObject *owner_ref;
    PyObject *fallback; /* the owner's Python method, the function: fallback(owner, ...) */
    const char *gone;   /* the ReferenceError's text once the owner is gone (static) */
    int attached;       /* 0 once detached (the owner closed): what the kernel serves changes */
} BitkvBound;

/* The shared part of tp_init: 0, or -1 with an error set (fallback not callable, an owner
 * that cannot be weakly referenced), and then nothing is changed. */
int bitkv_bound_init(BitkvBound *self, PyObject *owner, PyObject *fallback, const char *gone);
int bitkv_bound_traverse(PyObject *self, visitproc visit, void *arg);
int bitkv_bound_clear(PyObject *self);
/* tp_dealloc: clears through the type's own tp_clear (its fields and the BitkvBound's). */
void bitkv_bound_dealloc(PyObject *self);
/* detach(), METH_NOARGS: ``attached`` becomes False. A type that must drop more at detach
 * (what its kernel reads) has its own detach, which also clears ``attached``. */
PyObject *bitkv_bound_detach(PyObject *self, PyObject *ignored);
extern PyGetSetDef bitkv_bound_getset[]; /* ``attached`` */

#define BITKV_BOUND_TYPE_SLOTS                                                                  \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, .tp_new = PyType_GenericNew,           \
    .tp_dealloc = bitkv_bound_dealloc, .tp_getset = bitkv_bound_getset

/* NULL with the error that says why there is no owner to call (bitkv_bound_owner's slow
 * path): RuntimeError if never initialised, ReferenceError (``gone``) if it was freed. */
PyObject *bitkv_bound_missing_owner(BitkvBound *self);

/* The owner, a new reference, or NULL with an error set. Inline: the put kernel asks for it
 * on every call, before it knows whether it serves the call. */
static inline PyObject *
bitkv_bound_owner(BitkvBound *self)
{
    if (self->owner_ref != NULL) {
        PyObject *owner = PyWeakref_GetObject(self->owner_ref); /* borrowed */
        if (owner != NULL && owner != Py_None) {
            Py_INCREF(owner);
            return owner;
        }
    }
    return bitkv_bound_missing_owner(self);
}

/* fallback(owner, *args, **kwargs) for a vectorcall's arguments (any number of them): the
 * reference's result, or NULL with its error. */
PyObject *bitkv_bound_call(BitkvBound *self, PyObject *owner, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);
/* The same, the owner looked up first (bitkv_bound_owner). */
PyObject *bitkv_bound_fallback(BitkvBound *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);

/* dict.pop(key, None) for a dict: 0, or -1 with an error set. An absent key costs a lookup,
 * not a KeyError made and cleared (most keys a kernel discards are absent). */
static inline int
bitkv_dict_discard(PyObject *d, PyObject *key)
{
    int has = PyDict_Contains(d, key);
    if (has <= 0) {
        return has;
    }
    return PyDict_DelItem(d, key);
}

/* A data record's 28-byte header (docs/format.md, "Data record"; bitkv/record.py is the
 * reference): crc32c u32 | flags u8 | reserved u8 | key_len u16 | value_len u32 | seq u64 |
 * expiry_ms u64, little-endian; the CRC covers every byte after its own field. */
#define BITKV_HEADER_SIZE 28
#define BITKV_TOMBSTONE 0x01
#define BITKV_COMPRESSED 0x02
#define BITKV_ENCRYPTED 0x04
#define BITKV_BATCH 0x08
#define BITKV_BATCH_FIRST 0x10
#define BITKV_BATCH_LAST 0x20
#define BITKV_CLIENT_FLAGS 0x40
#define BITKV_KNOWN_FLAGS 0x7F
#define BITKV_BATCH_FLAGS (BITKV_BATCH | BITKV_BATCH_FIRST | BITKV_BATCH_LAST)
#define BITKV_MAX_VALUE_SIZE (64u * 1024 * 1024) /* record.MAX_VALUE_SIZE: a user's value */
#define BITKV_MAX_STORED_VALUE_SIZE (BITKV_MAX_VALUE_SIZE + 4096)

typedef struct {
    uint32_t crc;
    uint8_t flags;
    uint8_t reserved;
    uint16_t key_len;
    uint32_t value_len;
    uint64_t seq;
    uint64_t expiry_ms;
} BitkvHeader;

static inline uint16_t bitkv_le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t
bitkv_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t
bitkv_le64(const unsigned char *p)
{
    return (uint64_t)bitkv_le32(p) | (uint64_t)bitkv_le32(p + 4) << 32;
}
static inline void
bitkv_put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static inline void
bitkv_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}
static inline void
bitkv_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

/* Read the header at p (BITKV_HEADER_SIZE bytes must be readable). */
static inline void
bitkv_read_header(const unsigned char *p, BitkvHeader *h)
{
    h->crc = bitkv_le32(p);
    h->flags = p[4];
    h->reserved = p[5];
    h->key_len = bitkv_le16(p + 6);
    h->value_len = bitkv_le32(p + 8);
    h->seq = bitkv_le64(p + 12);
    h->expiry_ms = bitkv_le64(p + 20);
}

/* An index entry, the u64 the IndexMap holds for a key (bitkv/keydir.py's ``entry`` and
 * ``unpack`` are the reference): slot << 44 | offset << 12 | size hint, the hint being the
 * record's size when it is below 4096 and else 0 (then the record's header tells it). */
#define BITKV_ENTRY_SLOT_SHIFT 44
#define BITKV_ENTRY_OFFSET_SHIFT 12
#define BITKV_ENTRY_SIZE_MASK UINT64_C(0xFFF)
#define BITKV_MAX_OFFSET UINT64_C(0xFFFFFFFF) /* a record's offset in its segment */
#define BITKV_MAX_SLOTS 65536                 /* segments open at once */

static inline uint64_t
bitkv_entry(uint64_t slot, uint64_t offset, uint64_t size)
{
    return slot << BITKV_ENTRY_SLOT_SHIFT | offset << BITKV_ENTRY_OFFSET_SHIFT
           | (size <= BITKV_ENTRY_SIZE_MASK ? size : 0);
}
static inline uint64_t bitkv_entry_slot(uint64_t e) { return e >> BITKV_ENTRY_SLOT_SHIFT; }
static inline uint64_t
bitkv_entry_offset(uint64_t e)
{
    return (e >> BITKV_ENTRY_OFFSET_SHIFT) & BITKV_MAX_OFFSET;
}
/* The size hint: the record's size, or 0 if it is 4096 bytes or more. */
static inline uint64_t bitkv_entry_size(uint64_t e) { return e & BITKV_ENTRY_SIZE_MASK; }

/* The size of the record an entry points at, ``owner`` being its segment: the size hint, else
 * what the record's header says, through Segment.record_size_at (KeyDir.forget's rule). 0,
 * or -1 with an error set (a negative size is an OverflowError). */
static inline int
bitkv_entry_record_size(PyObject *owner, uint64_t entry, uint64_t *size)
{
    static PyObject *name; /* "record_size_at", interned once by each file using this */
    *size = bitkv_entry_size(entry);
    if (*size) {
        return 0;
    }
    if (name == NULL && (name = PyUnicode_InternFromString("record_size_at")) == NULL) {
        return -1;
    }
    PyObject *offset = PyLong_FromUnsignedLongLong(bitkv_entry_offset(entry));
    PyObject *r = offset != NULL ? PyObject_CallMethodOneArg(owner, name, offset) : NULL;
    Py_XDECREF(offset);
    if (r == NULL) {
        return -1;
    }
    *size = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    return *size == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* owner.live_bytes += delta: a segment's count of its bytes still indexed (KeyDir's
 * accounting). 0, or -1 with an error set. */
static inline int
bitkv_add_live_bytes(PyObject *owner, int64_t delta)
{
    static PyObject *name; /* "live_bytes", interned once by each file using this */
    if (name == NULL && (name = PyUnicode_InternFromString("live_bytes")) == NULL) {
        return -1;
    }
    PyObject *live = PyObject_GetAttr(owner, name);
    PyObject *change = live != NULL ? PyLong_FromLongLong(delta) : NULL;
    PyObject *sum = change != NULL ? PyNumber_Add(live, change) : NULL;
    int rc = sum != NULL ? PyObject_SetAttr(owner, name, sum) : -1;
    Py_XDECREF(sum);
    Py_XDECREF(change);
    Py_XDECREF(live);
    return rc;
}

/* A hint file's entry (docs/format.md, "Hint files"; bitkv/hint.py's ENTRY): flags u8 | 0 u8 |
 * key_len u16 | value_len u32 | offset u32 | seq u64 | expiry_ms u64, little-endian.
 * compact.c writes them, replay.c reads them. */
#define BITKV_HINT_ENTRY_SIZE 28

/* Encode a data record at p, which has room for its BITKV_HEADER_SIZE + key_len + value_len
 * bytes (record.encode's layout; the caller checked every length against its field), the CRC
 * last, over every byte after its own field. Returns the record's size. */
static inline size_t
bitkv_write_record(unsigned char *p, uint8_t flags, const void *key, size_t key_len,
                   const void *value, size_t value_len, uint64_t seq, uint64_t expiry_ms)
{
    p[4] = flags;
    p[5] = 0; /* reserved */
    bitkv_put_le16(p + 6, (uint16_t)key_len);
    bitkv_put_le32(p + 8, (uint32_t)value_len);
    bitkv_put_le64(p + 12, seq);
    bitkv_put_le64(p + 20, expiry_ms);
    memcpy(p + BITKV_HEADER_SIZE, key, key_len);
    if (value_len) { /* a tombstone's value may be no buffer at all */
        memcpy(p + BITKV_HEADER_SIZE + key_len, value, value_len);
    }
    size_t size = BITKV_HEADER_SIZE + key_len + value_len;
    bitkv_put_le32(p, bitkv_crc32c_extend(0, p + 4, size - 4));
    return size;
}

/* record.header_is_plausible: cheap structural checks before the CRC is computed. */
static inline int
bitkv_header_plausible(const BitkvHeader *h)
{
    return h->reserved == 0 && !(h->flags & ~BITKV_KNOWN_FLAGS) && h->key_len > 0
           && h->value_len <= BITKV_MAX_STORED_VALUE_SIZE
           && !((h->flags & BITKV_TOMBSTONE) && h->value_len)
           && (!(h->flags & BITKV_BATCH_FLAGS) || (h->flags & BITKV_BATCH));
}

/* The size of the intact record at p, 0 if there is none in the ``avail`` bytes from p
 * (record.intact_size_at); *h is its header (when the size is 0, as far as it was read). */
static inline size_t
bitkv_intact_record(const unsigned char *p, size_t avail, BitkvHeader *h)
{
    if (avail < BITKV_HEADER_SIZE) {
        return 0;
    }
    bitkv_read_header(p, h);
    if (!bitkv_header_plausible(h)) {
        return 0;
    }
    size_t size = BITKV_HEADER_SIZE + (size_t)h->key_len + (size_t)h->value_len;
    if (size > avail || bitkv_crc32c_extend(0, p + 4, size - 4) != h->crc) {
        return 0;
    }
    return size;
}

#endif
