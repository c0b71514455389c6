/* BitkvBound, in bitkv._native: what every compiled method bound to a Python object shares
 * (get.c's Reader and put.c's Writer, bound to a Store; batch.c's BatchPut, bound to a Batch).
 *
 * Each such type begins with a BitkvBound (native.h) and uses these functions for that part
 * of its set-up, its GC support, detach() and ``attached``, and its fallback: every call the
 * kernel does not serve goes to the owner's Python method, the reference, as
 * ``fallback(owner, *args, **kwargs)``, so that it returns and raises exactly what the
 * reference does (docs/architecture.md, "The compiled kernels").
 */
#include "native.h"

int
bitkv_bound_init(BitkvBound *self, PyObject *owner, PyObject *fallback, const char *gone)
{
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return -1;
    }
    PyObject *ref = PyWeakref_NewRef(owner, NULL);
    if (ref == NULL) {
        return -1;
    }
    Py_INCREF(fallback);
    Py_XSETREF(self->owner_ref, ref);
    Py_XSETREF(self->fallback, fallback);
    self->gone = gone;
    self->attached = 1;
    return 0;
}

int
bitkv_bound_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((BitkvBound *)self)->owner_ref);
    Py_VISIT(((BitkvBound *)self)->fallback);
    return 0;
}

int
bitkv_bound_clear(PyObject *self)
{
    Py_CLEAR(((BitkvBound *)self)->owner_ref);
    Py_CLEAR(((BitkvBound *)self)->fallback);
    return 0;
}

void
bitkv_bound_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_TYPE(self)->tp_clear(self); /* the type's own fields and the BitkvBound's */
    Py_TYPE(self)->tp_free(self);
}

PyObject *
bitkv_bound_missing_owner(BitkvBound *self)
{
    if (self->owner_ref == NULL) { /* made with __new__ alone, or cleared by the cyclic GC */
        const char *name = strrchr(Py_TYPE(self)->tp_name, '.');
        PyErr_Format(PyExc_RuntimeError, "%s is not initialised",
                     name != NULL ? name + 1 : Py_TYPE(self)->tp_name);
    }
    else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ReferenceError, self->gone);
    }
    return NULL;
}

PyObject *
bitkv_bound_call(BitkvBound *self, PyObject *owner, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *small[8];
    PyObject **full = small;
    if (nargs + nkw + 1 > 8) { /* any number of arguments: the reference says what is wrong */
        full = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
        if (full == NULL) {
            return PyErr_NoMemory();
        }
    }
    full[0] = owner;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        full[i + 1] = args[i];
    }
    PyObject *result = PyObject_Vectorcall(self->fallback, full, (size_t)nargs + 1, kwnames);
    if (full != small) {
        PyMem_Free(full);
    }
    return result;
}

PyObject *
bitkv_bound_fallback(BitkvBound *self, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    PyObject *owner = bitkv_bound_owner(self);
    if (owner == NULL) {
        return NULL;
    }
    PyObject *result = bitkv_bound_call(self, owner, args, nargs, kwnames);
    Py_DECREF(owner);
    return result;
}

PyObject *
bitkv_bound_detach(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ((BitkvBound *)self)->attached = 0;
    Py_RETURN_NONE;
}

static PyObject *
bound_attached(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((BitkvBound *)self)->attached);
}

PyGetSetDef bitkv_bound_getset[] = {
    {"attached", bound_attached, NULL, "False once detach() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
