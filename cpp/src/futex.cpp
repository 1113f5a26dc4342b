#include <fastmp/futex.hpp>

#include <cerrno>
#include <climits>
#include <ctime>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fastmp {

wait_result futex_wait(std::uint32_t* word, std::uint32_t expected,
                       std::optional<clock::duration> timeout) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout) {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout).count();
        if (ns <= 0) return wait_result::timed_out;
        ts.tv_sec = static_cast<time_t>(ns / 1000000000);
        ts.tv_nsec = static_cast<long>(ns % 1000000000);
        tsp = &ts;
    }
    // Not FUTEX_PRIVATE: the word is shared between processes.
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, nullptr, 0);
    if (rc == 0) return wait_result::woken;
    switch (errno) {
        case EINTR: return wait_result::interrupted;
        case ETIMEDOUT: return wait_result::timed_out;
        default: return wait_result::woken;  // EAGAIN: the word changed already
    }
}

void futex_wake(std::uint32_t* word, int n) {
    syscall(SYS_futex, word, FUTEX_WAKE, n <= 0 ? INT_MAX : n, nullptr, nullptr, 0);
}

}  // namespace fastmp
