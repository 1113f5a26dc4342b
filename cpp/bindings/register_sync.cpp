// fastmp._fastmp.SemLock, Event, CondVar and BarrierState: the mechanism
// behind fastmp.synchronize (the Python classes there add the policy).
//
// SemLock and Event are plain CPython types with METH_FASTCALL methods, not
// pybind11 classes: an uncontended acquire+release must cost no more than the
// stdlib's (~60 ns for both calls), and pybind11's dispatcher alone takes
// longer than that. The Python classes subclass them, so `lock.acquire` is
// the native method itself, with no Python frame in between.
#include <cstring>
#include <limits>
#include <string>
#include <new>

#include <fastmp/sync.hpp>

#include "common.hpp"

namespace fastmp::py_bind {

namespace {

// The stdlib's constants (multiprocessing.synchronize).
constexpr int recursive_mutex_kind = 0;
constexpr int semaphore_kind = 1;
constexpr long sem_value_max = 0x7fffffff;

PyObject* handle_tuple(const sync_ref& r) {
    return Py_BuildValue("(iKI)", r.arena()->fd(), static_cast<unsigned long long>(r.arena()->id()), r.index());
}

// (block=True, timeout=None), or (timeout=None) for Event.wait, with the
// stdlib's messages; false with a Python error set.
bool parse_block_timeout(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                         PyObject** block, PyObject** timeout, bool with_block = true) {
    PyObject* out[2] = {Py_True, Py_None};
    PyObject* err = guarded([&]() -> PyObject* {
        if (with_block)
            parse_fast_args(fname, args, nargs, kwnames, {"block", "timeout"}, 0, out, true);
        else
            parse_fast_args(fname, args, nargs, kwnames, {"timeout"}, 0, out + 1);
        return Py_None;
    });
    *block = out[0];
    *timeout = out[1];
    return err != nullptr;
}

// ---------------------------------------------------------------- SemLock

struct semlock_object {
    PyObject_HEAD
    shm_lock* lock;      // Lock, RLock, and semaphores of value 1 bounded at 1
    shm_semaphore* sem;  // other semaphores
    int kind;
    long maxvalue;
};

semlock_object* as_semlock(PyObject* self) { return reinterpret_cast<semlock_object*>(self); }

bool semlock_ready(semlock_object* s) {
    if (s->lock || s->sem) return true;
    PyErr_SetString(PyExc_ValueError, "SemLock is not initialised");
    return false;
}

// acquire with the GIL released only while sleeping.
PyObject* semlock_acquire_slow(semlock_object* s, PyObject* block_obj, PyObject* timeout_obj) {
    return guarded([&]() -> PyObject* {
        int block = PyObject_IsTrue(block_obj);
        if (block < 0) return nullptr;
        deadline dl = block ? parse_timeout(timeout_obj) : deadline();
        bool ok;
        if (s->lock) {
            shm_lock& l = *s->lock;
            bool waited = false;
            ok = run_blocking(
                block, dl, [&] { return l.ticket(); },
                [&] { return waited ? l.try_acquire_after_wait() : l.try_acquire(); },
                [&](std::uint64_t t, clock::duration slice) {
                    waited = true;
                    return l.wait(t, slice);
                });
        } else {
            shm_semaphore& m = *s->sem;
            bool waited = false;
            ok = run_blocking(
                block, dl, [&] { return m.ticket(); },
                [&] { return waited ? m.try_acquire_after_wait() : m.try_acquire(); },
                [&](std::uint32_t t, clock::duration slice) {
                    waited = true;
                    return m.wait(t, slice);
                });
        }
        return Py_NewRef(ok ? Py_True : Py_False);
    });
}

PyObject* semlock_acquire(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    semlock_object* s = as_semlock(self);
    if (nargs == 0 && !kwnames && s->lock) {
        if (s->lock->try_acquire()) Py_RETURN_TRUE;
    } else if (!semlock_ready(s)) {
        return nullptr;
    }
    PyObject *block, *timeout;
    if (!parse_block_timeout("acquire", args, nargs, kwnames, &block, &timeout)) return nullptr;
    if (s->lock && timeout == Py_None && s->lock->try_acquire()) Py_RETURN_TRUE;
    return semlock_acquire_slow(s, block, timeout);
}

PyObject* semlock_release_impl(semlock_object* s) {
    status st;
    if (s->lock) {
        st = s->lock->release();
        if (st == status::ok) Py_RETURN_NONE;
    } else {
        if (!semlock_ready(s)) return nullptr;
        st = s->sem->release();
        if (st == status::ok) Py_RETURN_NONE;
    }
    if (st == status::not_owner)
        PyErr_SetString(PyExc_AssertionError, "attempt to release recursive lock not owned by thread");
    else
        PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
    return nullptr;
}

PyObject* semlock_release(PyObject* self, PyObject*) { return semlock_release_impl(as_semlock(self)); }

PyObject* semlock_enter(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (s->lock && s->lock->try_acquire()) Py_RETURN_TRUE;
    if (!semlock_ready(s)) return nullptr;
    return semlock_acquire_slow(s, Py_True, Py_None);
}

PyObject* semlock_exit(PyObject* self, PyObject* const*, Py_ssize_t) { return semlock_release_impl(as_semlock(self)); }

PyObject* semlock_count(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyLong_FromUnsignedLong(s->lock ? s->lock->count() : s->sem->held_by_me());
}

PyObject* semlock_is_mine(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyBool_FromLong(s->lock ? s->lock->is_mine() : s->sem->held_by_me() > 0);
}

PyObject* semlock_get_value(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyLong_FromUnsignedLong(s->lock ? (s->lock->locked() ? 0 : 1) : s->sem->value());
}

PyObject* semlock_is_zero(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyBool_FromLong(s->lock ? s->lock->locked() : s->sem->value() == 0);
}

PyObject* semlock_after_fork(PyObject*, PyObject*) {
    // Ownership is (pid, thread) in shared memory: nothing per-process to reset.
    Py_RETURN_NONE;
}

PyObject* semlock_handle(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return handle_tuple(s->lock ? s->lock->ref() : s->sem->ref());
}

PyObject* semlock_sleepers(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyBool_FromLong(s->lock ? s->lock->sleepers() : s->sem->sleepers());
}

PyObject* semlock_recover(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyLong_FromUnsignedLong(s->lock ? (s->lock->recover_dead_holder() ? 1 : 0)
                                           : s->sem->recover_dead_holders());
}

PyObject* semlock_holder_pid(PyObject* self, PyObject*) {
    semlock_object* s = as_semlock(self);
    if (!semlock_ready(s)) return nullptr;
    return PyLong_FromUnsignedLong(s->lock ? s->lock->holder_pid() : 0);
}

// Creates the object (fd < 0) or attaches to the one at (arena, index)
// received from another process.
int semlock_setup(semlock_object* s, int kind, long value, long maxvalue, int fd, unsigned long long arena_id,
                  unsigned int index) {
    if (s->lock || s->sem) {
        PyErr_SetString(PyExc_RuntimeError, "SemLock is initialised already");
        return -1;
    }
    if (kind != recursive_mutex_kind && kind != semaphore_kind) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return -1;
    }
    if (value < 0 || value > sem_value_max || maxvalue < 0 || maxvalue > sem_value_max) {
        set_os_error(sys_error(EINVAL, "semaphore value must be between 0 and SEM_VALUE_MAX"));
        return -1;
    }
    bool single = kind == recursive_mutex_kind || (value == 1 && maxvalue == 1);
    PyObject* made = guarded([&]() -> PyObject* {
        if (arena_id != 0) {  // attach (fd is -1 when the arena came with an earlier object)
            sync_ref ref = sync_attach(fd, arena_id, index);
            // What the creator made (a lock or a semaphore) is in the shared
            // header; the pickled value cannot tell (SemLock(SEMAPHORE, 0, 1)).
            auto made = static_cast<sync_kind>(reinterpret_cast<const sync_object_header*>(ref.data())->kind);
            if (made == sync_kind::lock || made == sync_kind::rlock)
                s->lock = new shm_lock(shm_lock::attach(std::move(ref)));
            else
                s->sem = new shm_semaphore(shm_semaphore::attach(std::move(ref)));
        } else if (single) {
            s->lock = new shm_lock(shm_lock::create(kind == recursive_mutex_kind));
        } else {
            s->sem = new shm_semaphore(
                shm_semaphore::create(static_cast<std::uint32_t>(value), static_cast<std::uint32_t>(maxvalue)));
        }
        return Py_None;
    });
    if (!made) return -1;
    s->kind = kind;
    s->maxvalue = maxvalue;
    return 0;
}

// SemLock(kind, value, maxvalue): the stdlib's low-level constructor.
int semlock_init(PyObject* self, PyObject* args, PyObject* kwds) {
    static const char* kwlist[] = {"kind", "value", "maxvalue", "ctx", nullptr};
    int kind = 0;
    long value = 0, maxvalue = 0;
    PyObject* ctx = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ill|$O:SemLock", const_cast<char**>(kwlist), &kind, &value,
                                     &maxvalue, &ctx))
        return -1;
    return semlock_setup(as_semlock(self), kind, value, maxvalue, -1, 0, 0);
}

