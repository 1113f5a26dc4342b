// fastmp._fastmp.ShmDict / ShmList: the manager's shared containers
// (cpp/include/fastmp/containers.hpp), behind fastmp.managers' proxies.
//
// Keys and values are encoded by the project's payload encoder (pickling.hpp);
// keys also get the canonical bytes described in containers.hpp (computed
// before the lock is taken: the number conversions below run user code).
// Values are copied out under the container's lock and unpickled after it is
// released. User code does run under the lock in two places: in `_rewrite`,
// the caller's own function; and when an *opaque* key (see containers.hpp)
// meets a stored key with the same canonical bytes, `py_eq` unpickles the
// stored key (its __reduce__ callable, __setstate__) and calls ==. That code
// must not use the same container (refused with ValueError, it would
// deadlock) and should not block on other processes; numbers, str, bytes,
// None and tuples/frozensets of them are never opaque, so plain keys never
// run user code under the lock.
#include <algorithm>
#include <cmath>
#include <fastmp/containers.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "pickling.hpp"

namespace fastmp::py_bind {

namespace {

// --- canonical key encoding (see containers.hpp) ---

void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

void canon_int_from_long(std::string& out, PyObject* obj) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (!overflow) {
        out.push_back('i');
        put_u64(out, static_cast<std::uint64_t>(v));
        return;
    }
    py::str digits = py::reinterpret_steal<py::str>(PyObject_Str(py::reinterpret_borrow<py::int_>(obj).ptr()));
    if (!digits) throw py::error_already_set();
    out.push_back('I');
    out += std::string(digits);
}

void canon_float(std::string& out, double d, bool& opaque) {
    if (std::isnan(d)) {  // never equal to anything, itself included (after a pickle round trip)
        opaque = true;
        out += "o:float-nan";
        return;
    }
    if (std::isfinite(d) && d == std::floor(d)) {
        if (d >= -9.2e18 && d <= 9.2e18) {
            out.push_back('i');
            put_u64(out, static_cast<std::uint64_t>(static_cast<long long>(d)));
        } else {
            py::object i = py::reinterpret_steal<py::object>(PyLong_FromDouble(d));
            if (!i) throw py::error_already_set();
            canon_int_from_long(out, i.ptr());
        }
        return;
    }
    out.push_back('f');
    std::uint64_t bits;
    std::memcpy(&bits, &d, sizeof d);
    put_u64(out, bits);
}

void canon_complex(std::string& out, Py_complex c, bool& opaque) {
    if (c.imag == 0.0) {
        canon_float(out, c.real, opaque);
        return;
    }
    out.push_back('c');
    std::uint64_t bits[2];
    std::memcpy(bits, &c, sizeof bits);
    put_u64(out, bits[0]);
    put_u64(out, bits[1]);
}

// numbers.Number / Complex / Real / Rational, imported when the module loads.
PyObject* abc_number = nullptr;
PyObject* abc_complex = nullptr;
PyObject* abc_real = nullptr;
PyObject* abc_rational = nullptr;

// `a == b` is true; an error raised by == counts as false (the key is then
// opaque, and the lookup's own == raises it again, as the stdlib would).
bool equal_to(PyObject* a, PyObject* b) {
    int r = PyObject_RichCompareBool(a, b, Py_EQ);
    if (r < 0) PyErr_Clear();
    return r == 1;
}

// Numbers of the types the builtin cases miss (numpy scalars, Decimal,
// Fraction, any numbers.Number, any object with __index__, __int__ or
// __float__: numpy.bool_), by exact value, as the builtins: an integral value
// is "an integer n", one a float holds exactly is that float, another
// rational one is "r" + n/d in lowest terms, a complex one with imag != 0 is
// the complex's bits. Python's numeric hash is the same function of the
// value, so keys equal here are the keys the stdlib holds equal. False when
// `o` is none of these (or NaN, infinite): the key is opaque.
bool canon_number(std::string& out, PyObject* o, bool& opaque) {
    if (PyIndex_Check(o)) {
        PyObject* i = PyNumber_Index(o);
        if (i) {
            py::object guard = py::reinterpret_steal<py::object>(i);
            canon_int_from_long(out, i);
            return true;
        }
        PyErr_Clear();  // numpy.bool_ has an __index__ that refuses
    }
    int is_number = PyObject_IsInstance(o, abc_number);
    if (is_number < 0) throw py::error_already_set();
    PyNumberMethods* nb = Py_TYPE(o)->tp_as_number;
    if (!is_number && !(nb && (nb->nb_int || nb->nb_float))) return false;
    int is_complex = PyObject_IsInstance(o, abc_complex);
    int is_real = is_complex > 0 ? PyObject_IsInstance(o, abc_real) : 0;
    if (is_complex < 0 || is_real < 0) throw py::error_already_set();
    if (is_complex && !is_real) {  // numpy.complex64
        Py_complex c = PyComplex_AsCComplex(o);
        if (c.real == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return false;
        }
        py::object as_complex = py::reinterpret_steal<py::object>(PyComplex_FromCComplex(c));
        if (!as_complex) throw py::error_already_set();
        if (!equal_to(o, as_complex.ptr())) return false;
        canon_complex(out, c, opaque);
        return true;
    }
    if (nb && nb->nb_float) {
        py::object f = py::reinterpret_steal<py::object>(PyNumber_Float(o));
        if (!f) {
            PyErr_Clear();
        } else if (equal_to(o, f.ptr())) {
            canon_float(out, PyFloat_AS_DOUBLE(f.ptr()), opaque);
            return true;
        }
    }
    if (nb && nb->nb_int) {
        py::object i = py::reinterpret_steal<py::object>(PyNumber_Long(o));
        if (!i) {
            PyErr_Clear();  // inf, NaN
        } else if (equal_to(o, i.ptr())) {
            canon_int_from_long(out, i.ptr());
            return true;
        }
    }
    // Neither an int nor a float: an exact ratio (Fraction(1, 3),
    // Decimal("0.1") == Fraction(1, 10)), or opaque.
    py::object n, d;
    try {
        int is_rational = PyObject_IsInstance(o, abc_rational);
        if (is_rational < 0) throw py::error_already_set();
        if (is_rational) {
            n = py::reinterpret_borrow<py::object>(o).attr("numerator");
            d = py::reinterpret_borrow<py::object>(o).attr("denominator");
        } else if (PyObject_HasAttrString(o, "as_integer_ratio")) {
            py::tuple r = py::reinterpret_borrow<py::object>(o).attr("as_integer_ratio")();
            if (r.size() != 2) return false;
            n = r[0], d = r[1];
        } else {
            return false;
        }
        if (!PyLong_Check(n.ptr()) || !PyLong_Check(d.ptr())) return false;
        py::object g = py::module_::import("math").attr("gcd")(n, d);
        n = n.attr("__floordiv__")(g), d = d.attr("__floordiv__")(g);
        if (PyObject_RichCompareBool(d.ptr(), py::int_(0).ptr(), Py_LT) == 1)
            n = n.attr("__neg__")(), d = d.attr("__neg__")();
        if (PyObject_RichCompareBool(d.ptr(), py::int_(0).ptr(), Py_EQ) == 1) return false;
    } catch (py::error_already_set&) {
        PyErr_Clear();
        return false;  // a NaN or an infinity (as_integer_ratio raises)
    }
    out.push_back('r');
    std::string num = py::str(n).cast<std::string>(), den = py::str(d).cast<std::string>();
    put_u64(out, num.size());
    out += num;
    out += '/';
    out += den;
    return true;
}

// The class an opaque key's __hash__ comes from: instances of a subclass that
// inherits __hash__ (and so, as a rule, __eq__) collide with the base's. For
// object's identity hash, the key's own class.
py::handle hash_owner(PyTypeObject* tp) {
    PyObject* mro = tp->tp_mro;
    if (!mro) return reinterpret_cast<PyObject*>(tp);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); ++i) {
        PyObject* base = PyTuple_GET_ITEM(mro, i);
        PyObject* dict = reinterpret_cast<PyTypeObject*>(base)->tp_dict;
        if (dict && PyDict_GetItemString(dict, "__hash__")) {
            if (base == reinterpret_cast<PyObject*>(&PyBaseObject_Type)) break;
            return base;
        }
    }
    return reinterpret_cast<PyObject*>(tp);
}

