#include <fastmp/channel.hpp>

#include <fastmp/process.hpp>

#include <atomic>
#include <cerrno>
#include <algorithm>
#include <chrono>

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace fastmp {

using detail::channel_direction;
using detail::channel_header;

namespace {

// A reader spins at most this many rounds (~45 us here) before it sleeps: in
// a request/response exchange the answer usually comes back within
// microseconds, and a futex sleep plus wake costs more than that.
constexpr int max_spins = 4000;
// How long a reader sleeps on the futex before it sleeps in poll() instead.
constexpr auto futex_phase = std::chrono::milliseconds(2);

int dup_cloexec(int fd) {
    int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) throw_errno("dup of channel descriptor");
    return d;
}

// Owns a raw fd until it is handed on (unique_fd has no release()).
struct fd_guard {
    int fd;
    explicit fd_guard(int f) noexcept : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
    int release() noexcept { return std::exchange(fd, -1); }
};

std::size_t header_bytes() { return page_size(); }

// bell_lock guards a flag and one byte's send/recv: a few microseconds. A
// dead holder is reported by the kernel (the state needs no repair).
struct bell_guard {
    process_mutex& m;
    explicit bell_guard(process_mutex& mu) noexcept : m(mu) { m.lock(); }
    ~bell_guard() { m.unlock(); }
    bell_guard(const bell_guard&) = delete;
    bell_guard& operator=(const bell_guard&) = delete;
};

}  // namespace

static_assert(sizeof(channel_header) <= 4096, "channel header must fit in one page");

std::pair<channel_end, channel_end> channel_end::create_pair(bool duplex) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    channel_end a, b;
    a.sock_ = unique_fd(sv[0]);
    b.sock_ = unique_fd(sv[1]);
    a.header_fd_ = make_memfd("fastmp-pipe", header_bytes());
    a.header_ = mapping(a.header_fd_.get(), 0, header_bytes());
    channel_header* h = a.hdr();  // zero-filled by the kernel
    h->magic = magic;
    h->layout_version = layout_version;
    h->header_size = sizeof(channel_header);
    h->duplex = duplex ? 1 : 0;
    h->dir[0].bell_lock.init();
    h->dir[1].bell_lock.init();
    b.header_fd_ = unique_fd(dup_cloexec(a.header_fd_.get()));
    b.header_ = mapping(b.header_fd_.get(), 0, header_bytes());
    // dir[0] is written by side 0. One-way: a (side 1) reads, b (side 0) writes.
    a.side_ = duplex ? 0 : 1;
    b.side_ = duplex ? 1 : 0;
    shm_queue q0 = shm_queue::create(0, false);
    int q0_fd = q0.fd();
    if (duplex) {
        shm_queue q1 = shm_queue::create(0, false);
        int q1_fd = q1.fd();
        a.tx_.emplace(std::move(q0));
        b.rx_.emplace(shm_queue::attach(dup_cloexec(q0_fd)));
        b.tx_.emplace(std::move(q1));
        a.rx_.emplace(shm_queue::attach(dup_cloexec(q1_fd)));
    } else {
        b.tx_.emplace(std::move(q0));
        a.rx_.emplace(shm_queue::attach(dup_cloexec(q0_fd)));
    }
    return {std::move(a), std::move(b)};
}

channel_end channel_end::adopt(const channel_fds& f) {
    // Own everything first, so a failure below closes all of it.
    fd_guard sock(f.sock), header(f.header), tx(f.tx), rx(f.rx);
    if (f.side != 0 && f.side != 1) throw sys_error(EINVAL, "bad channel side");
    if (sock.fd < 0 || header.fd < 0 || (tx.fd < 0 && rx.fd < 0))
        throw sys_error(EBADF, "incomplete set of channel descriptors");
    ::fcntl(sock.fd, F_SETFD, FD_CLOEXEC);  // pass_fds delivers it inheritable
    channel_end e;
    e.side_ = f.side;
    e.header_fd_ = adopt_memfd(header.release());
    if (file_size(e.header_fd_.get()) < header_bytes())
        throw sys_error(EINVAL, "file descriptor is not a fastmp pipe");
    e.header_ = mapping(e.header_fd_.get(), 0, header_bytes());
    const channel_header* h = e.hdr();
    if (h->magic != magic || h->layout_version != layout_version || h->header_size != sizeof(channel_header))
        throw sys_error(EINVAL, "file descriptor is not a fastmp pipe of this version");
    e.sock_ = unique_fd(sock.release());
    if (tx.fd >= 0) e.tx_.emplace(shm_queue::attach(tx.release()));
    if (rx.fd >= 0) e.rx_.emplace(shm_queue::attach(rx.release()));
    return e;
}

