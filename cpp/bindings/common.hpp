// Shared by every register_<primitive>.cpp: exception mapping, timeouts, and
// the one pattern for blocking calls.
#pragma once

#include <pybind11/pybind11.h>

#include "pycompat.hpp"

#include <chrono>

#include <fastmp/futex.hpp>
#include <fastmp/status.hpp>

namespace fastmp::py_bind {

namespace py = pybind11;

// Raises the Python exception that the stdlib raises for `st` in a call
// like `what` (queue.Empty, queue.Full, ValueError, ...).
[[noreturn]] void raise_status(status st, const char* what);

// The other Python exceptions the bindings raise, all from here (register_errors.cpp):
[[noreturn]] void raise_os_error(const char* msg);  // OSError(msg), e.g. "handle is closed"
[[noreturn]] void raise_errno(int err);             // OSError(err, strerror(err)): the errno's subclass
[[noreturn]] void raise_eof();                      // EOFError()
[[noreturn]] void raise_exception(py::handle exc);  // re-raises an exception instance kept earlier

// `timeout` is None (forever) or a real number of seconds (negative = 0);
// anything else raises TypeError, as the stdlib's arithmetic on it would.
deadline parse_timeout(py::handle timeout);

// How long a blocked call sleeps before it checks signals and dead peers again.
inline constexpr auto wait_slice = std::chrono::milliseconds(100);

// The blocking pattern (STYLE.md, 2): try with the GIL held; if that fails
// and we may block, release the GIL only to wait, in slices against the
// monotonic deadline; with the GIL back, run signal handlers (Ctrl-C raises
// KeyboardInterrupt here) and try again.
//   ticket()            -> uint32_t, read before each try
//   attempt()           -> bool, true when done (GIL held)
//   wait(ticket, slice) -> wait_result (GIL released)
// Returns false when the deadline passed (or !block) without success.
//
// (Declared here, defined in register_errors.cpp.)
// Sets OSError(errno, message) for a core failure, as the module's translator does.
void set_os_error(const sys_error& e);
// `block` and friends: Python truth, raising when __bool__ raises.
bool truth(py::handle obj);
// How long put_nowait/get_nowait (block=False) wait for a queue's or pipe's
// internal lock before giving up with queue.Full/queue.Empty: the lock is
// normally held for well under a microsecond, so only a stopped (SIGSTOP,
// debugger, freezer) or long-descheduled holder makes them wait that long.
inline constexpr auto nowait_lock_bound = std::chrono::milliseconds(20);

// Runs op(lock_deadline) -> status, which reports status::timed_out when an
// internal lock (or copy slot) could not be had by lock_deadline. First a
// try with the GIL held; then, while it reports timed_out, again without the
// GIL in slices until `dl`, running signal handlers between slices (Ctrl-C
// raises KeyboardInterrupt). `op` must not touch Python objects.
template <class Op>
status with_internal_lock(const deadline& dl, Op&& op) {
    status st = op(deadline(clock::duration::zero()));
    while (st == status::timed_out && !dl.expired()) {
        {
            py::gil_scoped_release nogil;
            st = op(deadline(dl.slice(wait_slice)));
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return st;
}

template <class Ticket, class Attempt, class Wait>
bool run_blocking(bool block, const deadline& dl, Ticket&& ticket, Attempt&& attempt, Wait&& wait) {
    for (;;) {
        auto t = ticket();
        if (attempt()) return true;
        if (!block || dl.expired()) return false;
        {
            py::gil_scoped_release nogil;
            wait(t, dl.slice(wait_slice));
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
}

}  // namespace fastmp::py_bind

namespace fastmp::py_bind {

// --- Fast entry points for the hottest methods ---------------------------
//
// pybind11's generic dispatch costs ~100 ns per call, as much as a whole
// small-message put. The few methods on the per-message path are therefore
// also installed as plain METH_FASTCALL method descriptors on the pybind11
// class (`add_fast_method`), which parse their own arguments.

// The C++ object behind `self` (an instance of a pybind11 class of T or of a
// Python subclass); TypeError if its __init__ never ran.
template <class T>
T& self_as(PyObject* self) {
    auto* inst = reinterpret_cast<py::detail::instance*>(self);
    void* v = inst->simple_layout ? inst->simple_value_holder[0] : inst->get_value_and_holder().value_ptr();
    if (!v) throw py::type_error("fastmp object was not initialised (missing __init__ call?)");
    return *static_cast<T*>(v);
}

// Fills out[0..n) from positional args and keyword names, in the order of
// `names`; missing ones stay as given (defaults). Raises TypeError like Python
// (clinic: with the messages of a C function of the stdlib, e.g. SemLock.acquire).
void parse_fast_args(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                     std::initializer_list<const char*> names, std::size_t required, PyObject** out,
                     bool clinic = false);

// Installs `def` (METH_FASTCALL | METH_KEYWORDS) as a method of `cls`.
void add_fast_method(py::handle cls, PyMethodDef* def);

// Wraps a C++ body so exceptions become Python errors (returns nullptr then).
template <class F>
PyObject* guarded(F&& body) noexcept {
    try {
        return body();
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (py::builtin_exception& e) {
        e.set_error();
    } catch (const sys_error& e) {
        set_os_error(e);  // translate_exception below only knows pybind11's defaults
    } catch (...) {
        py::detail::translate_exception(std::current_exception());
    }
    return nullptr;
}

}  // namespace fastmp::py_bind
