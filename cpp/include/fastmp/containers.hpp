// The manager's shared containers on a shm_heap: a dict (hash map of pickled
// keys to pickled values, in insertion order) and a list (sequence of pickled
// items). The manager's Namespace is a dict with str keys; Value is a list of
// one item; Array is a list.
//
// Design notes (see shm_heap.hpp for creation, growth, locking and what
// happens when a holder dies: everything below runs under the heap's lock,
// inside a transaction, and stores to live words go through `set`).
// - A *blob* is one immutable block: a header, the key's canonical bytes,
//   the key as the caller encoded it (to give the original key back) and the
//   value's payload (tag + bytes, fastmp's queue encoding), 8-aligned.
//   Changing a value writes a new blob and swaps one word; the old blob is
//   freed at commit. A new value of at most 64 bytes and the old one's length
//   (a counter, a flag) is instead rewritten in place by logged word stores.
// - Key equality as Python's (keys are one when hash(a) == hash(b) and
//   a == b; the first key stored is kept, so a blob's key never changes): the
//   binding encodes a key into canonical bytes such that equal keys get equal
//   bytes, and hashes those bytes (never Python's hash(), which differs per
//   process for str). Numbers are encoded by exact value whatever their type
//   (int, bool, float, complex, numpy scalars, Decimal, Fraction, anything
//   with __index__ or a numbers.Number equal to its int(), float() or
//   as_integer_ratio()): an integral value is "an integer n", one a float
//   holds exactly is that float, another rational is "n/d" in lowest terms;
//   Python's numeric hash is a function of the same exact value. str is its
//   UTF-8, bytes its bytes, None one tag, tuples and frozensets the encodings
//   of their items. Keys of any other hashable type, and NaNs, are *opaque*:
//   their canonical bytes are the qualified name of the class their __hash__
//   comes from (so a subclass that inherits __hash__ and __eq__ meets its
//   base's keys), and the binding compares candidates with Python's == (the
//   `eq` callback), which unpickles the stored key: for opaque keys only,
//   user code (__setstate__, __eq__) runs under the lock. An opaque key equal
//   to a key of an unrelated class (a user class whose == accepts ints but
//   that has no __int__/__index__) is not found: that is the one departure.
//   Unhashable keys are refused by the binding (TypeError) before anything
//   is locked.
// - The dict is CPython's compact layout: an `entries` array of blob offsets
//   in insertion order (0 = deleted) and an open-addressing `index` of entry
//   numbers. Growth or too many deletions rebuild both arrays unreachable and
//   swap them in with a few logged stores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fastmp/queue.hpp>  // message_view: a payload given as tag + parts
#include <fastmp/shm_heap.hpp>
#include <memory>
#include <vector>

namespace fastmp {

enum : std::uint32_t { container_dict = 1, container_list = 2 };

struct blob_head {
    std::uint64_t total;  // bytes of the whole blob
    std::uint64_t hash;
    std::uint32_t canon_len, key_tag;
    std::uint32_t key_len, val_tag;
    std::uint64_t val_len;
};
static_assert(sizeof(blob_head) == 40);
static_assert(offsetof(blob_head, key_len) % 8 == 0);  // {key_len, val_tag} is one word

struct blob_ref {
    const blob_head* h;
    const std::byte* canon() const noexcept { return reinterpret_cast<const std::byte*>(h + 1); }
    const std::byte* key() const noexcept { return canon() + h->canon_len; }
    // The value starts 8-aligned, so a small value can be rewritten in place
    // by logged word stores.
    static std::uint64_t value_offset(std::uint64_t canon_len, std::uint64_t key_len) noexcept {
        return (sizeof(blob_head) + canon_len + key_len + 7) & ~std::uint64_t{7};
    }
    const std::byte* value() const noexcept {
        return reinterpret_cast<const std::byte*>(h) + value_offset(h->canon_len, h->key_len);
    }
};

struct key_view {
    std::uint64_t hash;
    const void* canon;
    std::uint32_t canon_len;
    bool opaque;       // equal canonical bytes do not mean equal keys: ask `eq`
    message_view key;  // the key as given, to rebuild it
};

std::unique_ptr<shm_heap::layout> make_layout(std::uint32_t kind);
inline shm_heap create_container(std::uint32_t kind) { return shm_heap::create(kind, make_layout(kind)); }
inline shm_heap attach_container(int fd) { return shm_heap::attach(fd, make_layout(shm_heap::kind_of(fd))); }

// Writes a new blob (unreachable until linked); key may be null (list items).
std::uint64_t make_blob(shm_heap& h, const key_view* key, const message_view& value);
// A new blob with the key part of `old` and a new value.
std::uint64_t rekey_blob(shm_heap& h, std::uint64_t old, const message_view& value);
// Rewrites the value of `blob` in place (logged), when the new one is small
// and as long as the old: no allocation. False when it does not apply.
bool overwrite_value(shm_heap& h, std::uint64_t blob, const message_view& value);
inline blob_ref blob_at(const shm_heap& h, std::uint64_t off) {
    return {reinterpret_cast<const blob_head*>(h.ptr(off))};
}

class shm_dict {
  public:
    enum { r_count, r_entries, r_used, r_cap, r_index, r_index_cap, r_fill };
    static constexpr std::uint64_t empty_slot = 0, dummy_slot = ~std::uint64_t{0};

