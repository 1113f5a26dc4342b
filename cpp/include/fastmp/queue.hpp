// A multi-producer multi-consumer message queue in anonymous shared memory.
//
// Design notes
// - One memfd holds everything: a header page (layout below), then a ring of
//   variable-size records. The creator zero-fills it; every process that has
//   the fd (by fork or DupFd) maps it; the kernel frees it with the last fd.
// - Unbounded means unbounded: when a record does not fit, the ring doubles
//   (the file is sparse, so growth costs only the pages that get used) and
//   each process remaps lazily. When the queue drains after having grown
//   large, it shrinks back and the pages are returned to the kernel, so memory
//   follows the backlog.
// - All state changes happen under a robust_mutex and are journaled: the new
//   state is written to `pending` and flagged before it is applied. A process
//   killed inside the critical section (mid-put, mid-get, mid-growth) leaves
//   either the old state or a complete journal; the next locker finishes the
//   job. A record is only visible once `tail` moves past it, and only freed
//   once `head` moves past it, so a half-written record is never read and a
//   half-read one is never lost by anyone but the reader who died.
// - Waiting uses event counters (futex words) with waiter counts, so a put
//   only makes a syscall when someone sleeps.
// - For select()/wait() users, each queue also has an eventfd "doorbell",
//   created with the queue and shared the same way. It stays silent until
//   someone asks for a pollable handle (enable_doorbell); from then on, under
//   the lock, it is readable exactly while the queue holds items.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

#include <fastmp/futex.hpp>
#include <fastmp/robust_mutex.hpp>
#include <fastmp/segment.hpp>
#include <fastmp/status.hpp>

namespace fastmp {

namespace detail {

struct queue_state {
    std::uint64_t head;        // offset of the oldest record
    std::uint64_t tail;        // offset where the next record goes
    std::uint64_t cap;         // ring size in bytes
    std::uint64_t used;        // bytes in use, wrap padding included
    std::uint64_t count;       // records in the ring
    std::uint64_t unfinished;  // puts not yet matched by task_done (JoinableQueue)
};

struct event_word {
    std::uint32_t seq;      // bumped on every event
    std::uint32_t waiters;  // processes sleeping (or about to) on seq
    std::uint32_t pad[14];
};

struct queue_header {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t header_size;
    std::uint64_t maxsize;       // in messages; UINT64_MAX when unbounded
    robust_mutex mutex;
    std::uint32_t journal_valid; // 1 while `pending` holds a state to apply
    queue_state state;
    queue_state pending;
    std::uint64_t count_hint;    // atomic copy of state.count, read lock-free
    std::uint32_t doorbell_on;   // 1 once anyone polls the doorbell eventfd
    std::uint32_t pad0;
    std::uint64_t pad[3];
    event_word not_empty;
    event_word not_full;
    event_word all_done;         // unfinished reached 0
};
static_assert(std::is_trivially_copyable_v<queue_header>);
static_assert(std::is_standard_layout_v<queue_header>);

struct record_header {
    std::uint64_t size;  // payload bytes
    std::uint32_t tag;   // what the payload is (the binding's business); wrap_tag = go to 0
    std::uint32_t reserved;
};
static_assert(sizeof(record_header) == 16);

}  // namespace detail

struct message_part {
    const void* data;
    std::size_t size;
};

// One message to put: an opaque tag and the payload bytes, given as a first
// part plus optional further parts that are gathered straight into the ring.
struct message_view {
    std::uint32_t tag;
    const void* data;
    std::size_t size;
    const message_part* more = nullptr;
    std::size_t nmore = 0;

    std::size_t total() const noexcept {
        std::size_t t = size;
        for (std::size_t i = 0; i < nmore; ++i) t += more[i].size;
        return t;
    }
};

class shm_queue {
public:
    static constexpr std::uint64_t magic = 0x666173746d707131ull;  // "fastmpq1"
    static constexpr std::uint32_t layout_version = 1;
    static constexpr std::uint32_t wrap_tag = 0xffffffffu;

    // maxsize <= 0 means unbounded. Without a doorbell, enable_doorbell() fails
    // (for users with their own readiness scheme, e.g. channels).
    static shm_queue create(std::int64_t maxsize, bool with_doorbell = true);
    // Takes ownership of both fds (doorbell_fd < 0: none); checks magic, version and size.
    static shm_queue attach(int fd, int doorbell_fd = -1);

