// The compiled module: it only registers the primitives (STYLE.md, 2).
#include <pybind11/pybind11.h>

#include "pickling.hpp"

namespace py = pybind11;

namespace fastmp::py_bind {
void register_errors(py::module_& m);
void register_queue(py::module_& m);
void register_sharedctypes(py::module_& m);
void register_connection(py::module_& m);
void register_sync(py::module_& m);
void register_manager(py::module_& m);
}  // namespace fastmp::py_bind

PYBIND11_MODULE(_fastmp, m) {
    m.doc() = "fastmp's native core (private; use the fastmp package).";
    fastmp::py_bind::register_errors(m);
    fastmp::py_bind::init_pickling(m);
    fastmp::py_bind::register_queue(m);
    fastmp::py_bind::register_sharedctypes(m);
    fastmp::py_bind::register_connection(m);
    fastmp::py_bind::register_sync(m);
    fastmp::py_bind::register_manager(m);
}
