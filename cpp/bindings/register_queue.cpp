// fastmp._fastmp.Queue: the mechanism behind fastmp.queues.Queue,
// SimpleQueue and JoinableQueue (the Python classes add the policy).
#include <deque>
#include <vector>

#include <fastmp/process.hpp>
#include <fastmp/queue.hpp>

#include "common.hpp"
#include "pickling.hpp"

namespace fastmp::py_bind {

namespace {

class py_queue {
public:
    py_queue(std::int64_t maxsize, int fd, int doorbell_fd)
        : q_(fd >= 0 ? shm_queue::attach(fd, doorbell_fd) : shm_queue::create(maxsize)) {}

    void put(py::handle self, py::handle obj, py::handle block, py::handle timeout) {
        check_open(self);
        check_fork();
        encoded e;
        encode(obj, e);
        message_view m = e.view();
        push_all(&m, 1, block, timeout);
    }

    void put_many(py::handle self, py::iterable items, py::handle block, py::handle timeout) {
        check_open(self);
        check_fork();
        std::vector<encoded> enc;
        for (py::handle item : items) {
            enc.emplace_back();
            encode(item, enc.back());
        }
        std::vector<message_view> msgs;
        msgs.reserve(enc.size());
        for (const encoded& e : enc) msgs.push_back(e.view());
        if (!msgs.empty()) push_all(msgs.data(), msgs.size(), block, timeout);
    }

    py::object get(py::handle self, py::handle block, py::handle timeout) {
        check_open(self);
        check_fork();
        if (!pending_.empty()) return take_pending();
        std::uint32_t tag = 0;
        py::object raw;
        pop(1, block, timeout, [&](std::uint32_t t, const std::byte* d, std::size_t n) {
            raw = decode_raw(t, d, n);
            tag = t;
        });
        return finish_decode(tag, std::move(raw));
    }

    py::list get_many(py::handle self, std::int64_t max_items, py::handle block, py::handle timeout) {
        check_open(self);
        check_fork();
        if (max_items <= 0) throw py::value_error("max_items must be a positive integer");
        if (pending_.empty()) {
            std::deque<std::pair<std::uint32_t, py::object>> raws;
            try {
                pop(static_cast<std::size_t>(max_items), block, timeout,
                    [&](std::uint32_t t, const std::byte* d, std::size_t n) { raws.emplace_back(t, decode_raw(t, d, n)); });
            } catch (...) {
                // Records taken before the failing one left the ring: keep them.
                stash(std::move(raws));
                throw;
            }
            stash(std::move(raws));
        }
        // Unpickling runs user code and may fail. A failing first item raises
        // here (it is consumed, as with get()); a later one ends the batch
        // and its error is raised by the next get/get_many, so nothing taken
        // is ever dropped silently.
        py::list out;
        while (!pending_.empty() && static_cast<std::int64_t>(out.size()) < max_items) {
            if (out.size() == 0) {
                out.append(take_pending());
                continue;
            }
            try {
                out.append(take_pending());
            } catch (py::error_already_set& e) {
                pending_.emplace_front(error_tag, e.value());
                break;
            }
        }
        return out;
    }

    void task_done() {
        status st = with_internal_lock(deadline(), [&](const deadline& ldl) { return q_.task_done(ldl); });
        if (st != status::ok) raise_status(st, "task_done() called too many times");
    }

    void join_tasks() {
        run_blocking(
            true, deadline(), [&] { return q_.all_done_ticket(); }, [&] { return unfinished() == 0; },
            [&](std::uint32_t t, clock::duration slice) { return q_.wait_all_done(t, slice); });
    }

    std::uint64_t qsize() const { return q_.size_approx(); }
    bool empty() const {
        // The stdlib's empty() polls its reader pipe, which close() closes
        // once this process has put (its feeder thread ran): OSError then.
        if (closed_ == closed_kind::handle || (closed_ == closed_kind::queue && put_pid_ == current_pid())) {
            PyErr_SetString(PyExc_OSError, "handle is closed");
            throw py::error_already_set();
        }
        return q_.size_approx() == 0;
    }
    bool full() const { return q_.maxsize() != 0 && q_.size_approx() >= q_.maxsize(); }
    // Queue.close() makes later calls raise ValueError; SimpleQueue.close()
    // makes them raise OSError, as the stdlib's closed pipe handles do.
    void close(bool as_handle) { closed_ = as_handle ? closed_kind::handle : closed_kind::queue; }
    bool closed() const { return closed_ != closed_kind::open; }
    int fd() const { return q_.fd(); }
    int doorbell_fd() const { return q_.doorbell_fd(); }
    void enable_doorbell() {
        with_internal_lock(deadline(), [&](const deadline& ldl) { return q_.enable_doorbell(ldl); });
    }
    std::uint64_t maxsize() const { return q_.maxsize(); }
    std::uint64_t capacity_bytes() {
        py::gil_scoped_release nogil;
        return q_.capacity_bytes();
    }
    std::uint64_t unfinished() {
        std::uint64_t n = 0;
        with_internal_lock(deadline(), [&](const deadline& ldl) { return q_.unfinished_tasks(n, ldl); });
        return n;
    }
    unsigned slots_in_use() {
        py::gil_scoped_release nogil;
        return q_.slots_in_use();
    }
    std::size_t pending_count() const { return pending_.size(); }
    void hold_lock_for_test() {
        py::gil_scoped_release nogil;
        q_.hold_lock_for_test();
    }

private:
    void check_open(py::handle self) const {
        if (closed_ == closed_kind::open) return;
        if (closed_ == closed_kind::handle) {
            raise_os_error("handle is closed");
        }
        std::string r = py::repr(self);
        throw py::value_error("Queue " + r + " is closed");
    }