    int fd() const noexcept { return fd_.get(); }
    int doorbell_fd() const noexcept { return doorbell_.get(); }
    // From now on (in every process) the doorbell is readable while items are queued.
    void enable_doorbell();
    std::uint64_t maxsize() const noexcept;  // 0 when unbounded
    std::uint64_t size_approx() const noexcept;
    std::uint64_t capacity_bytes();           // current ring size (for tests)
    std::uint64_t unfinished_tasks();

    // Non-blocking put of `n` messages, all or as many as the bound allows:
    // returns ok when all went in, full when the bound stopped it (`done` says
    // how many went in). With may_grow == false, a ring that is already large
    // is not grown for a message that would fit once consumers free some
    // space: the call stops with would_grow instead, so the caller can give
    // an active consumer a moment (warm pages beat fresh page faults).
    status try_push(const message_view* msgs, std::size_t n, std::size_t& done, bool may_grow = true);
    status try_push(const message_view& m, bool may_grow = true) {
        std::size_t done = 0;
        return try_push(&m, 1, done, may_grow);
    }

    // Non-blocking get of up to `max` messages. For each record, under the
    // queue lock, calls sink(tag, data, size); the sink must copy what it
    // needs. A sink that throws leaves its record in the queue (the ones
    // before it are taken). Returns ok when at least one record was taken.
    template <class Sink>
    status try_pop(std::size_t max, Sink&& sink, std::size_t& taken);

    status task_done();  // ok, or too_many

    // Event counters for the blocking layer: read the ticket before trying,
    // and wait on it if the try failed.
    std::uint32_t not_empty_ticket() const noexcept { return load_seq(hdr()->not_empty); }
    std::uint32_t not_full_ticket() const noexcept { return load_seq(hdr()->not_full); }
    std::uint32_t all_done_ticket() const noexcept { return load_seq(hdr()->all_done); }
    wait_result wait_not_empty(std::uint32_t ticket, std::optional<clock::duration> t);
    wait_result wait_not_full(std::uint32_t ticket, std::optional<clock::duration> t);
    wait_result wait_all_done(std::uint32_t ticket, std::optional<clock::duration> t);

private:
    shm_queue() = default;
    detail::queue_header* hdr() const noexcept { return reinterpret_cast<detail::queue_header*>(header_.data()); }
    std::byte* ring();  // under the lock: this process's view of the ring, remapped if it grew

    void lock();
    void unlock() noexcept { hdr()->mutex.unlock(); }
    void commit(const detail::queue_state& s) noexcept;
    bool reserve(detail::queue_state& s, std::uint64_t need, bool may_grow);  // false = would grow
    void grow(detail::queue_state& s, std::uint64_t need);
    // Finds the record at s.head (skipping wrap padding); updates s.
    detail::record_header* front(detail::queue_state& s);
    void after_pop(detail::queue_state& s, std::size_t taken);
    void notify(detail::event_word& ev, int n) noexcept;
    static std::uint32_t load_seq(detail::event_word& ev) noexcept { return atomic(ev.seq).load(); }
    wait_result wait_on(detail::event_word& ev, std::uint32_t ticket, std::optional<clock::duration> t,
                        int spins);

    void sync_doorbell(std::uint64_t count) noexcept;

    unique_fd fd_;
    unique_fd doorbell_;
    mapping header_;  // fixed: waiters outside the lock only touch this
    mapping ring_;    // grows (and may move) under the lock only
};

template <class Sink>
status shm_queue::try_pop(std::size_t max, Sink&& sink, std::size_t& taken) {
    taken = 0;
    if (atomic(hdr()->count_hint).load(std::memory_order_acquire) == 0) return status::empty;
    lock();
    struct unlocker {
        shm_queue* q;
        ~unlocker() { q->unlock(); }
    } guard{this};
    detail::queue_state s = hdr()->state;
    ring();  // remap first if another process grew the ring
    try {
        while (taken < max && s.count > 0) {
            detail::record_header* r = front(s);
            auto* payload = reinterpret_cast<const std::byte*>(r + 1);
            sink(r->tag, payload, static_cast<std::size_t>(r->size));
            std::uint64_t need = (sizeof(detail::record_header) + r->size + 7) & ~std::uint64_t{7};
            s.head += need;
            s.used -= need;
            s.count -= 1;
            ++taken;
        }
    } catch (...) {
        if (taken) after_pop(s, taken);
        throw;
    }
    if (taken == 0) return status::empty;
    after_pop(s, taken);
    return status::ok;
}

}  // namespace fastmp
