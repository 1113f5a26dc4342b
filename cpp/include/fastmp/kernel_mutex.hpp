// A process-shared mutex whose holder's death the kernel reports: a pthread
// mutex with PTHREAD_PROCESS_SHARED and PTHREAD_MUTEX_ROBUST, i.e. the
// kernel's robust-futex list. When a thread dies holding it (its whole
// process killed by SIGKILL included), the kernel marks the futex word
// FUTEX_OWNER_DIED and wakes a waiter, which gets the mutex together with
// status::owner_died and must repair what the dead holder left half done.
//
// Design notes
// - No pid polling: unaffected by pid reuse or pid namespaces.
// - Lives in shared memory (trivially copyable); init() once, by the creator,
//   before anyone else can see it. Never destroyed: the memory goes with the
//   segment.
// - Only for short internal critical sections that the same thread locks and
//   unlocks and that never block: its wait is not interruptible and the
//   holder's *thread* must unlock it (a robust mutex belongs to a thread).
//   That is why the user-visible Lock and Semaphore do not use it (any
//   thread or process may release those), see sync.hpp.
#pragma once

#include <pthread.h>

#include <type_traits>

#include <fastmp/status.hpp>

namespace fastmp {

struct kernel_mutex {
    pthread_mutex_t m;

    void init();            // throws sys_error
    status lock() noexcept;  // ok, or owner_died (then it is held, and consistent again)
    void unlock() noexcept { ::pthread_mutex_unlock(&m); }
};
static_assert(std::is_trivially_copyable_v<kernel_mutex>);

class kernel_lock_guard {
public:
    explicit kernel_lock_guard(kernel_mutex& m) noexcept : m_(m), st_(m.lock()) {}
    ~kernel_lock_guard() { m_.unlock(); }
    kernel_lock_guard(const kernel_lock_guard&) = delete;
    kernel_lock_guard& operator=(const kernel_lock_guard&) = delete;
    bool recovered() const noexcept { return st_ == status::owner_died; }

private:
    kernel_mutex& m_;
    status st_;
};

}  // namespace fastmp
