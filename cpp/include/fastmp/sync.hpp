// Process-shared synchronisation primitives: Lock, RLock, Semaphore, Event,
// the waiter table of a Condition and the shared state of a Barrier.
//
// Design notes
// - Storage: a per-process *arena*, one anonymous memfd cut into 64-byte
//   slots, so a program with thousands of locks (every Value/Array has one)
//   pays one fd and one mapping, not one per lock. An object takes 1..32
//   consecutive slots. The arena header starts {magic, layout_version, size};
//   each object starts with its own {magic, layout_version, size, kind}.
// - Who creates, who frees: a process allocates from an arena it created
//   itself (a forked child makes its own, so its objects die with it). Every
//   process that holds a handle on an object owns one reference in the
//   arena's per-slot table (the creator's, one per rebuild under spawn or
//   forkserver, and one per inherited handle in a forked child, taken by the
//   fork's prepare handler, before the child exists). The last
//   reference returns the slots. A process killed by SIGKILL never drops its
//   references: its slots stay used until the arena itself is gone, which
//   happens when the last process that mapped it exits (memfd, no name: nothing
//   outlives the process tree).
// - Holder death, and why pids are still polled for the user-visible
//   primitives: a Lock or Semaphore may be released by another thread or
//   process than the one that acquired it (the stdlib's semantics), so it
//   cannot be a kernel robust mutex (those belong to the thread that locked
//   them, and the kernel's robust list only knows thread exits). Instead the
//   holder is recorded as an *identity*: pid plus the process's start time
//   (process.hpp), written in the same atomic store as the pid (the 64-bit
//   Lock word; the 64-bit id of a pid_slot). A recycled pid has another start
//   time, so it is not mistaken for the holder. Pids are only compared within
//   the pid namespace of the arena's creator: a process in another namespace
//   records itself with start tag 0 ("cannot be judged") and never judges
//   others, so neither side frees what a live process holds (no recovery
//   across namespaces: the stdlib's behaviour). Cost: one read of
//   /proc/<pid>/stat per holder, only after a wait slice without progress
//   (it was already read to tell zombies apart); nothing on the fast path.
// - Lock/RLock keep the identity in their futex word (the low half is the
//   futex: pid | waiters bit). Semaphores record units per process in a
//   pid_slot table, always *before* taking a unit and *after* giving one
//   back, so a process killed between the two steps is over-counted, never
//   under-counted; the recovery rule below (never above the initial value)
//   turns an over-count into nothing lost. Condition waiters that die after
//   being notified hand their notification to a live waiter. The Barrier
//   state records which processes are inside wait(), so the others can break it.
// - Sleepers: a waiter never leaves a counter raised when it is killed while
//   asleep: Lock, Semaphore and Event waiters set a "sleepers" bit in the
//   futex word, and the next release/set clears it (one needless wake-up
//   after a killed sleeper, then nothing).
// - Internal critical sections (arena allocation, the Condition's table, the
//   Semaphore's recovery) use process_mutex: the kernel's robust futexes
//   report a dead holder, no pid involved.
// - Blocking: every wait here is one futex wait of at most one slice that
//   reports signals (futex.hpp); the bindings loop with run_blocking.
#pragma once

#include <chrono>
#include <cstdint>
#include <iterator>
#include <memory>
#include <type_traits>

#include <fastmp/futex.hpp>
#include <fastmp/process.hpp>
#include <fastmp/robust_mutex.hpp>
#include <fastmp/segment.hpp>
#include <fastmp/status.hpp>

namespace fastmp {

// ---------------------------------------------------------------- arena

inline constexpr std::uint32_t sync_slot_bytes = 64;

struct sync_arena_header {
    std::uint32_t magic;
    std::uint32_t layout_version;
    std::uint64_t size;        // bytes of the whole file
    std::uint64_t id;          // random, identifies the arena across processes
    std::uint32_t nslots;
    std::uint32_t hint;        // where the next allocation scan starts
    std::uint32_t creator_pid;
    std::uint32_t pad;
    std::uint64_t pidns;       // the creator's pid namespace: pids recorded here are in it
    process_mutex alloc_lock;   // allocation and freeing (a dead holder's half-done work is repaired)
    // then: std::uint32_t refs[nslots] (0 = free, continuation_mark, else refcount), then slots
};
static_assert(std::is_trivially_copyable_v<sync_arena_header>);

class sync_arena {
public:
    static constexpr std::uint32_t magic_value = 0x666d4152;  // "fmAR"
    static constexpr std::uint32_t layout_version = 2;
    static constexpr std::uint32_t continuation_mark = 0xffffffffu;
    static constexpr std::uint32_t default_slots = 2048;

