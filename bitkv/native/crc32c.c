/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as bitkv/crc.py computes it: the
 * checksum of every record, segment header and hint file.
 *
 * x86-64 with SSE4.2 uses the crc32 instruction (checked once, at import, with cpuid through
 * __builtin_cpu_supports); everything else uses slicing-by-8 tables built at import. Both give
 * the same value as crcmod's "crc-32c" (tests/test_native_crc.py checks them against it).
 */
#include "native.h"

static uint32_t table[8][256];
static uint32_t (*update)(uint32_t, const unsigned char *, size_t);

static uint32_t
update_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        /* little-endian load: the reflected CRC consumes bytes in memory order */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = table[7][w & 0xFF] ^ table[6][(w >> 8) & 0xFF] ^ table[5][(w >> 16) & 0xFF]
              ^ table[4][(w >> 24) & 0xFF] ^ table[3][(w >> 32) & 0xFF]
              ^ table[2][(w >> 40) & 0xFF] ^ table[1][(w >> 48) & 0xFF]
              ^ table[0][(w >> 56) & 0xFF];
        p += 8;
        n -= 8;
    }
    while (n--) {
        crc = table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    }
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_HW 1
__attribute__((target("sse4.2"))) static uint32_t
update_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    }
    return (uint32_t)c;
}
#endif

uint32_t
bitkv_crc32c_extend(uint32_t crc, const void *data, size_t len)
{
    return ~update(~crc, (const unsigned char *)data, len);
}

static PyObject *
py_crc32c(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32c(data, crc=0) takes 1 or 2 arguments");
        return NULL;
    }
    unsigned long crc = 0;
    if (nargs == 2) {
        crc = PyLong_AsUnsignedLong(args[1]);
        if (crc == (unsigned long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        if (crc > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_OverflowError, "crc must be in 0..2**32-1");
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint32_t out;
    if (view.len >= 65536) { /* long buffers: let other threads run meanwhile */
        Py_BEGIN_ALLOW_THREADS
        out = bitkv_crc32c_extend((uint32_t)crc, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
    }
    else {
        out = bitkv_crc32c_extend((uint32_t)crc, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(out);
}

static PyMethodDef crc_methods[] = {
    {"crc32c", (PyCFunction)(void (*)(void))py_crc32c, METH_FASTCALL,
     "crc32c(data, crc=0) -> int: the CRC-32C of data, continuing from crc (the CRC-32C of "
     "the bytes before it)."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_crc32c_init(PyObject *m)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        table[0][i] = c;
    }
    for (int t = 1; t < 8; t++) {
        for (int i = 0; i < 256; i++) {
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
        }
    }
    update = update_sw;
#ifdef HAVE_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2") && getenv("BITKV_NO_HW_CRC") == NULL) {
        update = update_hw;
    }
#endif
    if (PyModule_AddStringConstant(m, "CRC_IMPLEMENTATION",
                                   update == update_sw ? "software" : "sse4.2") < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, crc_methods);
}
