/* IndexMap, in bitkv._native: the KeyDir's map (bytes key -> unsigned 64-bit entry) in compiled code.
 *
 * The pure-Python reference is a dict; keydir.py chooses between the two and nothing else
 * imports this module. Only the dict operations the engine uses are implemented (see
 * docs/architecture.md, "The compiled index map"), with the same results and exceptions,
 * except that keys must be bytes (TypeError otherwise, also for lookups) and values must be
 * ints in 0..2**64-1.
 *
 * Layout, chosen for bytes per key (the target: <= 40 beyond the key bytes):
 *
 *   slots[capacity]  16 bytes each: the 64-bit value, and meta = the hash's top 28 bits << 36 |
 *                    offset (36 bits) of the key's record in the arena; meta == 0 is an empty
 *                    slot (offset 0 is never used: the arena starts with one unused byte).
 *                    Open addressing, linear probing from the hash's top log2(capacity) bits
 *                    (its "home"), at most 4/5 full;
 *                    deletion shifts the rest of the cluster back, so there are no tombstones.
 *   arena            key records back to back: LEB128 length, then the key's bytes. Deleted
 *                    keys leave dead bytes, reclaimed by rewriting the arena once they are
 *                    more than half of it.
 *
 * The hash is SipHash-1-3 with a random key per process (the server indexes keys its clients
 * choose: a predictable hash would let them build collisions). A slot keeps the hash's top 28
 * bits (the tag), which serve twice: a probe compares tags before reading the arena, and while
 * the table has at most 2**28 slots a slot's home is its tag's top bits, so growing the table
 * and shifting a cluster back never read the arena or hash again. Beyond 2**28 slots the hash
 * is recomputed from the arena for those two.
 *
 * Everything runs under the GIL and calls no Python code while the table is inconsistent
 * (keys are compared with memcmp, hashed here, values converted before any change).
 * Memory comes from PyMem_Raw*, so tracemalloc sees it.
 */

#include "native.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#define OFFSET_BITS 36
#define TAG_BITS (64 - OFFSET_BITS)
#define OFFSET_MASK ((UINT64_C(1) << OFFSET_BITS) - 1)
#define MAX_ARENA ((size_t)OFFSET_MASK) /* offsets must fit in 36 bits: 64 GiB of keys */
/* Tables of at most 2**HOME_FROM_TAG_MAX_BITS slots take a slot's home from its tag; larger
 * ones rehash the key. scripts/asan_native.sh builds with a small value, so that its tests run
 * both paths (the default would need tables of 4 GiB). */
#ifndef HOME_FROM_TAG_MAX_BITS
#define HOME_FROM_TAG_MAX_BITS TAG_BITS
#endif
#if HOME_FROM_TAG_MAX_BITS > TAG_BITS
#error "HOME_FROM_TAG_MAX_BITS must be at most TAG_BITS"
#endif
#define MIN_BITS 3 /* 8 slots */

/* ---------------------------------------------------------------------------------------- */
/* SipHash-1-3 (Aumasson & Bernstein), as CPython uses for str and bytes.                    */

static uint64_t sip_k0, sip_k1;

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                   \
    do {                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
    } while (0)