    // A forked child must not deliver what its parent holds back (get_many's
    // pending items), nor keep the parent's per-process mapping state.
    void check_fork() {
        pid_t me = current_pid();
        if (me == pid_) return;
        pid_ = me;
        pending_.clear();
        q_.after_fork_in_child();
    }

    // Payloads at least this large are copied into the ring without the GIL.
    static constexpr std::size_t nogil_copy = 64 * 1024;

    void push_all(const message_view* msgs, std::size_t n, py::handle block_obj, py::handle timeout) {
        bool block = truth(block_obj);
        deadline dl = block ? parse_timeout(timeout) : deadline();
        // How long a try may wait for the internal lock (see nowait_lock_bound).
        deadline lock_dl = block ? dl : deadline(nowait_lock_bound);
        std::size_t done_total = 0;
        // A large ring is grown only after an active consumer had a moment
        // to free warm space; put_nowait and idle consumers never wait here.
        bool may_grow = !block;
        // Reserve under the lock, copy outside it, publish (see queue.hpp).
        auto reserve_copy_publish = [&](const deadline& ldl) {
            queue_reservation r;
            status st = q_.try_reserve(msgs + done_total, n - done_total, r, may_grow, ldl);
            if (!r.dest.empty()) {
                std::size_t bytes = 0;
                for (std::size_t i = 0; i < r.dest.size(); ++i) bytes += msgs[done_total + i].total();
                if (bytes >= nogil_copy && PyGILState_Check()) {
                    py::gil_scoped_release nogil;
                    shm_queue::fill(r, msgs + done_total);
                } else {
                    shm_queue::fill(r, msgs + done_total);
                }
                q_.publish(r);
            }
            done_total += r.taken;
            // Part went in before a busy slot stopped it: the rest next round.
            if (st == status::timed_out && r.taken > 0 && done_total < n) return status::interrupted;
            // Stopped before a message that needs the ring to grow: the rest next round.
            if (st == status::ok && done_total < n) return status::interrupted;
            return st;
        };
        bool ok = run_blocking(
            block, dl, [&] { return q_.not_full_ticket(); },
            [&] {
                for (;;) {
                    status st = with_internal_lock(lock_dl, reserve_copy_publish);
                    if (st == status::interrupted) continue;
                    if (st != status::would_grow) return st == status::ok;
                    auto ticket = q_.not_full_ticket();
                    wait_result r;
                    {
                        py::gil_scoped_release nogil;
                        r = q_.wait_not_full(ticket, grow_grace);
                    }
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                    may_grow = (r == wait_result::timed_out);  // nobody is draining: grow
                }
            },
            [&](std::uint32_t t, clock::duration slice) { return q_.wait_not_full(t, slice); });
        if (done_total > 0) put_pid_ = current_pid();
        if (!ok) raise_status(status::full, "put");
    }

    static constexpr auto grow_grace = std::chrono::milliseconds(1);

    // Claims records under the lock (waiting for it without the GIL), then
    // runs the sink on each, outside the lock, with the GIL (see queue.hpp).
    template <class Sink>
    void pop(std::size_t max, py::handle block_obj, py::handle timeout, Sink&& sink) {
        bool block = truth(block_obj);
        deadline dl = block ? parse_timeout(timeout) : deadline();
        deadline lock_dl = block ? dl : deadline(nowait_lock_bound);
        bool ok = run_blocking(
            block, dl, [&] { return q_.not_empty_ticket(); },
            [&] {
                queue_claim c;
                status st = with_internal_lock(lock_dl, [&](const deadline& ldl) { return q_.try_claim(max, c, ldl); });
                if (st != status::ok) return false;
                std::size_t i = 0;
                try {
                    for (; i < c.records.size(); ++i) sink(c.records[i].tag, c.records[i].data, c.records[i].size);
                } catch (...) {
                    // The failing record and the rest go back to the front when
                    // nobody claimed after us (else they are lost with the error).
                    q_.unclaim(c, i, deadline(nowait_lock_bound));
                    throw;
                }
                q_.finish_claim(c);
                return true;
            },
            [&](std::uint32_t t, clock::duration slice) { return q_.wait_not_empty(t, slice); });
        if (!ok) raise_status(status::empty, "get");
    }

