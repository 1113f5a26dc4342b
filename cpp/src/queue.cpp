#include <fastmp/queue.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <ctime>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace fastmp {

using detail::copy_slot;
using detail::queue_header;
using detail::queue_state;
using detail::record_header;

namespace {
constexpr std::uint64_t initial_cap = std::uint64_t{1} << 20;
// A drained ring larger than this shrinks back to initial_cap and returns its pages.
constexpr std::uint64_t shrink_above = std::uint64_t{32} << 20;
constexpr std::uint64_t unbounded = ~std::uint64_t{0};
// Rings at least this large are grown only when the caller allows it (see
// try_reserve's may_grow); smaller ones grow freely.
constexpr std::uint64_t soft_grow_cap = std::uint64_t{64} << 20;
// Consumers spin this many rounds before sleeping: a producer on the other
// core usually delivers within a few microseconds, and a futex sleep + wake
// costs more than that.
constexpr int consumer_spins = 2000;
// A sleeper sleeps at most this long before re-registering (see fresh_until).
constexpr auto max_sleep = std::chrono::milliseconds(200);
constexpr std::uint64_t fresh_margin_ns = 20'000'000;
// Batches up to this many payload bytes are copied under the lock (see the
// design notes in queue.hpp).
constexpr std::size_t inline_copy_max = 4096;
// Copies at least this large prefault their pages first (see prefault).
constexpr std::size_t prefault_min = 256 * 1024;

std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }
std::uint64_t record_bytes(std::uint64_t payload) { return align8(sizeof(record_header) + payload); }
std::uint64_t pow2_at_least(std::uint64_t n) {
    std::uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}
std::size_t header_bytes() { return page_size(); }
// Distance from a to b going forward around a ring of `cap` (positions in [0, cap]).
std::uint64_t ring_dist(std::uint64_t a, std::uint64_t b, std::uint64_t cap) {
    if (a == cap) a = 0;
    if (b == cap) b = 0;
    return b >= a ? b - a : cap - a + b;
}
std::uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}
}  // namespace

static_assert(sizeof(queue_header) <= 4096, "queue header must fit in one page");

shm_queue shm_queue::create(std::int64_t maxsize, bool with_doorbell) {
    shm_queue q;
    q.fd_ = make_memfd("fastmp-queue", header_bytes() + initial_cap);
    if (with_doorbell) {
        q.doorbell_ = unique_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (q.doorbell_.get() < 0) throw_errno("eventfd for queue");
    }
    q.header_ = mapping(q.fd_.get(), 0, header_bytes());
    q.ring_ = mapping(q.fd_.get(), header_bytes(), initial_cap);
    queue_header* h = q.hdr();  // zero-filled by the kernel
    h->mutex.init();
    for (auto& g : h->guards) g.holder.init();
    h->magic = magic;
    h->layout_version = layout_version;
    h->header_size = sizeof(queue_header);
    h->maxsize = maxsize > 0 ? static_cast<std::uint64_t>(maxsize) : unbounded;
    h->state.cap = initial_cap;
    return q;
}

shm_queue shm_queue::attach(int fd, int doorbell_fd) {
    shm_queue q;
    q.doorbell_ = unique_fd(doorbell_fd);
    q.fd_ = adopt_memfd(fd);
    if (doorbell_fd >= 0) {
        ::fcntl(doorbell_fd, F_SETFD, FD_CLOEXEC);
        ::fcntl(doorbell_fd, F_SETFL, ::fcntl(doorbell_fd, F_GETFL) | O_NONBLOCK);
    }
    std::size_t size = file_size(q.fd_.get());
    if (size < header_bytes() + initial_cap) throw sys_error(EINVAL, "shared queue segment is too small");
    q.header_ = mapping(q.fd_.get(), 0, header_bytes());
    const queue_header* h = q.hdr();
    if (h->magic != magic || h->layout_version != layout_version || h->header_size != sizeof(queue_header))
        throw sys_error(EINVAL, "file descriptor is not a fastmp queue of this version");
    q.ring_ = mapping(q.fd_.get(), header_bytes(), size - header_bytes());
    return q;
}

std::uint64_t shm_queue::maxsize() const noexcept {
    return hdr()->maxsize == unbounded ? 0 : hdr()->maxsize;
}

std::uint64_t shm_queue::size_approx() const noexcept {
    return atomic(hdr()->count_hint).load(std::memory_order_acquire);
}

