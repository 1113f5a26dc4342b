#include <algorithm>
#include <cstddef>
#include <fastmp/containers.hpp>
#include <unordered_set>

namespace fastmp {

namespace {

std::uint64_t round16(std::uint64_t n) { return (n + 15) & ~std::uint64_t{15}; }

void gather(std::byte* to, const message_view& m) {
    std::memcpy(to, m.data, m.size);
    to += m.size;
    for (std::size_t i = 0; i < m.nmore; ++i) {
        std::memcpy(to, m.more[i].data, m.more[i].size);
        to += m.more[i].size;
    }
}

std::uint64_t index_cap_for(std::uint64_t entries_cap) {
    std::uint64_t c = 8;
    while (c < entries_cap + entries_cap / 2 + 1) c <<= 1;
    return c;
}

// Copies a blob into the heap being built; returns its new offset.
std::uint64_t copy_blob(shm_heap& h, std::uint64_t from) {
    const std::uint64_t total = blob_at(h, from).h->total;
    std::uint64_t to = h.alloc(total);
    std::memcpy(h.ptr(to), h.ptr(from), total);
    return to;
}

// Index slot for a hash in a table with no deleted slots being filled.
void index_put(shm_heap& h, std::uint64_t index, std::uint64_t cap, std::uint64_t hash, std::uint64_t value) {
    const std::uint64_t mask = cap - 1;
    std::uint64_t perturb = hash, i = hash & mask;
    while (h.word(index + 8 * i) != shm_dict::empty_slot) {
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
    h.word(index + 8 * i) = value;
}

struct dict_layout final : shm_heap::layout {
    std::uint64_t live_bytes(shm_heap& h, const shm_view& v) override {
        std::uint64_t n = v.root[shm_dict::r_count], sum = 0;
        for (std::uint64_t i = 0; i < v.root[shm_dict::r_used]; ++i) {
            std::uint64_t b = h.word(v.root[shm_dict::r_entries] + 8 * i);
            if (b) sum += round16(blob_at(h, b).h->total) + 64;
        }
        return sum + 8 * (2 * n + 8) + 8 * index_cap_for(2 * n + 8) + 4096;
    }
    void copy_live(shm_heap& h, const shm_view& from, shm_view& to, bool empty) override {
        std::fill(std::begin(to.root), std::end(to.root), 0);
        const std::uint64_t n = empty ? 0 : from.root[shm_dict::r_count];
        const std::uint64_t cap = std::max<std::uint64_t>(8, n + n / 2);
        const std::uint64_t icap = index_cap_for(cap);
        std::uint64_t entries = h.alloc(8 * cap);
        std::uint64_t index = h.alloc(8 * icap);
        std::memset(h.ptr(index), 0, 8 * icap);
        std::uint64_t k = 0;
        for (std::uint64_t i = 0; i < (empty ? 0 : from.root[shm_dict::r_used]); ++i) {
            std::uint64_t b = h.word(from.root[shm_dict::r_entries] + 8 * i);
            if (!b) continue;
            std::uint64_t nb = copy_blob(h, b);
            h.word(entries + 8 * k) = nb;
            index_put(h, index, icap, blob_at(h, nb).h->hash, k + 1);
            ++k;
        }
        to.root[shm_dict::r_count] = k;
        to.root[shm_dict::r_entries] = entries;
        to.root[shm_dict::r_used] = k;
        to.root[shm_dict::r_cap] = cap;
        to.root[shm_dict::r_index] = index;
        to.root[shm_dict::r_index_cap] = icap;
        to.root[shm_dict::r_fill] = k;
    }
};

struct list_layout final : shm_heap::layout {
    std::uint64_t live_bytes(shm_heap& h, const shm_view& v) override {
        std::uint64_t n = v.root[shm_list::r_count], sum = 0;
        for (std::uint64_t i = 0; i < n; ++i)
            sum += round16(blob_at(h, h.word(v.root[shm_list::r_items] + 8 * i)).h->total) + 64;
        return sum + 8 * (2 * n + 8) + 4096;
    }
    void copy_live(shm_heap& h, const shm_view& from, shm_view& to, bool empty) override {
        std::fill(std::begin(to.root), std::end(to.root), 0);
        const std::uint64_t n = empty ? 0 : from.root[shm_list::r_count];
        const std::uint64_t cap = std::max<std::uint64_t>(8, n + n / 4);
        std::uint64_t items = h.alloc(8 * cap);
        for (std::uint64_t i = 0; i < n; ++i)
            h.word(items + 8 * i) = copy_blob(h, h.word(from.root[shm_list::r_items] + 8 * i));
        to.root[shm_list::r_count] = n;
        to.root[shm_list::r_items] = items;
        to.root[shm_list::r_cap] = cap;
    }
};

}  // namespace

std::unique_ptr<shm_heap::layout> make_layout(std::uint32_t kind) {
    if (kind == container_dict) return std::make_unique<dict_layout>();
    if (kind == container_list) return std::make_unique<list_layout>();
    throw sys_error(EINVAL, "unknown fastmp container kind");
}

std::uint64_t make_blob(shm_heap& h, const key_view* key, const message_view& value) {
    const std::uint64_t klen = key ? key->key.total() : 0, clen = key ? key->canon_len : 0;
    const std::uint64_t vlen = value.total();
    const std::uint64_t voff = blob_ref::value_offset(clen, klen);
    const std::uint64_t total = voff + vlen;
    std::uint64_t off = h.alloc(total);
    auto* bh = reinterpret_cast<blob_head*>(h.ptr(off));
    *bh = blob_head{total,
                    key ? key->hash : 0,
                    static_cast<std::uint32_t>(clen),
                    key ? key->key.tag : 0,
                    static_cast<std::uint32_t>(klen),
                    value.tag,
                    vlen};
    std::byte* p = reinterpret_cast<std::byte*>(bh + 1);
    if (key) {
        std::memcpy(p, key->canon, clen);
        gather(p + clen, key->key);
    }
    gather(reinterpret_cast<std::byte*>(bh) + voff, value);
    return off;
}

std::uint64_t rekey_blob(shm_heap& h, std::uint64_t old, const message_view& value) {
    const std::uint64_t vlen = value.total();
    std::uint64_t keypart, voff;
    {
        const blob_head* oh = blob_at(h, old).h;
        keypart = oh->canon_len + oh->key_len;
        voff = blob_ref::value_offset(oh->canon_len, oh->key_len);
    }
    const std::uint64_t total = voff + vlen;
    std::uint64_t off = h.alloc(total);  // may remap: re-read `old` after
    auto* bh = reinterpret_cast<blob_head*>(h.ptr(off));
    const auto* oh = reinterpret_cast<const blob_head*>(h.ptr(old));
    *bh = *oh;
    bh->total = total;
    bh->val_tag = value.tag;
    bh->val_len = vlen;
    std::memcpy(bh + 1, oh + 1, keypart);
    gather(reinterpret_cast<std::byte*>(bh) + voff, value);
    return off;
}

bool overwrite_value(shm_heap& h, std::uint64_t blob, const message_view& value) {
    const blob_head* bh = blob_at(h, blob).h;
    if (value.nmore != 0 || value.size > 64 || bh->val_len != value.size) return false;
    const std::uint64_t at = blob + blob_ref::value_offset(bh->canon_len, bh->key_len);
    const auto* src = static_cast<const unsigned char*>(value.data);
    for (std::uint64_t i = 0; i * 8 < value.size; ++i) {
        // The blob's block extends to a multiple of 16: the last word is ours whole.
        std::uint64_t w = 0;
        std::memcpy(&w, src + 8 * i, std::min<std::uint64_t>(8, value.size - 8 * i));
        if (h.word(at + 8 * i) != w) h.set(at + 8 * i, w);
    }
    if (bh->val_tag != value.tag) {
        // {key_len, val_tag} share one word of the header.
        const std::uint64_t off = blob + offsetof(blob_head, key_len);
        blob_head copy = *bh;
        copy.val_tag = value.tag;
        std::uint64_t w;
        std::memcpy(&w, reinterpret_cast<const std::byte*>(&copy) + offsetof(blob_head, key_len), sizeof w);
        h.set(off, w);
    }
    return true;
}

// --- dict ---

void shm_dict::replace(std::uint64_t i, std::uint64_t blob) {
    const std::uint64_t at = h_.root(r_entries) + 8 * i;
    const std::uint64_t old = h_.word(at);
    h_.set(at, blob);
    h_.free_later(old, blob_at(h_, old).h->total);
}

void shm_dict::rebuild_tables(std::uint64_t cap) {
    const std::uint64_t icap = index_cap_for(cap);
    std::uint64_t entries = h_.alloc(8 * cap);
    std::uint64_t index = h_.alloc(8 * icap);
    std::memset(h_.ptr(index), 0, 8 * icap);
    std::uint64_t k = 0;
    for (std::uint64_t i = 0; i < used(); ++i) {
        std::uint64_t b = entry(i);
        if (!b) continue;
        h_.word(entries + 8 * k) = b;
        index_put(h_, index, icap, blob_at(h_, b).h->hash, k + 1);
        ++k;
    }
    if (h_.root(r_entries)) h_.free_later(h_.root(r_entries), 8 * h_.root(r_cap));
    if (h_.root(r_index)) h_.free_later(h_.root(r_index), 8 * h_.root(r_index_cap));
    h_.set_root(r_entries, entries);
    h_.set_root(r_cap, cap);
    h_.set_root(r_used, k);
    h_.set_root(r_index, index);
    h_.set_root(r_index_cap, icap);
    h_.set_root(r_fill, k);
}

void shm_dict::insert(const key_view& k, std::uint64_t blob, hit where) {
    const std::uint64_t icap = h_.root(r_index_cap);
    const bool reuse = icap && h_.word(h_.root(r_index) + 8 * where.slot) == dummy_slot;
    if (used() == h_.root(r_cap) || (!reuse && (h_.root(r_fill) + 1) * 3 >= icap * 2)) {
        rebuild_tables(std::max<std::uint64_t>(8, (size() + 1) * 2));
        where = find(k, [](std::uint64_t) { return false; });  // a fresh slot (the key is absent)
    }
    const std::uint64_t i = used();
    h_.set(h_.root(r_entries) + 8 * i, blob);
    h_.set_root(r_used, i + 1);
    const std::uint64_t slot = h_.root(r_index) + 8 * where.slot;
    if (h_.word(slot) == empty_slot) h_.set_root(r_fill, h_.root(r_fill) + 1);
    h_.set(slot, i + 1);
    h_.set_root(r_count, size() + 1);
}

void shm_dict::erase(const hit& r) {
    const std::uint64_t b = entry(r.entry);
    h_.set(h_.root(r_index) + 8 * r.slot, dummy_slot);
    h_.set(h_.root(r_entries) + 8 * r.entry, 0);
    h_.set_root(r_count, size() - 1);
    h_.free_later(b, blob_at(h_, b).h->total);
    if (size() == 0) rebuild_tables(8);  // forget the dummies (cheap when empty)
}

void shm_dict::erase_entry(std::uint64_t e) {
    const std::uint64_t hash = blob_at(h_, entry(e)).h->hash;
    const std::uint64_t mask = h_.root(r_index_cap) - 1, index = h_.root(r_index);
    std::uint64_t perturb = hash, i = hash & mask;
    while (h_.word(index + 8 * i) != e + 1) {
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
    erase(hit{true, e, i});
}

// --- list ---

void shm_list::append(std::uint64_t blob) {
    const std::uint64_t n = size();
    if (n == h_.root(r_cap)) {
        const std::uint64_t cap = std::max<std::uint64_t>(8, n * 2);
        std::uint64_t items = h_.alloc(8 * cap);
        if (n) std::memcpy(h_.ptr(items), h_.ptr(h_.root(r_items)), 8 * n);
        if (h_.root(r_items)) h_.free_later(h_.root(r_items), 8 * h_.root(r_cap));
        h_.set_root(r_items, items);
        h_.set_root(r_cap, cap);
    }
    // The slot past the end is not live: no need to log it.
    h_.word(h_.root(r_items) + 8 * n) = blob;
    h_.set_root(r_count, n + 1);
}

void shm_list::set_item(std::uint64_t i, std::uint64_t blob) {
    const std::uint64_t at = h_.root(r_items) + 8 * i;
    const std::uint64_t old = h_.word(at);
    h_.set(at, blob);
    h_.free_later(old, blob_at(h_, old).h->total);
}

void shm_list::set_items(const std::vector<std::uint64_t>& given) {
    const std::uint64_t n = size();
    // Every position owns its blob: an offset given twice is copied.
    std::vector<std::uint64_t> blobs;
    blobs.reserve(given.size());
    std::unordered_set<std::uint64_t> keep;
    for (std::uint64_t b : given) blobs.push_back(keep.insert(b).second ? b : copy_blob(h_, b));
    for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t b = item(i);
        if (!keep.count(b)) {
            h_.free_later(b, blob_at(h_, b).h->total);
            keep.insert(b);  // an item listed twice is freed once
        }
    }
    const std::uint64_t cap = std::max<std::uint64_t>(8, blobs.size() + blobs.size() / 4);
    std::uint64_t items = h_.alloc(8 * cap);
    if (!blobs.empty()) std::memcpy(h_.ptr(items), blobs.data(), 8 * blobs.size());
    if (h_.root(r_items)) h_.free_later(h_.root(r_items), 8 * h_.root(r_cap));
    h_.set_root(r_items, items);
    h_.set_root(r_cap, cap);
    h_.set_root(r_count, blobs.size());
}

}  // namespace fastmp
