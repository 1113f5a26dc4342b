// Process-shared mutexes that survive the death of their holder.
//
// Design notes
// - `process_mutex` is the one for fastmp's internal critical sections (the
//   queue's and the channel's locks, the sync arena's allocator and internal
//   tables, the manager's containers). It is a process-shared *robust* pthread
//   mutex: glibc registers a held robust mutex in the holding thread's robust
//   list (set_robust_list), and when that thread dies the kernel itself marks
//   the futex word FUTEX_OWNER_DIED and wakes a waiter, who gets EOWNERDEAD.
//   No pid is polled, so neither a recycled pid nor a holder in another pid
//   namespace is mistaken for a live holder, and a dead holder is noticed at
//   once instead of after a liveness slice.
// - It lives in shared memory (40 bytes, trivially copyable); the creator of
//   the layout calls init() once, before anyone else can see it.
// - Waits are bounded: lock(deadline) sleeps in the kernel for at most the
//   time left (pthread_mutex_timedlock, an absolute CLOCK_REALTIME time that
//   we compute from the monotonic deadline in short slices, so a clock jump
//   costs at most one slice) and reports timed_out. Callers that run on a
//   Python thread take the fast try first with the GIL, then wait without it
//   in slices, checking signals between slices (see bindings/common.hpp).
// - A taker told status::owner_died owns the mutex and it is already marked
//   consistent again: it must repair what the mutex guards (idempotently: if
//   it dies while repairing, the next taker is told owner_died again).
// - `robust_mutex` is the pid-polling lock (a 4-byte word). The manager's
//   containers keep it because they hold their lock across a remap of the
//   whole segment (mremap may move it): the kernel's robust list records the
//   mutex's address at lock time, so a process_mutex that moved while held
//   would never be marked owner-died and its waiters would wait forever. The
//   user-visible Lock and Semaphore cannot be robust pthread mutexes (any
//   thread or process may release them): sync.hpp says how they judge a
//   holder dead.
#pragma once

#include <cstdint>
#include <type_traits>

#include <pthread.h>

#include <fastmp/futex.hpp>
#include <fastmp/status.hpp>

namespace fastmp {

struct process_mutex {
    pthread_mutex_t m;

    // Once, by the creator of the shared layout. Throws sys_error.
    void init();
    // ok, owner_died (taken over: repair), or timed_out (someone holds it).
    status try_lock() noexcept;
    // As try_lock, waiting until `dl` (an expired deadline = try once; the
    // default = forever). Not interruptible by itself: callers that must
    // react to signals pass short deadlines and loop.
    status lock(const deadline& dl = deadline()) noexcept;
    void unlock() noexcept;
};
static_assert(std::is_trivially_copyable_v<process_mutex>);
static_assert(std::is_standard_layout_v<process_mutex>);

struct robust_mutex {
    std::uint32_t word;  // 0 = free, else holder pid | waiters_bit

    static constexpr std::uint32_t waiters_bit = 0x80000000u;
    static constexpr std::uint32_t pid_mask = 0x7fffffffu;

    // status::ok, or status::owner_died when taken over from a dead holder.
    status lock() noexcept;
    bool try_lock() noexcept;
    void unlock() noexcept;
};
static_assert(std::is_trivially_copyable_v<robust_mutex>);
static_assert(std::is_standard_layout_v<robust_mutex>);

// RAII holder of either mutex, waiting as long as it takes (for short
// internal sections that never block); `recovered()`: the previous holder
// died and the caller must repair what the mutex guards.
template <class Mutex>
class basic_robust_guard {
public:
    explicit basic_robust_guard(Mutex& m) noexcept : m_(m), st_(m.lock()) {}
    ~basic_robust_guard() { m_.unlock(); }
    basic_robust_guard(const basic_robust_guard&) = delete;
    basic_robust_guard& operator=(const basic_robust_guard&) = delete;
    bool recovered() const noexcept { return st_ == status::owner_died; }

private:
    Mutex& m_;
    status st_;
};
using process_lock_guard = basic_robust_guard<process_mutex>;
using robust_lock_guard = basic_robust_guard<robust_mutex>;

}  // namespace fastmp