status shm_queue::lock(const deadline& dl) { return after_acquire(hdr()->mutex.lock(dl)); }

status shm_queue::after_acquire(status st) {
    queue_header* h = hdr();
    if (st == status::timed_out) return st;
    if (st == status::owner_died) {
        // The previous holder died inside a critical section: finish its
        // journaled update if it got that far, otherwise the old state stands.
        // journal_valid holds how many bytes of `pending` were written.
        if (std::uint32_t n = atomic(h->journal_valid).load(std::memory_order_acquire))
            std::memcpy(&h->state, &h->pending, std::min<std::size_t>(n, sizeof(queue_state)));
        atomic(h->journal_valid).store(0, std::memory_order_release);
        atomic(h->count_hint).store(h->state.count, std::memory_order_release);
        atomic(h->writers_hint).store(h->state.writers, std::memory_order_release);
        // Whoever it was about to wake may be sleeping still.
        notify(h->not_empty, 0);
        notify(h->not_full, 0);
        notify(h->slot_freed, 0);
        if (h->state.unfinished == 0) notify(h->all_done, 0);
        if (atomic(h->doorbell_on).load()) sync_doorbell(h->state.count);
    }
    try {
        map_ring(h->state.cap);
    } catch (...) {
        unlock();
        throw;
    }
    return status::ok;
}

void shm_queue::unlock() noexcept {
    hdr()->mutex.unlock();
    publish_left_over();
}