// Lock(*, ctx=None) and RLock(*, ctx=None).
int parse_ctx_only(const char* name, PyObject* args, PyObject* kwds) {
    static const char* kwlist[] = {"ctx", nullptr};
    PyObject* ctx = Py_None;
    std::string fmt = std::string("|$O:") + name;
    return PyArg_ParseTupleAndKeywords(args, kwds, fmt.c_str(), const_cast<char**>(kwlist), &ctx) ? 0 : -1;
}

int lock_init(PyObject* self, PyObject* args, PyObject* kwds) {
    if (parse_ctx_only("Lock", args, kwds) < 0) return -1;
    return semlock_setup(as_semlock(self), semaphore_kind, 1, 1, -1, 0, 0);
}

int rlock_init(PyObject* self, PyObject* args, PyObject* kwds) {
    if (parse_ctx_only("RLock", args, kwds) < 0) return -1;
    return semlock_setup(as_semlock(self), recursive_mutex_kind, 1, 1, -1, 0, 0);
}

// Semaphore(value=1, *, ctx=None) and BoundedSemaphore(value=1, *, ctx=None).
int semaphore_init_common(PyObject* self, PyObject* args, PyObject* kwds, const char* fmt, bool bounded) {
    static const char* kwlist[] = {"value", "ctx", nullptr};
    PyObject* value_obj = nullptr;
    PyObject* ctx = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, const_cast<char**>(kwlist), &value_obj, &ctx)) return -1;
    long value = 1;
    if (value_obj) {
        PyObject* idx = PyNumber_Index(value_obj);
        if (!idx) return -1;
        value = PyLong_AsLong(idx);
        Py_DECREF(idx);
        if (value == -1 && PyErr_Occurred()) return -1;
    }
    return semlock_setup(as_semlock(self), semaphore_kind, value, bounded ? value : sem_value_max, -1, 0, 0);
}

