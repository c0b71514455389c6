/* RespParser: the server's RESP request parser in C, the twin of protocol.PyParser.
 *
 * bitkv/server/protocol.py's PyParser is the reference: this file does what its _parse_one
 * does, step for step, with the same limits, the same error texts, the same state between
 * reads (so ``buffered()`` and ``idle()`` answer the same) and the same leftovers after an
 * error. fuzz/fuzz_resp.py and tests/test_resp_native.py compare the two on arbitrary input.
 *
 * Safety: every declared size (``*N``, ``$N``) is checked against the limits before anything
 * is read or allocated for it; nothing is pre-sized from a header (an argument list grows as
 * its arguments arrive); every read of the input is bounded by its length, and sums of sizes
 * are compared by subtraction so that they cannot overflow. Inline commands (a request not
 * starting with '*', e.g. typed into telnet) are split by the Python function given to the
 * constructor (protocol.split_args), so there is one implementation of sdssplitargs.
 *
 * Input that arrives whole (the common case) is parsed straight from the bytes given to
 * ``feed``; only an incomplete tail is copied into the parser's own buffer.
 */
#include "native.h"

#define RESP_INLINE_MAX_SIZE (64 * 1024) /* protocol.PROTO_INLINE_MAX_SIZE */
#define RESP_UNAUTH_MAX_MULTIBULK 10
#define RESP_UNAUTH_MAX_BULK 16384
#define RESP_ARG_OVERHEAD 41 /* protocol.ARG_OVERHEAD */
#define RESP_COMPACT_AT 65536

typedef struct {
    PyObject_HEAD
    char *buf;            /* unconsumed input kept between reads: buf[pos:len] */
    Py_ssize_t len;
    Py_ssize_t pos;
    Py_ssize_t cap;
    PyObject *args;       /* the multibulk being read (a list), or NULL */
    Py_ssize_t left;      /* bulk strings still to read in it */
    Py_ssize_t bulk;      /* length of the bulk string whose header was read, or -1 */
    Py_ssize_t cmd_bytes; /* bytes declared by the multibulk so far */
    Py_ssize_t max_bulk_len;
    Py_ssize_t max_multibulk_len;
    Py_ssize_t max_query_buffer;
    int authenticated;
    int busy;             /* inside feed: split_args must not re-enter this parser */
    PyObject *error;      /* None, or the protocol error's message (str) */
    PyObject *split_args; /* inline commands: bytes -> list of bytes, or None */
} RespParser;

/* protocol.parse_ll (Redis's string2ll): optional '-', digits, no leading zero, int64
 * range. 1 and *out set if valid, else 0. */