void shm_queue::publish_left_over() noexcept {
    // Called just after releasing the lock. A put that finished its copy while
    // we held it left its publication to us (see publish): do it now, unless
    // someone else holds the lock (then they will).
    queue_header* h = hdr();
    std::atomic_thread_fence(std::memory_order_seq_cst);
    while (atomic(h->publish_pending).load(std::memory_order_relaxed)) {
        try {
            if (after_acquire(h->mutex.try_lock()) != status::ok) return;
        } catch (...) {
            return;  // could not map the ring: leave it to the next holder
        }
        atomic(h->publish_pending).store(0, std::memory_order_seq_cst);
        publish_locked();
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
}

void shm_queue::publish_locked() noexcept {
    // Under the lock, which it releases (without looking at publish_pending).
    queue_header* h = hdr();
    queue_state s;
    load_state(s);
    std::uint64_t before = s.count;
    collect(s);
    commit(s);
    after_change(before, s);
    h->mutex.unlock();
    if (s.count > before) notify(h->not_empty, static_cast<int>(s.count - before));
}

void shm_queue::map_ring(std::uint64_t cap) {
    if (local_inflight_->load(std::memory_order_acquire) == 0) retired_.clear();
    if (ring_.size() >= cap) return;
    std::size_t old = ring_.size();
    if (local_inflight_->load(std::memory_order_acquire) == 0) {
        ring_.resize(cap);
    } else {
        // Other threads of this process copy through the current view: keep it.
        mapping bigger(fd_.get(), header_bytes(), cap);
        retired_.push_back(std::move(ring_));
        ring_ = std::move(bigger);
        old = 0;
    }
    (void)old;  // pages are mapped by whoever copies them, outside the lock (prefault)
}

void shm_queue::sync_doorbell(std::uint64_t count) noexcept {
    // Called under the lock. An eventfd counter > 0 means readable.
    if (doorbell_.get() < 0) return;
    if (count > 0) {
        ::eventfd_write(doorbell_.get(), 1);
    } else {
        eventfd_t drained;
        ::eventfd_read(doorbell_.get(), &drained);  // EAGAIN when already 0: fine
    }
}

void shm_queue::after_change(std::uint64_t count_before, const queue_state& s) noexcept {
    if ((count_before == 0) != (s.count == 0) && atomic(hdr()->doorbell_on).load()) sync_doorbell(s.count);
}

status shm_queue::enable_doorbell(const deadline& lock_dl) {
    if (doorbell_.get() < 0) throw sys_error(EBADF, "this queue has no doorbell");
    queue_header* h = hdr();
    if (lock(lock_dl) != status::ok) return status::timed_out;
    if (!atomic(h->doorbell_on).load()) {
        atomic(h->doorbell_on).store(1);
        sync_doorbell(h->state.count);
    }
    unlock();
    return status::ok;
}

// While no copy slot is in use (before and after), the slot table is all
// free and needs no copying: the common small put/get then moves ~80 bytes
// of state instead of ~340.
static constexpr std::size_t core_bytes = offsetof(queue_state, slots);

void shm_queue::load_state(queue_state& s) const noexcept {
    const queue_state& cur = hdr()->state;
    std::memcpy(&s, &cur, core_bytes);
    if (cur.writers + cur.readers > 0)
        std::memcpy(&s.slots, &cur.slots, sizeof s.slots);
    else
        for (copy_slot& c : s.slots) c.kind = detail::slot_free;
}

void shm_queue::commit(const queue_state& s) noexcept {
    queue_header* h = hdr();
    const std::size_t n =
        s.writers + s.readers == 0 && h->state.writers + h->state.readers == 0 ? core_bytes : sizeof(queue_state);
    std::memcpy(&h->pending, &s, n);
    atomic(h->journal_valid).store(static_cast<std::uint32_t>(n), std::memory_order_release);
    // From here on a death is repaired from the journal; publish the hints
    // now, so that consumers trusting them take the lock (and do that repair)
    // instead of seeing a stale "empty" forever.
    atomic(h->count_hint).store(s.count, std::memory_order_release);
    atomic(h->writers_hint).store(s.writers, std::memory_order_release);
    std::memcpy(&h->state, &s, n);
    atomic(h->journal_valid).store(0, std::memory_order_release);
}

std::uint64_t shm_queue::capacity_bytes() {
    lock(deadline());
    queue_state s;
    load_state(s);  // after collecting: a drained ring shrinks then
    collect(s);
    commit(s);
    unlock();
    return s.cap;
}

status shm_queue::unfinished_tasks(std::uint64_t& n, const deadline& lock_dl) {
    if (lock(lock_dl) != status::ok) return status::timed_out;
    queue_state s;
    load_state(s);  // finished puts count once collected
    std::uint64_t before = s.count;
    collect(s);
    commit(s);
    after_change(before, s);
    n = s.unfinished;
    unlock();
    if (s.count > before) notify(hdr()->not_empty, 0);
    return status::ok;
}

// --- copy slots -----------------------------------------------------------

int shm_queue::take_slot(queue_state& s, std::uint32_t kind, std::uint64_t begin) noexcept {
    queue_header* h = hdr();
    for (int i = 0; i < static_cast<int>(detail::copy_slots); ++i) {
        if (s.slots[i].kind != detail::slot_free) continue;
        detail::slot_guard& g = h->guards[i];
        if (g.holder.try_lock() == status::timed_out) continue;  // a finishing copier: not yet
        atomic(g.done).store(0, std::memory_order_relaxed);
        s.slots[i] = copy_slot{begin, begin, s.next_order++, kind, 0};
        (kind == detail::slot_writing ? s.writers : s.readers) += 1;
        return i;
    }
    return -1;
}

void shm_queue::drop_slot(queue_state& s, int i) noexcept {
    (s.slots[i].kind == detail::slot_writing ? s.writers : s.readers) -= 1;
    s.slots[i].kind = detail::slot_free;
}

std::uint64_t shm_queue::skip_to_record(const queue_state& s, std::uint64_t pos) const noexcept {
    // From a record boundary, past wrap padding, to where the next record starts.
    if (pos == s.cap || s.cap - pos < sizeof(record_header)) return 0;
    auto* r = reinterpret_cast<const record_header*>(ring_.data() + pos);
    return r->tag == wrap_tag ? 0 : pos;
}

void shm_queue::collect(queue_state& s) noexcept {
    queue_header* h = hdr();
    enum class fate { busy, done, dead };
    auto check = [&](int i) {
        detail::slot_guard& g = h->guards[i];
        if (atomic(g.done).load(std::memory_order_acquire)) return fate::done;
        status st = g.holder.try_lock();
        if (st == status::timed_out) return fate::busy;  // its copier is alive (maybe stopped)
        bool done = atomic(g.done).load(std::memory_order_acquire);
        g.holder.unlock();
        return done ? fate::done : fate::dead;
    };
    bool freed = false;
    // Writers in reservation order: FIFO visibility.
    while (s.writers > 0) {
        int oldest = -1;
        for (int i = 0; i < static_cast<int>(detail::copy_slots); ++i)
            if (s.slots[i].kind == detail::slot_writing &&
                (oldest < 0 || s.slots[i].order < s.slots[oldest].order))
                oldest = i;
        fate f = check(oldest);
        if (f == fate::busy) break;
        copy_slot& c = s.slots[oldest];
        if (f == fate::dead) {
            // Its copies may be half done: nobody may read them.
            std::uint64_t pos = c.begin;
            while (pos != c.end) {
                pos = skip_to_record(s, pos);
                if (pos == c.end) break;
                auto* r = reinterpret_cast<record_header*>(ring_.data() + pos);
                r->tag = dead_tag;
                pos += record_bytes(r->size);
            }
        } else {
            s.count += c.nrecs;
            s.unfinished += c.nrecs;
        }
        s.ready_end = c.end;
        drop_slot(s, oldest);
        freed = true;
    }
    std::uint64_t oldest_reader = ~std::uint64_t{0};
    std::uint64_t new_free = s.head;
    for (int i = 0; i < static_cast<int>(detail::copy_slots); ++i) {
        if (s.slots[i].kind != detail::slot_reading) continue;
        if (check(i) != fate::busy) {  // done, or its reader died: the records go with it
            drop_slot(s, i);
            freed = true;
        } else if (s.slots[i].order < oldest_reader) {
            oldest_reader = s.slots[i].order;
            new_free = s.slots[i].begin;
        }
    }
    if (s.count == 0 && s.readers == 0) {
        // Only records of dead producers are left before ready_end: drop them.
        while (s.head != s.ready_end) {
            std::uint64_t pos = skip_to_record(s, s.head);
            if (pos == s.ready_end) {
                s.head = pos;
                break;
            }
            s.head = pos + record_bytes(reinterpret_cast<record_header*>(ring_.data() + pos)->size);
        }
        new_free = s.head;
    }
    s.used -= ring_dist(s.free_head, new_free, s.cap);
    s.free_head = new_free;
    if (s.used == 0 && s.writers + s.readers == 0) {
        s.free_head = s.head = s.ready_end = s.tail = 0;
        if (s.cap > shrink_above) {
            // Drained after having grown large: give the pages back.
            punch(fd_.get(), header_bytes() + initial_cap, s.cap - initial_cap);
            s.cap = initial_cap;
        }
    }
    if (freed && atomic(h->slot_freed.waiters).load(std::memory_order_seq_cst) > 0) notify(h->slot_freed, 0);
}

status shm_queue::wait_for_slot(const deadline& lock_dl) {
    // Called without the lock when every slot is busy or a grow must wait for
    // copies: sleep until one is released (or the deadline).
    std::uint32_t ticket = load_seq(hdr()->slot_freed);
    if (lock_dl.expired()) return status::timed_out;
    wait_on(hdr()->slot_freed, ticket, lock_dl.slice(std::chrono::milliseconds(10)), 0);
    return status::timed_out;
}

// --- producers ------------------------------------------------------------

void shm_queue::grow(queue_state& s, std::uint64_t need) {
    const std::uint64_t old_cap = s.cap;
    std::uint64_t new_cap = old_cap * 2;
    if (new_cap < old_cap + need + 8) new_cap = pow2_at_least(old_cap + need + 8);
    grow_file(fd_.get(), header_bytes() + new_cap);
    map_ring(new_cap);
    // (Its pages are allocated by the producer that copies into them,
    // outside the lock: see prefault.)
    bool wrapped = s.used > 0 && s.tail < s.free_head;
    if (wrapped) {
        // Move the older part [free_head, old_cap) to the end of the bigger
        // ring, so its wrap padding still ends at the ring's end (the caller
        // made sure no copy is in flight). Source and target cannot overlap.
        std::uint64_t delta = new_cap - old_cap;
        std::memcpy(ring_.data() + s.free_head + delta, ring_.data() + s.free_head, old_cap - s.free_head);
        auto shift = [&](std::uint64_t& p) {
            if (p >= s.free_head) p += delta;
        };
        std::uint64_t fh = s.free_head;
        shift(s.head);
        shift(s.ready_end);
        s.free_head = fh + delta;
        s.cap = new_cap;
        // The next record will overwrite [old free_head, old cap), which the
        // committed (old) state still points at: commit the moved layout
        // first, so a producer killed mid-copy leaves a readable queue.
        commit(s);
        return;
    }
    s.cap = new_cap;
}

shm_queue::room shm_queue::reserve(queue_state& s, std::uint64_t need, bool may_grow, bool first, bool own_slot) {
    // The ring never fills completely (used + need < cap), so equal positions
    // always mean "empty" and distances are unambiguous.
    for (;;) {
        bool wrapped = s.used > 0 && s.tail < s.free_head;
        if (!wrapped) {
            if (s.cap - s.tail >= need && s.used + need < s.cap) return room::fits;
            std::uint64_t pad = s.cap - s.tail;
            if (s.free_head > need && s.used + pad + need < s.cap) {
                if (pad >= sizeof(record_header)) {
                    auto* marker = reinterpret_cast<record_header*>(ring_.data() + s.tail);
                    *marker = record_header{0, wrap_tag, 0};
                }
                s.used += pad;
                s.tail = 0;
                return room::fits;
            }
        } else if (s.free_head - s.tail > need) {
            return room::fits;
        }
        // A grow may move the mapping (mremap) and, on a wrapped ring, the
        // records at [free_head, cap): the batch's earlier records would move
        // under the pointers already handed out for them. So only the first
        // record of a reservation may grow the ring; the batch stops before
        // any later one that needs it, and the caller reserves again.
        if (!first) return room::stop;
        if (!may_grow && s.cap >= soft_grow_cap && need <= s.cap / 2) return room::would_grow;
        // Moving the wrapped part needs every copy finished (this put's own
        // slot, if taken, has no record yet: it begins at tail, not moved).
        if (wrapped && s.writers + s.readers > (own_slot ? 1u : 0u)) return room::busy;
        grow(s, need);
    }
}

status shm_queue::try_reserve(const message_view* msgs, std::size_t n, queue_reservation& r, bool may_grow,
                              const deadline& lock_dl) {
    r.dest.clear();
    r.slot = -1;
    r.taken = 0;
    queue_header* h = hdr();
    if (lock(lock_dl) != status::ok) return status::timed_out;
    queue_state s;
    load_state(s);
    std::uint64_t before = s.count;
    collect(s);
    status result = status::ok;
    bool busy = false;
    // Small, and no other put's copy in flight (FIFO): copy under the lock
    // and publish at once, without a copy slot.
    bool inline_copy = s.writers == 0;
    for (std::size_t i = 0; inline_copy && i < n; ++i)
        if (msgs[i].total() > inline_copy_max) inline_copy = false;
    if (inline_copy) {
        std::size_t bytes = 0;
        for (std::size_t i = 0; i < n; ++i) bytes += msgs[i].total();
        inline_copy = bytes <= inline_copy_max;
    }
    int slot = inline_copy ? -1 : take_slot(s, detail::slot_writing, s.tail);
    if (slot < 0 && !inline_copy) {
        busy = true;
    } else {
        std::uint64_t in_flight = 0;  // reserved by others, not yet counted
        for (const copy_slot& c : s.slots)
            if (c.kind == detail::slot_writing) in_flight += c.nrecs;
        try {
            r.dest.reserve(n);
            for (std::size_t i = 0; i < n; ++i) {
                if (s.count + in_flight + i >= h->maxsize) {
                    result = status::full;
                    break;
                }
                const std::uint64_t size = msgs[i].total();
                const std::uint64_t need = record_bytes(size);
                const room rm = reserve(s, need, may_grow, r.dest.empty(), slot >= 0);
                if (rm == room::stop) break;  // ok, r.taken < n: the rest in a new reservation
                if (rm != room::fits) {
                    busy = rm == room::busy;
                    result = busy ? status::timed_out : status::would_grow;
                    break;
                }
                std::byte* at = ring_.data() + s.tail;
                *reinterpret_cast<record_header*>(at) = record_header{size, msgs[i].tag, 0};
                r.dest.push_back(at + sizeof(record_header));
                s.tail += need;
                s.used += need;
                if (slot >= 0) {
                    s.slots[slot].end = s.tail;
                    s.slots[slot].nrecs += 1;
                }
            }
        } catch (...) {
            // Whatever was reserved is committed as a dead producer's
            // (skipped by consumers): under a slot never marked done, or,
            // without a slot, tagged dead right here.
            if (slot < 0) {
                for (std::byte* d : r.dest) reinterpret_cast<record_header*>(d - sizeof(record_header))->tag = dead_tag;
                s.ready_end = s.tail;
            }
            r.dest.clear();
            commit(s);
            unlock();
            if (slot >= 0) h->guards[slot].holder.unlock();
            throw;
        }
        r.taken = r.dest.size();
        if (slot < 0) {
            fill(r, msgs);
            r.dest.clear();
            s.ready_end = s.tail;
            s.count += r.taken;
            s.unfinished += r.taken;
        } else if (r.dest.empty()) {
            h->guards[slot].holder.unlock();
            drop_slot(s, slot);
        } else {
            r.slot = slot;
            local_inflight_->fetch_add(1, std::memory_order_acq_rel);
        }
    }
    commit(s);
    after_change(before, s);
    unlock();
    if (s.count > before) notify(h->not_empty, static_cast<int>(s.count - before));
    if (busy && r.taken == 0) wait_for_slot(lock_dl);
    return busy ? status::timed_out : result;
}

void shm_queue::prefault(const void* p, std::size_t n, bool write) noexcept {
#ifndef MADV_POPULATE_READ
    constexpr int MADV_POPULATE_READ = 22, MADV_POPULATE_WRITE = 23;  // Linux >= 5.14
#endif
    // Mapping (and for writes allocating) the pages in one call is several
    // times faster than a page fault per page; best effort.
    if (n < prefault_min) return;
    auto a = reinterpret_cast<std::uintptr_t>(p) & ~(std::uintptr_t{page_size()} - 1);
    std::size_t len = reinterpret_cast<std::uintptr_t>(p) + n - a;
    ::madvise(reinterpret_cast<void*>(a), len, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
}

void shm_queue::fill(const queue_reservation& r, const message_view* msgs) noexcept {
    for (std::size_t i = 0; i < r.dest.size(); ++i) {
        const message_view& m = msgs[i];
        std::byte* out = r.dest[i];
        prefault(out, m.total(), true);
        if (m.size) std::memcpy(out, m.data, m.size);
        out += m.size;
        for (std::size_t k = 0; k < m.nmore; ++k) {
            if (m.more[k].size) std::memcpy(out, m.more[k].data, m.more[k].size);
            out += m.more[k].size;
        }
    }
}

void shm_queue::publish(queue_reservation& r) noexcept {
    if (r.slot < 0) return;
    queue_header* h = hdr();
    detail::slot_guard& g = h->guards[r.slot];
    atomic(g.done).store(1, std::memory_order_release);
    g.holder.unlock();
    local_inflight_->fetch_sub(1, std::memory_order_acq_rel);
    const int n = static_cast<int>(r.dest.size());
    r.slot = -1;
    // Make it visible now if the lock is free; otherwise the holder does it
    // when it unlocks (we must not wait here: we may hold the GIL, and the
    // holder may be stopped).
    status st = h->mutex.try_lock();
    if (st == status::timed_out) {
        atomic(h->publish_pending).store(1, std::memory_order_seq_cst);
        st = h->mutex.try_lock();
        if (st == status::timed_out) {
            notify(h->not_empty, n);  // a woken consumer collects when it gets the lock
            return;
        }
    }
    try {
        if (after_acquire(st) != status::ok) return;
    } catch (...) {
        atomic(h->publish_pending).store(1, std::memory_order_seq_cst);
        return;
    }
    atomic(h->publish_pending).store(0, std::memory_order_relaxed);
    publish_locked();
    // Another put may have finished while we held the lock: same as unlock().
    publish_left_over();
}

status shm_queue::try_push(const message_view* msgs, std::size_t n, std::size_t& done, bool may_grow,
                           const deadline& lock_dl) {
    done = 0;
    for (;;) {
        queue_reservation r;
        status st = try_reserve(msgs + done, n - done, r, may_grow, lock_dl);
        fill(r, msgs + done);
        done += r.taken;
        publish(r);
        if (st == status::timed_out && lock_dl.forever()) continue;  // every slot busy: again
        if (st == status::ok && done < n) continue;
        return st;
    }
}

// --- consumers ------------------------------------------------------------

status shm_queue::try_claim(std::size_t max, queue_claim& c, const deadline& lock_dl) {
    c.records.clear();
    c.slot = -1;
    queue_header* h = hdr();
    if (atomic(h->count_hint).load(std::memory_order_acquire) == 0 &&
        atomic(h->writers_hint).load(std::memory_order_acquire) == 0)
        return status::empty;
    if (lock(lock_dl) != status::ok) return status::timed_out;
    queue_state s;
    load_state(s);
    std::uint64_t before = s.count;
    collect(s);
    // Small records at the front are copied out right here, into the
    // claim's own buffer (no copy slot, no second step): the copy costs about
    // what a slot would, and the hold stays bounded by inline_copy_max.
    std::size_t inline_bytes = 0;
    try {
        c.records.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(std::min<std::uint64_t>(max, s.count), 256)));
    } catch (...) {
        unlock();
        throw;
    }
    while (c.records.size() < max && s.count > 0) {
        std::uint64_t pos = skip_to_record(s, s.head);
        auto* r = reinterpret_cast<record_header*>(ring_.data() + pos);
        if (r->tag != dead_tag) {
            if (inline_bytes + r->size > c.buffer.size() || c.records.size() == c.records.capacity()) break;
            std::memcpy(c.buffer.data() + inline_bytes, r + 1, r->size);
            c.records.push_back(record_ref{r->tag, c.buffer.data() + inline_bytes, static_cast<std::size_t>(r->size), pos});
            inline_bytes += r->size;
            s.count -= 1;
        }
        s.head = pos + record_bytes(r->size);
    }
    bool copied = !c.records.empty();
    int slot = !copied && s.count > 0 ? take_slot(s, detail::slot_reading, s.head) : -1;
    if (slot >= 0) {
        try {
            c.records.reserve(std::min<std::uint64_t>(max, s.count));
        } catch (...) {
            h->guards[slot].holder.unlock();
            unlock();
            throw;
        }
        while (c.records.size() < max && s.count > 0) {
            std::uint64_t pos = skip_to_record(s, s.head);
            auto* r = reinterpret_cast<record_header*>(ring_.data() + pos);
            s.head = pos + record_bytes(r->size);
            if (r->tag == dead_tag) continue;
            c.records.push_back(record_ref{r->tag, reinterpret_cast<const std::byte*>(r + 1),
                                           static_cast<std::size_t>(r->size), pos});
            s.count -= 1;
        }
        s.slots[slot].end = s.head;
        s.slots[slot].nrecs = static_cast<std::uint32_t>(c.records.size());
        c.slot = slot;
        local_inflight_->fetch_add(1, std::memory_order_acq_rel);
    }
    bool all_busy = !copied && s.count > 0 && slot < 0;
    commit(s);
    after_change(before, s);
    unlock();
    if (s.count > before) notify(h->not_empty, static_cast<int>(s.count - before));
    if (slot >= 0)
        for (const record_ref& rr : c.records) prefault(rr.data, rr.size, false);
    if (copied && (h->maxsize != unbounded || atomic(h->not_full.waiters).load(std::memory_order_relaxed) > 0))
        notify(h->not_full, static_cast<int>(c.records.size()));
    if (all_busy) {
        wait_for_slot(lock_dl);
        return status::timed_out;
    }
    return c.records.empty() ? status::empty : status::ok;
}

