#include <fastmp/process.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fastmp {

namespace {
pid_t cached_pid = 0;
thread_local pid_t cached_tid = 0;

void refresh_after_fork() { cached_pid = ::getpid(); cached_tid = 0; }

struct pid_cache_init {
    pid_cache_init() {
        cached_pid = ::getpid();
        ::pthread_atfork(nullptr, nullptr, refresh_after_fork);
    }
} pid_cache_init_instance;
}  // namespace

pid_t current_pid() noexcept { return cached_pid; }

pid_t current_tid() noexcept {
    // The forking thread keeps a stale cache; compare pids to notice.
    if (cached_tid == 0 || cached_tid == -1) cached_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    return cached_tid;
}

bool process_alive(pid_t pid) noexcept {
    if (pid <= 0) return false;
    if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
    // Killed but not reaped yet: still a pid, but a zombie holds nothing.
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno != ENOENT;
    char buf[512];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return true;
    buf[n] = '\0';
    const char* close_paren = std::strrchr(buf, ')');  // comm may contain spaces and parens
    if (!close_paren || close_paren[1] == '\0') return true;
    char state = close_paren[2];
    return state != 'Z' && state != 'X';
}

}  // namespace fastmp
