// fastmp._fastmp._LockedValue / _LockedArray / _LockedString: the accessors
// behind fastmp.sharedctypes.Synchronized, SynchronizedArray and
// SynchronizedString.
//
// Why native: `v.value` on the stdlib's wrapper runs a Python function that
// calls lock.acquire(), reads the ctypes attribute and calls lock.release()
// inside try/finally; the function frame costs as much as the work. These
// types do the same three calls from C (same lock, same ctypes conversions,
// same exceptions), so the semantics are the stdlib's: every access holds the
// lock, `v.value += 1` is a locked read and then a locked write.
//
// Written against the CPython C API rather than pybind11 because a pybind11
// property goes through its generic dispatcher, which is the very overhead
// this removes. No shared state lives here: the memory belongs to the ctypes
// object and its block (fastmp/_heap.py), the lock to the Python wrapper.
#include <pybind11/pybind11.h>
#include <structmember.h>

#include "common.hpp"

#include <bit>
#include <cstddef>
#include <cstring>
#include <vector>

namespace fastmp::py_bind {

namespace {

struct locked {
    PyObject_HEAD
    PyObject* obj;      // the ctypes object
    PyObject* acquire;  // the lock's bound acquire / release
    PyObject* release;
    PyObject* weakrefs;
};

PyObject* value_name = nullptr;  // interned "value"
PyObject* raw_name = nullptr;    // interned "raw"

int locked_traverse(PyObject* self, visitproc visit, void* arg) {
    auto* s = reinterpret_cast<locked*>(self);
    Py_VISIT(s->obj);
    Py_VISIT(s->acquire);
    Py_VISIT(s->release);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

int locked_clear(PyObject* self) {
    auto* s = reinterpret_cast<locked*>(self);
    Py_CLEAR(s->obj);
    Py_CLEAR(s->acquire);
    Py_CLEAR(s->release);
    return 0;
}

void locked_dealloc(PyObject* self) {
    PyTypeObject* tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (reinterpret_cast<locked*>(self)->weakrefs != nullptr) PyObject_ClearWeakRefs(self);
    locked_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

// _bind(obj, acquire, release): set once by the Python wrapper's __init__.
PyObject* locked_bind(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        PyObject* a[3] = {nullptr, nullptr, nullptr};
        parse_fast_args("_bind", args, nargs, kwnames, {"obj", "acquire", "release"}, 3, a);
        auto* s = reinterpret_cast<locked*>(self);
        Py_INCREF(a[0]);
        Py_INCREF(a[1]);
        Py_INCREF(a[2]);
        Py_XSETREF(s->obj, a[0]);
        Py_XSETREF(s->acquire, a[1]);
        Py_XSETREF(s->release, a[2]);
        Py_RETURN_NONE;
    });
}

bool check_bound(locked* s) {
    if (s->obj == nullptr) {
        PyErr_SetString(PyExc_AttributeError, "synchronized wrapper is not initialized");
        return false;
    }
    return true;
}

bool lock_acquire(locked* s) {
    PyObject* r = PyObject_CallNoArgs(s->acquire);
    if (r == nullptr) return false;
    Py_DECREF(r);
    return true;
}

// Releases the lock, as the `finally:` of the stdlib's accessor would: if
// release raises, its exception replaces the access's (which becomes its
// __context__); otherwise the access's exception, if any, stands.
bool lock_release(locked* s, bool ok) {
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    if (!ok) PyErr_Fetch(&type, &value, &tb);
    PyObject* r = PyObject_CallNoArgs(s->release);
    if (r != nullptr) {
        Py_DECREF(r);
        if (!ok) PyErr_Restore(type, value, tb);
        return ok;
    }
    if (!ok) {
        // Take release's exception out first: no API may run with one set.
        PyObject *rtype = nullptr, *rvalue = nullptr, *rtb = nullptr;
        PyErr_Fetch(&rtype, &rvalue, &rtb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != nullptr) PyException_SetTraceback(value, tb);
        PyErr_NormalizeException(&rtype, &rvalue, &rtb);
        PyException_SetContext(rvalue, value);  // steals value
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyErr_Restore(rtype, rvalue, rtb);
    }
    return false;
}

// Getters/setters of one attribute of the ctypes object; `closure` is its
// interned name.
PyObject* attr_get(PyObject* self, void* closure) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s) || !lock_acquire(s)) return nullptr;
    PyObject* v = PyObject_GetAttr(s->obj, static_cast<PyObject*>(closure));
    if (!lock_release(s, v != nullptr)) {
        Py_XDECREF(v);
        return nullptr;
    }
    return v;
}