void shm_queue::finish_claim(queue_claim& c) noexcept {
    if (c.slot < 0) return;
    queue_header* h = hdr();
    detail::slot_guard& g = h->guards[c.slot];
    atomic(g.done).store(1, std::memory_order_release);
    g.holder.unlock();
    local_inflight_->fetch_sub(1, std::memory_order_acq_rel);
    c.slot = -1;
    // The space is freed lazily by the next lock holder (producers collect
    // before they reserve); producers of a bounded queue wait for the count.
    if (h->maxsize != unbounded || atomic(h->not_full.waiters).load(std::memory_order_relaxed) > 0)
        notify(h->not_full, static_cast<int>(c.records.size()));
    // (A slot waiter re-checks within its 10 ms slice anyway.)
    if (atomic(h->slot_freed.waiters).load(std::memory_order_seq_cst) > 0) notify(h->slot_freed, 0);
}

bool shm_queue::unclaim(queue_claim& c, std::size_t from, const deadline& lock_dl) noexcept {
    if (c.slot < 0) return false;
    bool given_back = false;
    if (from < c.records.size()) {
        queue_header* h = hdr();
        status st;
        try {
            st = lock(lock_dl);
        } catch (...) {
            st = status::timed_out;
        }
        if (st == status::ok) {
            queue_state s;
    load_state(s);
            copy_slot& sl = s.slots[c.slot];
            if (sl.kind == detail::slot_reading && s.head == sl.end) {
                std::uint64_t before = s.count;
                s.head = c.records[from].pos;
                s.count += c.records.size() - from;
                sl.end = s.head;
                sl.nrecs = static_cast<std::uint32_t>(from);
                commit(s);
                after_change(before, s);
                given_back = true;
            }
            unlock();
            if (given_back) notify(h->not_empty, 0);
        }
    }
    c.records.resize(from);
    finish_claim(c);
    return given_back;
}