    static std::shared_ptr<sync_arena> create(std::uint32_t nslots = default_slots);
    // Takes ownership of fd; checks magic, version and size.
    static std::shared_ptr<sync_arena> attach(int fd);

    // First slot index of `n` consecutive slots (zeroed, refcount 1), or -1 when full.
    std::int64_t allocate(std::uint32_t n);
    void add_ref(std::uint32_t index) noexcept;
    void drop_ref(std::uint32_t index) noexcept;
    std::uint32_t refs(std::uint32_t index) const noexcept;

    std::byte* slot(std::uint32_t index) const noexcept;
    std::uint32_t nslots() const noexcept { return header()->nslots; }
    std::uint64_t id() const noexcept { return header()->id; }
    pid_t creator() const noexcept { return static_cast<pid_t>(header()->creator_pid); }
    int fd() const noexcept { return seg_.fd.get(); }
    std::uint32_t used_slots() const noexcept;

    // Whether this process may judge holders dead (it shares the creator's pid namespace).
    bool judges() const noexcept { return header()->pidns == current_pidns() && current_pidns() != 0; }
    // What this process records as a holder: its identity, or only its pid
    // (start tag 0: never judged dead) outside the creator's pid namespace.
    std::uint64_t holder_identity() const noexcept {
        return judges() ? current_identity() : static_cast<std::uint32_t>(current_pid());
    }

private:
    void repair_after_dead_holder() noexcept;
    sync_arena_header* header() const noexcept { return reinterpret_cast<sync_arena_header*>(seg_.data()); }
    std::uint32_t* ref_table() const noexcept;
    segment seg_;
};

// A counted reference from this process to an object in an arena. Every
// process that uses the object owns one: the creator, each rebuild under
// spawn/forkserver, and each forked child (taken for every live handle just
// before fork, so the parent cannot free a slot the child has not reached yet). It is dropped when the handle dies in the process that took it,
// or all at once by sync_drop_all_refs() when the process exits normally.
class sync_ref {
public:
    struct state {
        std::shared_ptr<sync_arena> arena;
        std::uint32_t index = 0;
        pid_t owner = 0;  // 0: holds no reference
    };
    sync_ref() = default;
    sync_ref(std::shared_ptr<sync_arena> a, std::uint32_t index, bool counted);
    sync_ref(sync_ref&&) noexcept = default;
    sync_ref& operator=(sync_ref&&) noexcept = default;
    ~sync_ref();
    std::byte* data() const noexcept { return s_->arena->slot(s_->index); }
    const std::shared_ptr<sync_arena>& arena() const noexcept { return s_->arena; }
    std::uint32_t index() const noexcept { return s_->index; }

private:
    std::unique_ptr<state> s_;  // stable address: the process-wide list points to it
};

// Drops every reference this process holds (at normal exit of a child).
void sync_drop_all_refs() noexcept;

// Test hook: sync_test_stop_at("semaphore.recorded") makes this process stop
// itself (SIGSTOP) when it reaches that point, so that a test can SIGKILL it
// in exactly that state; nullptr disarms. Points: "semaphore.recorded"
// (a unit recorded, not yet taken), "semaphore.given" (a unit given back,
// not yet unrecorded).
void sync_test_stop_at(const char* point) noexcept;
namespace detail {
extern const char* sync_test_stop_point;
void sync_test_stop_here(const char* point) noexcept;
}  // namespace detail
inline void sync_test_point(const char* point) noexcept {
    if (__builtin_expect(detail::sync_test_stop_point != nullptr, 0)) detail::sync_test_stop_here(point);
}

// Test hook: the next forked child blocks in its fork handler until one byte
// can be read from `fd` (-1 turns it off), so a test can act in the parent
// while the child is known not to have run yet.
void sync_test_pause_child_after_fork(int fd) noexcept;

// The process-wide arena table: allocation, and attaching arenas received
// from other processes (each arena is mapped once per process).
// `fd` is consumed: adopted, or closed when the arena is mapped already.
sync_ref sync_allocate(std::uint32_t bytes);
sync_ref sync_attach(int fd, std::uint64_t arena_id, std::uint32_t index);

// ---------------------------------------------------------------- layouts

enum class sync_kind : std::uint32_t { lock = 1, rlock = 2, semaphore = 3, event = 4, condition = 5, barrier = 6 };

struct sync_object_header {
    std::uint32_t magic;
    std::uint16_t layout_version;
    std::uint16_t kind;
    std::uint32_t size;
    std::uint32_t reserved;
};

inline constexpr std::uint32_t sync_object_magic = 0x666d5359;  // "fmSY"
inline constexpr std::uint16_t sync_object_version = 2;

// Identities (process.hpp) as stored in shared memory: start tag << 32 | pid.
inline std::uint32_t id_pid(std::uint64_t id) noexcept { return static_cast<std::uint32_t>(id); }
inline std::uint32_t id_start(std::uint64_t id) noexcept { return static_cast<std::uint32_t>(id >> 32); }
// Start tag 0: recorded by a process that cannot be judged (another pid
// namespace, or no /proc): alive, whatever its pid says here.
inline bool id_alive(std::uint64_t id) noexcept {
    return id_start(id) == 0 || process_alive(static_cast<pid_t>(id_pid(id)), id_start(id));
}

// The one table of "which process holds how many" (Semaphore holders,
// Barrier parties). Lock-free: a process claims a slot by one CAS of its
// identity (free slots are 0; a dead process's empty slot may be taken
// over), and then only it changes the count, except a recovering waiter,
// which only takes units from dead processes' slots.
struct pid_slot {
    std::uint64_t id;
    std::uint32_t count;
    std::uint32_t pad;
};

class pid_table {
public:
    pid_table(pid_slot* slots, std::uint32_t n) noexcept : slots_(slots), n_(n) {}
    // The slot of `id`, claimed when it has none; nullptr when the table is full.
    // `hint` is a per-handle cache of the index.
    // take_over: the caller may judge the liveness of others (sync_arena::judges).
    pid_slot* claim(std::uint64_t id, std::uint32_t& hint, bool take_over) noexcept;
    // A slot of `id` with count > 0, or nullptr.
    pid_slot* holding(std::uint64_t id) const noexcept;
    std::uint32_t held_by(std::uint64_t id) const noexcept;
    pid_slot* begin() const noexcept { return slots_; }
    pid_slot* end() const noexcept { return slots_ + n_; }

private:
    pid_slot* slots_;
    std::uint32_t n_;
};

struct lock_layout {  // Lock and RLock
    sync_object_header h;
    std::uint64_t word;       // 0 = free, else holder identity | waiters_bit; the futex is its low half
    std::uint32_t owner_tid;  // thread that acquired it (for _is_mine / RLock)
    std::uint32_t count;      // RLock recursion depth
};

struct semaphore_layout {
    sync_object_header h;
    std::uint32_t value;      // futex word: units | sleepers_bit
    std::uint32_t maxvalue;
    std::uint32_t initial;
    std::uint32_t untracked;  // units held by processes that found the table full
    process_mutex recovery;    // one recovering waiter at a time
    pid_slot holders[28];
};

struct event_layout {
    sync_object_header h;
    std::uint32_t flag;  // futex word: set_bit | sleepers_bit
    std::uint32_t pad;
};

struct cond_entry {
    std::uint64_t id;     // the waiter's identity
    std::uint32_t tid;
    std::uint32_t state;  // 0 free, 1 waiting, 2 notified
    std::uint32_t order;
    std::uint32_t pad;
};

struct condition_layout {
    sync_object_header h;
    process_mutex m;
    std::uint32_t seq;       // futex word, bumped by every notification
    std::uint32_t waiting;   // entries in state 1, plus overflow waiters
    std::uint32_t next_order;
    std::uint32_t overflow;  // waiters that found the table full
    cond_entry entries[80];
};

struct barrier_layout {
    sync_object_header h;
    std::int32_t state;  // threading.Barrier's: 0 filling, 1 draining, -1 resetting, -2 broken
    std::int32_t count;
    std::uint32_t parties;
    std::uint32_t pad;
    pid_slot inside[56];  // processes inside wait()
};

static_assert(std::is_trivially_copyable_v<lock_layout>);
static_assert(std::is_trivially_copyable_v<semaphore_layout>);
static_assert(std::is_trivially_copyable_v<event_layout>);
static_assert(std::is_trivially_copyable_v<condition_layout>);
static_assert(std::is_trivially_copyable_v<barrier_layout>);

// ---------------------------------------------------------------- primitives

// Lock (recursive = false) and RLock (recursive = true).
class shm_lock {
public:
    static constexpr std::uint64_t waiters_bit = 0x80000000u;  // in the futex (low) half
    static constexpr std::uint64_t pid_mask = 0x7fffffffu;

