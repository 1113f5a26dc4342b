// Who am I, and is that process still alive?
//
// Robust primitives record the pid of their holder and, when a wait drags
// on, ask whether that pid still runs. A killed process stays a zombie until
// it is reaped, so "alive" means: exists and is not a zombie.
#pragma once

#include <sys/types.h>

namespace fastmp {

// getpid(), cached and refreshed in forked children (glibc no longer caches it).
pid_t current_pid() noexcept;

// Thread id, for recursive locks owned by a thread.
pid_t current_tid() noexcept;

// True unless the process is known to be gone (no such pid, or a zombie).
bool process_alive(pid_t pid) noexcept;

}  // namespace fastmp