void canon(std::string& out, py::handle key, bool& opaque) {
    PyObject* o = key.ptr();
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char* s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) {
            PyErr_Clear();  // lone surrogates
            py::object b = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"));
            if (!b) throw py::error_already_set();
            out.push_back('S');
            out.append(PyBytes_AS_STRING(b.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(b.ptr())));
            return;
        }
        out.push_back('s');
        out.append(s, static_cast<std::size_t>(n));
    } else if (PyLong_Check(o)) {  // bool and int subclasses (IntEnum) compare as their value
        canon_int_from_long(out, o);
    } else if (PyFloat_Check(o)) {
        canon_float(out, PyFloat_AS_DOUBLE(o), opaque);
    } else if (PyBytes_Check(o)) {
        out.push_back('b');
        out.append(PyBytes_AS_STRING(o), static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
    } else if (o == Py_None) {
        out.push_back('n');
    } else if (PyComplex_Check(o)) {
        canon_complex(out, PyComplex_AsCComplex(o), opaque);
    } else if (PyTuple_Check(o)) {
        out.push_back('t');
        put_u64(out, static_cast<std::uint64_t>(PyTuple_GET_SIZE(o)));
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); ++i) {
            std::string item;
            canon(item, PyTuple_GET_ITEM(o, i), opaque);
            put_u64(out, item.size());
            out += item;
        }
    } else if (PyFrozenSet_Check(o)) {
        std::vector<std::string> items;
        py::iterator it = py::iter(key);
        for (py::handle x : it) {
            items.emplace_back();
            canon(items.back(), x, opaque);
        }
        std::sort(items.begin(), items.end());
        out.push_back('F');
        put_u64(out, items.size());
        for (auto& s : items) {
            put_u64(out, s.size());
            out += s;
        }
    } else if (!canon_number(out, o, opaque)) {
        // Compared with == among the keys of the class whose __hash__ they use
        // (their own when that is object's identity hash).
        opaque = true;
        py::handle tp = hash_owner(Py_TYPE(o));
        out += "o:";
        out += std::string(py::str(tp.attr("__module__")));
        out += ".";
        out += std::string(py::str(tp.attr("__qualname__")));
    }
}

