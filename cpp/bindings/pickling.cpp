#include "pickling.hpp"

#include <cmath>

namespace fastmp::py_bind {

namespace {

// Installed by fastmp.reduction (policy lives in Python).
struct pickling_state {
    py::object pickler;   // _pickle.Pickler(sink, 5) with ForkingPickler's dispatch table
    py::object chunks;    // list the pickler's sink appends its output to
    py::object oob;       // list its buffer_callback appends PickleBuffers to
    py::object fallback;  // fastmp.reduction._dumps_fallback(obj) -> bytes, or raises
    py::object loads;     // pickle.loads
    // The pickler's dispatch table is a plain dict (a per-object dict lookup,
    // not a ChainMap's Python __getitem__), refilled by `rebuild` whenever one
    // of its sources (copyreg.dispatch_table, ForkingPickler._extra_reducers)
    // has changed since the last refill.
    py::object rebuild;
    py::object sources[2];
#if PY_VERSION_HEX >= 0x030C0000
    int watcher = -1;  // dict watchers (3.12+) flag any change of a source
    bool stale = true;
#else
    std::uint64_t versions[2] = {0, 0};  // ma_version_tag changes on every mutation
#endif
    py::str dump = py::str("dump"), clear_memo = py::str("clear_memo"), buffers = py::str("buffers");
    bool in_use = false;
};

// Out-of-band payload layout: u64 nbufs, u64 pickle_len, u64 len[nbufs], the
// pickle, then each buffer at an offset (from the payload start) aligned to
// oob_align, so numpy and friends get aligned memory on the other side.
constexpr std::size_t oob_align = 64;
const char zeros[oob_align] = {};

std::size_t align_up(std::size_t n) { return (n + oob_align - 1) & ~(oob_align - 1); }

pickling_state* state = nullptr;

#if PY_VERSION_HEX >= 0x030C0000
int on_source_change(PyDict_WatchEvent, PyObject*, PyObject*, PyObject*) {
    if (state) state->stale = true;
    return 0;
}
#endif

// Refills the dispatch table if copyreg.pickle(), ForkingPickler.register()
// or a direct assignment changed a source since the last refill.
void sync_dispatch_table(pickling_state& st) {
    if (!st.rebuild) return;
#if PY_VERSION_HEX >= 0x030C0000
    if (!st.stale) return;
    st.stale = false;
    try {
        st.rebuild();
    } catch (...) {
        st.stale = true;
        throw;
    }
#else
    std::uint64_t now[2];
    for (int i = 0; i < 2; ++i) now[i] = reinterpret_cast<PyDictObject*>(st.sources[i].ptr())->ma_version_tag;
    if (now[0] == st.versions[0] && now[1] == st.versions[1]) return;
    st.rebuild();
    for (int i = 0; i < 2; ++i) st.versions[i] = now[i];
#endif
}

pickling_state& get_state() {
    if (!state || !state->pickler) {
        // fastmp.reduction installs itself on import.
        py::module_::import("fastmp.reduction");
        if (!state || !state->pickler) throw std::runtime_error("fastmp pickling is not initialised");
    }
    return *state;
}

py::object pickle_object(py::handle obj, py::list& oob_out) {
    pickling_state& st = get_state();
    if (st.in_use) return st.fallback(obj);  // re-entered from a __reduce__: keep it simple
    sync_dispatch_table(st);
    st.in_use = true;
    PyObject* chunks = st.chunks.ptr();
    PyObject* oob = st.oob.ptr();
    PyObject* data = nullptr;
    PyObject* r = PyObject_CallMethodOneArg(st.pickler.ptr(), st.dump.ptr(), obj.ptr());
    if (r) {
        Py_DECREF(r);
        Py_ssize_t n = PyList_GET_SIZE(chunks);
        if (n == 1) {
            data = PyList_GET_ITEM(chunks, 0);
            Py_INCREF(data);
        } else {  // large pickles arrive in frames
            // b"".join(chunks), through the public API.
            PyObject* empty = PyBytes_FromStringAndSize(nullptr, 0);
            data = empty ? PyObject_CallMethod(empty, "join", "O", chunks) : nullptr;
            Py_XDECREF(empty);
        }
    }
    // Reset the output and memo whatever happened, keeping any pending error.
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (data && PyList_GET_SIZE(oob) > 0) oob_out = py::reinterpret_steal<py::list>(PyList_GetSlice(oob, 0, PY_SSIZE_T_MAX));
    PyList_SetSlice(oob, 0, PyList_GET_SIZE(oob), nullptr);
    PyList_SetSlice(chunks, 0, PyList_GET_SIZE(chunks), nullptr);
    Py_XDECREF(PyObject_CallMethodNoArgs(st.pickler.ptr(), st.clear_memo.ptr()));
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
    st.in_use = false;
    if (data) return py::reinterpret_steal<py::object>(data);
    // The fast pickler could not do it: lambdas, local functions, ... The
    // fallback raises the stdlib's error when nothing can pickle obj.
    PyErr_Clear();
    return st.fallback(obj);
}

}  // namespace

void encode(py::handle obj, encoded& out) {
    PyObject* o = obj.ptr();
    PyTypeObject* t = Py_TYPE(o);
    if (o == Py_None) {
        out.tag = tag_none;
        out.size = 0;
        return;
    }
    if (t == &PyBool_Type) {
        out.tag = (o == Py_True) ? tag_true : tag_false;
        out.size = 0;
        return;
    }
    if (t == &PyLong_Type) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            std::memcpy(out.inline_buf, &v, sizeof v);
            out.tag = tag_int;
            out.size = sizeof v;
            return;
        }
        PyErr_Clear();
    } else if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        std::memcpy(out.inline_buf, &d, sizeof d);
        out.tag = tag_float;
        out.size = sizeof d;
        return;
    } else if (t == &PyBytes_Type) {
        out.tag = tag_bytes;
        out.data = PyBytes_AS_STRING(o);
        out.size = static_cast<std::size_t>(PyBytes_GET_SIZE(o));
        out.keep = py::reinterpret_borrow<py::object>(obj);
        return;
    } else if (t == &PyUnicode_Type) {
        Py_ssize_t n = 0;
        const char* u = PyUnicode_AsUTF8AndSize(o, &n);
        if (u) {
            out.tag = tag_str;
            out.data = u;
            out.size = static_cast<std::size_t>(n);
            out.keep = py::reinterpret_borrow<py::object>(obj);
            return;
        }
        PyErr_Clear();  // lone surrogates: pickle copes
    }
    py::list oob;
    py::object data = pickle_object(obj, oob);
    if (!PyBytes_Check(data.ptr())) data = py::bytes(data);
    out.tag = tag_pickle;
    out.data = PyBytes_AS_STRING(data.ptr());
    out.size = static_cast<std::size_t>(PyBytes_GET_SIZE(data.ptr()));
    out.keep = std::move(data);
    if (oob.empty()) return;
    // Protocol-5 buffers (numpy arrays, PickleBuffer, ...) are gathered into
    // the message as they are, instead of being copied into the pickle first.
    out.tag = tag_pickle_oob;
    out.oob_head.push_back(oob.size());
    out.oob_head.push_back(out.size);
    for (py::handle pb : oob) {
        auto hb = std::make_unique<held_buffer>();
        if (PyObject_GetBuffer(pb.ptr(), &hb->view, PyBUF_FULL_RO) != 0) throw py::error_already_set();
        if (!PyBuffer_IsContiguous(&hb->view, 'A')) throw py::value_error("out-of-band pickle buffer is not contiguous");
        out.oob_head.push_back(static_cast<std::uint64_t>(hb->view.len));
        out.oob.push_back(std::move(hb));
    }
}