int attr_set(PyObject* self, PyObject* v, void* closure) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s) || !lock_acquire(s)) return -1;
    int rc = PyObject_SetAttr(s->obj, static_cast<PyObject*>(closure), v);
    return lock_release(s, rc == 0) ? 0 : -1;
}

// ctypes' own Array.__getitem__, to recognise plain ctypes arrays.
binaryfunc ctypes_array_subscript = nullptr;

template <class T, class Make>
PyObject* list_of(const char* base, Py_ssize_t start, Py_ssize_t step, Py_ssize_t n, Make make) {
    PyObject* list = PyList_New(n);
    if (list == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, base + (start + i * step) * static_cast<Py_ssize_t>(sizeof(T)), sizeof(T));
        PyObject* o = make(v);
        if (o == nullptr) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, i, o);
    }
    return list;
}

// A slice of a ctypes array of numbers (or bools), as the list ctypes would
// return, built in one loop: ctypes itself makes each item through a generic
// per-item getter, which is most of the cost of `arr[:]`. Sets *handled to
// false, and returns nullptr without an error, for anything else (c_char and
// c_wchar arrays, pointers, structures, subclasses that override indexing).
PyObject* number_slice(PyObject* obj, PyObject* key, bool* handled) {
    *handled = false;
    PyTypeObject* tp = Py_TYPE(obj);
    if (tp->tp_as_mapping == nullptr || tp->tp_as_mapping->mp_subscript != ctypes_array_subscript) return nullptr;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO) != 0) {
        PyErr_Clear();
        return nullptr;
    }
    constexpr char native = std::endian::native == std::endian::little ? '<' : '>';
    const char* f = view.format;
    PyObject* out = nullptr;
    if (view.ndim == 1 && f != nullptr && f[0] == native && f[1] != '\0' && f[2] == '\0' &&
        std::strchr("bBhHiIlLqQfd?", f[1]) != nullptr) {
        *handled = true;
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) == 0) {
            Py_ssize_t n = PySlice_AdjustIndices(view.shape[0], &start, &stop, step);
            const char* b = static_cast<const char*>(view.buf);
            auto as_long = [](auto v) { return PyLong_FromLongLong(static_cast<long long>(v)); };
            auto as_ulong = [](auto v) { return PyLong_FromUnsignedLongLong(static_cast<unsigned long long>(v)); };
            auto as_float = [](auto v) { return PyFloat_FromDouble(static_cast<double>(v)); };
            switch (f[1]) {
                case 'b': out = list_of<signed char>(b, start, step, n, as_long); break;
                case 'B': out = list_of<unsigned char>(b, start, step, n, as_long); break;
                case 'h': out = list_of<short>(b, start, step, n, as_long); break;
                case 'H': out = list_of<unsigned short>(b, start, step, n, as_long); break;
                case 'i': out = list_of<int>(b, start, step, n, as_long); break;
                case 'I': out = list_of<unsigned int>(b, start, step, n, as_ulong); break;
                case 'l': out = list_of<long>(b, start, step, n, as_long); break;
                case 'L': out = list_of<unsigned long>(b, start, step, n, as_ulong); break;
                case 'q': out = list_of<long long>(b, start, step, n, as_long); break;
                case 'Q': out = list_of<unsigned long long>(b, start, step, n, as_ulong); break;
                case 'f': out = list_of<float>(b, start, step, n, as_float); break;
                case 'd': out = list_of<double>(b, start, step, n, as_float); break;
                case '?':
                    out = list_of<bool>(b, start, step, n, [](bool v) { return PyBool_FromLong(v); });
                    break;
            }
        }
    }
    PyBuffer_Release(&view);
    return out;
}

PyObject* array_getitem(PyObject* self, PyObject* key) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s) || !lock_acquire(s)) return nullptr;
    bool handled = false;
    PyObject* v = PySlice_Check(key) ? number_slice(s->obj, key, &handled) : nullptr;
    if (!handled) v = PyObject_GetItem(s->obj, key);
    if (!lock_release(s, v != nullptr)) {
        Py_XDECREF(v);
        return nullptr;
    }
    return v;
}