status shm_queue::task_done(const deadline& lock_dl) {
    queue_header* h = hdr();
    if (lock(lock_dl) != status::ok) return status::timed_out;
    queue_state s;
    load_state(s);
    std::uint64_t before = s.count;
    collect(s);
    bool too_many = s.unfinished == 0;
    if (!too_many) s.unfinished -= 1;
    commit(s);
    after_change(before, s);
    unlock();
    if (s.count > before) notify(h->not_empty, 0);
    if (too_many) return status::too_many;
    if (s.unfinished == 0) notify(h->all_done, 0);
    return status::ok;
}

// --- shrinking, waiting ---------------------------------------------------

void shm_queue::notify(detail::event_word& ev, int n) noexcept {
    atomic(ev.seq).fetch_add(1, std::memory_order_seq_cst);
    if (atomic(ev.waiters).load(std::memory_order_seq_cst) > 0 &&
        atomic(ev.fresh_until).load(std::memory_order_seq_cst) > now_ns())
        futex_wake(&ev.seq, n);
}

wait_result shm_queue::wait_on(detail::event_word& ev, std::uint32_t ticket, std::optional<clock::duration> t,
                               int spins) {
    auto seq = atomic(ev.seq);
    if (spins > 0) {  // adaptive: see spin_until
        int budget = std::min(spins, spin_budget_->load(std::memory_order_relaxed));
        bool delivered = spin_until([&] { return seq.load(std::memory_order_acquire) != ticket; }, budget, spins);
        spin_budget_->store(budget, std::memory_order_relaxed);
        if (delivered) return wait_result::woken;
    }
    deadline dl = t ? deadline(*t) : deadline();
    atomic(ev.waiters).fetch_add(1, std::memory_order_seq_cst);
    wait_result r = wait_result::woken;
    for (;;) {
        auto chunk = dl.slice(max_sleep);
        // Notifiers skip the wake once this has passed (a killed sleeper's
        // count is then harmless); a live sleeper renews it before each sleep.
        std::uint64_t until = now_ns() + static_cast<std::uint64_t>(
                                             std::chrono::duration_cast<std::chrono::nanoseconds>(chunk).count()) +
                              fresh_margin_ns;
        auto fresh = atomic(ev.fresh_until);
        std::uint64_t cur = fresh.load(std::memory_order_seq_cst);
        while (cur < until && !fresh.compare_exchange_weak(cur, until, std::memory_order_seq_cst)) {
        }
        if (seq.load(std::memory_order_seq_cst) != ticket) break;
        r = futex_wait(&ev.seq, ticket, chunk);
        if (r != wait_result::timed_out || dl.expired()) break;
    }
    atomic(ev.waiters).fetch_sub(1, std::memory_order_seq_cst);
    return r;
}

