// Public C-API spellings that older supported CPythons (3.9) lack, so the
// bindings can use one spelling on every version. Include after Python.h
// (pybind11/pybind11.h includes it). Only public APIs are used here.
#pragma once

#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000  // Py_NewRef / Py_XNewRef arrived in 3.10
static inline PyObject* fastmp_compat_newref(PyObject* o) {
    Py_INCREF(o);
    return o;
}
static inline PyObject* fastmp_compat_xnewref(PyObject* o) {
    Py_XINCREF(o);
    return o;
}
#define Py_NewRef(o) fastmp_compat_newref(reinterpret_cast<PyObject*>(o))
#define Py_XNewRef(o) fastmp_compat_xnewref(reinterpret_cast<PyObject*>(o))
#endif