channel_end::~channel_end() {
    // A reader of the other end blocked in recv re-checks for EOF now.
    if (header_.data() && tx_) wake_peer();
}

channel_fds channel_end::fds() const noexcept {
    channel_fds f;
    f.sock = sock_.get();
    f.header = header_fd_.get();
    f.tx = tx_ ? tx_->fd() : -1;
    f.rx = rx_ ? rx_->fd() : -1;
    f.side = side_;
    return f;
}

bool channel_end::peer_closed() const noexcept {
    pollfd p{sock_.get(), POLLRDHUP, 0};
    int rc;
    do rc = ::poll(&p, 1, 0);
    while (rc < 0 && errno == EINTR);
    return rc > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL));
}

status channel_end::try_claim(queue_claim& c, const deadline& lock_dl) {
    if (!rx_) return status::empty;
    // A put in flight (copied, not yet published) shows as writers_hint only.
    return rx_->try_claim(1, c, lock_dl);
}

void channel_end::finish_recv(queue_claim& c) noexcept {
    rx_->finish_claim(c);
    after_recv();
}

status channel_end::send(const message_view& m, const deadline& lock_dl) {
    if (!tx_) throw sys_error(EBADF, "connection is read-only");
    // The stdlib raises BrokenPipeError here: nobody could ever read it, and
    // an unbounded ring would otherwise grow for nothing. A reader blocked
    // in recv right now proves the other end open, which saves the syscall
    // on the request/response hot path.
    channel_direction& d = tx_dir();
    if (atomic(d.waiting).load(std::memory_order_relaxed) == 0 || ++unchecked_sends_ >= 64) {
        unchecked_sends_ = 0;
        if (peer_closed()) throw sys_error(EPIPE, "Broken pipe");
    }
    std::size_t done = 0;
    if (tx_->try_push(&m, 1, done, true, lock_dl) == status::timed_out && done == 0) return status::timed_out;
    // Pairs with the reader's fetch_add on `sleepers` then re-check of the
    // queue: one of the two sides sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (atomic(d.sleepers).load(std::memory_order_relaxed)) wake_peer();
    if (atomic(d.bell_mode).load(std::memory_order_relaxed) || atomic(d.pollers).load(std::memory_order_relaxed))
        ring();
    return status::ok;
}