int semaphore_init(PyObject* self, PyObject* args, PyObject* kwds) {
    return semaphore_init_common(self, args, kwds, "|O$O:Semaphore", false);
}

int bounded_semaphore_init(PyObject* self, PyObject* args, PyObject* kwds) {
    return semaphore_init_common(self, args, kwds, "|O$O:BoundedSemaphore", true);
}

// cls._attach(kind, maxvalue, fd, arena_id, index): rebuilds a handle in a child.
PyObject* semlock_attach(PyObject* cls, PyObject* args) {
    int kind = 0, fd = -1;
    long maxvalue = 0;
    unsigned long long arena_id = 0;
    unsigned int index = 0;
    if (!PyArg_ParseTuple(args, "iliKI:_attach", &kind, &maxvalue, &fd, &arena_id, &index)) return nullptr;
    auto* tp = reinterpret_cast<PyTypeObject*>(cls);
    PyObject* obj = tp->tp_alloc(tp, 0);
    if (!obj) return nullptr;
    long value = (kind == semaphore_kind && maxvalue == 1) ? 1 : 0;
    if (semlock_setup(as_semlock(obj), kind, kind == recursive_mutex_kind ? 1 : value, maxvalue, fd, arena_id,
                      index) < 0) {
        Py_DECREF(obj);
        return nullptr;
    }
    return obj;
}

