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
// - The lock is a process_mutex (robust pthread mutex: the kernel reports a
//   dead holder). Every wait for it is bounded by a deadline given by the
//   caller, so the binding can wait without the GIL, in slices, honouring
//   timeouts and Ctrl-C; put_nowait/get_nowait wait a short bound only.
// - No large payload is copied under the lock. A put reserves space under the
//   lock (record headers written, a "copy slot" taken), copies outside it,
//   then publishes (under the lock when it is free at once; otherwise it
//   leaves a flag that the holder acts on when it unlocks). A get claims
//   records under the lock (taking a copy slot), copies them out (the
//   binding unpickles straight from the ring) and releases the slot without
//   the lock. Positions: free_head <= head <= ready_end <= tail in ring
//   order: [free_head, head) claimed records being read, [head, ready_end)
//   records ready to take (`count`), [ready_end, tail) reserved records being
//   written. Producers only write into [tail, free_head).
//   Likewise a get copies records of at most 4 KiB in total straight out of
//   the ring under the lock, into the claim's buffer; larger ones are
//   claimed under a copy slot and read outside it.
//   Exception, for speed: a put whose payload totals at most 4 KiB, made when
//   no other put's copy is in flight, copies under the lock and publishes at
//   once (one lock round trip; the copy costs about what the lock hand-off
//   does, so the hold stays bounded by that size, never by the message's).
// - Copy slots (8) are how a half-done copy is found. Each holds a robust
//   mutex that the copying thread keeps locked from reserve/claim until it
//   sets the slot's `done` flag; its range and kind are part of the
//   journaled state. Any lock holder "collects": finished writer slots, in
//   reservation order, move ready_end (FIFO: a later put that finished first
//   waits for the earlier one); finished reader slots move free_head. A slot
//   whose mutex the kernel marked owner-died belongs to a dead copier: a dead
//   writer's records are tagged dead (consumers skip them, nothing half-
//   written is ever read); a dead reader's records are freed (lost with the
//   reader, as before). A stopped copier holds only its own slot: FIFO
//   order waits for it, nothing else does, except a ring that must grow
//   while wrapped (the move needs every copy finished; it waits, bounded by
//   the caller's deadline). Each process maps the ring itself; when it grows
//   while this process has copies in flight, the old view is kept until they
//   are done (pointers into it stay valid).
// - What still happens under the lock and grows with size: growing a ring
//   that has wrapped moves its older part (a copy proportional to the
//   backlog; only when the ring is full). Page population is not: a large
//   copy prefaults its own pages outside the lock.
// - State changes under the lock are journaled: the new state is written to
//   `pending` and flagged before it is applied. A process killed inside the
//   critical section leaves either the old state or a complete journal; the
//   next locker (told owner_died) finishes the job, then collects.
// - Waiting uses event counters (futex words) with waiter counts, so a put
//   only makes a syscall when someone sleeps. A sleeper also pushes forward
//   the word's `fresh_until` (it sleeps at most 200 ms at a time), so the
//   count left behind by a sleeper killed in its sleep stops costing wake
//   syscalls once that time has passed.
// - For select()/wait() users, each queue also has an eventfd "doorbell",
//   created with the queue and shared the same way. It stays silent until
//   someone asks for a pollable handle (enable_doorbell); from then on, under
//   the lock, it is readable exactly while the queue holds items.
#pragma once

#include <cstddef>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>
#include <type_traits>

#include <fastmp/futex.hpp>
#include <fastmp/robust_mutex.hpp>
#include <fastmp/segment.hpp>
#include <fastmp/status.hpp>