struct key_enc {
    std::string canon;
    bool opaque = false;
    encoded orig;
    key_view view;
};

void encode_key(py::handle key, key_enc& k) {
    if (PyObject_Hash(key.ptr()) == -1) throw py::error_already_set();  // TypeError: unhashable type
    canon(k.canon, key, k.opaque);
    encode(key, k.orig);
    k.view = key_view{std::hash<std::string>{}(k.canon), k.canon.data(), static_cast<std::uint32_t>(k.canon.size()),
                      k.opaque, k.orig.view()};
}

// --- the container object ---

struct container {
    shm_heap h;
    explicit container(shm_heap&& heap) : h(std::move(heap)) {}
};
struct dict_container : container {
    using container::container;
};
struct list_container : container {
    using container::container;
};

// Takes the lock (waiting without the GIL) and refuses a closed container
// with the error a stdlib proxy raises once its manager is gone.
// The containers this thread is inside an operation of: an __eq__ or a
// `_rewrite` function that uses the same container again would deadlock.
thread_local std::vector<const shm_heap*> in_operation;

class locked {
  public:
    explicit locked(container& c) : h_(c.h) {
        if (h_.closed()) throw sys_error(EPIPE, "the manager has shut down");
        if (std::find(in_operation.begin(), in_operation.end(), &h_) != in_operation.end())
            throw py::value_error("a manager container was used from inside its own operation (would deadlock)");
        if (!h_.try_lock()) {
            py::gil_scoped_release nogil;
            h_.lock();
        }
        in_operation.push_back(&h_);
    }
    ~locked() {
        in_operation.pop_back();
        if (txn_) h_.abort();
        h_.unlock();
    }
    locked(const locked&) = delete;
    locked& operator=(const locked&) = delete;
    void begin() {
        h_.begin();
        txn_ = true;
    }
    void commit() {
        txn_ = false;
        h_.commit();
    }

  private:
    shm_heap& h_;
    bool txn_ = false;
};

// A value copied out under the lock; `get()` finishes it (unpickles) after.
struct raw_value {
    std::uint32_t tag = 0;
    py::object raw;
    py::object get() const { return finish_decode(tag, raw); }
};

raw_value read_value(const shm_heap& h, std::uint64_t blob) {
    blob_ref b = blob_at(h, blob);
    return {b.h->val_tag, decode_raw(b.h->val_tag, b.value(), b.h->val_len)};
}
raw_value read_key(const shm_heap& h, std::uint64_t blob) {
    blob_ref b = blob_at(h, blob);
    return {b.h->key_tag, decode_raw(b.h->key_tag, b.key(), b.h->key_len)};
}

