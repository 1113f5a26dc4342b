// Shared by every register_<primitive>.cpp: exception mapping, timeouts, and
// the one pattern for blocking calls.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>

#include <fastmp/futex.hpp>
#include <fastmp/status.hpp>

namespace fastmp::py_bind {

namespace py = pybind11;

// Raises the Python exception that the stdlib raises for `st` in a call
// like `what` (queue.Empty, queue.Full, ValueError, ...).
[[noreturn]] void raise_status(status st, const char* what);

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