void semlock_dealloc(PyObject* self) {
    semlock_object* s = as_semlock(self);
    PyTypeObject* tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    delete s->lock;
    delete s->sem;
    s->lock = nullptr;
    s->sem = nullptr;
    tp->tp_free(self);
    Py_DECREF(tp);
}

int semlock_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    (void)arg;
    return 0;
}

PyObject* semlock_get_kind(PyObject* self, void*) { return PyLong_FromLong(as_semlock(self)->kind); }
PyObject* semlock_get_maxvalue(PyObject* self, void*) { return PyLong_FromLong(as_semlock(self)->maxvalue); }

PyMethodDef semlock_methods[] = {
    {"acquire", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(semlock_acquire)),
     METH_FASTCALL | METH_KEYWORDS, "acquire(block=True, timeout=None) -> bool"},
    {"release", semlock_release, METH_NOARGS, "Releases the lock or one unit of the semaphore."},
    {"__enter__", semlock_enter, METH_NOARGS, "Acquires (blocking)."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(semlock_exit)), METH_FASTCALL,
     "Releases."},
    {"_count", semlock_count, METH_NOARGS, "Units or recursion depth held by this process."},
    {"_is_mine", semlock_is_mine, METH_NOARGS, "Whether this thread holds it."},
    {"_get_value", semlock_get_value, METH_NOARGS, "The semaphore's value (1 = a free lock)."},
    {"_is_zero", semlock_is_zero, METH_NOARGS, "Whether the value is zero."},
    {"_after_fork", semlock_after_fork, METH_NOARGS, "Nothing to do (ownership lives in shared memory)."},
    {"_handle", semlock_handle, METH_NOARGS, "(arena fd, arena id, slot) for passing to a child."},
    {"_holder_pid", semlock_holder_pid, METH_NOARGS, "Pid holding a Lock/RLock (0 if free)."},
    {"_sleepers", semlock_sleepers, METH_NOARGS, "Whether the sleepers bit is set (someone may be asleep)."},
    {"_recover", semlock_recover, METH_NOARGS, "Recovers from dead holders now; -> units (or 1 for a lock) returned."},
    {"_attach", semlock_attach, METH_VARARGS | METH_CLASS, "Rebuilds a handle received from another process."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef semlock_getset[] = {{"kind", semlock_get_kind, nullptr, nullptr, nullptr},
                                {"maxvalue", semlock_get_maxvalue, nullptr, nullptr, nullptr},
                                {nullptr, nullptr, nullptr, nullptr, nullptr}};

// One native type per public class: CPython's call fast paths for method
// descriptors require the exact type, so `Lock().acquire` is only as cheap as
// the stdlib's if Lock itself is the native type (not a Python subclass).
#define FASTMP_SEMLOCK_SLOTS(init, doc)                                       \
    {{Py_tp_init, reinterpret_cast<void*>(init)},                          \
     {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},              \
     {Py_tp_dealloc, reinterpret_cast<void*>(semlock_dealloc)},            \
     {Py_tp_traverse, reinterpret_cast<void*>(semlock_traverse)},          \
     {Py_tp_methods, semlock_methods},                                     \
     {Py_tp_getset, semlock_getset},                                       \
     {Py_tp_doc, const_cast<char*>(doc)},                                  \
     {0, nullptr}}

PyType_Slot semlock_slots[] = FASTMP_SEMLOCK_SLOTS(semlock_init, "Process-shared lock or semaphore (mechanism only).");
PyType_Slot lock_slots[] = FASTMP_SEMLOCK_SLOTS(lock_init, "A non-recursive lock; drop-in for multiprocessing.Lock.");
PyType_Slot rlock_slots[] = FASTMP_SEMLOCK_SLOTS(rlock_init, "A recursive lock; drop-in for multiprocessing.RLock.");
PyType_Slot semaphore_slots[] = FASTMP_SEMLOCK_SLOTS(semaphore_init, "Drop-in for multiprocessing.Semaphore.");
PyType_Slot bounded_slots[] = FASTMP_SEMLOCK_SLOTS(bounded_semaphore_init,
                                                   "Drop-in for multiprocessing.BoundedSemaphore.");
#undef FASTMP_SEMLOCK_SLOTS

constexpr unsigned semlock_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
PyType_Spec semlock_spec = {"fastmp.synchronize.SemLock", sizeof(semlock_object), 0, semlock_flags, semlock_slots};
PyType_Spec lock_spec = {"fastmp.synchronize.Lock", sizeof(semlock_object), 0, semlock_flags, lock_slots};
PyType_Spec rlock_spec = {"fastmp.synchronize.RLock", sizeof(semlock_object), 0, semlock_flags, rlock_slots};
PyType_Spec semaphore_spec = {"fastmp.synchronize.Semaphore", sizeof(semlock_object), 0, semlock_flags,
                              semaphore_slots};
PyType_Spec bounded_spec = {"fastmp.synchronize.BoundedSemaphore", sizeof(semlock_object), 0, semlock_flags,
                            bounded_slots};

// ---------------------------------------------------------------- Event

struct event_object {
    PyObject_HEAD
    shm_event* ev;
};

shm_event* event_of(PyObject* self) {
    shm_event* e = reinterpret_cast<event_object*>(self)->ev;
    if (!e) PyErr_SetString(PyExc_ValueError, "Event is not initialised");
    return e;
}

PyObject* event_is_set(PyObject* self, PyObject*) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    return PyBool_FromLong(e->is_set());
}

