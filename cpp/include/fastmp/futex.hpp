// Process-shared futex waits and wakes on 32-bit words in shared memory.
//
// Every blocking wait in fastmp ends up here: it reports a signal (EINTR) to
// the caller instead of retrying, so the binding can run Python's signal
// handlers, and it takes a relative timeout that the caller computes from a
// monotonic deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace fastmp {

enum class wait_result { woken, timed_out, interrupted };

using clock = std::chrono::steady_clock;

// Sleeps while *word == expected, at most `timeout` (forever when empty).
// Spurious wake-ups are possible: callers re-check their condition.
wait_result futex_wait(std::uint32_t* word, std::uint32_t expected,
                       std::optional<clock::duration> timeout);

// Wakes at most n waiters (n <= 0: all of them).
void futex_wake(std::uint32_t* word, int n);

// Atomic access to plain integers that live in shared memory.
template <class T>
std::atomic_ref<T> atomic(T& v) noexcept {
    return std::atomic_ref<T>(v);
}

// Busy-wait hint for short spins.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Spinning before a futex sleep, for the waits that pay for it: spins up to
// `budget` rounds while ready() is false and says whether it became true. The
// budget adapts: doubled (plus 16, at most max_budget) when spinning paid,
// halved when it did not, because it pays only while the other side is
// running and about to deliver; where it is not (every core busy, a stopped
// or idle peer), a waiter soon goes to sleep at once. It never yields the
// CPU: on a busy machine sched_yield() handed it to a CPU-bound process for
// a whole time slice (ProcessPoolExecutor.submit fell to 0.3x the stdlib's
// rate with two CPU-bound processes on 2 cores).
// The budget never drops below a few rounds, so that spinning can start
// paying again once the machine is quiet.
template <class Ready>
bool spin_until(Ready&& ready, int& budget, int max_budget) noexcept {
    constexpr int least = 16;
    for (int i = 0; i < budget; ++i) {
        if (ready()) {
            budget = budget < (max_budget - least) / 2 ? budget * 2 + least : max_budget;
            return true;
        }
        cpu_relax();
    }
    budget = budget / 2 > least ? budget / 2 : least;
    return false;
}

// A point in time by which a blocking call must return; empty = never.
class deadline {
public:
    deadline() = default;  // forever
    explicit deadline(clock::duration d) : at_(clock::now() + d) {}
    static deadline after_seconds(double s) {
        if (s < 0) s = 0;
        return deadline(std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(s)));
    }
    bool forever() const noexcept { return !at_.has_value(); }
    bool expired() const { return at_ && clock::now() >= *at_; }
    // Time left, capped at `slice`; forever -> slice.
    clock::duration slice(clock::duration slice) const {
        if (!at_) return slice;
        auto left = *at_ - clock::now();
        if (left < clock::duration::zero()) left = clock::duration::zero();
        return left < slice ? left : slice;
    }
    std::optional<clock::duration> remaining() const {
        if (!at_) return std::nullopt;
        auto left = *at_ - clock::now();
        return left < clock::duration::zero() ? clock::duration::zero() : left;
    }

private:
    std::optional<clock::time_point> at_;
};

}  // namespace fastmp