message_view encoded::view() const {
    if (tag != tag_pickle_oob) return message_view{tag, payload(), size};
    parts_.clear();
    std::size_t at = oob_head.size() * sizeof(std::uint64_t);
    parts_.push_back({data, size});
    at += size;
    for (const auto& hb : oob) {
        std::size_t pad = align_up(at) - at;
        if (pad) parts_.push_back({zeros, pad});
        parts_.push_back({hb->view.buf, static_cast<std::size_t>(hb->view.len)});
        at += pad + static_cast<std::size_t>(hb->view.len);
    }
    return message_view{tag, oob_head.data(), oob_head.size() * sizeof(std::uint64_t), parts_.data(), parts_.size()};
}

py::object decode_raw(std::uint32_t tag, const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    PyObject* r = nullptr;
    switch (tag) {
        case tag_none: return py::none();
        case tag_true: return py::bool_(true);
        case tag_false: return py::bool_(false);
        case tag_int: {
            long long v;
            std::memcpy(&v, p, sizeof v);
            r = PyLong_FromLongLong(v);
            break;
        }
        case tag_float: {
            double d;
            std::memcpy(&d, p, sizeof d);
            r = PyFloat_FromDouble(d);
            break;
        }
        case tag_str: r = PyUnicode_DecodeUTF8(p, static_cast<Py_ssize_t>(size), "surrogatepass"); break;
        case tag_bytes:
        case tag_pickle: r = PyBytes_FromStringAndSize(p, static_cast<Py_ssize_t>(size)); break;
        // Mutable, so the out-of-band buffers rebuilt over it are writable
        // (as they are after an in-band unpickle).
        case tag_pickle_oob: r = PyByteArray_FromStringAndSize(p, static_cast<Py_ssize_t>(size)); break;
        default: throw py::value_error("fastmp: corrupt message (unknown payload tag)");
    }
    if (!r) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
}