void channel_end::ring() noexcept {
    channel_direction& d = tx_dir();
    bell_guard g(d.bell_lock);
    if (atomic(d.bell).load(std::memory_order_relaxed) || tx_->size_approx() == 0) return;
    char byte = 0;
    // The peer's receive buffer holds at most one doorbell per direction, so
    // this cannot block; EPIPE (peer gone) needs no doorbell anyway.
    ::send(sock_.get(), &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    atomic(d.bell).store(1, std::memory_order_release);
}

void channel_end::drain_socket() noexcept {
    char buf[64];
    while (::recv(sock_.get(), buf, sizeof buf, MSG_DONTWAIT) == static_cast<ssize_t>(sizeof buf)) {
    }
}

void channel_end::unring() noexcept {
    channel_direction& d = rx_dir();
    bell_guard g(d.bell_lock);
    if (rx_->size_approx() != 0) return;
    // Clear the flag before draining: a reader killed in between leaves a
    // stray byte (harmless, drained later), never a flag with no byte, which
    // would keep writers from ringing again.
    atomic(d.bell).store(0, std::memory_order_release);
    drain_socket();
}

void channel_end::check_fork() noexcept {
    // epoll_ and backlog_ are this process's: an epoll instance and an
    // eventfd shared with a forked child would mix the two processes'
    // readiness (the child arming or draining the parent's backlog).
    if (pid_ == current_pid()) return;
    epoll_.reset();
    backlog_.reset();
    backlog_armed_ = false;
}

void channel_end::after_recv() noexcept {
    check_fork();
    idle_sleeps_ = 0;
    if (atomic(rx_dir().bell).load(std::memory_order_acquire) && rx_->size_approx() == 0) unring();
    if (backlog_armed_ && rx_->size_approx() == 0) {
        std::uint64_t v;
        if (::read(backlog_.get(), &v, sizeof v) < 0) {
        }
        backlog_armed_ = false;
    }
}

wait_result channel_end::wait_readable(clock::duration slice) {
    if (!rx_) return wait_result::timed_out;
    channel_direction& d = rx_dir();
    atomic(d.waiting).fetch_add(1, std::memory_order_relaxed);
    struct leave {
        std::uint32_t& w;
        ~leave() { atomic(w).fetch_sub(1, std::memory_order_relaxed); }
    } guard{d.waiting};
    if (spin_until([&] { return rx_->size_approx() > 0; }, spin_budget_, max_spins)) return wait_result::woken;
    // A doorbell with nothing behind it (its reader died between taking the
    // message and clearing it) would keep select() users spinning: clear it.
    if (atomic(d.bell).load(std::memory_order_acquire)) unring();
    if (idle_sleeps_ < 1) {
        ++idle_sleeps_;
        std::uint32_t ticket = atomic(d.seq).load(std::memory_order_seq_cst);
        atomic(d.sleepers).fetch_add(1, std::memory_order_seq_cst);
        wait_result r = wait_result::woken;
        if (rx_->size_approx() == 0) r = futex_wait(&d.seq, ticket, std::min<clock::duration>(slice, futex_phase));
        atomic(d.sleepers).fetch_sub(1, std::memory_order_seq_cst);
        return r;
    }
    atomic(d.pollers).fetch_add(1, std::memory_order_seq_cst);
    struct unpoll {
        std::uint32_t& p;
        ~unpoll() { atomic(p).fetch_sub(1, std::memory_order_seq_cst); }
    } unpoll_guard{d.pollers};
    if (rx_->size_approx() > 0) return wait_result::woken;
    pollfd p{sock_.get(), POLLIN | POLLRDHUP, 0};
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(slice).count();
    int rc = ::poll(&p, 1, ms < 0 ? 0 : static_cast<int>(ms));
    if (rc < 0) return errno == EINTR ? wait_result::interrupted : wait_result::woken;
    if (rc == 0) return wait_result::timed_out;
    if (!(p.revents & (POLLHUP | POLLRDHUP | POLLERR)) && rx_->size_approx() == 0) unring();  // stray doorbell
    return wait_result::woken;
}

void channel_end::wake_peer() noexcept {
    channel_direction& d = tx_dir();
    atomic(d.seq).fetch_add(1, std::memory_order_seq_cst);
    futex_wake(&d.seq, 0);
}

int channel_end::readiness_fd() {
    if (!rx_) return sock_.get();
    check_fork();
    if (epoll_.get() >= 0) return epoll_.get();
    unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (ep.get() < 0) throw_errno("epoll_create1");
    unique_fd ev(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (ev.get() < 0) throw_errno("eventfd");
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = sock_.get();
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, sock_.get(), &e) != 0) throw_errno("epoll_ctl");
    e.data.fd = ev.get();
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, ev.get(), &e) != 0) throw_errno("epoll_ctl");
    channel_direction& d = rx_dir();
    {
        bell_guard g(d.bell_lock);
        atomic(d.bell_mode).store(1, std::memory_order_seq_cst);
        // From here on every push rings (or finds the bell rung); what is
        // already queued without a doorbell we announce ourselves.
        if (!atomic(d.bell).load(std::memory_order_relaxed) && rx_->size_approx() > 0) {
            std::uint64_t one = 1;
            if (::write(ev.get(), &one, sizeof one) == static_cast<ssize_t>(sizeof one)) backlog_armed_ = true;
        }
    }
    epoll_ = std::move(ep);
    backlog_ = std::move(ev);
    pid_ = current_pid();
    return epoll_.get();
}

}  // namespace fastmp
