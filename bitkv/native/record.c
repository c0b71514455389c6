/* The record codec, in bitkv._native: encode_record, decode_record, intact_size_at.
 *
 * record.py keeps the pure-Python reference of each (encode_py, decode_py,
 * intact_size_at_py) and, in native mode, exports these under the public names. Each
 * kernel serves the common case (exact bytes and ints in range, an intact record) and hands
 * every other input to its reference, registered by record.py with record_setup(), so that
 * both modes return the same results and raise the same exceptions with the same messages:
 * the kernel never builds an error of its own for bad input.
 */
#include "native.h"

static PyObject *ref_encode, *ref_decode, *ref_intact, *header_type;

static PyObject *
py_record_setup(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *enc, *dec, *intact, *header;
    if (!PyArg_ParseTuple(args, "OOOO!:record_setup", &enc, &dec, &intact, &PyType_Type,
                          &header)) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)header;
    /* Header must be a tuple subclass adding no fields of its own (a NamedTuple), so that
     * the kernel can build it as a tuple of that type. */
    if (!PyType_IsSubtype(tp, &PyTuple_Type) || tp->tp_basicsize != PyTuple_Type.tp_basicsize
        || tp->tp_itemsize != PyTuple_Type.tp_itemsize || tp->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "record_setup: header must be a NamedTuple class");
        return NULL;
    }
    Py_INCREF(enc);
    Py_INCREF(dec);
    Py_INCREF(intact);
    Py_INCREF(header);
    Py_XSETREF(ref_encode, enc);
    Py_XSETREF(ref_decode, dec);
    Py_XSETREF(ref_intact, intact);
    Py_XSETREF(header_type, header);
    Py_RETURN_NONE;
}

static PyObject *
call_ref(PyObject *ref, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (ref == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bitkv._native: record_setup() was not called");
        return NULL;
    }
    return PyObject_Vectorcall(ref, args, (size_t)nargs, kwnames);
}