    static shm_lock create(bool recursive);
    static shm_lock attach(sync_ref ref);

    // The fast path: no syscalls.
    bool try_acquire() noexcept {
        lock_layout* l = layout_;
        const std::uint64_t me = arena_->holder_identity();
        std::uint64_t expected = 0;
        if (atomic(l->word).compare_exchange_strong(expected, me, std::memory_order_acquire)) {
            atomic(l->owner_tid).store(static_cast<std::uint32_t>(current_tid()), std::memory_order_relaxed);
            if (recursive_) l->count = 1;
            return true;
        }
        if (recursive_ && (expected & ~waiters_bit) == me &&
            atomic(l->owner_tid).load(std::memory_order_relaxed) == static_cast<std::uint32_t>(current_tid())) {
            if (l->count == 0xffffffffu) return false;
            ++l->count;
            return true;
        }
        return false;
    }
    // The try after a wait: keeps the waiters bit, since others may sleep too.
    bool try_acquire_after_wait() noexcept;
    // status::ok, too_many (Lock not held), not_owner (RLock of someone else).
    status release() noexcept;

    std::uint64_t ticket() const noexcept { return atomic(layout_->word).load(); }
    // One slice of waiting; after a slice that timed out, releases the lock
    // on behalf of a dead holder (then the caller's next try succeeds).
    wait_result wait(std::uint64_t ticket, clock::duration slice) noexcept;
    // Recovers from a dead holder now, if there is one; true when it did.
    bool recover_dead_holder() noexcept;