static int
resp_parse_ll(const char *p, Py_ssize_t n, long long *out)
{
    Py_ssize_t i, start = 0;
    int negative = 0;
    unsigned long long v = 0;

    if (n <= 0) {
        return 0;
    }
    if (p[0] == '-') {
        if (n < 2 || n > 20 || p[1] == '0') {
            return 0;
        }
        negative = 1;
        start = 1;
    }
    else if (n > 19 || (p[0] == '0' && n > 1)) {
        return 0;
    }
    for (i = start; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    /* At most 19 digits: below 2**64, no overflow. */
    for (i = start; i < n; i++) {
        v = v * 10 + (unsigned long long)(p[i] - '0');
    }
    if (negative) {
        if (v > (unsigned long long)INT64_MAX + 1) {
            return 0;
        }
        *out = v == (unsigned long long)INT64_MAX + 1 ? INT64_MIN : -(long long)v;
    }
    else {
        if (v > (unsigned long long)INT64_MAX) {
            return 0;
        }
        *out = (long long)v;
    }
    return 1;
}

/* Record a protocol error (the stream is malformed): -1. NULL-safe on a failed format. */
static int
resp_fail(RespParser *self, const char *message)
{
    PyObject *text = PyUnicode_FromFormat("ERR Protocol error: %s", message);
    if (text == NULL) {
        return -2;
    }
    Py_SETREF(self->error, text);
    return -1;
}

/* memchr within [pos, end): the index of c, or -1. */
static Py_ssize_t
resp_find(const char *base, Py_ssize_t pos, Py_ssize_t end, char c)
{
    const char *hit;
    if (pos >= end) {
        return -1;
    }
    hit = memchr(base + pos, c, (size_t)(end - pos));
    return hit == NULL ? -1 : (Py_ssize_t)(hit - base);
}

/* One command from base[self->pos:end], appended to out: 1 done, 0 more data needed, -1 a
 * protocol error (self->error set), -2 a Python exception. */
static int
resp_parse_one(RespParser *self, const char *base, Py_ssize_t end, PyObject *out)
{
    Py_ssize_t pos = self->pos, nl;
    long long parsed;

    if (self->args == NULL) {
        if (pos >= end) {
            return 0;
        }
        if (base[pos] != '*') { /* an inline command */
            Py_ssize_t stop;
            PyObject *line, *split;
            nl = resp_find(base, pos, end, '\n');
            if (nl < 0) {
                if (end - pos > RESP_INLINE_MAX_SIZE) {
                    return resp_fail(self, "too big inline request");
                }
                return 0;
            }
            stop = (nl > pos && base[nl - 1] == '\r') ? nl - 1 : nl;
            line = PyBytes_FromStringAndSize(base + pos, stop - pos);
            if (line == NULL) {
                return -2;
            }
            self->pos = nl + 1;
            if (self->split_args == NULL || self->split_args == Py_None) {
                Py_DECREF(line);
                PyErr_SetString(PyExc_RuntimeError, "RespParser: no split_args for inline "
                                "commands");
                return -2;
            }
            split = PyObject_CallOneArg(self->split_args, line);
            Py_DECREF(line);
            if (split == NULL) {
                return -2;
            }
            if (split == Py_None) {
                Py_DECREF(split);
                return resp_fail(self, "unbalanced quotes in request");
            }
            if (!PyList_Check(split)) {
                Py_DECREF(split);
                PyErr_SetString(PyExc_TypeError, "split_args must return a list or None");
                return -2;
            }
            if (PyList_GET_SIZE(split) > 0 && PyList_Append(out, split) < 0) {
                Py_DECREF(split);
                return -2;
            }
            Py_DECREF(split);
            return 1;
        }
        nl = resp_find(base, pos, end, '\r');
        if (nl < 0 || nl + 1 >= end) {
            if (end - pos > RESP_INLINE_MAX_SIZE) {
                return resp_fail(self, "too big mbulk count string");
            }
            return 0;
        }
        if (!resp_parse_ll(base + pos + 1, nl - pos - 1, &parsed)
                || parsed > (long long)self->max_multibulk_len) {
            return resp_fail(self, "invalid multibulk length");
        }
        if (!self->authenticated && parsed > RESP_UNAUTH_MAX_MULTIBULK) {
            return resp_fail(self, "unauthenticated multibulk length");
        }
        pos = self->pos = nl + 2;
        if (parsed <= 0) {
            return 1; /* an empty command, skipped as Redis does */
        }
        self->args = PyList_New(0); /* never pre-sized from the header */
        if (self->args == NULL) {
            return -2;
        }
        self->left = (Py_ssize_t)parsed;
        self->bulk = -1;
        self->cmd_bytes = 0;
    }
    while (self->left) {
        Py_ssize_t bulk = self->bulk;
        PyObject *arg;
        if (bulk < 0) {
            if (pos >= end) {
                return 0;
            }
            nl = resp_find(base, pos, end, '\r');
            if (nl < 0 || nl + 1 >= end) {
                if (end - pos > RESP_INLINE_MAX_SIZE) {
                    return resp_fail(self, "too big bulk count string");
                }
                return 0;
            }
            if (base[pos] != '$') {
                PyObject *text = PyUnicode_FromFormat(
                    "ERR Protocol error: expected '$', got '%c'",
                    (int)(unsigned char)base[pos]);
                if (text == NULL) {
                    return -2;
                }
                Py_SETREF(self->error, text);
                return -1;
            }
            if (!resp_parse_ll(base + pos + 1, nl - pos - 1, &parsed) || parsed < 0
                    || parsed > (long long)self->max_bulk_len) {
                return resp_fail(self, "invalid bulk length");
            }
            bulk = (Py_ssize_t)parsed;
            if (!self->authenticated && bulk > RESP_UNAUTH_MAX_BULK) {
                return resp_fail(self, "unauthenticated bulk length");
            }
            /* cmd_bytes <= max_query_buffer always holds: compare without overflowing. */
            if (bulk > self->max_query_buffer - self->cmd_bytes) {
                return resp_fail(self, "query buffer limit exceeded");
            }
            self->cmd_bytes += bulk;
            pos = self->pos = nl + 2;
            self->bulk = bulk;
        }
        if (end - pos - 2 < bulk) { /* end - pos < bulk + 2, without overflow */
            return 0;
        }
        arg = PyBytes_FromStringAndSize(base + pos, bulk);
        if (arg == NULL) {
            return -2;
        }
        if (PyList_Append(self->args, arg) < 0) {
            Py_DECREF(arg);
            return -2;
        }
        Py_DECREF(arg);
        pos = self->pos = pos + bulk + 2; /* like Redis, the trailing CRLF is not checked */
        self->bulk = -1;
        self->left--;
    }
    if (PyList_Append(out, self->args) < 0) {
        return -2;
    }
    Py_CLEAR(self->args);
    return 1;
}

/* Keep base[self->pos:end] as the parser's buffer (base may be the buffer itself). */
static int
resp_keep_tail(RespParser *self, const char *base, Py_ssize_t end)
{
    Py_ssize_t rest = end - self->pos;
    if (base == self->buf) {
        /* PyParser drops consumed bytes once the buffer is consumed or past 64 KiB; the
         * exact moment only matters for memory, never for what buffered() reports. */
        if (rest <= 0) {
            self->len = self->pos = 0;
        }
        else if (self->pos > RESP_COMPACT_AT) {
            memmove(self->buf, self->buf + self->pos, (size_t)rest);
            self->len = rest;
            self->pos = 0;
        }
        return 0;
    }
    if (rest <= 0) {
        self->len = self->pos = 0;
        return 0;
    }
    if (rest > self->cap) {
        char *grown = PyMem_Realloc(self->buf, (size_t)rest);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->buf = grown;
        self->cap = rest;
    }
    memcpy(self->buf, base + self->pos, (size_t)rest);
    self->len = rest;
    self->pos = 0;
    return 0;
}

static PyObject *
RespParser_feed(RespParser *self, PyObject *data)
{
    Py_buffer view;
    PyObject *out;
    const char *base;
    Py_ssize_t end;
    int r = 1;

    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RespParser.feed re-entered");
        return NULL;
    }
    if (self->error != Py_None) {
        return PyList_New(0);
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (self->pos < self->len) {
        /* An incomplete command is buffered: append (bounded by what the caller hands in;
         * the server bounds that through its query buffer limits). */
        Py_ssize_t need = self->len - self->pos;
        if (view.len > PY_SSIZE_T_MAX - need) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        need += view.len;
        if (self->pos > 0) {
            memmove(self->buf, self->buf + self->pos, (size_t)(self->len - self->pos));
            self->len -= self->pos;
            self->pos = 0;
        }
        if (need > self->cap) {
            Py_ssize_t cap = (self->cap <= PY_SSIZE_T_MAX / 2 && self->cap * 2 > need)
                ? self->cap * 2 : need;
            char *grown = PyMem_Realloc(self->buf, (size_t)cap);
            if (grown == NULL) {
                PyBuffer_Release(&view);
                return PyErr_NoMemory();
            }
            self->buf = grown;
            self->cap = cap;
        }
        memcpy(self->buf + self->len, view.buf, (size_t)view.len);
        self->len += view.len;
        base = self->buf;
        end = self->len;
    }
    else {
        self->len = self->pos = 0;
        base = view.buf;
        end = view.len;
    }
    out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->busy = 1; /* base may be self->buf: nothing may move it while it is parsed */
    while (r == 1) {
        r = resp_parse_one(self, base, end, out);
    }
    self->busy = 0;
    if (r == -1) {
        Py_CLEAR(self->args); /* PyParser._parse: the command in progress is dropped */
    }
    if (resp_keep_tail(self, base, end) < 0) {
        r = -2;
    }
    PyBuffer_Release(&view);
    if (r == -2) {
        /* A Python exception (no memory, a failing split_args): the stream's position is
         * no longer known, so nothing more is parsed. */
        Py_CLEAR(self->args);
        self->len = self->pos = 0;
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *
RespParser_idle(RespParser *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->args == NULL && self->pos >= self->len);
}

static PyObject *
RespParser_buffered(RespParser *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t held = self->len - self->pos;
    if (self->args != NULL) {
        held += self->cmd_bytes - (self->bulk > 0 ? self->bulk : 0)
            + RESP_ARG_OVERHEAD * PyList_GET_SIZE(self->args);
    }
    return PyLong_FromSsize_t(held);
}

static PyObject *
RespParser_reset(RespParser *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RespParser.reset inside feed");
        return NULL;
    }
    PyMem_Free(self->buf);
    self->buf = NULL;
    self->len = self->pos = self->cap = 0;
    Py_CLEAR(self->args);
    self->bulk = -1;
    Py_RETURN_NONE;
}

static int
RespParser_init(RespParser *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_bulk_len", "max_multibulk_len", "max_query_buffer",
                             "authenticated", "split_args", NULL};
    Py_ssize_t max_bulk, max_multibulk, max_query;
    int authenticated = 1;
    PyObject *split = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnn|pO", kwlist, &max_bulk, &max_multibulk,
                                     &max_query, &authenticated, &split)) {
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RespParser.__init__ inside feed");
        return -1;
    }
    if (max_bulk < 1 || max_multibulk < 1 || max_query < 1) {
        PyErr_SetString(PyExc_ValueError, "RespParser limits must be positive");
        return -1;
    }
    if (split != Py_None && !PyCallable_Check(split)) {
        PyErr_SetString(PyExc_TypeError, "split_args must be callable or None");
        return -1;
    }
    self->max_bulk_len = max_bulk;
    self->max_multibulk_len = max_multibulk;
    self->max_query_buffer = max_query;
    self->authenticated = authenticated;
    Py_INCREF(split);
    Py_XSETREF(self->split_args, split);
    Py_INCREF(Py_None);
    Py_XSETREF(self->error, Py_None);
    Py_CLEAR(self->args);
    PyMem_Free(self->buf);
    self->buf = NULL;
    self->len = self->pos = self->cap = 0;
    self->bulk = -1;
    self->left = 0;
    self->cmd_bytes = 0;
    return 0;
}

