// The one place where core failures become Python exceptions (STYLE.md, 4).
#include "common.hpp"

#include <cerrno>
#include <cmath>
#include <memory>
#include <vector>

namespace fastmp::py_bind {

[[noreturn]] void raise_status(status st, const char* what) {
    switch (st) {
        case status::empty: {
            py::object exc = py::module_::import("queue").attr("Empty");
            PyErr_SetNone(exc.ptr());
            throw py::error_already_set();
        }
        case status::full: {
            py::object exc = py::module_::import("queue").attr("Full");
            PyErr_SetNone(exc.ptr());
            throw py::error_already_set();
        }
        case status::closed: throw py::value_error(what);
        case status::too_many: throw py::value_error(what);
        case status::not_owner:
        case status::owner_died:
        case status::broken:
        case status::would_grow:
        case status::timed_out:
        case status::interrupted:
        case status::ok: break;
    }
    throw py::value_error(what);
}

[[noreturn]] void raise_os_error(const char* msg) {
    PyErr_SetString(PyExc_OSError, msg);
    throw py::error_already_set();
}

[[noreturn]] void raise_errno(int err) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);  // picks BrokenPipeError etc. from errno
    throw py::error_already_set();
}

[[noreturn]] void raise_eof() {
    PyErr_SetNone(PyExc_EOFError);
    throw py::error_already_set();
}

[[noreturn]] void raise_exception(py::handle exc) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    throw py::error_already_set();
}

deadline parse_timeout(py::handle timeout) {
    if (timeout.is_none()) return deadline();
    double s = PyFloat_AsDouble(timeout.ptr());
    if (s == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %.200s", Py_TYPE(timeout.ptr())->tp_name);
        throw py::error_already_set();
    }
    if (std::isnan(s)) throw py::value_error("timeout must not be NaN");
    if (s > 1e9) return deadline();  // beyond any clock: forever
    return deadline::after_seconds(s);
}

void set_os_error(const sys_error& e) {
    // OSError(errno, msg) picks the subclass (FileNotFoundError, ...) itself.
    py::object err = py::reinterpret_steal<py::object>(
        PyObject_CallFunction(PyExc_OSError, "is", e.code().value(), e.what()));
    if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
}

bool truth(py::handle obj) {
    int r = PyObject_IsTrue(obj.ptr());
    if (r < 0) throw py::error_already_set();
    return r == 1;
}

void register_errors(py::module_&) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const sys_error& e) {
            set_os_error(e);
        }
    });
}

}  // namespace fastmp::py_bind

namespace fastmp::py_bind {

void parse_fast_args(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                     std::initializer_list<const char*> names, std::size_t required, PyObject** out,
                     bool clinic) {
    const std::size_t n = names.size();
    if (static_cast<std::size_t>(nargs) > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zu argument%s (%zd given)", fname, n, n == 1 ? "" : "s",
                     nargs);
        throw py::error_already_set();
    }
    bool seen_small[8] = {};  // no allocation on a hot path (acquire(timeout=...))
    std::unique_ptr<bool[]> seen_big(n > 8 ? new bool[n]() : nullptr);
    bool* seen = n > 8 ? seen_big.get() : seen_small;
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        out[i] = args[i];
        seen[static_cast<std::size_t>(i)] = true;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
        PyObject* key = PyTuple_GET_ITEM(kwnames, k);
        std::size_t j = 0;
        for (const char* name : names) {
            if (PyUnicode_CompareWithASCIIString(key, name) == 0) break;
            ++j;
        }
        if (j == n) {
            if (clinic)
                PyErr_Format(PyExc_TypeError, "'%U' is an invalid keyword argument for %s()", key, fname);
            else
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
            throw py::error_already_set();
        }
        if (seen[j]) {
            if (clinic)
                PyErr_Format(PyExc_TypeError, "argument for %s() given by name ('%U') and position (%zu)", fname,
                             key, j + 1);
            else
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", fname, key);
            throw py::error_already_set();
        }
        out[j] = args[nargs + k];
        seen[j] = true;
    }
    for (std::size_t j = 0; j < required; ++j) {
        if (!seen[j]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names.begin()[j]);
            throw py::error_already_set();
        }
    }
}

void add_fast_method(py::handle cls, PyMethodDef* def) {
    PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), def);
    if (!descr) throw py::error_already_set();
    int rc = PyObject_SetAttrString(cls.ptr(), def->ml_name, descr);
    Py_DECREF(descr);
    if (rc != 0) throw py::error_already_set();
}

}  // namespace fastmp::py_bind
