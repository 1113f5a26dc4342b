#include <fastmp/robust_mutex.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>

#include <unistd.h>

#include <fastmp/futex.hpp>
#include <fastmp/process.hpp>

namespace fastmp {

namespace {
constexpr int spin_tries = 100;
// How long a waiter sleeps before checking whether the holder is still alive.
constexpr auto liveness_slice = std::chrono::milliseconds(20);
// process_mutex waits at most this long per kernel sleep, so that a
// CLOCK_REALTIME jump cannot stretch a wait by more than one slice.
constexpr auto timed_slice = std::chrono::milliseconds(50);

status from_lock_rc(pthread_mutex_t* m, int rc) noexcept {
    switch (rc) {
        case 0: return status::ok;
        case EOWNERDEAD:
            // We own it now; make it usable again before repairing, so a
            // death during the repair is reported to the next taker as well.
            ::pthread_mutex_consistent(m);
            return status::owner_died;
        default: return status::timed_out;  // EBUSY, ETIMEDOUT
    }
}
}  // namespace

void process_mutex::init() {
    pthread_mutexattr_t a;
    if (int rc = ::pthread_mutexattr_init(&a)) throw sys_error(rc, "pthread_mutexattr_init");
    int rc = ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = ::pthread_mutex_init(&m, &a);
    ::pthread_mutexattr_destroy(&a);
    if (rc) throw sys_error(rc, "pthread_mutex_init (robust, process-shared)");
}

status process_mutex::try_lock() noexcept { return from_lock_rc(&m, ::pthread_mutex_trylock(&m)); }

status process_mutex::lock(const deadline& dl) noexcept {
    status st = try_lock();
    if (st != status::timed_out) return st;
    // Held sections are a few hundred nanoseconds: a short spin usually wins
    // it without a syscall (and saves the caller a GIL round trip).
    for (int i = 0; i < spin_tries; ++i) {
        cpu_relax();
        if (atomic(reinterpret_cast<std::uint32_t&>(m.__data.__lock)).load(std::memory_order_relaxed) == 0) {
            st = try_lock();
            if (st != status::timed_out) return st;
        }
    }
    for (;;) {
        if (dl.expired()) return status::timed_out;
        auto slice = dl.slice(timed_slice);
        timespec ts{};
        ::clock_gettime(CLOCK_REALTIME, &ts);
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(slice).count();
        ts.tv_sec += static_cast<time_t>(ns / 1000000000);
        ts.tv_nsec += static_cast<long>(ns % 1000000000);
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1000000000;
        }
#if defined(__SANITIZE_THREAD__)
        // ThreadSanitizer's timedlock interceptor does not record a lock
        // taken with EOWNERDEAD (its trylock one does): poll with trylock.
        (void)ts;
        st = try_lock();
        if (st != status::timed_out) return st;
        ::usleep(200);
        continue;
#else
        int rc = ::pthread_mutex_timedlock(&m, &ts);
        if (rc != ETIMEDOUT) return from_lock_rc(&m, rc);
#endif
    }
}

void process_mutex::unlock() noexcept { ::pthread_mutex_unlock(&m); }

bool robust_mutex::try_lock() noexcept {
    std::uint32_t expected = 0;
    return atomic(word).compare_exchange_strong(expected, static_cast<std::uint32_t>(current_pid()),
                                                std::memory_order_acquire, std::memory_order_relaxed);
}

status robust_mutex::lock() noexcept {
    auto w = atomic(word);
    const auto me = static_cast<std::uint32_t>(current_pid());
    std::uint32_t expected = 0;
    if (w.compare_exchange_strong(expected, me, std::memory_order_acquire, std::memory_order_relaxed))
        return status::ok;
    for (int i = 0; i < spin_tries; ++i) {
        cpu_relax();
        expected = 0;
        if (w.load(std::memory_order_relaxed) == 0 &&
            w.compare_exchange_strong(expected, me, std::memory_order_acquire, std::memory_order_relaxed))
            return status::ok;
    }
    for (;;) {
        std::uint32_t v = w.load(std::memory_order_relaxed);
        if (v == 0) {
            // We cannot know whether others sleep, so keep the bit set.
            if (w.compare_exchange_strong(v, me | waiters_bit, std::memory_order_acquire,
                                          std::memory_order_relaxed))
                return status::ok;
            continue;
        }
        if (!(v & waiters_bit) &&
            !w.compare_exchange_strong(v, v | waiters_bit, std::memory_order_relaxed, std::memory_order_relaxed))
            continue;
        v |= waiters_bit;
        if (futex_wait(&word, v, liveness_slice) == wait_result::timed_out) {
            auto holder = static_cast<pid_t>(v & pid_mask);
            if (!process_alive(holder) &&
                w.compare_exchange_strong(v, me | waiters_bit, std::memory_order_acquire,
                                          std::memory_order_relaxed))
                return status::owner_died;
        }
    }
}

void robust_mutex::unlock() noexcept {
    if (atomic(word).exchange(0, std::memory_order_release) & waiters_bit) futex_wake(&word, 1);
}

}  // namespace fastmp