PyObject* event_set(PyObject* self, PyObject*) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    e->set();
    Py_RETURN_NONE;
}

PyObject* event_clear(PyObject* self, PyObject*) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    e->clear();
    Py_RETURN_NONE;
}

PyObject* event_wait(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    if (e->is_set()) Py_RETURN_TRUE;
    PyObject *block, *timeout;
    if (!parse_block_timeout("Event.wait", args, nargs, kwnames, &block, &timeout, false)) return nullptr;
    return guarded([&]() -> PyObject* {
        deadline dl = parse_timeout(timeout);
        bool ok = run_blocking(
            true, dl, [&] { return e->ticket(); }, [&] { return e->is_set(); },
            [&](std::uint32_t t, clock::duration slice) { return e->wait(t, slice); });
        return Py_NewRef(ok ? Py_True : Py_False);
    });
}

PyObject* event_sleepers(PyObject* self, PyObject*) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    return PyBool_FromLong(e->sleepers());
}

PyObject* event_handle(PyObject* self, PyObject*) {
    shm_event* e = event_of(self);
    if (!e) return nullptr;
    return handle_tuple(e->ref());
}

int event_init(PyObject* self, PyObject* args, PyObject* kwds) {
    if (parse_ctx_only("Event", args, kwds) < 0) return -1;
    auto* o = reinterpret_cast<event_object*>(self);
    if (o->ev) {
        PyErr_SetString(PyExc_RuntimeError, "Event is initialised already");
        return -1;
    }
    return guarded([&]() -> PyObject* {
               o->ev = new shm_event(shm_event::create());
               return Py_None;
           }) != nullptr
               ? 0
               : -1;
}

PyObject* event_attach(PyObject* cls, PyObject* args) {
    int fd = -1;
    unsigned long long arena_id = 0;
    unsigned int index = 0;
    if (!PyArg_ParseTuple(args, "iKI:_attach", &fd, &arena_id, &index)) return nullptr;
    auto* tp = reinterpret_cast<PyTypeObject*>(cls);
    PyObject* obj = tp->tp_alloc(tp, 0);
    if (!obj) return nullptr;
    if (!guarded([&]() -> PyObject* {
            reinterpret_cast<event_object*>(obj)->ev =
                new shm_event(shm_event::attach(sync_attach(fd, arena_id, index)));
            return Py_None;
        })) {
        Py_DECREF(obj);
        return nullptr;
    }
    return obj;
}

