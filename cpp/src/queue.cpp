#include <fastmp/queue.hpp>

#include <cstring>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace fastmp {

using detail::queue_header;
using detail::queue_state;
using detail::record_header;

namespace {
constexpr std::uint64_t initial_cap = std::uint64_t{1} << 20;
// A drained ring larger than this shrinks back to initial_cap and returns its pages.
constexpr std::uint64_t shrink_above = std::uint64_t{32} << 20;
constexpr std::uint64_t unbounded = ~std::uint64_t{0};
// Rings at least this large are grown only when the caller allows it (see
// try_push's may_grow); smaller ones grow freely.
constexpr std::uint64_t soft_grow_cap = std::uint64_t{64} << 20;
// Consumers spin this many rounds before sleeping: a producer on the other
// core usually delivers within a few microseconds, and a futex sleep + wake
// costs more than that.
constexpr int consumer_spins = 2000;

std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }
std::uint64_t record_bytes(std::uint64_t payload) { return align8(sizeof(record_header) + payload); }
std::uint64_t pow2_at_least(std::uint64_t n) {
    std::uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}
std::size_t header_bytes() { return page_size(); }
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

void shm_queue::lock() {
    queue_header* h = hdr();
    if (h->mutex.lock() == status::owner_died) {
        // The previous holder died inside a critical section: finish its
        // journaled update if it got that far, otherwise the old state stands.
        if (atomic(h->journal_valid).load(std::memory_order_acquire)) h->state = h->pending;
        atomic(h->journal_valid).store(0, std::memory_order_release);
        atomic(h->count_hint).store(h->state.count, std::memory_order_release);
        // Whoever it was about to wake may be sleeping still.
        notify(h->not_empty, 0);
        notify(h->not_full, 0);
        if (h->state.unfinished == 0) notify(h->all_done, 0);
        if (atomic(h->doorbell_on).load()) sync_doorbell(h->state.count);
    }
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

void shm_queue::enable_doorbell() {
    if (doorbell_.get() < 0) throw sys_error(EBADF, "this queue has no doorbell");
    queue_header* h = hdr();
    lock();
    if (!atomic(h->doorbell_on).load()) {
        atomic(h->doorbell_on).store(1);
        sync_doorbell(h->state.count);
    }
    unlock();
}

void shm_queue::commit(const queue_state& s) noexcept {
    queue_header* h = hdr();
    h->pending = s;
    atomic(h->journal_valid).store(1, std::memory_order_release);
    // From here on a death is repaired from the journal; publish the hint
    // now, so that consumers trusting it take the lock (and do that repair)
    // instead of seeing a stale "empty" forever.
    atomic(h->count_hint).store(s.count, std::memory_order_release);
    h->state = s;
    atomic(h->journal_valid).store(0, std::memory_order_release);
}

std::byte* shm_queue::ring() {
    std::uint64_t cap = hdr()->state.cap;
    if (ring_.size() < cap) {  // another process grew it
        std::size_t old = ring_.size();
        ring_.resize(cap);
        ring_.populate(old, cap - old, false);
    }
    return ring_.data();
}

std::uint64_t shm_queue::capacity_bytes() {
    lock();
    std::uint64_t cap = hdr()->state.cap;
    unlock();
    return cap;
}

std::uint64_t shm_queue::unfinished_tasks() {
    lock();
    std::uint64_t n = hdr()->state.unfinished;
    unlock();
    return n;
}

void shm_queue::grow(queue_state& s, std::uint64_t need) {
    const std::uint64_t old_cap = s.cap;
    std::uint64_t new_cap = old_cap * 2;
    if (new_cap < old_cap + need) new_cap = pow2_at_least(old_cap + need);
    grow_file(fd_.get(), header_bytes() + new_cap);
    if (ring_.size() < new_cap) ring_.resize(new_cap);
    // The new half will be written soon: allocate and map it in one call
    // rather than page fault by page fault (several times faster here).
    ring_.populate(old_cap, new_cap - old_cap, true);
    bool wrapped = s.used > 0 && s.tail <= s.head;
    if (wrapped) {
        // Move the older part [head, old_cap) to the end of the bigger ring, so
        // its wrap padding still ends at the ring's end. Source and target
        // cannot overlap (new_cap - old_cap >= old_cap).
        std::uint64_t delta = new_cap - old_cap;
        std::memcpy(ring_.data() + s.head + delta, ring_.data() + s.head, old_cap - s.head);
        s.head += delta;
        s.cap = new_cap;
        // The record about to be written will overwrite [old head, old cap),
        // which the committed (old) state still points at: commit the moved
        // layout first, so a producer killed mid-copy leaves a readable queue.
        commit(s);
        return;
    }
    s.cap = new_cap;
}

bool shm_queue::reserve(queue_state& s, std::uint64_t need, bool may_grow) {
    if (s.used == 0) s.head = s.tail = 0;
    for (;;) {
        bool wrapped = s.used > 0 && s.tail <= s.head;
        if (!wrapped) {
            if (s.cap - s.tail >= need) return true;
            if (s.head >= need) {
                std::uint64_t pad = s.cap - s.tail;
                if (pad >= sizeof(record_header)) {
                    auto* marker = reinterpret_cast<record_header*>(ring_.data() + s.tail);
                    *marker = record_header{0, wrap_tag, 0};
                }
                s.used += pad;
                s.tail = 0;
                return true;
            }
        } else if (s.head - s.tail >= need) {
            return true;
        }
        if (!may_grow && s.cap >= soft_grow_cap && need <= s.cap / 2) return false;
        grow(s, need);
    }
}

status shm_queue::try_push(const message_view* msgs, std::size_t n, std::size_t& done, bool may_grow) {
    done = 0;
    bool soft_stop = false;
    queue_header* h = hdr();
    lock();
    queue_state s = h->state;
    try {
        ring();
        for (; done < n; ++done) {
            if (s.count >= h->maxsize) break;
            const message_view& m = msgs[done];
            const std::uint64_t size = m.total();
            std::uint64_t need = record_bytes(size);
            if (!reserve(s, need, may_grow)) {
                soft_stop = true;
                break;
            }
            std::byte* at = ring_.data() + s.tail;
            *reinterpret_cast<record_header*>(at) = record_header{size, m.tag, 0};
            std::byte* out = at + sizeof(record_header);
            if (m.size) std::memcpy(out, m.data, m.size);
            out += m.size;
            for (std::size_t i = 0; i < m.nmore; ++i) {
                if (m.more[i].size) std::memcpy(out, m.more[i].data, m.more[i].size);
                out += m.more[i].size;
            }
            s.tail += need;
            s.used += need;
            s.count += 1;
            s.unfinished += 1;
        }
    } catch (...) {
        if (done) commit(s);
        if (done && h->state.count == done && atomic(h->doorbell_on).load()) sync_doorbell(done);
        unlock();
        if (done) notify(h->not_empty, static_cast<int>(done));
        throw;
    }
    if (done) commit(s);
    if (done && s.count == done && atomic(h->doorbell_on).load()) sync_doorbell(s.count);
    unlock();
    if (done) notify(h->not_empty, static_cast<int>(done));
    if (done == n) return status::ok;
    return soft_stop ? status::would_grow : status::full;
}

record_header* shm_queue::front(queue_state& s) {
    for (;;) {
        std::uint64_t left = s.cap - s.head;
        if (left >= sizeof(record_header)) {
            auto* r = reinterpret_cast<record_header*>(ring_.data() + s.head);
            if (r->tag != wrap_tag) return r;
        }
        s.used -= left;  // skip the wrap padding
        s.head = 0;
    }
}

void shm_queue::after_pop(queue_state& s, std::size_t taken) {
    queue_header* h = hdr();
    std::uint64_t released_from = 0, released_to = 0;
    if (s.count == 0) {
        s.head = s.tail = s.used = 0;
        if (s.cap > shrink_above) {
            released_from = initial_cap;
            released_to = s.cap;
            s.cap = initial_cap;
        }
    }
    commit(s);
    if (s.count == 0 && atomic(h->doorbell_on).load()) sync_doorbell(0);
    if (released_to) punch(fd_.get(), header_bytes() + released_from, released_to - released_from);
    // Unbounded queues have producers waiting on not_full only briefly (see
    // try_push's may_grow): wake them only when there are any.
    if (h->maxsize != unbounded || atomic(h->not_full.waiters).load(std::memory_order_relaxed) > 0)
        notify(h->not_full, static_cast<int>(taken));
}

status shm_queue::task_done() {
    queue_header* h = hdr();
    lock();
    queue_state s = h->state;
    if (s.unfinished == 0) {
        unlock();
        return status::too_many;
    }
    s.unfinished -= 1;
    commit(s);
    unlock();
    if (s.unfinished == 0) notify(h->all_done, 0);
    return status::ok;
}

void shm_queue::notify(detail::event_word& ev, int n) noexcept {
    atomic(ev.seq).fetch_add(1, std::memory_order_seq_cst);
    if (atomic(ev.waiters).load(std::memory_order_seq_cst) > 0) futex_wake(&ev.seq, n);
}

wait_result shm_queue::wait_on(detail::event_word& ev, std::uint32_t ticket, std::optional<clock::duration> t,
                               int spins) {
    auto seq = atomic(ev.seq);
    for (int i = 0; i < spins; ++i) {
        if (seq.load(std::memory_order_acquire) != ticket) return wait_result::woken;
        cpu_relax();
    }
    atomic(ev.waiters).fetch_add(1, std::memory_order_seq_cst);
    wait_result r = wait_result::woken;
    if (seq.load(std::memory_order_seq_cst) == ticket) r = futex_wait(&ev.seq, ticket, t);
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

}  // namespace fastmp