// == for opaque keys with equal canonical bytes: unpickles the stored key and
// compares, under the lock (user code under the lock: see the top of file).
struct py_eq {
    const shm_heap& h;
    py::handle key;
    bool operator()(std::uint64_t blob) const {
        py::object stored = read_key(h, blob).get();
        int r = PyObject_RichCompareBool(stored.ptr(), key.ptr(), Py_EQ);
        if (r < 0) throw py::error_already_set();
        return r == 1;
    }
};

[[noreturn]] void key_error(py::handle key) {
    PyErr_SetObject(PyExc_KeyError, key.ptr());
    throw py::error_already_set();
}

// --- dict ---

py::object dict_getitem(container& c, py::handle key) {
    key_enc k;
    encode_key(key, k);
    raw_value v;
    {
        locked l(c);
        shm_dict d(c.h);
        auto r = d.find(k.view, py_eq{c.h, key});
        if (!r.found) key_error(key);
        v = read_value(c.h, d.entry(r.entry));
    }
    return v.get();
}

py::object dict_get(container& c, py::handle key, py::handle dflt) {
    key_enc k;
    encode_key(key, k);
    raw_value v;
    {
        locked l(c);
        shm_dict d(c.h);
        auto r = d.find(k.view, py_eq{c.h, key});
        if (!r.found) return py::reinterpret_borrow<py::object>(dflt);
        v = read_value(c.h, d.entry(r.entry));
    }
    return v.get();
}

void dict_setitem(container& c, py::handle key, py::handle value) {
    key_enc k;
    encode_key(key, k);
    encoded v;
    encode(value, v);
    locked l(c);
    l.begin();
    shm_dict(c.h).set(k.view, v.view(), py_eq{c.h, key});
    l.commit();
}

bool dict_contains(container& c, py::handle key) {
    key_enc k;
    encode_key(key, k);
    locked l(c);
    return shm_dict(c.h).find(k.view, py_eq{c.h, key}).found;
}

// pop / __delitem__: `dflt` null = raise KeyError when missing.
py::object dict_pop(container& c, py::handle key, py::handle dflt, bool want_value) {
    key_enc k;
    encode_key(key, k);
    raw_value v;
    {
        locked l(c);
        shm_dict d(c.h);
        auto r = d.find(k.view, py_eq{c.h, key});
        if (!r.found) {
            if (dflt) return py::reinterpret_borrow<py::object>(dflt);
            key_error(key);
        }
        if (want_value) v = read_value(c.h, d.entry(r.entry));
        l.begin();
        d.erase(r);
        l.commit();
    }
    return want_value ? v.get() : py::none();
}

py::object dict_setdefault(container& c, py::handle key, py::handle dflt) {
    key_enc k;
    encode_key(key, k);
    encoded v;
    encode(dflt, v);
    raw_value out;
    {
        locked l(c);
        shm_dict d(c.h);
        auto r = d.find(k.view, py_eq{c.h, key});
        if (!r.found) {
            l.begin();
            d.insert(k.view, make_blob(c.h, &k.view, v.view()), r);
            l.commit();
            return py::reinterpret_borrow<py::object>(dflt);
        }
        out = read_value(c.h, d.entry(r.entry));
    }
    return out.get();
}

py::tuple dict_popitem(container& c) {
    raw_value k, v;
    {
        locked l(c);
        shm_dict d(c.h);
        std::uint64_t i = d.used();
        while (i > 0 && d.entry(i - 1) == 0) --i;
        if (i == 0) {
            PyErr_SetString(PyExc_KeyError, "popitem(): dictionary is empty");
            throw py::error_already_set();
        }
        k = read_key(c.h, d.entry(i - 1));
        v = read_value(c.h, d.entry(i - 1));
        l.begin();
        d.erase_entry(i - 1);
        l.commit();
    }
    return py::make_tuple(k.get(), v.get());
}

// All pairs (what=0: keys, 1: values, 2: (key, value) tuples), in order.
py::list dict_snapshot(container& c, int what) {
    std::vector<std::pair<raw_value, raw_value>> raw;
    {
        locked l(c);
        shm_dict d(c.h);
        raw.reserve(d.size());
        for (std::uint64_t i = 0; i < d.used(); ++i) {
            std::uint64_t b = d.entry(i);
            if (!b) continue;
            raw.emplace_back(what != 1 ? read_key(c.h, b) : raw_value{}, what != 0 ? read_value(c.h, b) : raw_value{});
        }
    }
    py::list out(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (what == 0)
            out[i] = raw[i].first.get();
        else if (what == 1)
            out[i] = raw[i].second.get();
        else
            out[i] = py::make_tuple(raw[i].first.get(), raw[i].second.get());
    }
    return out;
}

