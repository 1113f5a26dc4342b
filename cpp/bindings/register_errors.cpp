// The one place where core failures become Python exceptions (STYLE.md, 4).
#include "common.hpp"

#include <cmath>

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
        case status::timed_out:
        case status::interrupted:
        case status::ok: break;
    }
    throw py::value_error(what);
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

void register_errors(py::module_&) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const sys_error& e) {
            py::object err = py::reinterpret_steal<py::object>(
                PyObject_CallFunction(PyExc_OSError, "is", e.code().value(), e.what()));
            if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
        }
    });
}

}  // namespace fastmp::py_bind
