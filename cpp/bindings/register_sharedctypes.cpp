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

#include <cstddef>
#include <vector>

namespace fastmp::py_bind {

namespace py = pybind11;

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
PyObject* locked_bind(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_bind(obj, acquire, release) takes 3 arguments");
        return nullptr;
    }
    auto* s = reinterpret_cast<locked*>(self);
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    Py_XSETREF(s->obj, args[0]);
    Py_XSETREF(s->acquire, args[1]);
    Py_XSETREF(s->release, args[2]);
    Py_RETURN_NONE;
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

PyObject* array_getitem(PyObject* self, PyObject* key) {
    auto* s = reinterpret_cast<locked*>(self);
    if (!check_bound(s) || !lock_acquire(s)) return nullptr;
    PyObject* v = PyObject_GetItem(s->obj, key);
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
    {"_bind", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(locked_bind)), METH_FASTCALL,
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