static inline uint64_t
load_le64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if PY_BIG_ENDIAN
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint64_t
siphash13(const unsigned char *data, size_t len)
{
    uint64_t v0 = sip_k0 ^ UINT64_C(0x736f6d6570736575);
    uint64_t v1 = sip_k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = sip_k0 ^ UINT64_C(0x6c7967656e657261);
    uint64_t v3 = sip_k1 ^ UINT64_C(0x7465646279746573);
    uint64_t b = (uint64_t)len << 56;
    const unsigned char *end = data + (len & ~(size_t)7);
    for (; data != end; data += 8) {
        uint64_t m = load_le64(data);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    switch (len & 7) { /* the last 0..7 bytes, read one by one: never past the key */
    case 7: b |= (uint64_t)data[6] << 48; /* fall through */
    case 6: b |= (uint64_t)data[5] << 40; /* fall through */
    case 5: b |= (uint64_t)data[4] << 32; /* fall through */
    case 4: b |= (uint64_t)data[3] << 24; /* fall through */
    case 3: b |= (uint64_t)data[2] << 16; /* fall through */
    case 2: b |= (uint64_t)data[1] << 8;  /* fall through */
    case 1: b |= (uint64_t)data[0];       /* fall through */
    case 0: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return (v0 ^ v1) ^ (v2 ^ v3);
}

/* ---------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t value;
    uint64_t meta; /* 0: empty; else tag << OFFSET_BITS | arena offset (>= 1) */
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;          /* NULL while capacity is 0 */
    size_t mask;          /* capacity - 1 (capacity a power of two), 0 while empty */
    unsigned bits;        /* log2(capacity), 0 while empty */
    size_t count;         /* keys indexed */
    unsigned char *arena; /* NULL while arena_cap is 0 */
    size_t arena_len;     /* bytes used, including dead records and the unused byte 0 */
    size_t arena_cap;
    size_t arena_dead;    /* bytes of records of deleted keys */
    uint64_t version;     /* changes whenever a key is added or removed: iterators check it */
} IndexMap;

typedef struct {
    PyObject_HEAD
    IndexMap *map;
    size_t pos; /* arena offset of the next record to look at */
    uint64_t version;
    int items; /* 0: yield keys; 1: yield (key, value) */
} IndexMapIter;

PyTypeObject IndexMap_Type;
static PyTypeObject IndexMapIter_Type;

#define TAG_OF(h) ((h) >> OFFSET_BITS)
#define META_TAG(m) ((m) >> OFFSET_BITS)
#define META_OFFSET(m) ((size_t)((m) & OFFSET_MASK))

/* The slot a hash starts probing from in a table of 2**bits slots (bits >= 3). */
static inline size_t
home_of(uint64_t h, unsigned bits)
{
    return (size_t)(h >> (64 - bits));
}

static inline size_t
capacity_of(const IndexMap *self)
{
    return self->slots == NULL ? 0 : self->mask + 1;
}

/* Decode the record at arena offset ``off``: its key length and where its bytes start.
 * Offsets come only from this file, but the bounds are checked all the same: a bug here must
 * not become a read past the arena. */
static inline int
arena_record(const IndexMap *self, size_t off, const unsigned char **key, size_t *len)
{
    size_t n = 0;
    unsigned shift = 0;
    size_t pos = off;
    for (;;) {
        if (pos >= self->arena_len || shift > 63) {
            return -1;
        }
        unsigned char byte = self->arena[pos++];
        n |= (size_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            break;
        }
        shift += 7;
    }
    if (n > self->arena_len - pos) {
        return -1;
    }
    *key = self->arena + pos;
    *len = n;
    return 0;
}

static inline size_t
varint_size(size_t n)
{
    size_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

static PyObject *
corrupt(void)
{
    PyErr_SetString(PyExc_SystemError, "bitkv._native: arena record out of bounds");
    return NULL;
}

/* Find ``key``: return its slot index, or -1 with *empty the first empty slot of its probe
 * sequence (only meaningful if the table has slots). -2 on an internal error (set). */
static Py_ssize_t
find(const IndexMap *self, const unsigned char *key, size_t len, uint64_t h, size_t *empty)
{
    if (self->slots == NULL) {
        *empty = 0;
        return -1;
    }
    uint64_t tag = TAG_OF(h);
    size_t i = home_of(h, self->bits);
    for (;;) {
        uint64_t meta = self->slots[i].meta;
        if (meta == 0) {
            *empty = i;
            return -1;
        }
        if (META_TAG(meta) == tag) {
            const unsigned char *k;
            size_t n;
            if (arena_record(self, META_OFFSET(meta), &k, &n) < 0) {
                corrupt();
                return -2;
            }
            if (n == len && memcmp(k, key, len) == 0) {
                return (Py_ssize_t)i;
            }
        }
        i = (i + 1) & self->mask; /* terminates: the table is never full (at most 4/5) */
    }
}

static int
slot_hash(const IndexMap *self, const Slot *slot, uint64_t *h)
{
    const unsigned char *k;
    size_t n;
    if (arena_record(self, META_OFFSET(slot->meta), &k, &n) < 0) {
        corrupt();
        return -1;
    }
    *h = siphash13(k, n);
    return 0;
}

/* The home of the key in ``slot`` in a table of 2**bits slots: from its tag while that holds
 * enough bits, else from its hash, recomputed. */
static int
slot_home(const IndexMap *self, const Slot *slot, unsigned bits, size_t *home)
{
    if (bits <= HOME_FROM_TAG_MAX_BITS) {
        *home = (size_t)(META_TAG(slot->meta) >> (TAG_BITS - bits));
        return 0;
    }
    uint64_t h;
    if (slot_hash(self, slot, &h) < 0) {
        return -1;
    }
    *home = home_of(h, bits);
    return 0;
}

/* Blocks from this size on are asked to be backed by transparent huge pages (Linux). A
 * table of tens of millions of keys is GiBs read at random: with 4 KiB pages nearly every
 * probe also misses the TLB, and its page-table walk misses the cache (the page tables of a
 * 1 GiB block are 2 MiB). Measured at 48M keys (docs/performance.md, "Reopen and scale"):
 * half the user time of the open. Smaller blocks are left alone: at 1M keys (a 32 MiB table)
 * huge pages gained nothing, their faults costing what the walks saved. */
#define HUGE_PAGES_FROM ((size_t)64 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)

/* Only advice: where the kernel has no huge pages (or says no), nothing changes. */
static void
advise_huge_pages(void *block, size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes < HUGE_PAGES_FROM) {
        return;
    }
    /* the whole huge pages inside the block (madvise wants page-aligned ranges) */
    uintptr_t lo = ((uintptr_t)block + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    uintptr_t hi = ((uintptr_t)block + bytes) & ~(HUGE_PAGE - 1);
    if (hi > lo) {
        (void)madvise((void *)lo, (size_t)(hi - lo), MADV_HUGEPAGE);
    }
#else
    (void)block;
    (void)bytes;
#endif
}

/* Rehash into a table of 2**new_bits slots (more than count * 5/4). */
static int
resize(IndexMap *self, unsigned new_bits)
{
    if (new_bits >= sizeof(size_t) * 8 - 4) {
        PyErr_NoMemory();
        return -1;
    }
    size_t new_cap = (size_t)1 << new_bits;
    if (new_cap > SIZE_MAX / sizeof(Slot)) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *fresh = PyMem_RawCalloc(new_cap, sizeof(Slot));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    advise_huge_pages(fresh, new_cap * sizeof(Slot));
    size_t new_mask = new_cap - 1;
    size_t old_cap = capacity_of(self);
    for (size_t j = 0; j < old_cap; j++) {
        Slot *s = &self->slots[j];
        if (s->meta == 0) {
            continue;
        }
        size_t i;
        if (slot_home(self, s, new_bits, &i) < 0) {
            PyMem_RawFree(fresh);
            return -1;
        }
        while (fresh[i].meta != 0) {
            i = (i + 1) & new_mask;
        }
        fresh[i] = *s;
    }
    PyMem_RawFree(self->slots);
    self->slots = fresh;
    self->mask = new_mask;
    self->bits = new_bits;
    self->version++;
    return 0;
}

/* The slot that indexes the record at arena offset ``off`` (key ``k`` of ``n`` bytes), or -1
 * if that record is dead (its key deleted, or indexed by a later record). */
static Py_ssize_t
record_slot(const IndexMap *self, size_t off, const unsigned char *k, size_t n)
{
    if (self->slots == NULL) {
        return -1;
    }
    size_t i = home_of(siphash13(k, n), self->bits);
    for (;;) {
        uint64_t meta = self->slots[i].meta;
        if (meta == 0) {
            return -1;
        }
        if (META_OFFSET(meta) == off) {
            return (Py_ssize_t)i;
        }
        i = (i + 1) & self->mask;
    }
}

/* Rewrite the arena with only live records, into ``new_cap`` bytes (>= live bytes). */
static int
compact_arena(IndexMap *self, size_t new_cap)
{
    unsigned char *fresh = PyMem_RawMalloc(new_cap);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* In arena order, so that the keys keep their insertion order. A moved record's new
     * offset is at most its old one, so it never equals the old offset of a record still to
     * be visited: record_slot stays right for those. */
    size_t pos = 1;
    fresh[0] = 0;
    size_t src = 1;
    while (src < self->arena_len) {
        const unsigned char *k;
        size_t n;
        if (arena_record(self, src, &k, &n) < 0) {
            PyMem_RawFree(fresh);
            corrupt();
            return -1;
        }
        size_t rec = (size_t)(k - (self->arena + src)) + n;
        Py_ssize_t i = record_slot(self, src, k, n);
        if (i >= 0) {
            if (rec > new_cap - pos) {
                PyMem_RawFree(fresh);
                corrupt();
                return -1;
            }
            memcpy(fresh + pos, self->arena + src, rec);
            Slot *s = &self->slots[i];
            s->meta = (s->meta & ~OFFSET_MASK) | (uint64_t)pos;
            pos += rec;
        }
        src += rec;
    }
    PyMem_RawFree(self->arena);
    self->arena = fresh;
    self->arena_cap = new_cap;
    self->arena_len = pos;
    self->arena_dead = 0;
    return 0;
}

/* Make room for ``need`` more arena bytes: compact if most of it is dead, else grow by 1/8
 * (realloc of a large block remaps pages, so growing often is cheap; slack costs memory). */
static int
arena_reserve(IndexMap *self, size_t need)
{
    if (self->arena_cap - self->arena_len >= need) {
        return 0;
    }
    size_t live = self->arena_len - self->arena_dead;
    if (self->arena_len == 0) {
        live = 1; /* the unused byte 0 */
    }
    if (need > MAX_ARENA - live) {
        PyErr_SetString(PyExc_MemoryError, "bitkv._native: more than 64 GiB of keys");
        return -1;
    }
    size_t want = live + need;
    size_t grown = want + want / 8;
    if (grown < want || grown > MAX_ARENA) {
        grown = MAX_ARENA;
    }
    if (grown < 4096) {
        grown = 4096;
    }
    if (self->arena_len == 0) {
        unsigned char *fresh = PyMem_RawMalloc(grown);
        if (fresh == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        fresh[0] = 0;
        PyMem_RawFree(self->arena);
        self->arena = fresh;
        self->arena_cap = grown;
        self->arena_len = 1;
        self->arena_dead = 0;
        return 0;
    }
    if (self->arena_dead > self->arena_len / 2) {
        return compact_arena(self, grown);
    }
    /* grow in place (realloc keeps offsets valid) */
    size_t used = self->arena_len + need;
    if (used < self->arena_len || used > MAX_ARENA) {
        PyErr_SetString(PyExc_MemoryError, "bitkv._native: more than 64 GiB of keys");
        return -1;
    }
    size_t new_cap = used + used / 8;
    if (new_cap < used || new_cap > MAX_ARENA) {
        new_cap = MAX_ARENA;
    }
    unsigned char *fresh = PyMem_RawRealloc(self->arena, new_cap);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->arena = fresh;
    self->arena_cap = new_cap;
    return 0;
}

static int
check_key(PyObject *key)
{
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "IndexMap keys must be bytes, not %.200s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    return 0;
}

static int
to_value(PyObject *v, uint64_t *out)
{
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "IndexMap values must be int, not %.200s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_OverflowError,
                            "IndexMap values must be in 0..2**64-1");
        }
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

/* Look ``key`` up: slot index, -1 if absent, -2 on error (set). */
static Py_ssize_t
lookup(IndexMap *self, PyObject *key)
{
    if (check_key(key) < 0) {
        return -2;
    }
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    size_t empty;
    return find(self, k, len, siphash13(k, len), &empty);
}

/* Insert or overwrite ``k`` (``len`` bytes, not inside this map's arena, hash ``h``) -> ``value``;
 * *had_old and *old (when not NULL) tell the previous value. 0, or -1 on error (set). */
static int
map_set_raw(IndexMap *self, const unsigned char *k, size_t len, uint64_t h, uint64_t value,
            int *had_old, uint64_t *old)
{
    size_t empty;
    Py_ssize_t i = find(self, k, len, h, &empty);
    if (i == -2) {
        return -1;
    }
    if (i >= 0) {
        if (had_old != NULL) {
            *had_old = 1;
            *old = self->slots[i].value;
        }
        self->slots[i].value = value; /* an overwrite: iterators stay valid, as with dict */
        return 0;
    }
    if (had_old != NULL) {
        *had_old = 0;
    }
    size_t cap = capacity_of(self);
    /* keep count <= 4/5 of capacity: probes stay short (a miss reads ~13 slots, 4 to a cache
     * line, on average at the limit) and an empty slot always exists */
    if (self->count + 1 > cap - cap / 5) {
        if (resize(self, cap ? self->bits + 1 : MIN_BITS) < 0) {
            return -1;
        }
        (void)find(self, k, len, h, &empty); /* absent: only the empty slot is wanted */
    }
    if (len > MAX_ARENA) {
        PyErr_SetString(PyExc_MemoryError, "bitkv._native: more than 64 GiB of keys");
        return -1;
    }
    size_t rec = varint_size(len) + len;
    /* compacting the arena moves records, not slots: ``empty`` stays the right slot */
    if (arena_reserve(self, rec) < 0) {
        return -1;
    }
    size_t off = self->arena_len;
    unsigned char *p = self->arena + off;
    size_t n = len;
    while (n >= 0x80) {
        *p++ = (unsigned char)(n | 0x80);
        n >>= 7;
    }
    *p++ = (unsigned char)n;
    memcpy(p, k, len);
    self->arena_len += rec;
    self->slots[empty].value = value;
    self->slots[empty].meta = (TAG_OF(h) << OFFSET_BITS) | (uint64_t)off;
    self->count++;
    self->version++;
    return 0;
}

static int
map_set(IndexMap *self, PyObject *key, PyObject *v)
{
    uint64_t value;
    if (check_key(key) < 0 || to_value(v, &value) < 0) {
        return -1;
    }
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    return map_set_raw(self, k, len, siphash13(k, len), value, NULL, NULL);
}

static void
map_free_all(IndexMap *self)
{
    PyMem_RawFree(self->slots);
    PyMem_RawFree(self->arena);
    self->slots = NULL;
    self->arena = NULL;
    self->mask = 0;
    self->bits = 0;
    self->count = 0;
    self->arena_len = self->arena_cap = self->arena_dead = 0;
    self->version++;
}

/* Remove the key in slot ``i``. */
static int
remove_at(IndexMap *self, size_t i)
{
    const unsigned char *k;
    size_t n;
    size_t off = META_OFFSET(self->slots[i].meta);
    if (arena_record(self, off, &k, &n) < 0) {
        corrupt();
        return -1;
    }
    self->arena_dead += (size_t)(k - (self->arena + off)) + n;
    /* Backward-shift deletion: move each later member of the cluster into the hole unless
     * its home slot lies cyclically in (hole, its position]. */
    size_t mask = self->mask;
    size_t hole = i;
    size_t j = i;
    self->slots[hole].meta = 0;
    self->slots[hole].value = 0;
    for (;;) {
        j = (j + 1) & mask;
        Slot *s = &self->slots[j];
        if (s->meta == 0) {
            break;
        }
        size_t home;
        if (slot_home(self, s, self->bits, &home) < 0) {
            return -1; /* not reached unless the arena is corrupt */
        }
        /* distance from home to j, and from hole to j, cyclically */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            self->slots[hole] = *s;
            s->meta = 0;
            s->value = 0;
            hole = j;
        }
    }
    self->count--;
    self->version++;
    if (self->count == 0) {
        map_free_all(self);
    }
    else if (self->arena_dead > self->arena_len / 2 && self->arena_len > 65536) {
        size_t live = self->arena_len - self->arena_dead;
        if (compact_arena(self, live + live / 4) < 0) {
            PyErr_Clear(); /* the key is removed; compaction can wait for the next insert */
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The Python-visible type.                                                                  */

static PyObject *
IndexMap_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0) || PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "IndexMap() takes no arguments");
        return NULL;
    }
    IndexMap *self = (IndexMap *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->slots = NULL;
    self->arena = NULL;
    self->mask = self->count = 0;
    self->bits = 0;
    self->arena_len = self->arena_cap = self->arena_dead = 0;
    self->version = 0;
    return (PyObject *)self;
}

static void
IndexMap_dealloc(IndexMap *self)
{
    PyMem_RawFree(self->slots);
    PyMem_RawFree(self->arena);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
IndexMap_len(IndexMap *self)
{
    return (Py_ssize_t)self->count;
}

static PyObject *
IndexMap_subscript(IndexMap *self, PyObject *key)
{
    Py_ssize_t i = lookup(self, key);
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(self->slots[i].value);
}

static int
IndexMap_ass_subscript(IndexMap *self, PyObject *key, PyObject *v)
{
    if (v != NULL) {
        return map_set(self, key, v);
    }
    Py_ssize_t i = lookup(self, key);
    if (i == -2) {
        return -1;
    }
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    return remove_at(self, (size_t)i);
}

static int
IndexMap_contains(IndexMap *self, PyObject *key)
{
    Py_ssize_t i = lookup(self, key);
    if (i == -2) {
        return -1;
    }
    return i >= 0;
}

static PyObject *
IndexMap_get(IndexMap *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t i = lookup(self, args[0]);
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        PyObject *dflt = nargs == 2 ? args[1] : Py_None;
        Py_INCREF(dflt);
        return dflt;
    }
    return PyLong_FromUnsignedLongLong(self->slots[i].value);
}

static PyObject *
IndexMap_pop(IndexMap *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "pop expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t i = lookup(self, args[0]);
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        if (nargs == 2) {
            Py_INCREF(args[1]);
            return args[1];
        }
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    PyObject *value = PyLong_FromUnsignedLongLong(self->slots[i].value);
    if (value == NULL) {
        return NULL;
    }
    if (remove_at(self, (size_t)i) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

static PyObject *
IndexMap_clear(IndexMap *self, PyObject *Py_UNUSED(ignored))
{
    map_free_all(self);
    Py_RETURN_NONE;
}

/* The largest ``reserve`` accepted: a table of 2**40 slots (16 TiB) is beyond any machine,
 * so a bigger request is a mistake (a damaged count), not a size to try. */
#define MAX_RESERVE (((size_t)1 << 40) / 5 * 4)

static PyObject *
IndexMap_reserve(IndexMap *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 0 || (size_t)n > MAX_RESERVE) {
        PyErr_Format(PyExc_ValueError, "reserve: %zd keys is out of range (0..%zu)", n,
                     (size_t)MAX_RESERVE);
        return NULL;
    }
    /* The smallest table that holds n keys within the 4/5 bound of map_set_raw; never
     * smaller than the table there is (reserve does not shrink). */
    unsigned bits = self->slots == NULL ? MIN_BITS : self->bits;
    for (;;) {
        size_t cap = (size_t)1 << bits;
        if ((size_t)n <= cap - cap / 5) {
            break;
        }
        bits++;
    }
    if (self->slots == NULL ? n > 0 : bits > self->bits) {
        if (resize(self, bits) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* Call ``visit(k, n, ctx)`` for each live key starting with ``prefix`` (``plen`` bytes), in
 * insertion order. The walk is the iterator's (the arena, sequentially), but each record is
 * compared with the prefix first and only one that matches is hashed to learn whether it is
 * live (record_slot): a prefix that matches few keys costs one pass of memcmp over the arena,
 * with no hashing and no allocation for the keys it does not match.
 * 0, or -1 on error (set), including -1 from ``visit``, which ends the walk. */
typedef int (*prefix_visitor)(const unsigned char *k, size_t n, void *ctx);

static int
walk_prefix(IndexMap *self, const unsigned char *prefix, size_t plen, prefix_visitor visit,
            void *ctx)
{
    /* ``visit`` may allocate. Allocating bytes or growing a list runs no Python code today,
     * but if anything it calls ever did (and changed this map), ``k`` would point into a
     * freed arena: the version is checked after each call, as the iterator checks it. */
    uint64_t version = self->version;
    size_t pos = 1; /* arena offset 0 is the unused byte */
    while (pos < self->arena_len) {
        const unsigned char *k;
        size_t n;
        if (arena_record(self, pos, &k, &n) < 0) {
            corrupt();
            return -1;
        }
        size_t off = pos;
        pos = (size_t)(k - self->arena) + n;
        if (n < plen || memcmp(k, prefix, plen) != 0) {
            continue;
        }
        if (record_slot(self, off, k, n) < 0) {
            continue; /* dead: its key was deleted since (if put again, a later record is live) */
        }
        if (visit(k, n, ctx) < 0) {
            return -1;
        }
        if (self->version != version) {
            PyErr_SetString(PyExc_RuntimeError, "IndexMap changed size during a prefix scan");
            return -1;
        }
    }
    return 0;
}

/* Where append_key puts the keys: ``list`` has ``filled`` of them; it may have been made
 * with room for all (every key wanted: the count is known), else it grows by appending. */
typedef struct {
    PyObject *list;
    Py_ssize_t filled;
} KeyList;

static int
append_key(const unsigned char *k, size_t n, void *ctx)
{
    KeyList *out = (KeyList *)ctx;
    PyObject *key = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)n);
    if (key == NULL) {
        return -1;
    }
    if (out->filled < PyList_GET_SIZE(out->list)) {
        PyList_SET_ITEM(out->list, out->filled, key); /* steals the reference */
        out->filled++;
        return 0;
    }
    int rc = PyList_Append(out->list, key);
    Py_DECREF(key);
    if (rc == 0) {
        out->filled++;
    }
    return rc;
}

static int
count_key(const unsigned char *k, size_t n, void *count)
{
    (void)k;
    (void)n;
    (*(size_t *)count)++;
    return 0;
}

/* A prefix must be bytes, as keys must (TypeError otherwise). */
static int
prefix_arg(PyObject *arg, const unsigned char **prefix, size_t *plen)
{
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "IndexMap prefixes must be bytes, not %.200s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    *prefix = (const unsigned char *)PyBytes_AS_STRING(arg);
    *plen = (size_t)PyBytes_GET_SIZE(arg);
    return 0;
}

static PyObject *
IndexMap_keys_with_prefix(IndexMap *self, PyObject *arg)
{
    const unsigned char *prefix;
    size_t plen;
    if (prefix_arg(arg, &prefix, &plen) < 0) {
        return NULL;
    }
    /* Every key wanted: the list is made in its final size, as list(map) would make it. */
    KeyList out = {PyList_New(plen == 0 ? (Py_ssize_t)self->count : 0), 0};
    if (out.list == NULL) {
        return NULL;
    }
    if (walk_prefix(self, prefix, plen, append_key, &out) < 0) {
        Py_DECREF(out.list); /* unfilled items are NULL, which a list's dealloc skips */
        return NULL;
    }
    if (out.filled != PyList_GET_SIZE(out.list)) { /* fewer live records than keys */
        Py_DECREF(out.list);
        return corrupt();
    }
    return out.list;
}

static PyObject *
IndexMap_count_with_prefix(IndexMap *self, PyObject *arg)
{
    const unsigned char *prefix;
    size_t plen;
    if (prefix_arg(arg, &prefix, &plen) < 0) {
        return NULL;
    }
    if (plen == 0) {
        return PyLong_FromSize_t(self->count);
    }
    size_t count = 0;
    if (walk_prefix(self, prefix, plen, count_key, &count) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(count);
}

static PyObject *
make_iter(IndexMap *self, int items)
{
    IndexMapIter *it = PyObject_New(IndexMapIter, &IndexMapIter_Type);
    if (it == NULL) {
        return NULL;
    }
    Py_INCREF(self);
    it->map = self;
    it->pos = 1; /* arena offset 0 is the unused byte */
    it->version = self->version;
    it->items = items;
    return (PyObject *)it;
}

static PyObject *
IndexMap_iter(IndexMap *self)
{
    return make_iter(self, 0);
}

static PyObject *
IndexMap_keys(IndexMap *self, PyObject *Py_UNUSED(ignored))
{
    return make_iter(self, 0);
}

static PyObject *
IndexMap_items(IndexMap *self, PyObject *Py_UNUSED(ignored))
{
    return make_iter(self, 1);
}

static PyObject *
IndexMap_sizeof(IndexMap *self, PyObject *Py_UNUSED(ignored))
{
    size_t total = sizeof(IndexMap) + capacity_of(self) * sizeof(Slot) + self->arena_cap;
    return PyLong_FromSize_t(total);
}

static PyObject *
IndexMap_repr(IndexMap *self)
{
    return PyUnicode_FromFormat("<bitkv IndexMap of %zu keys>", self->count);
}

/* items_in: the keys whose value's high bits name one of a set of groups, without visiting the
 * rest one Python object at a time. The KeyDir asks it for the keys pointing into a few
 * segments (value >> SLOT_SHIFT is the segment's slot): the checkpoint of a clean close wants
 * the active segment's keys, compaction the keys left in its inputs. Iterating every key
 * hashes each one again to find its slot (record_slot) and builds a tuple for each, 190 to
 * 250 ns a key: 4 s at 16M keys, 9 s at 48M, to close a store. Here the table is read in slot order, sequentially
 * (one pass at memory speed, no hashing), and objects are made only for the matches, which
 * are then put in arena order: the insertion order the iterator and a dict give, so that a
 * hint written from this list is byte for byte the one the iteration wrote. */

typedef struct {
    uint64_t off;   /* the key's arena offset: its insertion order */
    uint64_t value;
} Match;

static int
match_by_offset(const void *a, const void *b)
{
    uint64_t x = ((const Match *)a)->off, y = ((const Match *)b)->off;
    return (x > y) - (x < y);
}

static PyObject *
IndexMap_items_in(IndexMap *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "items_in expected 2 arguments, got %zd", nargs);
        return NULL;
    }
    long shift = PyLong_AsLong(args[0]);
    if (shift == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (shift < 0 || shift > 63) {
        PyErr_Format(PyExc_ValueError, "items_in: shift %ld is out of range (0..63)", shift);
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "items_in: the bitmap must be bytes, not %.200s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    /* Only this function's own loop reads the bitmap, and no Python code runs during it. */
    const unsigned char *bits = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    uint64_t nbits = (uint64_t)PyBytes_GET_SIZE(args[1]) * 8;

    Match *found = NULL;
    size_t nfound = 0, room = 0;
    size_t cap = capacity_of(self);
    for (size_t j = 0; j < cap; j++) {
        const Slot *s = &self->slots[j];
        uint64_t group = s->value >> shift;
        if (s->meta == 0 || group >= nbits || !(bits[group >> 3] & (1u << (group & 7)))) {
            continue;
        }
        if (nfound == room) {
            size_t more = room ? room * 2 : 1024;
            if (more > self->count) {
                more = self->count; /* never more matches than keys */
            }
            Match *grown = PyMem_RawRealloc(found, more * sizeof(Match));
            if (grown == NULL) {
                PyMem_RawFree(found);
                return PyErr_NoMemory();
            }
            found = grown;
            room = more;
        }
        found[nfound].off = META_OFFSET(s->meta);
        found[nfound].value = s->value;
        nfound++;
    }
    if (nfound > 1) {
        qsort(found, nfound, sizeof(Match), match_by_offset);
    }

    /* Making the objects may run the cyclic GC, and with it arbitrary code that changes this
     * map: the arena offsets found above hold only while the version does. */
    uint64_t version = self->version;
    PyObject *list = PyList_New((Py_ssize_t)nfound);
    if (list == NULL) {
        PyMem_RawFree(found);
        return NULL;
    }
    for (size_t m = 0; m < nfound; m++) {
        if (self->version != version) {
            PyErr_SetString(PyExc_RuntimeError, "IndexMap changed size during items_in");
            goto fail;
        }
        const unsigned char *k;
        size_t n;
        if (arena_record(self, (size_t)found[m].off, &k, &n) < 0) {
            corrupt();
            goto fail;
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)n);
        if (key == NULL) {
            goto fail;
        }
        PyObject *v = PyLong_FromUnsignedLongLong(found[m].value);
        if (v == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(key);
            Py_DECREF(v);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, v);
        PyList_SET_ITEM(list, (Py_ssize_t)m, pair);
    }
    PyMem_RawFree(found);
    return list;
fail:
    PyMem_RawFree(found);
    Py_DECREF(list); /* the unfilled items are NULL, which list_dealloc skips */
    return NULL;
}

static PyMethodDef IndexMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))IndexMap_get, METH_FASTCALL,
     "get(key, default=None, /): the value of key, else default."},
    {"pop", (PyCFunction)(void (*)(void))IndexMap_pop, METH_FASTCALL,
     "pop(key[, default], /): remove key and return its value; KeyError if absent and no "
     "default."},
    {"keys", (PyCFunction)IndexMap_keys, METH_NOARGS,
     "An iterator over the keys (not a view)."},
    {"items", (PyCFunction)IndexMap_items, METH_NOARGS,
     "An iterator over (key, value) pairs (not a view)."},
    {"clear", (PyCFunction)IndexMap_clear, METH_NOARGS, "Remove every key, free the memory."},
    {"items_in", (PyCFunction)(void (*)(void))IndexMap_items_in, METH_FASTCALL,
     "items_in(shift, bitmap, /): a list of the (key, value) pairs whose value >> shift is a "
     "bit set in bitmap (bytes; bit i is bit i & 7 of byte i >> 3), in insertion order."},
    {"keys_with_prefix", (PyCFunction)IndexMap_keys_with_prefix, METH_O,
     "keys_with_prefix(prefix, /): a list of the keys starting with prefix (bytes; b\"\": "
     "every key), in insertion order. Only matching keys become bytes objects."},
    {"count_with_prefix", (PyCFunction)IndexMap_count_with_prefix, METH_O,
     "count_with_prefix(prefix, /): how many keys start with prefix (bytes; b\"\": len)."},
    {"reserve", (PyCFunction)IndexMap_reserve, METH_O,
     "reserve(n, /): size the table for n keys at once, so that inserting up to n keys does "
     "not rehash; never shrinks it. ValueError if n is negative or absurdly large."},
    {"__sizeof__", (PyCFunction)IndexMap_sizeof, METH_NOARGS,
     "Bytes allocated: the object, its slots and its key arena."},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods IndexMap_as_mapping = {
    (lenfunc)IndexMap_len,
    (binaryfunc)IndexMap_subscript,
    (objobjargproc)IndexMap_ass_subscript,
};

