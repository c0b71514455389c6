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
 * (record.intact_size_at). */
static inline size_t
bitkv_intact_size(const unsigned char *p, size_t avail)
{
    BitkvHeader h;
    if (avail < BITKV_HEADER_SIZE) {
        return 0;
    }
    bitkv_read_header(p, &h);
    if (!bitkv_header_plausible(&h)) {
        return 0;
    }
    size_t size = BITKV_HEADER_SIZE + (size_t)h.key_len + (size_t)h.value_len;
    if (size > avail || bitkv_crc32c_extend(0, p + 4, size - 4) != h.crc) {
        return 0;
    }
    return size;
}

#endif
