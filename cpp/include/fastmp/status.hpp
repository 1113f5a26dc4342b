// Status values and the one exception type of the fastmp core.
//
// Expected outcomes of a non-blocking call (empty, full, timed out, ...) are
// returned as `status`; real failures of the operating system are thrown as
// `sys_error`, which carries errno. The bindings translate both in one place.
#pragma once

#include <cerrno>
#include <string>
#include <system_error>

namespace fastmp {

enum class status {
    ok,
    empty,       // nothing to take
    full,        // no room under the configured bound
    timed_out,   // a deadline passed
    interrupted, // a signal arrived while waiting (EINTR)
    closed,      // the other side is gone or the object was closed
    too_many,    // released / task_done more often than acquired / put
    not_owner,   // released by a thread or process that does not hold it
    owner_died,  // acquired, but the previous holder died holding it
    broken,      // a barrier was aborted or one of its parties died
    would_grow,  // a queue would have to grow its buffer (caller asked it not to yet)
};

class sys_error : public std::system_error {
public:
    sys_error(int err, const std::string& what)
        : std::system_error(err, std::generic_category(), what) {}
};

[[noreturn]] inline void throw_errno(const std::string& what) { throw sys_error(errno, what); }

}  // namespace fastmp