void event_dealloc(PyObject* self) {
    PyTypeObject* tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    auto* o = reinterpret_cast<event_object*>(self);
    delete o->ev;
    o->ev = nullptr;
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyMethodDef event_methods[] = {
    {"is_set", event_is_set, METH_NOARGS, "Whether the flag is set."},
    {"set", event_set, METH_NOARGS, "Sets the flag and wakes every waiter."},
    {"clear", event_clear, METH_NOARGS, "Clears the flag."},
    {"wait", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(event_wait)), METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None) -> bool: the flag's value on return."},
    {"_handle", event_handle, METH_NOARGS, "(arena fd, arena id, slot) for passing to a child."},
    {"_sleepers", event_sleepers, METH_NOARGS, "Whether the sleepers bit is set (someone may be asleep)."},
    {"_attach", event_attach, METH_VARARGS | METH_CLASS, "Rebuilds a handle received from another process."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot event_slots[] = {{Py_tp_init, reinterpret_cast<void*>(event_init)},
                             {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},
                             {Py_tp_dealloc, reinterpret_cast<void*>(event_dealloc)},
                             {Py_tp_traverse, reinterpret_cast<void*>(semlock_traverse)},
                             {Py_tp_methods, event_methods},
                             {Py_tp_doc, const_cast<char*>("Process-shared event flag (mechanism only).")},
                             {0, nullptr}};

PyType_Spec event_spec = {"fastmp.synchronize.Event", sizeof(event_object), 0,
                          Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, event_slots};

// ---------------------------------------------------------------- CondVar, BarrierState (not hot: pybind11)

py::tuple handle_of(const sync_ref& r) {
    return py::make_tuple(r.arena()->fd(), r.arena()->id(), r.index());
}

sync_ref attach_ref(int fd, std::uint64_t arena_id, std::uint32_t index) { return sync_attach(fd, arena_id, index); }

class py_condvar {
public:
    py_condvar(int fd, std::uint64_t arena_id, std::uint32_t index)
            : c_(arena_id != 0 ? shm_condition::attach(attach_ref(fd, arena_id, index)) : shm_condition::create()) {}

    py::tuple enlist() {
        std::uint32_t since = c_.ticket();
        std::int32_t index = c_.enlist();
        return py::make_tuple(index, since);
    }

    // Waits for a notification (GIL released); always leaves the table.
    bool wait(std::int32_t index, std::uint32_t since, py::handle timeout) {
        bool ok = false;
        try {
            deadline dl = parse_timeout(timeout);
            ok = run_blocking(
                true, dl, [&] { return c_.ticket(); }, [&] { return c_.notified(index, since); },
                [&](std::uint32_t t, clock::duration slice) { return c_.wait(index, t, slice); });
        } catch (...) {
            c_.finish(index, since);
            throw;
        }
        // A notification that raced with the timeout still counts.
        return c_.finish(index, since) || ok;
    }

    std::uint32_t notify(py::handle n) {
        if (!PyIndex_Check(n.ptr())) {
            PyErr_Format(PyExc_TypeError, "'%.200s' object cannot be interpreted as an integer", Py_TYPE(n.ptr())->tp_name);
            throw py::error_already_set();
        }
        py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(n.ptr()));
        if (!v) throw py::error_already_set();
        if (PyObject_RichCompareBool(v.ptr(), py::int_(0).ptr(), Py_LE) == 1) return 0;
        unsigned long long cnt = PyLong_AsUnsignedLongLongMask(v.ptr());
        if (PyObject_RichCompareBool(v.ptr(), py::int_(std::numeric_limits<std::uint32_t>::max()).ptr(), Py_GT) == 1)
            cnt = std::numeric_limits<std::uint32_t>::max();
        return c_.notify(cnt);
    }

    std::uint32_t waiting() const { return c_.waiting(); }
    py::tuple handle() const { return handle_of(c_.ref()); }

private:
    shm_condition c_;
};

class py_barrier_state {
public:
    py_barrier_state(std::uint32_t parties, int fd, std::uint64_t arena_id, std::uint32_t index)
        : b_(arena_id != 0 ? shm_barrier_state::attach(attach_ref(fd, arena_id, index))
                     : shm_barrier_state::create(parties)) {}
    shm_barrier_state b_;
};

}  // namespace