namespace fastmp {

namespace detail {

constexpr std::size_t copy_slots = 8;
enum : std::uint32_t { slot_free = 0, slot_writing = 1, slot_reading = 2 };

struct copy_slot {
    std::uint64_t begin;  // position before its first record (wrap padding included)
    std::uint64_t end;    // position after its last record
    std::uint64_t order;  // lower = taken earlier
    std::uint32_t kind;   // slot_free, slot_writing, slot_reading
    std::uint32_t nrecs;
};

struct queue_state {
    std::uint64_t free_head;   // oldest byte still in use
    std::uint64_t head;        // oldest unclaimed record
    std::uint64_t ready_end;   // end of the published records
    std::uint64_t tail;        // where the next reservation goes
    std::uint64_t cap;         // ring size in bytes
    std::uint64_t used;        // bytes in [free_head, tail), wrap padding included
    std::uint64_t count;       // ready records in [head, ready_end)
    std::uint64_t unfinished;  // puts not yet matched by task_done (JoinableQueue)
    std::uint64_t next_order;
    std::uint32_t writers;     // slots of each kind in use
    std::uint32_t readers;
    copy_slot slots[copy_slots];
};

// Not journaled: the holder mutex is the slot's liveness, `done` its result.
struct slot_guard {
    process_mutex holder;  // locked by the copying thread while it copies
    std::uint32_t done;    // set (then holder unlocked) when the copy is complete
    std::uint32_t pad[5];
};

struct event_word {
    std::uint32_t seq;           // bumped on every event
    std::uint32_t waiters;       // sleepers (or about to be) on seq; may be stale (killed sleeper)
    std::uint64_t fresh_until;   // CLOCK_MONOTONIC ns until which a counted sleeper may sleep
    std::uint32_t pad[12];
};

struct queue_header {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t header_size;
    std::uint64_t maxsize;       // in messages; UINT64_MAX when unbounded
    process_mutex mutex;
    std::uint32_t journal_valid; // while `pending` holds a state to apply: its size in bytes
    std::uint32_t doorbell_on;   // 1 once anyone polls the doorbell eventfd
    queue_state state;
    queue_state pending;
    std::uint64_t count_hint;    // atomic copy of state.count, read lock-free
    std::uint32_t writers_hint;  // atomic copy of state.writers (puts in flight)
    std::uint32_t publish_pending;  // a finished put found the lock busy: holder, collect
    slot_guard guards[copy_slots];
    event_word not_empty;
    event_word not_full;
    event_word all_done;         // unfinished reached 0
    event_word slot_freed;       // a copy slot was released
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

// A record taken by try_claim: valid until finish_claim.
struct record_ref {
    std::uint32_t tag;
    const std::byte* data;
    std::size_t size;
    std::uint64_t pos;  // ring position of its header
};

// Records claimed by one try_claim; the same thread copies them out, then
// calls finish_claim (or unclaim).
struct queue_claim {
    std::vector<record_ref> records;
    int slot = -1;  // -1: small records copied into `buffer` under the lock (nothing to release)
    std::array<std::byte, 4096> buffer;
};

// Space reserved by one try_reserve, for `dest.size()` messages; the same
// thread copies them in (fill), then calls publish.
struct queue_reservation {
    std::size_t taken = 0;         // messages accepted (copied already when dest is empty)
    std::vector<std::byte*> dest;  // payload destination of each message still to copy
    int slot = -1;
};

class shm_queue {
public:
    static constexpr std::uint64_t magic = 0x666173746d707132ull;  // "fastmpq2"
    static constexpr std::uint32_t layout_version = 2;
    static constexpr std::uint32_t wrap_tag = 0xffffffffu;
    static constexpr std::uint32_t dead_tag = 0xfffffffdu;  // written by a dead producer: skipped

    // maxsize <= 0 means unbounded. Without a doorbell, enable_doorbell() fails
    // (for users with their own readiness scheme, e.g. channels).
    static shm_queue create(std::int64_t maxsize, bool with_doorbell = true);
    // Takes ownership of both fds (doorbell_fd < 0: none); checks magic, version and size.
    static shm_queue attach(int fd, int doorbell_fd = -1);

    shm_queue(shm_queue&&) noexcept = default;
    shm_queue& operator=(shm_queue&&) noexcept = default;

    int fd() const noexcept { return fd_.get(); }
    int doorbell_fd() const noexcept { return doorbell_.get(); }
    // Every call below that takes `lock_dl` waits for the queue's lock at most
    // until then and returns status::timed_out if it could not get it (or a
    // copy slot); nothing has changed then. Default: wait as long as it takes.
    // From now on (in every process) the doorbell is readable while items are queued.
    status enable_doorbell(const deadline& lock_dl = deadline());
    std::uint64_t maxsize() const noexcept;  // 0 when unbounded
    std::uint64_t size_approx() const noexcept;
    std::uint64_t capacity_bytes();  // current ring size (for tests)
    status unfinished_tasks(std::uint64_t& n, const deadline& lock_dl = deadline());

    // Reserves room for up to `n` messages, all or as many as the bound
    // allows: ok when all fit, full when the bound stopped it (`r.taken` says
    // how many got room, maybe none). Also ok with r.taken < n when a later
    // message needs the ring to grow (only a reservation's first message may
    // grow it: pointers in r.dest must stay valid): reserve again for the rest. With may_grow == false, a ring that is
    // already large is not grown for a message that would fit once consumers
    // free some space: would_grow instead (with r covering what fit before),
    // so the caller can give an active consumer a moment.
    status try_reserve(const message_view* msgs, std::size_t n, queue_reservation& r, bool may_grow,
                       const deadline& lock_dl);
    // Copies msgs[0..r.dest.size()) into the reserved space (no lock held;
    // nothing to do when try_reserve copied them already: r.dest empty).
    static void fill(const queue_reservation& r, const message_view* msgs) noexcept;
    // Maps the pages of [p, p+n) in one go (allocating them when `write`);
    // for large copies, outside the lock. Best effort.
    static void prefault(const void* p, std::size_t n, bool write) noexcept;
    // Makes the reserved messages visible (in order) and wakes consumers.
    void publish(queue_reservation& r) noexcept;

    // reserve + fill + publish.
    status try_push(const message_view* msgs, std::size_t n, std::size_t& done, bool may_grow = true,
                    const deadline& lock_dl = deadline());
    status try_push(const message_view& m, bool may_grow = true) {
        std::size_t done = 0;
        return try_push(&m, 1, done, may_grow);
    }

