#include <fastmp/process.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fastmp {

namespace detail {
pid_t cached_pid = 0;
std::uint32_t cached_start_tag = 0;
std::uint64_t cached_pidns = 0;
}  // namespace detail

namespace {
using detail::cached_pid;
using detail::cached_pidns;
using detail::cached_start_tag;
thread_local pid_t cached_tid = 0;

// Parses /proc/<path>/stat: its state letter and start time. Only
// async-signal-safe calls (it runs in the fork handler of the child).
bool read_stat(const char* path, char* state, std::uint64_t* start) noexcept {
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[1024];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');  // comm may contain spaces and parens
    if (!p || p[1] == '\0' || p[2] == '\0') return false;
    *state = p[2];
    // Fields after ")": state is field 3; starttime is field 22.
    int field = 2;
    for (p += 1; *p && field < 22; ++p)
        if (*p == ' ') ++field;
    if (field != 22) return false;
    std::uint64_t v = 0;
    for (; *p >= '0' && *p <= '9'; ++p) v = v * 10 + static_cast<std::uint64_t>(*p - '0');
    *start = v;
    return true;
}

std::uint32_t tag_of(std::uint64_t start) noexcept {
    auto t = static_cast<std::uint32_t>(start);
    return t == 0 ? 1 : t;
}

void refresh_identity() noexcept {
    cached_pid = ::getpid();
    char state;
    std::uint64_t start;
    cached_start_tag = read_stat("/proc/self/stat", &state, &start) ? tag_of(start) : 0;
    struct stat st;
    cached_pidns = ::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0;
}

void refresh_after_fork() {
    refresh_identity();
    cached_tid = 0;
}

struct pid_cache_init {
    pid_cache_init() {
        refresh_identity();
        ::pthread_atfork(nullptr, nullptr, refresh_after_fork);
    }
} pid_cache_init_instance;
}  // namespace



pid_t current_tid() noexcept {
    // The forking thread keeps a stale cache; compare pids to notice.
    if (cached_tid == 0 || cached_tid == -1) cached_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    return cached_tid;
}

bool process_alive(pid_t pid) noexcept { return process_alive(pid, 0); }

bool process_alive(pid_t pid, std::uint32_t start_tag) noexcept {
    if (pid <= 0) return false;
    if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
    // Killed but not reaped yet: still a pid, but a zombie holds nothing.
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    char state;
    std::uint64_t start;
    errno = 0;
    if (!read_stat(path, &state, &start)) return errno != ENOENT;
    if (state == 'Z' || state == 'X') return false;
    return start_tag == 0 || tag_of(start) == start_tag;
}

}  // namespace fastmp