void register_sync(py::module_& m) {
    PyObject* semlock = PyType_FromSpec(&semlock_spec);
    if (!semlock) throw py::error_already_set();
    PyObject* max = PyLong_FromLong(sem_value_max);
    PyObject_SetAttrString(semlock, "SEM_VALUE_MAX", max);
    Py_DECREF(max);
    m.add_object("SemLock", py::reinterpret_borrow<py::object>(semlock));
    auto derive = [&](PyType_Spec* spec, PyObject* base, const char* name) {
        py::tuple bases = py::make_tuple(py::handle(base));  // 3.9 takes only a tuple here
        PyObject* t = PyType_FromSpecWithBases(spec, bases.ptr());
        if (!t) throw py::error_already_set();
        m.add_object(name, py::reinterpret_borrow<py::object>(t));
        return py::reinterpret_steal<py::object>(t);
    };
    derive(&lock_spec, semlock, "Lock");
    derive(&rlock_spec, semlock, "RLock");
    py::object semaphore = derive(&semaphore_spec, semlock, "Semaphore");
    derive(&bounded_spec, semaphore.ptr(), "BoundedSemaphore");
    Py_DECREF(semlock);

    PyObject* event = PyType_FromSpec(&event_spec);
    if (!event) throw py::error_already_set();
    m.add_object("Event", py::reinterpret_steal<py::object>(event));

    m.def("_sync_drop_all_refs", &sync_drop_all_refs,
          "Drops this process's references to shared sync objects (at exit of a child).");
    m.def(
        "_sync_test_stop_at",
        [](py::object point) { sync_test_stop_at(point.is_none() ? nullptr : point.cast<std::string>().c_str()); },
        py::arg("point"), "Test hook: stop this process (SIGSTOP) at a named point of the sync core (None: off).");
    m.def("_sync_test_pause_child_after_fork", &sync_test_pause_child_after_fork, py::arg("fd"),
          "Test hook: the next forked child waits in its fork handler for a byte on fd (-1: off).");

    py::class_<py_condvar>(m, "CondVar", "A Condition's shared waiter table (mechanism only).")
        .def(py::init<int, std::uint64_t, std::uint32_t>(), py::arg("fd") = -1, py::arg("arena_id") = 0,
             py::arg("index") = 0)
        .def("_enlist", &py_condvar::enlist, "Joins the waiters (call with the lock held); -> (index, since).")
        .def("_wait", &py_condvar::wait, py::arg("index"), py::arg("since"), py::arg("timeout") = py::none(),
             "Waits for a notification with the GIL released; -> bool.")
        .def("notify", &py_condvar::notify, py::arg("n") = 1)
        .def("notify_all", [](py_condvar& c) { return c.notify(py::int_(std::numeric_limits<std::uint32_t>::max())); })
        .def_property_readonly("_waiting", &py_condvar::waiting)
        .def("_handle", &py_condvar::handle);

    py::class_<py_barrier_state>(m, "BarrierState", "A Barrier's shared state (mechanism only).")
        .def(py::init<std::uint32_t, int, std::uint64_t, std::uint32_t>(), py::arg("parties"), py::arg("fd") = -1,
             py::arg("arena_id") = 0, py::arg("index") = 0)
        .def_property(
            "state", [](const py_barrier_state& s) { return s.b_.state(); },
            [](py_barrier_state& s, std::int32_t v) { s.b_.set_state(v); })
        .def_property_readonly("count", [](const py_barrier_state& s) { return s.b_.count(); })
        .def_property_readonly("parties", [](const py_barrier_state& s) { return s.b_.parties(); })
        .def("arrive", [](py_barrier_state& s) { s.b_.arrive(); })
        .def("leave", [](py_barrier_state& s) { s.b_.leave(); })
        .def("reap_dead", [](py_barrier_state& s, bool quick) { return s.b_.reap_dead(quick); }, py::arg("quick") = false)
        .def("_handle", [](const py_barrier_state& s) { return handle_of(s.b_.ref()); });
}

}  // namespace fastmp::py_bind