    // Claims up to `max` ready records (ok, empty or timed_out). Their bytes
    // stay in the ring, readable without the lock, until finish_claim.
    status try_claim(std::size_t max, queue_claim& c, const deadline& lock_dl);
    void finish_claim(queue_claim& c) noexcept;
    // Gives records [from, end) of a claim back to the front of the queue
    // when no later claim was made since (true); then finishes the claim.
    bool unclaim(queue_claim& c, std::size_t from, const deadline& lock_dl) noexcept;

    // claim + sink(tag, data, size) for each record + finish, outside the
    // lock. A sink that throws leaves its record (and the rest) in the queue
    // when it can (see unclaim). Returns ok when at least one record was taken.
    template <class Sink>
    status try_pop(std::size_t max, Sink&& sink, std::size_t& taken, const deadline& lock_dl = deadline());

    status task_done(const deadline& lock_dl = deadline());  // ok, too_many or timed_out

    // Event counters for the blocking layer: read the ticket before trying,
    // and wait on it if the try failed.
    std::uint32_t not_empty_ticket() const noexcept { return load_seq(hdr()->not_empty); }
    std::uint32_t not_full_ticket() const noexcept { return load_seq(hdr()->not_full); }
    std::uint32_t all_done_ticket() const noexcept { return load_seq(hdr()->all_done); }
    wait_result wait_not_empty(std::uint32_t ticket, std::optional<clock::duration> t);
    wait_result wait_not_full(std::uint32_t ticket, std::optional<clock::duration> t);
    wait_result wait_all_done(std::uint32_t ticket, std::optional<clock::duration> t);

    // Test hooks: whether a put would make a wake-up syscall for sleeping
    // consumers; copy slots still in use (after collecting finished ones).
    bool consumer_wake_pending() const noexcept;
    unsigned slots_in_use();
    // Takes the internal lock and never gives it back (a test stops or kills
    // the process afterwards).
    void hold_lock_for_test() { lock(deadline()); }
    // Drops per-process state that a forked child must not share (retired views).
    void after_fork_in_child() noexcept;

private:
    shm_queue() = default;
    detail::queue_header* hdr() const noexcept { return reinterpret_cast<detail::queue_header*>(header_.data()); }
    void map_ring(std::uint64_t cap);  // under the lock: this process's view covers cap bytes

    status lock(const deadline& dl);  // ok or timed_out; repairs after a dead holder
    status after_acquire(status st);   // the repair part of lock()
    void publish_locked() noexcept;
    void unlock() noexcept;
    void publish_left_over() noexcept;  // after unlocking: publishes what publish() left to us
    void load_state(detail::queue_state& s) const noexcept;  // a copy of the committed state
    void commit(const detail::queue_state& s) noexcept;
    void collect(detail::queue_state& s) noexcept;
    int take_slot(detail::queue_state& s, std::uint32_t kind, std::uint64_t begin) noexcept;
    void drop_slot(detail::queue_state& s, int i) noexcept;
    // Room for one record of `need` bytes at s.tail (wrapping or growing the
    // ring as needed). A grow is allowed for the first record of a
    // reservation only (`first`); a later one gets `stop`.
    enum class room { fits, stop, would_grow, busy };
    room reserve(detail::queue_state& s, std::uint64_t need, bool may_grow, bool first, bool own_slot);
    void grow(detail::queue_state& s, std::uint64_t need);
    std::uint64_t skip_to_record(const detail::queue_state& s, std::uint64_t pos) const noexcept;
    void after_change(std::uint64_t count_before, const detail::queue_state& s) noexcept;
    void notify(detail::event_word& ev, int n) noexcept;
    static std::uint32_t load_seq(detail::event_word& ev) noexcept { return atomic(ev.seq).load(); }
    wait_result wait_on(detail::event_word& ev, std::uint32_t ticket, std::optional<clock::duration> t,
                        int spins);
    status wait_for_slot(const deadline& lock_dl);

    void sync_doorbell(std::uint64_t count) noexcept;

    unique_fd fd_;
    unique_fd doorbell_;
    mapping header_;  // fixed: waiters outside the lock only touch this
    mapping ring_;    // grows under the lock only
    // Views replaced while this process had copies in flight (freed under the
    // lock once local_inflight_ is 0).
    std::vector<mapping> retired_;
    std::unique_ptr<std::atomic<int>> local_inflight_ = std::make_unique<std::atomic<int>>(0);
    // This process's spin budget for consumers (adaptive; see wait_on).
    std::unique_ptr<std::atomic<int>> spin_budget_ = std::make_unique<std::atomic<int>>(2000);
};

template <class Sink>
status shm_queue::try_pop(std::size_t max, Sink&& sink, std::size_t& taken, const deadline& lock_dl) {
    taken = 0;
    queue_claim c;
    status st = try_claim(max, c, lock_dl);
    if (st != status::ok) return st;
    try {
        for (const record_ref& r : c.records) {
            sink(r.tag, r.data, r.size);
            ++taken;
        }
    } catch (...) {
        unclaim(c, taken, deadline());
        throw;
    }
    finish_claim(c);
    return status::ok;
}

}  // namespace fastmp