/* An int argument in [0, max], or -1 if it is anything else (the reference decides). */
static int
small_uint(PyObject *o, uint64_t max, uint64_t *out)
{
    if (!PyLong_CheckExact(o)) {
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0 && v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (overflow > 0) { /* above 2**63 - 1: still a valid u64? */
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        if (u > max) {
            return -1;
        }
        *out = u;
        return 0;
    }
    if (overflow < 0 || v < 0 || (uint64_t)v > max) {
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* encode_record(key, value, seq, expiry_ms=0, flags=0) -> bytes */
static PyObject *
py_encode_record(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    uint64_t seq, expiry = 0, flags = 0;
    if (kwnames != NULL || nargs < 3 || nargs > 5 || !PyBytes_CheckExact(args[0])
        || !PyBytes_CheckExact(args[1]) || PyBytes_GET_SIZE(args[0]) > 0xFFFF
        || (uint64_t)PyBytes_GET_SIZE(args[1]) > UINT32_MAX
        || small_uint(args[2], UINT64_MAX, &seq) < 0
        || (nargs > 3 && small_uint(args[3], UINT64_MAX, &expiry) < 0)
        || (nargs > 4 && small_uint(args[4], 0xFF, &flags) < 0)) {
        return call_ref(ref_encode, args, nargs, kwnames);
    }
    size_t klen = (size_t)PyBytes_GET_SIZE(args[0]);
    size_t vlen = (size_t)PyBytes_GET_SIZE(args[1]);
    size_t size = BITKV_HEADER_SIZE + klen + vlen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out == NULL) {
        return NULL;
    }
    bitkv_write_record((unsigned char *)PyBytes_AS_STRING(out), (uint8_t)flags,
                       PyBytes_AS_STRING(args[0]), klen, PyBytes_AS_STRING(args[1]), vlen, seq,
                       expiry);
    return out;
}

/* decode_record(buf, expected_key=None) -> (Header, value) */
static PyObject *
py_decode_record(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    if (kwnames != NULL || nargs < 1 || nargs > 2 || !PyBytes_CheckExact(args[0])
        || (nargs == 2 && args[1] != Py_None && !PyBytes_CheckExact(args[1]))
        || header_type == NULL) {
        return call_ref(ref_decode, args, nargs, kwnames);
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    size_t len = (size_t)PyBytes_GET_SIZE(args[0]);
    BitkvHeader h;
    if (len < BITKV_HEADER_SIZE) {
        return call_ref(ref_decode, args, nargs, kwnames); /* raises ValueError */
    }
    if (bitkv_intact_record(p, len, &h) != len /* one whole record, intact */
        || (nargs == 2 && args[1] != Py_None
            && ((size_t)PyBytes_GET_SIZE(args[1]) != h.key_len
                || memcmp(PyBytes_AS_STRING(args[1]), p + BITKV_HEADER_SIZE, h.key_len)))) {
        return call_ref(ref_decode, args, nargs, kwnames); /* raises the reference's error */
    }
    PyObject *value = PyBytes_FromStringAndSize((const char *)p + BITKV_HEADER_SIZE + h.key_len,
                                                (Py_ssize_t)h.value_len);
    if (value == NULL) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)header_type;
    PyObject *header = tp->tp_alloc(tp, 7);
    if (header == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    PyObject *fields[7] = {
        PyLong_FromUnsignedLong(h.crc),       PyLong_FromLong(h.flags),
        PyLong_FromLong(h.reserved),          PyLong_FromLong(h.key_len),
        PyLong_FromUnsignedLong(h.value_len), PyLong_FromUnsignedLongLong(h.seq),
        PyLong_FromUnsignedLongLong(h.expiry_ms),
    };
    int failed = 0;
    for (int i = 0; i < 7; i++) {
        if (fields[i] == NULL) {
            failed = 1;
            fields[i] = Py_None;
            Py_INCREF(Py_None);
        }
        PyTuple_SET_ITEM(header, i, fields[i]); /* steals */
    }
    if (failed) {
        Py_DECREF(header);
        Py_DECREF(value);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(header);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, header);
    PyTuple_SET_ITEM(result, 1, value);
    return result;
}

/* intact_size_at(buf, pos, end) -> int */
static PyObject *
py_intact_size_at(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    if (kwnames != NULL || nargs != 3 || !PyLong_CheckExact(args[1])
        || !PyLong_CheckExact(args[2])) {
        return call_ref(ref_intact, args, nargs, kwnames);
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || end == -1) && PyErr_Occurred()) {
        PyErr_Clear();
        return call_ref(ref_intact, args, nargs, kwnames);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* a closed map, a str: the reference raises what it raises */
        return call_ref(ref_intact, args, nargs, kwnames);
    }
    if (pos < 0 || end > view.len) {
        PyBuffer_Release(&view);
        return call_ref(ref_intact, args, nargs, kwnames);
    }
    size_t size = 0;
    if (end > pos) {
        BitkvHeader h;
        size = bitkv_intact_record((const unsigned char *)view.buf + pos, (size_t)(end - pos),
                                   &h);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSize_t(size);
}

static PyMethodDef record_methods[] = {
    {"record_setup", (PyCFunction)py_record_setup, METH_VARARGS,
     "record_setup(encode, decode, intact_size_at, Header): the references the kernels "
     "hand unusual input to, and the header type decode returns (record.py calls it)."},
    {"encode_record", (PyCFunction)(void (*)(void))py_encode_record,
     METH_FASTCALL | METH_KEYWORDS, "record.encode in C."},
    {"decode_record", (PyCFunction)(void (*)(void))py_decode_record,
     METH_FASTCALL | METH_KEYWORDS, "record.decode in C."},
    {"intact_size_at", (PyCFunction)(void (*)(void))py_intact_size_at,
     METH_FASTCALL | METH_KEYWORDS, "record.intact_size_at in C."},
    {NULL, NULL, 0, NULL},
};

int
bitkv_record_init(PyObject *m)
{
    return PyModule_AddFunctions(m, record_methods);
}