static PySequenceMethods IndexMap_as_sequence = {
    .sq_contains = (objobjproc)IndexMap_contains,
};

PyTypeObject IndexMap_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.IndexMap",
    .tp_basicsize = sizeof(IndexMap),
    .tp_dealloc = (destructor)IndexMap_dealloc,
    .tp_repr = (reprfunc)IndexMap_repr,
    .tp_as_sequence = &IndexMap_as_sequence,
    .tp_as_mapping = &IndexMap_as_mapping,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A map of bytes keys to unsigned 64-bit ints: the KeyDir's compiled index.",
    .tp_iter = (getiterfunc)IndexMap_iter,
    .tp_methods = IndexMap_methods,
    .tp_new = IndexMap_new,
};

/* ---------------------------------------------------------------------------------------- */

static void
IndexMapIter_dealloc(IndexMapIter *it)
{
    Py_XDECREF(it->map);
    PyObject_Free(it);
}

static PyObject *
IndexMapIter_next(IndexMapIter *it)
{
    IndexMap *map = it->map;
    if (map == NULL) {
        return NULL;
    }
    if (it->version != map->version) {
        PyErr_SetString(PyExc_RuntimeError, "IndexMap changed size during iteration");
        return NULL;
    }
    /* In arena order: the keys in insertion order, as a dict gives them (table order would
     * be hash order, and inserting keys in hash order into another table of this kind piles
     * them into one cluster: a reopen from hints written that way took 30 times longer). */
    const unsigned char *k = NULL;
    size_t n = 0;
    Py_ssize_t i = -1;
    while (i < 0) {
        if (it->pos >= map->arena_len) {
            it->map = NULL;
            Py_DECREF(map);
            return NULL;
        }
        size_t off = it->pos;
        if (arena_record(map, off, &k, &n) < 0) {
            return corrupt();
        }
        it->pos = (size_t)(k - map->arena) + n;
        i = record_slot(map, off, k, n);
    }
    uint64_t value = map->slots[i].value; /* read before any allocation below */
    PyObject *key = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)n);
    if (key == NULL || !it->items) {
        return key;
    }
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(key);
        Py_DECREF(v);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, key);
    PyTuple_SET_ITEM(pair, 1, v);
    return pair;
}