    bool is_mine() const noexcept;
    std::uint32_t count() const noexcept;   // recursion depth if this process holds it, else 0
    std::uint32_t holder_pid() const noexcept { return static_cast<std::uint32_t>(ticket() & pid_mask); }
    bool locked() const noexcept { return holder_pid() != 0; }
    bool sleepers() const noexcept { return (ticket() & waiters_bit) != 0; }
    bool recursive() const noexcept { return recursive_; }
    const sync_ref& ref() const noexcept { return ref_; }

private:
    bool held_by_this_process() const noexcept {
        return (ticket() & ~waiters_bit) == arena_->holder_identity();
    }
    void took_it() noexcept;
    sync_ref ref_;
    lock_layout* layout_ = nullptr;
    const sync_arena* arena_ = nullptr;
    bool recursive_ = false;
};

// Counting semaphore; maxvalue bounds release() (BoundedSemaphore).
//
// Recovery rule for dead holders: units are recorded per process (up to 28
// processes; more holders at once are counted as untracked and never
// recovered). When a waiter finds a recorded holder dead, it gives back that
// holder's units, but only as many as are needed to bring value + units held
// by live processes back up to the initial value: a semaphore used for
// signalling (released by one process, acquired by another that never
// releases) is never topped up by a death, and a holder counted one unit too
// many (killed between recording and taking) costs nothing.
class shm_semaphore {
public:
    static constexpr std::uint32_t sleepers_bit = 0x80000000u;
    static constexpr std::uint32_t units_mask = 0x7fffffffu;

    static shm_semaphore create(std::uint32_t value, std::uint32_t maxvalue);
    static shm_semaphore attach(sync_ref ref);

    bool try_acquire() noexcept { return take(false); }
    // After a wait: keeps the sleepers bit (others may sleep too) and passes
    // the wake-up on while units remain.
    bool try_acquire_after_wait() noexcept { return take(true); }
    status release() noexcept;  // ok, or too_many past maxvalue
    std::uint32_t ticket() const noexcept { return atomic(layout_->value).load(); }
    wait_result wait(std::uint32_t ticket, clock::duration slice) noexcept;
    // Returns dead holders' units per the rule above; the number returned.
    std::uint32_t recover_dead_holders() noexcept;

