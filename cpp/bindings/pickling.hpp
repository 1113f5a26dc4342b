// The hot-path serializer shared by queues and connections (DESIGN.md, 8).
//
// Exact None/bool/int/float/str/bytes travel as tagged raw payloads, with no
// pickle at all. Everything else goes through one persistent C Pickler
// (protocol 5) whose dispatch table is ForkingPickler's reducers chained to
// copyreg's, so objects that multiprocessing pickles specially (stdlib
// Connections, sockets, anything registered with reduction.register) are
// pickled the same way here. When that fails, fastmp.reduction's fallback
// (ForkingPickler, then cloudpickle for lambdas and local functions) decides.
#pragma once

#include <pybind11/pybind11.h>

#include "pycompat.hpp"

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <fastmp/queue.hpp>

namespace fastmp::py_bind {

namespace py = pybind11;

enum payload_tag : std::uint32_t {
    tag_pickle = 1,
    tag_bytes = 2,
    tag_int = 3,
    tag_str = 4,
    tag_float = 5,
    tag_none = 6,
    tag_true = 7,
    tag_false = 8,
    tag_pickle_oob = 9,  // protocol-5 pickle + out-of-band buffers (see pickling.cpp)
};

// A held buffer export (released with the GIL held, on destruction).
struct held_buffer {
    Py_buffer view{};
    held_buffer() = default;
    held_buffer(const held_buffer&) = delete;
    held_buffer& operator=(const held_buffer&) = delete;
    ~held_buffer() {
        if (view.obj) PyBuffer_Release(&view);
    }
};

// One encoded message: borrow what `view()` points to while this lives.
// Small payloads sit in inline_buf (data == nullptr) and the out-of-band
// header in a heap vector, so an `encoded` may be moved freely.
struct encoded {
    std::uint32_t tag = 0;
    const void* data = nullptr;
    std::size_t size = 0;
    py::object keep;
    char inline_buf[8];
    // tag_pickle_oob only: the header words and the exported buffers.
    std::vector<std::uint64_t> oob_head;
    std::vector<std::unique_ptr<held_buffer>> oob;
    mutable std::vector<message_part> parts_;

    const void* payload() const noexcept { return data ? data : inline_buf; }
    message_view view() const;
};

// Encodes obj; raises the pickling error in the caller when nothing can pickle it.
void encode(py::handle obj, encoded& out);
// Builds the object back from a payload; for tag_pickle returns the raw bytes
// (unpickle them with `finish_decode` after releasing any lock).
py::object decode_raw(std::uint32_t tag, const void* data, std::size_t size);
py::object finish_decode(std::uint32_t tag, py::object raw);

void init_pickling(py::module_& m);

}  // namespace fastmp::py_bind