static PyObject *
RespParser_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    RespParser *self = (RespParser *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->bulk = -1;
    self->authenticated = 1;
    Py_INCREF(Py_None);
    self->error = Py_None;
    Py_INCREF(Py_None);
    self->split_args = Py_None;
    self->max_bulk_len = self->max_multibulk_len = self->max_query_buffer = 1;
    return (PyObject *)self;
}

static int
RespParser_traverse(RespParser *self, visitproc visit, void *arg)
{
    Py_VISIT(self->args);
    Py_VISIT(self->error);
    Py_VISIT(self->split_args);
    return 0;
}

static int
RespParser_clear(RespParser *self)
{
    Py_CLEAR(self->args);
    Py_CLEAR(self->error);
    Py_CLEAR(self->split_args);
    return 0;
}

static void
RespParser_dealloc(RespParser *self)
{
    PyObject_GC_UnTrack(self);
    RespParser_clear(self);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
RespParser_get_error(RespParser *self, void *Py_UNUSED(closure))
{
    PyObject *e = self->error != NULL ? self->error : Py_None;
    Py_INCREF(e);
    return e;
}

static int
RespParser_set_error(RespParser *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || (value != Py_None && !PyUnicode_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "error must be a str or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->error, value);
    return 0;
}

static PyObject *
RespParser_get_authenticated(RespParser *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->authenticated);
}

static int
RespParser_set_authenticated(RespParser *self, PyObject *value, void *Py_UNUSED(closure))
{
    int truth;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete authenticated");
        return -1;
    }
    truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    self->authenticated = truth;
    return 0;
}