    std::uint32_t value() const noexcept { return ticket() & units_mask; }
    std::uint32_t maxvalue() const noexcept { return layout_->maxvalue; }
    std::uint32_t held_by_me() const noexcept;
    bool sleepers() const noexcept { return (ticket() & sleepers_bit) != 0; }
    const sync_ref& ref() const noexcept { return ref_; }

private:
    bool take(bool after_wait) noexcept;
    pid_table holders() const noexcept { return {layout_->holders, static_cast<std::uint32_t>(std::size(layout_->holders))}; }
    sync_ref ref_;
    semaphore_layout* layout_ = nullptr;
    const sync_arena* arena_ = nullptr;
    std::uint32_t hint_ = 0;
};

class shm_event {
public:
    static constexpr std::uint32_t set_bit = 1;
    static constexpr std::uint32_t sleepers_bit = 2;

    static shm_event create();
    static shm_event attach(sync_ref ref);

    bool is_set() const noexcept { return (atomic(layout_->flag).load() & set_bit) != 0; }
    void set() noexcept;
    void clear() noexcept { atomic(layout_->flag).fetch_and(~set_bit); }
    std::uint32_t ticket() const noexcept { return atomic(layout_->flag).load(); }
    wait_result wait(std::uint32_t ticket, clock::duration slice) noexcept;
    bool sleepers() const noexcept { return (ticket() & sleepers_bit) != 0; }
    const sync_ref& ref() const noexcept { return ref_; }
    // How long the next wait spins before sleeping (ns): halved by every spin
    // that fails (the setter is not running), grown by spins that succeed.
    std::int64_t spin_budget() const noexcept { return atomic(const_cast<std::int64_t&>(spin_budget_)).load(); }
    static constexpr std::int64_t max_spin_ns = 3000;

private:
    sync_ref ref_;
    event_layout* layout_ = nullptr;
    std::int64_t spin_budget_ = max_spin_ns;  // per handle: adapts to whether spinning pays
};

// The waiter table of a Condition (the user's lock is handled by the caller).
// wait: index = enlist() while holding the lock; release the lock; loop on
// notified(index) / wait(...); finish(index); reacquire the lock.
class shm_condition {
public:
    static constexpr std::int32_t overflow_index = -1;

    static shm_condition create();
    static shm_condition attach(sync_ref ref);

    std::int32_t enlist() noexcept;
    std::uint32_t ticket() const noexcept { return atomic(layout_->seq).load(); }
    // For overflow waiters, `since` is the seq read at enlist time.
    bool notified(std::int32_t index, std::uint32_t since) const noexcept;
    wait_result wait(std::int32_t index, std::uint32_t ticket, clock::duration slice) noexcept;
    // Leaves the table; true when a notification had arrived.
    bool finish(std::int32_t index, std::uint32_t since) noexcept;
    // Marks up to n waiting entries (oldest first) notified; returns how many.
    std::uint32_t notify(std::uint64_t n) noexcept;
    std::uint32_t waiting() const noexcept { return atomic(layout_->waiting).load(); }
    // Passes notifications of dead waiters on to live ones.
    void rescue_orphans() noexcept;
    const sync_ref& ref() const noexcept { return ref_; }

private:
    sync_ref ref_;
    condition_layout* layout_ = nullptr;
    const sync_arena* arena_ = nullptr;
};

// A Barrier's shared state; all changes are made under the Barrier's
// Condition lock, so plain atomics suffice.
class shm_barrier_state {
public:
    static shm_barrier_state create(std::uint32_t parties);
    static shm_barrier_state attach(sync_ref ref);

    std::int32_t state() const noexcept { return atomic(layout_->state).load(); }
    void set_state(std::int32_t s) noexcept { atomic(layout_->state).store(s); }
    std::int32_t count() const noexcept { return atomic(layout_->count).load(); }
    std::uint32_t parties() const noexcept { return layout_->parties; }
    void arrive() noexcept;   // count += 1, recorded for this pid
    void leave() noexcept;    // count -= 1
    // Forgets parties whose process died inside wait(); returns how many.
    // quick: only processes already reaped (one kill(pid, 0) each), for the
    // check the last party makes before releasing the others.
    std::uint32_t reap_dead(bool quick = false) noexcept;
    const sync_ref& ref() const noexcept { return ref_; }

private:
    pid_table inside() const noexcept { return {layout_->inside, static_cast<std::uint32_t>(std::size(layout_->inside))}; }
    sync_ref ref_;
    barrier_layout* layout_ = nullptr;
    const sync_arena* arena_ = nullptr;
    std::uint32_t hint_ = 0;
};

}  // namespace fastmp
