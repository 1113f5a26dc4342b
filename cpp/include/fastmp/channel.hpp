// One end of a Pipe: messages through shared memory, liveness through a socketpair.
//
// Design notes
// - Pipe() creates one AF_UNIX socketpair, one small header memfd (layout
//   below) and one shm_queue per direction (two for a duplex pipe, one for a
//   one-way pipe). Each end owns its socket and fds for the header and the
//   queues it uses; copies of an end in other processes (fork inheritance,
//   DupFd under spawn, resource_sharer after start) hold their own fds. The
//   kernel frees every segment when the last fd goes, whoever dies last.
// - Data never goes through the socket. The socket is there because the
//   kernel counts the holders of each end for us: when every copy of the
//   other end is closed (closed, exited, SIGKILLed), our socket reports HUP.
//   That is the stdlib's EOF rule, copies in children included, and also
//   what makes a send to a vanished reader raise BrokenPipeError.
// - The queues are the MPMC shm_queue: robust against a holder killed
//   mid-send or mid-recv, and unbounded (a message larger than the ring grows
//   it), so send never blocks and a 1 GiB message goes through.
// - Waking a sleeping reader: a reader first spins on the queue (adaptively:
//   the budget halves each time spinning did not pay, e.g. on a loaded
//   machine), then registers in `sleepers` and sleeps on the direction's
//   futex word for at most 2 ms; a writer that sees sleepers > 0 after
//   publishing bumps the word and wakes it. A reader that stays idle longer
//   registers in `pollers` instead and sleeps in poll() on its socket, and a
//   writer that sees pollers > 0 rings the doorbell (below): so EOF (the
//   last holder of the other end closed, exited or was killed) wakes an idle
//   reader at once, while a busy exchange pays only futex wake-ups. Closing
//   an end also bumps the futex word, for readers in their first 2 ms.
// - With nobody asleep a send makes no syscall but one poll() for
//   liveness, and not even that while a reader of the other end is blocked
//   in recv (it holds that end open, so nothing can be broken; a reader
//   killed while waiting leaves `waiting` stale, so every 64th send checks
//   anyway).
// - Level-triggered readiness for select()/connection.wait() users: once a
//   reader calls fileno() the direction switches to `bell_mode` (sticky):
//   from then on (as while pollers > 0) the invariant is "queue non-empty => a doorbell byte is in
//   the reader's socket". Writers set it (under bell_lock, after a push), the
//   reader that empties the queue clears it (under bell_lock, byte drained).
//   Messages already queued when bell_mode starts cannot be announced that
//   way (only the other end can write into our socket), so fileno() returns
//   an epoll fd watching the socket plus a process-local eventfd that the
//   reader arms itself for that backlog and clears once the queue drains.
// - A holder killed inside bell_lock: the process_mutex (robust pthread
//   mutex, the kernel reports the death) hands it over; at
//   worst a stray doorbell byte is left, which a woken reader that finds the
//   queue empty drains again (so it cannot spin).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

#include <sys/types.h>

#include <fastmp/futex.hpp>
#include <fastmp/queue.hpp>
#include <fastmp/robust_mutex.hpp>
#include <fastmp/segment.hpp>
#include <fastmp/status.hpp>

namespace fastmp {

namespace detail {

struct channel_direction {
    process_mutex bell_lock;
    std::uint32_t bell;       // 1 while a doorbell byte sits in the reader's socket
    std::uint32_t bell_mode;  // sticky: some reader waits through fileno()
    std::uint32_t sleepers;   // readers asleep (or about to be) on `seq`
    std::uint32_t seq;        // futex word: bumped to wake sleeping readers
    std::uint32_t waiting;    // readers inside a blocking wait (spinning or asleep)
    std::uint32_t pollers;    // readers asleep in poll() on their socket
    std::uint32_t pad[1];
};

struct channel_header {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t header_size;
    std::uint32_t duplex;
    std::uint32_t pad[11];
    channel_direction dir[2];  // dir[i] carries messages written by side i
};
static_assert(std::is_trivially_copyable_v<channel_header>);
static_assert(std::is_standard_layout_v<channel_header>);

}  // namespace detail

// The raw descriptors of one end (for passing it to another process); -1 = absent.
struct channel_fds {
    int sock = -1;
    int header = -1;
    int tx = -1;
    int rx = -1;
    int side = 0;
};

class channel_end {
public:
    static constexpr std::uint64_t magic = 0x666173746d706332ull;  // "fastmpc2"
    static constexpr std::uint32_t layout_version = 2;