static PyGetSetDef RespParser_getset[] = {
    {"error", (getter)RespParser_get_error, (setter)RespParser_set_error,
     "None, or the protocol error (Redis's text) once the stream turned out malformed", NULL},
    {"authenticated", (getter)RespParser_get_authenticated,
     (setter)RespParser_set_authenticated,
     "False until the client authenticates: requests are then limited as Redis limits them",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef RespParser_methods[] = {
    {"feed", (PyCFunction)RespParser_feed, METH_O,
     "feed(data) -> the commands completed by data (lists of bytes), in order"},
    {"idle", (PyCFunction)RespParser_idle, METH_NOARGS,
     "True at a command boundary with nothing buffered"},
    {"buffered", (PyCFunction)RespParser_buffered, METH_NOARGS,
     "Approximate bytes held for the incomplete command (as PyParser.buffered)"},
    {"reset", (PyCFunction)RespParser_reset, METH_NOARGS,
     "Drop everything buffered (the connection is being closed)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RespParser_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitkv._native.RespParser",
    .tp_basicsize = sizeof(RespParser),
    .tp_dealloc = (destructor)RespParser_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RespParser(max_bulk_len, max_multibulk_len, max_query_buffer, "
              "authenticated=True, split_args=None): an incremental RESP request parser, the "
              "twin of bitkv.server.protocol.PyParser",
    .tp_traverse = (traverseproc)RespParser_traverse,
    .tp_clear = (inquiry)RespParser_clear,
    .tp_methods = RespParser_methods,
    .tp_getset = RespParser_getset,
    .tp_init = (initproc)RespParser_init,
    .tp_new = RespParser_new,
};

int
bitkv_resp_init(PyObject *module)
{
    return PyModule_AddType(module, &RespParser_Type);
}