    explicit shm_dict(shm_heap& h) : h_(h) {}

    struct hit {
        bool found;
        std::uint64_t entry;  // entry number when found
        std::uint64_t slot;   // index slot: the key's, or where to insert it
    };
    // `eq(blob_offset)` decides for opaque keys whose canonical bytes match;
    // it may throw (nothing has been changed yet).
    template <class Eq>
    hit find(const key_view& k, Eq&& eq) const;

    std::uint64_t size() const noexcept { return h_.root(r_count); }
    std::uint64_t used() const noexcept { return h_.root(r_used); }
    // Blob offset of entry i (0 = deleted).
    std::uint64_t entry(std::uint64_t i) const noexcept { return h_.word(h_.root(r_entries) + 8 * i); }

    // Sets k to value: replaces the value of the entry found, or appends.
    template <class Eq>
    void set(const key_view& k, const message_view& value, Eq&& eq) {
        hit r = find(k, eq);
        if (r.found) {
            if (!overwrite_value(h_, entry(r.entry), value)) replace(r.entry, rekey_blob(h_, entry(r.entry), value));
        } else {
            insert(k, make_blob(h_, &k, value), r);
        }
    }
    void replace(std::uint64_t i, std::uint64_t blob);
    void insert(const key_view& k, std::uint64_t blob, hit where);
    void erase(const hit& r);
    // Erases entry i (found by its own hash).
    void erase_entry(std::uint64_t i);

  private:
    void rebuild_tables(std::uint64_t entries_cap);
    shm_heap& h_;
};

class shm_list {
  public:
    enum { r_count, r_items, r_cap };
    explicit shm_list(shm_heap& h) : h_(h) {}

    std::uint64_t size() const noexcept { return h_.root(r_count); }
    std::uint64_t item(std::uint64_t i) const noexcept { return h_.word(h_.root(r_items) + 8 * i); }
    void append(std::uint64_t blob);
    void set_item(std::uint64_t i, std::uint64_t blob);
    // Replaces the whole sequence by `blobs` (existing blob offsets or new
    // ones); blobs no longer referenced are freed at commit.
    void set_items(const std::vector<std::uint64_t>& blobs);

  private:
    shm_heap& h_;
};

// --- inline: the dict probe (hot path) ---

template <class Eq>
shm_dict::hit shm_dict::find(const key_view& k, Eq&& eq) const {
    const std::uint64_t cap = h_.root(r_index_cap);
    hit r{false, 0, 0};
    if (cap == 0) return r;
    const std::uint64_t mask = cap - 1;
    const std::uint64_t index = h_.root(r_index);
    std::uint64_t perturb = k.hash, i = k.hash & mask;
    bool have_free = false;
    for (;;) {
        const std::uint64_t v = h_.word(index + 8 * i);
        if (v == empty_slot) {
            r.slot = have_free ? r.slot : i;
            return r;
        }
        if (v == dummy_slot) {
            if (!have_free) r.slot = i, have_free = true;
        } else {
            const std::uint64_t b = entry(v - 1);
            blob_ref br = blob_at(h_, b);
            if (br.h->hash == k.hash && br.h->canon_len == k.canon_len &&
                std::memcmp(br.canon(), k.canon, k.canon_len) == 0 && (!k.opaque || eq(b))) {
                r.found = true;
                r.entry = v - 1;
                r.slot = i;
                return r;
            }
        }
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
}

}  // namespace fastmp