int array_setitem(PyObject* self, PyObject* key, PyObject* v) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s) || !lock_acquire(s)) return -1;
    int rc = v != nullptr ? PyObject_SetItem(s->obj, key, v) : PyObject_DelItem(s->obj, key);
    return lock_release(s, rc == 0) ? 0 : -1;
}

Py_ssize_t array_length(PyObject* self) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s)) return -1;
    return PyObject_Size(s->obj);  // unlocked, as in the stdlib
}

PyMethodDef locked_methods[] = {
    {"_bind", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(locked_bind)), METH_FASTCALL | METH_KEYWORDS,
     "_bind(obj, acquire, release): what this wrapper guards, and with which lock."},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef locked_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(locked, weakrefs), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

// The closures (attribute names) are filled in at registration.
PyGetSetDef value_getset[] = {
    {"value", attr_get, attr_set, "The value, read and written while holding the lock.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyGetSetDef string_getset[] = {
    {"value", attr_get, attr_set, "The string up to its first NUL, under the lock.", nullptr},
    {"raw", attr_get, attr_set, "All the bytes, under the lock.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyObject* make_type(const char* name, PyType_Slot* extra, int n_extra, PyObject* base = nullptr) {
    std::vector<PyType_Slot> slots = {
        {Py_tp_traverse, reinterpret_cast<void*>(locked_traverse)},
        {Py_tp_clear, reinterpret_cast<void*>(locked_clear)},
        {Py_tp_dealloc, reinterpret_cast<void*>(locked_dealloc)},
        {Py_tp_methods, locked_methods},
        {Py_tp_members, locked_members},
    };
    slots.insert(slots.end(), extra, extra + n_extra);
    slots.push_back({0, nullptr});
    PyType_Spec spec{name, sizeof(locked), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
                     slots.data()};
    if (base == nullptr) return PyType_FromSpec(&spec);
    PyObject* bases = PyTuple_Pack(1, base);  // 3.9 takes only a tuple here
    if (bases == nullptr) return nullptr;
    PyObject* t = PyType_FromSpecWithBases(&spec, bases);
    Py_DECREF(bases);
    return t;
}

}  // namespace

void register_sharedctypes(py::module_& m) {
    value_name = PyUnicode_InternFromString("value");
    raw_name = PyUnicode_InternFromString("raw");
    if (value_name == nullptr || raw_name == nullptr) throw py::error_already_set();
    value_getset[0].closure = value_name;
    {
        py::object c_double = py::module_::import("ctypes").attr("c_double");
        py::object probe = py::reinterpret_steal<py::object>(PyNumber_Multiply(c_double.ptr(), py::int_(1).ptr()));
        if (!probe) throw py::error_already_set();
        auto* tp = reinterpret_cast<PyTypeObject*>(probe.ptr());
        if (tp->tp_as_mapping != nullptr) ctypes_array_subscript = tp->tp_as_mapping->mp_subscript;
    }
    string_getset[0].closure = value_name;
    string_getset[1].closure = raw_name;

    PyType_Slot value_slots[] = {{Py_tp_getset, value_getset}};
    PyType_Slot array_slots[] = {
        {Py_mp_subscript, reinterpret_cast<void*>(array_getitem)},
        {Py_mp_ass_subscript, reinterpret_cast<void*>(array_setitem)},
        {Py_mp_length, reinterpret_cast<void*>(array_length)},
    };
    PyObject* value_type = make_type("fastmp._fastmp._LockedValue", value_slots, 1);
    if (value_type == nullptr) throw py::error_already_set();
    m.add_object("_LockedValue", py::reinterpret_steal<py::object>(value_type));
    PyObject* array_type = make_type("fastmp._fastmp._LockedArray", array_slots, 3);
    if (array_type == nullptr) throw py::error_already_set();
    m.add_object("_LockedArray", py::reinterpret_borrow<py::object>(array_type));
    // Array('c'): items as _LockedArray, plus .value and .raw.
    PyType_Slot string_slots[] = {{Py_tp_getset, string_getset}};
    PyObject* string_type = make_type("fastmp._fastmp._LockedString", string_slots, 1, array_type);
    Py_DECREF(array_type);
    if (string_type == nullptr) throw py::error_already_set();
    m.add_object("_LockedString", py::reinterpret_steal<py::object>(string_type));
}

}  // namespace fastmp::py_bind
