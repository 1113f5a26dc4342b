// fastmp._fastmp.Connection: the mechanism behind fastmp.connection.Connection
// (the Python subclass adds send_bytes' argument rules, recv_bytes_into,
// pickling and the context manager).
#include <memory>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <fastmp/channel.hpp>

#include "common.hpp"
#include "pickling.hpp"

namespace fastmp::py_bind {

namespace {

class py_connection {
public:
    py_connection(int sock, int header, int tx, int rx, int side, bool readable, bool writable)
        : end_(std::make_shared<channel_end>(channel_end::adopt(channel_fds{sock, header, tx, rx, side}))),
          readable_(readable && end_->can_recv()),
          writable_(writable && end_->can_send()) {}

    void send(py::handle obj) {
        check_writable();
        encoded e;
        encode(obj, e);
        push(e.view());
    }

    void send_raw(py::handle buf) {
        check_writable();
        Py_buffer view;
        if (PyObject_GetBuffer(buf.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
        struct releaser {
            Py_buffer* v;
            ~releaser() { PyBuffer_Release(v); }
        } guard{&view};
        // A raw message is what the stdlib's recv() would unpickle.
        push(message_view{tag_pickle, view.buf, static_cast<std::size_t>(view.len)});
    }

    py::object recv() {
        check_readable();
        std::uint32_t tag = 0;
        py::object raw;
        receive([&](std::uint32_t t, const std::byte* d, std::size_t n) {
            raw = decode_raw(t, d, n);
            tag = t;
        });
        return finish_decode(tag, std::move(raw));
    }

    py::object recv_bytes(py::handle self, py::handle maxlength) {
        check_readable();
        long long limit = -1;
        if (!maxlength.is_none()) {
            limit = PyLong_AsLongLong(maxlength.ptr());
            if (limit == -1 && PyErr_Occurred()) throw py::error_already_set();
            if (limit < 0) throw py::value_error("negative maxlength");
        }
        std::uint32_t tag = 0;
        py::object raw;
        bool too_long = false;
        receive([&](std::uint32_t t, const std::byte* d, std::size_t n) {
            if (limit >= 0 && n > static_cast<unsigned long long>(limit)) {
                too_long = true;  // taken and dropped, as the stdlib consumes it
                return;
            }
            raw = decode_raw(t, d, n);
            tag = t;
        });
        if (too_long) {
            // The stdlib's _bad_message_length: a duplex end stops being
            // readable, a read-only one is closed.
            if (writable_)
                readable_ = false;
            else
                self.attr("close")();
            raise_os_error("bad message length");
        }
        if (tag == tag_pickle) return raw;
        // Sent with send(): give the pickle the stdlib would have sent.
        return py::module_::import("pickle").attr("dumps")(finish_decode(tag, std::move(raw)));
    }

    bool poll(py::handle timeout) {
        check_readable();
        std::shared_ptr<channel_end> end = end_;
        if (end->has_data()) return true;
        deadline dl = parse_timeout(timeout);
        bool first = true;
        return run_blocking(
            true, dl, [] { return 0u; },
            [&] {
                if (end->has_data()) return true;
                if (first) {
                    first = false;
                    if (dl.expired()) return end->peer_closed() || end->has_data();
                    return false;
                }
                return end->peer_closed();
            },
            [&](std::uint32_t, clock::duration slice) { return end->wait_readable(slice); });
    }

    int fileno() {
        check_open();
        if (readable_) return end_->readiness_fd();
        return end_->fds().sock;
    }

    py::tuple fds() {
        check_open();
        channel_fds f = end_->fds();
        return py::make_tuple(f.sock, f.header, f.tx, f.rx, f.side);
    }

    void close() { end_.reset(); }
    bool closed() const { return !end_; }
    bool readable() const { return readable_; }
    bool writable() const { return writable_; }

private:
    void push(const message_view& m) {
        try {
            std::shared_ptr<channel_end> end = end_;
            with_internal_lock(deadline(), [&](const deadline& ldl) { return end->send(m, ldl); });
        } catch (const sys_error& e) {
            if (e.code().value() != EPIPE) throw;
            raise_errno(EPIPE);  // BrokenPipeError(32, 'Broken pipe'), as the stdlib's socket write
        }
    }

    void check_open() const {
        if (!end_) raise_os_error("handle is closed");
    }
    void check_readable() const {
        check_open();
        if (!readable_) raise_os_error("connection is write-only");
    }
    void check_writable() const {
        check_open();
        if (!writable_) raise_os_error("connection is read-only");
    }

    // Blocks (interruptibly) until one message went through `sink`; EOFError
    // once the queue is empty and every copy of the other end is closed.
    // One message through `sink` (with the GIL, outside the queue's lock),
    // waiting for that lock without the GIL.
    template <class Sink>
    static bool try_take(channel_end& end, Sink& sink) {
        queue_claim c;
        if (with_internal_lock(deadline(), [&](const deadline& ldl) { return end.try_claim(c, ldl); }) != status::ok)
            return false;
        try {
            sink(c.records[0].tag, c.records[0].data, c.records[0].size);
        } catch (...) {
            end.finish_recv(c);  // consumed, as the stdlib's recv consumes a bad pickle
            throw;
        }
        end.finish_recv(c);
        return true;
    }

    template <class Sink>
    void receive(Sink&& sink) {
        // Another thread may close() while we wait: keep the end alive.
        std::shared_ptr<channel_end> end = end_;
        if (try_take(*end, sink)) return;
        bool eof = false, first = true;
        run_blocking(
            true, deadline(), [] { return 0u; },
            [&] {
                if (try_take(*end, sink)) return true;
                if (first) {  // the common case: the answer is on its way; no syscall
                    first = false;
                    return false;
                }
                if (!end->peer_closed()) return false;
                // Everything sent before the last close is already queued.
                if (try_take(*end, sink)) return true;
                eof = true;
                return true;
            },
            [&](std::uint32_t, clock::duration slice) { return end->wait_readable(slice); });
        if (eof) raise_eof();
    }

    std::shared_ptr<channel_end> end_;
    bool readable_;
    bool writable_;
};

}  // namespace

void register_connection(py::module_& m) {
    py::class_<py_connection>(m, "Connection",
                              "One end of a shared-memory Pipe (mechanism only; see fastmp.connection).")
        .def(py::init<int, int, int, int, int, bool, bool>(), py::arg("sock"), py::arg("header"), py::arg("tx"),
             py::arg("rx"), py::arg("side"), py::arg("readable") = true, py::arg("writable") = true)
        .def("send", &py_connection::send, py::arg("obj"), "Send a (picklable) object.")
        .def("_send_raw", &py_connection::send_raw, py::arg("buf"))
        .def("recv", &py_connection::recv, "Receive a (picklable) object.")
        .def(
            "recv_bytes",
            [](py::handle self, py::handle maxlength) {
                return self.cast<py_connection&>().recv_bytes(self, maxlength);
            },
            py::arg("maxlength") = py::none(), "Receive bytes data as a bytes object.")
        .def("poll", &py_connection::poll, py::arg("timeout") = 0.0,
             "Whether there is any input available to be read.")
        .def("fileno", &py_connection::fileno, "A descriptor that is readable while input is available.")
        .def("close", &py_connection::close, "Close the connection.")
        .def("_fds", &py_connection::fds)
        .def_property_readonly("closed", &py_connection::closed, "True if the connection is closed")
        .def_property_readonly("readable", &py_connection::readable, "True if the connection is readable")
        .def_property_readonly("writable", &py_connection::writable, "True if the connection is writable");

    m.def(
        "_pipe_fds",
        [](bool duplex) {
            auto [a, b] = channel_end::create_pair(duplex);
            // Hand the descriptors over as dups (the C++ ends close theirs);
            // on failure nothing is left open.
            std::vector<int> dups;
            auto dup_or_none = [&](int fd) {
                if (fd < 0) return -1;
                int r = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
                if (r < 0) {
                    int err = errno;
                    for (int d : dups) ::close(d);
                    throw sys_error(err, "dup of pipe descriptor");
                }
                dups.push_back(r);
                return r;
            };
            channel_fds fa = a.fds(), fb = b.fds();
            int a_fds[4] = {dup_or_none(fa.sock), dup_or_none(fa.header), dup_or_none(fa.tx), dup_or_none(fa.rx)};
            int b_fds[4] = {dup_or_none(fb.sock), dup_or_none(fb.header), dup_or_none(fb.tx), dup_or_none(fb.rx)};
            return py::make_tuple(py::make_tuple(a_fds[0], a_fds[1], a_fds[2], a_fds[3], fa.side),
                                  py::make_tuple(b_fds[0], b_fds[1], b_fds[2], b_fds[3], fb.side));
        },
        py::arg("duplex"), "Descriptors of a new pipe's two ends (sock, header, tx, rx, side); the caller owns them.");
}

}  // namespace fastmp::py_bind