// update from a list of (key, value) pairs: all of them, or none.
void dict_update(container& c, py::list pairs) {
    const std::size_t n = pairs.size();
    std::vector<key_enc> keys(n);
    std::vector<encoded> vals(n);
    std::vector<py::object> key_objs(n);
    for (std::size_t i = 0; i < n; ++i) {
        py::object pair = pairs[i];
        key_objs[i] = pair[py::int_(0)];
        encode_key(key_objs[i], keys[i]);
        encode(pair[py::int_(1)], vals[i]);
    }
    locked l(c);
    l.begin();
    shm_dict d(c.h);
    for (std::size_t i = 0; i < n; ++i) d.set(keys[i].view, vals[i].view(), py_eq{c.h, key_objs[i]});
    l.commit();
}

void clear(container& c) {
    locked l(c);
    c.h.clear_all();
}

std::size_t length(container& c) {
    locked l(c);
    return c.h.kind() == container_dict ? shm_dict(c.h).size() : shm_list(c.h).size();
}

// --- list ---

std::uint64_t list_index(container& c, py::handle index, const char* msg) {
    Py_ssize_t i = PyNumber_AsSsize_t(index.ptr(), PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) throw py::error_already_set();
    const auto n = static_cast<Py_ssize_t>(shm_list(c.h).size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw py::index_error(msg);
    return static_cast<std::uint64_t>(i);
}

py::object list_getitem(container& c, py::handle index) {
    raw_value v;
    {
        locked l(c);
        v = read_value(c.h, shm_list(c.h).item(list_index(c, index, "list index out of range")));
    }
    return v.get();
}

void list_setitem(container& c, py::handle index, py::handle value) {
    encoded v;
    encode(value, v);
    locked l(c);
    const std::uint64_t i = list_index(c, index, "list assignment index out of range");
    l.begin();
    shm_list lst(c.h);
    if (!overwrite_value(c.h, lst.item(i), v.view())) lst.set_item(i, make_blob(c.h, nullptr, v.view()));
    l.commit();
}

void list_append(container& c, py::handle value) {
    encoded v;
    encode(value, v);
    locked l(c);
    l.begin();
    shm_list(c.h).append(make_blob(c.h, nullptr, v.view()));
    l.commit();
}

void list_extend(container& c, py::list values) {
    std::vector<encoded> vals(values.size());
    for (std::size_t i = 0; i < vals.size(); ++i) encode(values[i], vals[i]);
    locked l(c);
    l.begin();
    shm_list lst(c.h);
    for (auto& v : vals) lst.append(make_blob(c.h, nullptr, v.view()));
    l.commit();
}

py::object list_pop(container& c, py::handle index) {
    raw_value v;
    {
        locked l(c);
        shm_list lst(c.h);
        if (lst.size() == 0) throw py::index_error("pop from empty list");
        const std::uint64_t i = index ? list_index(c, index, "pop index out of range") : lst.size() - 1;
        v = read_value(c.h, lst.item(i));
        l.begin();
        std::vector<std::uint64_t> rest;
        if (i + 1 == lst.size()) {
            const std::uint64_t b = lst.item(i);
            c.h.set_root(shm_list::r_count, i);
            c.h.free_later(b, blob_at(c.h, b).h->total);
        } else {
            rest.reserve(lst.size() - 1);
            for (std::uint64_t j = 0; j < lst.size(); ++j)
                if (j != i) rest.push_back(lst.item(j));
            lst.set_items(rest);
        }
        l.commit();
    }
    return v.get();
}

py::list list_snapshot(container& c) {
    std::vector<raw_value> raw;
    {
        locked l(c);
        shm_list lst(c.h);
        raw.reserve(lst.size());
        for (std::uint64_t i = 0; i < lst.size(); ++i) raw.push_back(read_value(c.h, lst.item(i)));
    }
    py::list out(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) out[i] = raw[i].get();
    return out;
}

// The general list operation: fn(items, load, store) gets the item handles,
// returns the new sequence of handles (or None: unchanged). load(handle) is
// the value, store(obj) a handle for a new item. All under the lock, in one
// transaction: it happens wholly or not at all.
py::object list_rewrite(container& c, py::function fn) {
    locked l(c);
    l.begin();
    shm_list lst(c.h);
    py::list items(lst.size());
    for (std::uint64_t i = 0; i < lst.size(); ++i) items[i] = py::int_(lst.item(i));
    shm_heap& h = c.h;
    py::cpp_function load([&h](std::uint64_t b) { return read_value(h, b).get(); });
    py::cpp_function store([&h](py::handle obj) {
        encoded v;
        encode(obj, v);
        return make_blob(h, nullptr, v.view());
    });
    py::object result = fn(items, load, store);
    py::object out = py::none();
    if (!result.is_none()) {
        py::tuple t = result.cast<py::tuple>();
        if (!t[0].is_none()) {
            std::vector<std::uint64_t> blobs;
            for (py::handle b : t[0]) blobs.push_back(b.cast<std::uint64_t>());
            lst.set_items(blobs);
        }
        out = t[1];
    }
    l.commit();
    return out;
}

void common_methods(py::class_<container>& cls) {
    cls.def("fileno", [](container& c) { return c.h.fd(); })
        .def("__len__", &length)
        .def("clear", &clear)
        .def("_close", [](container& c) { c.h.set_closed(); })
        .def_property_readonly("closed", [](container& c) { return c.h.closed(); })
        .def("_pause_at", [](container& c, std::uint64_t n) { c.h.set_pause_at(n); })
        .def_property_readonly("_recoveries", [](container& c) { return c.h.recoveries(); })
        .def_property_readonly("_memory_used", [](container& c) { return c.h.memory_used(); })
        .def_property_readonly("_region_size", [](container& c) {
            locked l(c);
            return c.h.region_size();
        });
}

}  // namespace

