/* bitkv._native: the module object; each kernel file adds its own names (native.h). */
#include "native.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bitkv._native",
    .m_doc = "bitkv's compiled kernels; the pure-Python modules are the reference.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (bitkv_indexmap_init(m) < 0 || bitkv_crc32c_init(m) < 0 || bitkv_get_init(m) < 0
        || bitkv_batch_init(m) < 0 || bitkv_record_init(m) < 0 || bitkv_put_init(m) < 0
        || bitkv_compact_init(m) < 0 || bitkv_replay_init(m) < 0 || bitkv_resp_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
