// Who am I, and is that process still alive?
//
// Robust primitives record the pid of their holder and, when a wait drags
// on, ask whether that pid still runs. A killed process stays a zombie until
// it is reaped, so "alive" means: exists and is not a zombie.
#pragma once

#include <cstdint>

#include <sys/types.h>

namespace fastmp {

namespace detail {
// Refreshed in the child by a fork handler (process.cpp).
extern pid_t cached_pid;
extern std::uint32_t cached_start_tag;
extern std::uint64_t cached_pidns;
}  // namespace detail

// getpid(), cached and refreshed in forked children (glibc no longer caches it).
inline pid_t current_pid() noexcept { return detail::cached_pid; }

// Thread id, for recursive locks owned by a thread.
pid_t current_tid() noexcept;

// True unless the process is known to be gone (no such pid, or a zombie).
bool process_alive(pid_t pid) noexcept;

// A pid names a process only until it is reused. Together with the process's
// start time (clock ticks since boot, field 22 of /proc/<pid>/stat, low 32
// bits) it names one process for the life of the machine. Tag 0 means "not
// known": such a process is never judged dead (no /proc, or recorded by a
// process in another pid namespace, where our pid numbers mean nothing).
inline std::uint32_t current_start_tag() noexcept { return detail::cached_start_tag; }
// The pid namespace of this process (inode of /proc/self/ns/pid; 0 if unknown).
inline std::uint64_t current_pidns() noexcept { return detail::cached_pidns; }
// {start tag << 32 | pid} of this process.
inline std::uint64_t current_identity() noexcept {
    return std::uint64_t{current_start_tag()} << 32 | static_cast<std::uint32_t>(current_pid());
}
// Like process_alive(pid), and also gone when that pid now belongs to a
// process that started at another time (the pid was reused). tag 0: alive.
bool process_alive(pid_t pid, std::uint32_t start_tag) noexcept;

}  // namespace fastmp