wait_result shm_queue::wait_not_empty(std::uint32_t ticket, std::optional<clock::duration> t) {
    return wait_on(hdr()->not_empty, ticket, t, consumer_spins);
}
wait_result shm_queue::wait_not_full(std::uint32_t ticket, std::optional<clock::duration> t) {
    return wait_on(hdr()->not_full, ticket, t, 0);
}
wait_result shm_queue::wait_all_done(std::uint32_t ticket, std::optional<clock::duration> t) {
    return wait_on(hdr()->all_done, ticket, t, 0);
}

bool shm_queue::consumer_wake_pending() const noexcept {
    const detail::event_word& ev = hdr()->not_empty;
    return atomic(const_cast<std::uint32_t&>(ev.waiters)).load() > 0 &&
           atomic(const_cast<std::uint64_t&>(ev.fresh_until)).load() > now_ns();
}

unsigned shm_queue::slots_in_use() {
    lock(deadline());
    queue_state s;
    load_state(s);
    std::uint64_t before = s.count;
    collect(s);
    commit(s);
    after_change(before, s);
    unlock();
    return s.writers + s.readers;
}

void shm_queue::after_fork_in_child() noexcept {
    // Copies in flight belong to the parent's threads; the child has none.
    local_inflight_->store(0);
    retired_.clear();
}

}  // namespace fastmp
