#include <fastmp/robust_mutex.hpp>

#include <atomic>
#include <chrono>

#include <fastmp/futex.hpp>
#include <fastmp/process.hpp>

namespace fastmp {

namespace {
constexpr int spin_tries = 100;
// How long a waiter sleeps before checking whether the holder is still alive.
constexpr auto liveness_slice = std::chrono::milliseconds(20);
}  // namespace

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