    void stash(std::deque<std::pair<std::uint32_t, py::object>>&& raws) {
        for (auto& r : raws) pending_.push_back(std::move(r));
    }
    py::object take_pending() {
        auto [tag, raw] = std::move(pending_.front());
        pending_.pop_front();
        if (tag == error_tag) raise_exception(raw);  // an unpickling error parked by get_many
        return finish_decode(tag, std::move(raw));
    }
    static constexpr std::uint32_t error_tag = 0xfffffffeu;

    enum class closed_kind { open, queue, handle };
    shm_queue q_;
    // Taken from the ring by this handle but not handed out yet (a get_many
    // interrupted by an exception); served first by the next get.
    std::deque<std::pair<std::uint32_t, py::object>> pending_;
    closed_kind closed_ = closed_kind::open;
    // The process this handle's pending_ belongs to (a forked child drops them).
    pid_t pid_ = current_pid();
    // The process that last put through this handle (a forked child has not).
    pid_t put_pid_ = 0;
};

// The per-message methods, as METH_FASTCALL (see add_fast_method).
PyObject* fast_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        PyObject* a[3] = {nullptr, Py_True, Py_None};
        parse_fast_args("put", args, nargs, kwnames, {"obj", "block", "timeout"}, 1, a);
        self_as<py_queue>(self).put(self, a[0], a[1], a[2]);
        Py_RETURN_NONE;
    });
}

PyObject* fast_put_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        PyObject* a[1] = {nullptr};
        parse_fast_args("put_nowait", args, nargs, kwnames, {"obj"}, 1, a);
        self_as<py_queue>(self).put(self, a[0], Py_False, Py_None);
        Py_RETURN_NONE;
    });
}

PyObject* fast_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        PyObject* a[2] = {Py_True, Py_None};
        parse_fast_args("get", args, nargs, kwnames, {"block", "timeout"}, 0, a);
        return self_as<py_queue>(self).get(self, a[0], a[1]).release().ptr();
    });
}

PyObject* fast_get_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        parse_fast_args("get_nowait", args, nargs, kwnames, {}, 0, nullptr);
        return self_as<py_queue>(self).get(self, Py_False, Py_None).release().ptr();
    });
}

#define FASTMP_FAST_METHOD(name, fn, doc) \
    PyMethodDef { name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL | METH_KEYWORDS, doc }

PyMethodDef fast_methods[] = {
    FASTMP_FAST_METHOD("put", fast_put, "put(obj, block=True, timeout=None)\n--\n\nPut obj into the queue."),
    FASTMP_FAST_METHOD("put_nowait", fast_put_nowait, "put_nowait(obj)\n--\n\nput(obj, False)."),
    FASTMP_FAST_METHOD("get", fast_get, "get(block=True, timeout=None)\n--\n\nRemove and return an item."),
    FASTMP_FAST_METHOD("get_nowait", fast_get_nowait, "get_nowait()\n--\n\nget(False)."),
};

}  // namespace

void register_queue(py::module_& m) {
    auto cls = py::class_<py_queue>(m, "Queue",
                         "Shared-memory MPMC queue (mechanism only; see fastmp.queues).")
        .def(py::init<std::int64_t, int, int>(), py::arg("maxsize") = 0, py::arg("fd") = -1,
             py::arg("doorbell_fd") = -1)
        .def(
            "put_many",
            [](py::handle self, py::iterable items, py::handle block, py::handle timeout) {
                self.cast<py_queue&>().put_many(self, items, block, timeout);
            },
            py::arg("items"), py::arg("block") = true, py::arg("timeout") = py::none(),
            "Put every item of an iterable, in order, with one lock round trip per batch (fastmp extra).")
        .def(
            "get_many",
            [](py::handle self, std::int64_t max_items, py::handle block, py::handle timeout) {
                return self.cast<py_queue&>().get_many(self, max_items, block, timeout);
            },
            py::arg("max_items"), py::arg("block") = true, py::arg("timeout") = py::none(),
            "Wait for at least one item, then return up to max_items in order (fastmp extra).")
        .def("qsize", &py_queue::qsize)
        .def("empty", &py_queue::empty)
        .def("full", &py_queue::full)
        .def("_close", &py_queue::close, py::arg("as_handle") = false)
        .def_property_readonly("_closed", &py_queue::closed)
        .def("_fd", &py_queue::fd)
        .def("_doorbell_fd", &py_queue::doorbell_fd)
        .def("_enable_doorbell", &py_queue::enable_doorbell)
        .def_property_readonly("_maxsize", &py_queue::maxsize)
        .def("_capacity_bytes", &py_queue::capacity_bytes)
        .def("_task_done", &py_queue::task_done)
        .def("_join_tasks", &py_queue::join_tasks)
        .def("_unfinished_tasks", &py_queue::unfinished)
        .def("_slots_in_use", &py_queue::slots_in_use)
        .def("_pending_count", &py_queue::pending_count)
        .def("_hold_lock_for_test", &py_queue::hold_lock_for_test);
    for (PyMethodDef& def : fast_methods) add_fast_method(cls, &def);
}

}  // namespace fastmp::py_bind