py::object finish_decode(std::uint32_t tag, py::object raw) {
    if (tag == tag_pickle) return get_state().loads(raw);
    if (tag != tag_pickle_oob) return raw;
    const char* base = PyByteArray_AS_STRING(raw.ptr());
    const std::size_t total = static_cast<std::size_t>(PyByteArray_GET_SIZE(raw.ptr()));
    auto word = [&](std::size_t i) {
        std::uint64_t w;
        if ((i + 1) * sizeof w > total) throw py::value_error("fastmp: corrupt message (out-of-band header)");
        std::memcpy(&w, base + i * sizeof w, sizeof w);
        return w;
    };
    const std::uint64_t nbufs = word(0), pickle_len = word(1);
    if (nbufs > total / sizeof(std::uint64_t)) throw py::value_error("fastmp: corrupt message (buffer count)");
    py::memoryview all = py::reinterpret_steal<py::memoryview>(PyMemoryView_FromObject(raw.ptr()));
    if (!all) throw py::error_already_set();
    auto slice = [&](std::size_t from, std::size_t len) {
        if (from > total || len > total - from) throw py::value_error("fastmp: corrupt message (buffer bounds)");
        return all[py::slice(static_cast<Py_ssize_t>(from), static_cast<Py_ssize_t>(from + len), 1)];
    };
    std::size_t at = (2 + nbufs) * sizeof(std::uint64_t);
    py::object pickled = slice(at, pickle_len);
    at += pickle_len;
    py::list buffers;
    for (std::uint64_t i = 0; i < nbufs; ++i) {
        std::size_t len = word(2 + i);
        at = align_up(at);
        buffers.append(slice(at, len));
        at += len;
    }
    pickling_state& st = get_state();
    py::dict kw;
    kw[st.buffers] = buffers;
    return st.loads(pickled, **kw);
}

void init_pickling(py::module_& m) {
    state = new pickling_state();  // lives as long as the interpreter; never freed at exit on purpose
    m.def(
        "_install_pickling",
        [](py::object pickler, py::list chunks, py::list oob, py::object fallback, py::object loads, py::object rebuild,
           py::dict copyreg_table, py::dict extra_reducers) {
            state->pickler = std::move(pickler);
            state->chunks = std::move(chunks);
            state->oob = std::move(oob);
            state->fallback = std::move(fallback);
            state->loads = std::move(loads);
            state->rebuild = std::move(rebuild);
            state->sources[0] = std::move(copyreg_table);
            state->sources[1] = std::move(extra_reducers);
#if PY_VERSION_HEX >= 0x030C0000
            if (state->watcher < 0) {
                state->watcher = PyDict_AddWatcher(on_source_change);
                if (state->watcher < 0) throw py::error_already_set();
            }
            for (auto& d : state->sources)
                if (PyDict_Watch(state->watcher, d.ptr()) != 0) throw py::error_already_set();
            state->stale = true;
#else
            state->versions[0] = state->versions[1] = 0;  // 0 is never a live dict's version
#endif
            sync_dispatch_table(*state);
        },
        "Called once by fastmp.reduction: the fast pickler, its output and buffer lists, the fallback, loads, "
        "and the dispatch table's rebuild function and sources (copyreg's table, ForkingPickler's reducers).");
    m.def(
        "_sync_dispatch_table", [] { sync_dispatch_table(get_state()); },
        "Refills fastmp.reduction's dispatch table if a reducer was registered since the last refill.");
    m.def(
        "_encode_tag",
        [](py::handle obj) {
            encoded e;
            encode(obj, e);
            return e.tag;
        },
        "The payload tag fastmp would use for obj (for tests).");
}

}  // namespace fastmp::py_bind