    // A connected pair. duplex == false: first is read-only, second write-only
    // (the stdlib's order).
    static std::pair<channel_end, channel_end> create_pair(bool duplex);
    // Takes ownership of every fd >= 0 in `fds` (all closed on failure too).
    static channel_end adopt(const channel_fds& fds);

    channel_end(channel_end&&) noexcept = default;
    channel_end& operator=(channel_end&&) noexcept = default;
    ~channel_end();

    bool can_send() const noexcept { return tx_.has_value(); }
    bool can_recv() const noexcept { return rx_.has_value(); }
    channel_fds fds() const noexcept;

    // Publishes one message (the payload is copied). Never blocks: the ring
    // grows. Throws sys_error(EPIPE) when every copy of the other end is closed.
    void send(const message_view& m) { send(m, deadline()); }
    void send(std::uint32_t tag, const void* data, std::size_t size) { send(message_view{tag, data, size}); }
    // As send, waiting for the queue's internal lock at most until lock_dl:
    // ok, or timed_out (nothing sent).
    status send(const message_view& m, const deadline& lock_dl);

    // The steps of try_recv for callers that copy out themselves: claim the
    // oldest message (ok, empty, or timed_out when the lock was busy until
    // lock_dl), read it, then finish_recv.
    status try_claim(queue_claim& c, const deadline& lock_dl);
    void finish_recv(queue_claim& c) noexcept;

    // Takes the oldest message, if any: sink(tag, data, size) runs under the
    // queue lock and must copy what it needs; a sink that throws leaves the
    // message in place. Returns true when a message was taken.
    template <class Sink>
    bool try_recv(Sink&& sink);

    bool has_data() const noexcept { return rx_ && rx_->size_approx() > 0; }
    // Every copy of the other end is closed (the socket reports HUP).
    bool peer_closed() const noexcept;
    // Waits up to `slice` for a message or EOF (spurious wake-ups possible).
    wait_result wait_readable(clock::duration slice);

    // Switches the receive direction to doorbell mode (idempotent) and
    // returns a descriptor that is readable exactly while a message waits or
    // the other end is gone.
    int readiness_fd();

private:
    channel_end() = default;
    detail::channel_header* hdr() const noexcept {
        return reinterpret_cast<detail::channel_header*>(header_.data());
    }
    detail::channel_direction& tx_dir() const noexcept { return hdr()->dir[side_]; }
    detail::channel_direction& rx_dir() const noexcept { return hdr()->dir[1 - side_]; }
    void ring() noexcept;
    void after_recv() noexcept;
    void unring() noexcept;
    void drain_socket() noexcept;
    void wake_peer() noexcept;

    unique_fd sock_;
    unique_fd header_fd_;
    mapping header_;
    std::optional<shm_queue> tx_;
    std::optional<shm_queue> rx_;
    int side_ = 0;
    // Process-local readiness (see the design notes): epoll over the socket
    // and an eventfd announcing a backlog that predates bell_mode.
    unique_fd epoll_;
    unique_fd backlog_;
    bool backlog_armed_ = false;
    pid_t pid_ = 0;  // the process that made epoll_/backlog_ (a forked child makes its own)
    void check_fork() noexcept;
    int spin_budget_ = 2000;
    int unchecked_sends_ = 0;
    int idle_sleeps_ = 0;  // futex sleeps since the last message taken
};

template <class Sink>
bool channel_end::try_recv(Sink&& sink) {
    queue_claim c;
    if (try_claim(c, deadline()) != status::ok) return false;
    try {
        sink(c.records[0].tag, c.records[0].data, c.records[0].size);
    } catch (...) {
        rx_->unclaim(c, 0, deadline());
        throw;
    }
    finish_recv(c);
    return true;
}

}  // namespace fastmp