void register_manager(py::module_& m) {
    py::module_ numbers = py::module_::import("numbers");  // kept for the process's life
    abc_number = py::object(numbers.attr("Number")).release().ptr();
    abc_complex = py::object(numbers.attr("Complex")).release().ptr();
    abc_real = py::object(numbers.attr("Real")).release().ptr();
    abc_rational = py::object(numbers.attr("Rational")).release().ptr();
    py::class_<container> base(m, "_ShmContainer");
    common_methods(base);
    py::class_<dict_container, container> dict_cls(m, "ShmDict");
    dict_cls.def(py::init([] { return dict_container(create_container(container_dict)); }))
        .def_static("_attach",
                    [](int fd) {
                        if (shm_heap::kind_of(fd) != container_dict) throw py::type_error("not a shared dict");
                        return dict_container(attach_container(fd));
                    })
        .def("__getitem__", &dict_getitem)
        .def("__setitem__", &dict_setitem)
        .def("__delitem__", [](container& c, py::handle k) { dict_pop(c, k, py::handle(), false); })
        .def("__contains__", &dict_contains)
        .def("get", &dict_get, py::arg("key"), py::arg("default") = py::none())
        .def("pop", [](container& c, py::handle k) { return dict_pop(c, k, py::handle(), true); })
        .def("pop", [](container& c, py::handle k, py::handle d) { return dict_pop(c, k, d, true); })
        .def("setdefault", &dict_setdefault, py::arg("key"), py::arg("default") = py::none())
        .def("popitem", &dict_popitem)
        .def("keys", [](container& c) { return dict_snapshot(c, 0); })
        .def("values", [](container& c) { return dict_snapshot(c, 1); })
        .def("items", [](container& c) { return dict_snapshot(c, 2); })
        .def("_update", &dict_update);

    py::class_<list_container, container> list_cls(m, "ShmList");
    list_cls.def(py::init([] { return list_container(create_container(container_list)); }))
        .def_static("_attach",
                    [](int fd) {
                        if (shm_heap::kind_of(fd) != container_list) throw py::type_error("not a shared list");
                        return list_container(attach_container(fd));
                    })
        .def("__getitem__", &list_getitem)
        .def("__setitem__", &list_setitem)
        .def("append", &list_append)
        .def("_extend", &list_extend)
        .def("pop", [](container& c) { return list_pop(c, py::handle()); })
        .def("pop", [](container& c, py::handle i) { return list_pop(c, i); })
        .def("_items", &list_snapshot)
        .def("_rewrite", &list_rewrite);
}

}  // namespace fastmp::py_bind