static PyObject *
IndexMapIter_length_hint(IndexMapIter *it, PyObject *Py_UNUSED(ignored))
{
    size_t n = 0;
    if (it->map != NULL && it->version == it->map->version) {
        n = it->map->count; /* an upper bound, as __length_hint__ may be */
    }
    return PyLong_FromSize_t(n);
}

static PyMethodDef IndexMapIter_methods[] = {
    {"__length_hint__", (PyCFunction)IndexMapIter_length_hint, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IndexMapIter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.IndexMapIterator",
    .tp_basicsize = sizeof(IndexMapIter),
    .tp_dealloc = (destructor)IndexMapIter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)IndexMapIter_next,
    .tp_methods = IndexMapIter_methods,
};

/* ---------------------------------------------------------------------------------------- */

static int
seed_hash(void)
{
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL) {
        return -1;
    }
    PyObject *seed = PyObject_CallMethod(os, "urandom", "i", 16);
    Py_DECREF(os);
    if (seed == NULL) {
        return -1;
    }
    if (!PyBytes_Check(seed) || PyBytes_GET_SIZE(seed) != 16) {
        Py_DECREF(seed);
        PyErr_SetString(PyExc_RuntimeError, "os.urandom(16) did not return 16 bytes");
        return -1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(seed);
    sip_k0 = load_le64(p);
    sip_k1 = load_le64(p + 8);
    Py_DECREF(seed);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The C API the other kernels of bitkv._native use (native.h). No Python code runs in them.  */

int
bitkv_index_lookup(PyObject *map, const unsigned char *key, size_t len, uint64_t *value)
{
    return bitkv_index_lookup_hashed(map, key, len, siphash13(key, len), value);
}

int
bitkv_index_candidate(PyObject *map, const unsigned char *key, size_t len, uint64_t *value)
{
    return bitkv_index_candidate_hashed(map, siphash13(key, len), value);
}

int
bitkv_index_candidate_hashed(PyObject *map, uint64_t h, uint64_t *value)
{
    const IndexMap *self = (const IndexMap *)map;
    if (self->slots == NULL) {
        return 0;
    }
    uint64_t tag = TAG_OF(h);
    size_t i = home_of(h, self->bits);
    for (;;) {
        uint64_t meta = self->slots[i].meta;
        if (meta == 0) {
            return 0;
        }
        if (META_TAG(meta) == tag) {
            *value = self->slots[i].value;
            return 1;
        }
        i = (i + 1) & self->mask; /* terminates: the table is never full (at most 4/5) */
    }
}

int
bitkv_index_set(PyObject *map, PyObject *key, uint64_t value, int *had_old, uint64_t *old)
{
    if (check_key(key) < 0) {
        return -1;
    }
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    return map_set_raw((IndexMap *)map, k, len, siphash13(k, len), value, had_old, old);
}

uint64_t
bitkv_index_hash(const unsigned char *key, size_t len)
{
    return siphash13(key, len);
}

int
bitkv_index_lookup_hashed(PyObject *map, const unsigned char *key, size_t len, uint64_t h,
                          uint64_t *value)
{
    IndexMap *self = (IndexMap *)map;
    size_t empty;
    Py_ssize_t i = find(self, key, len, h, &empty);
    if (i == -2) {
        return -1;
    }
    if (i < 0) {
        return 0;
    }
    *value = self->slots[i].value;
    return 1;
}

int
bitkv_index_set_hashed(PyObject *map, const unsigned char *key, size_t len, uint64_t h,
                       uint64_t value, int *had_old, uint64_t *old)
{
    return map_set_raw((IndexMap *)map, key, len, h, value, had_old, old);
}

void
bitkv_index_prefetch(PyObject *map, uint64_t h)
{
    const IndexMap *self = (const IndexMap *)map;
    if (self->slots != NULL) {
        __builtin_prefetch(&self->slots[home_of(h, self->bits)]);
    }
}

void
bitkv_index_prefetch_key(PyObject *map, uint64_t h)
{
    const IndexMap *self = (const IndexMap *)map;
    if (self->slots == NULL) {
        return;
    }
    uint64_t meta = self->slots[home_of(h, self->bits)].meta;
    /* only a prefetch: an offset past the arena would be harmless, but none is made */
    if (meta != 0 && META_TAG(meta) == TAG_OF(h) && META_OFFSET(meta) < self->arena_len) {
        __builtin_prefetch(self->arena + META_OFFSET(meta));
    }
}

int
bitkv_index_delete(PyObject *map, const unsigned char *key, size_t len)
{
    IndexMap *self = (IndexMap *)map;
    size_t empty;
    Py_ssize_t i = find(self, key, len, siphash13(key, len), &empty);
    if (i == -2) {
        return -1;
    }
    if (i < 0) {
        return 0;
    }
    return remove_at(self, (size_t)i) < 0 ? -1 : 1;
}

int
bitkv_indexmap_init(PyObject *m)
{
    if (seed_hash() < 0 || PyType_Ready(&IndexMapIter_Type) < 0
        || PyModule_AddType(m, &IndexMap_Type) < 0) {
        return -1;
    }
    return 0;
}
