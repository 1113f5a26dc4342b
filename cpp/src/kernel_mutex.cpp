#include <fastmp/kernel_mutex.hpp>

#include <cerrno>

namespace fastmp {

void kernel_mutex::init() {
    pthread_mutexattr_t a;
    int rc = ::pthread_mutexattr_init(&a);
    if (rc == 0) rc = ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = ::pthread_mutex_init(&m, &a);
    ::pthread_mutexattr_destroy(&a);
    if (rc != 0) throw sys_error(rc, "cannot initialise a process-shared robust mutex");
}

status kernel_mutex::lock() noexcept {
    for (;;) {
        int rc = ::pthread_mutex_lock(&m);
        if (rc == 0) return status::ok;
        if (rc == EOWNERDEAD) {
            // The caller repairs the state under the lock; from here on the
            // mutex is an ordinary one again.
            ::pthread_mutex_consistent(&m);
            return status::owner_died;
        }
        // ENOTRECOVERABLE cannot happen (every owner_died is made consistent);
        // EAGAIN/EINTR-like transient failures: try again.
    }
}

}  // namespace fastmp
