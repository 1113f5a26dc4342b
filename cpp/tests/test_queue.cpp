#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <atomic>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fastmp/queue.hpp>

using namespace fastmp;

namespace {

status push_str(shm_queue& q, const std::string& s, std::uint32_t tag = 1) {
    return q.try_push(message_view{tag, s.data(), s.size()});
}

bool pop_str(shm_queue& q, std::string& out) {
    std::size_t taken = 0;
    q.try_pop(1, [&](std::uint32_t, const std::byte* d, std::size_t n) { out.assign(reinterpret_cast<const char*>(d), n); },
              taken);
    return taken == 1;
}

}  // namespace

TEST(Queue, FifoAndEmpty) {
    auto q = shm_queue::create(0);
    std::string s;
    EXPECT_FALSE(pop_str(q, s));
    for (int i = 0; i < 100; ++i) ASSERT_EQ(push_str(q, std::to_string(i)), status::ok);
    EXPECT_EQ(q.size_approx(), 100u);
    for (int i = 0; i < 100; ++i) {
        ASSERT_TRUE(pop_str(q, s));
        EXPECT_EQ(s, std::to_string(i));
    }
    EXPECT_FALSE(pop_str(q, s));
}

TEST(Queue, BoundedByCount) {
    auto q = shm_queue::create(3);
    for (int i = 0; i < 3; ++i) ASSERT_EQ(push_str(q, "x"), status::ok);
    EXPECT_EQ(push_str(q, "x"), status::full);
    std::string s;
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(push_str(q, "y"), status::ok);
}

TEST(Queue, GrowsWhileWrappedAndKeepsOrder) {
    auto q = shm_queue::create(0);
    std::string s;
    // Fill part of the ring, drain some so the next records wrap, then force growth.
    int next_in = 0, next_out = 0;
    std::string filler(1000, 'a');
    for (int round = 0; round < 50; ++round) {
        for (int i = 0; i < 700; ++i) ASSERT_EQ(push_str(q, std::to_string(next_in++) + filler), status::ok);
        for (int i = 0; i < 500; ++i) {
            ASSERT_TRUE(pop_str(q, s));
            ASSERT_EQ(s, std::to_string(next_out++) + filler);
        }
    }
    EXPECT_GT(q.capacity_bytes(), std::uint64_t{1} << 20);
    while (pop_str(q, s)) ASSERT_EQ(s, std::to_string(next_out++) + filler);
    EXPECT_EQ(next_in, next_out);
}

// A batch whose later message needs the ring to grow: the grow may move the
// mapping (and, on a wrapped ring, the older records), so the pointers handed
// out for the batch's earlier messages must not be used across it. Each case
// checks every byte that comes out.
namespace {
std::string pattern(std::size_t n, char seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + static_cast<char>(i * 7 % 61));
    return s;
}
void push_batch(shm_queue& q, const std::vector<std::string>& msgs) {
    std::vector<message_view> views;
    for (const auto& m : msgs) views.push_back(message_view{1, m.data(), m.size()});
    std::size_t done = 0;
    ASSERT_EQ(q.try_push(views.data(), views.size(), done), status::ok);
    ASSERT_EQ(done, msgs.size());
}
}  // namespace

TEST(Queue, BatchThatGrowsTheRingKeepsEarlierMessagesIntact) {
    // Inline path (batch <= 4 KiB, copied under the lock), then the copy-slot
    // path (> 4 KiB): the first put leaves room for the first message only.
    struct batch_case {
        std::size_t first;
        std::vector<std::size_t> sizes;
    };
    std::vector<batch_case> cases;
    for (std::size_t n = 1047000; n <= 1047500; n += 20) cases.push_back({n, {1000, 1000}});
    cases.push_back({1040000, {100, 20000}});
    cases.push_back({1040000, {6000, 3000000, 7000}});
    for (const auto& c : cases) {
        auto q = shm_queue::create(0);
        std::vector<std::string> all{pattern(c.first, 'x')};
        std::vector<std::string> batch;
        for (std::size_t i = 0; i < c.sizes.size(); ++i) batch.push_back(pattern(c.sizes[i], static_cast<char>('a' + i)));
        ASSERT_EQ(push_str(q, all[0]), status::ok);
        push_batch(q, batch);
        all.insert(all.end(), batch.begin(), batch.end());
        EXPECT_GT(q.capacity_bytes(), std::uint64_t{1} << 20);
        std::string s;
        for (const auto& want : all) {
            ASSERT_TRUE(pop_str(q, s)) << c.first;
            ASSERT_TRUE(s == want) << "first=" << c.first << " size " << want.size();
        }
        EXPECT_FALSE(pop_str(q, s));
    }
}

TEST(Queue, BatchOnAWrappedRingThatMustGrowKeepsEarlierMessagesIntact) {
    // Ring of 1 MiB: `a` is put and taken (free_head moves past it), `b`
    // stays; then m1 fills the end of the ring, m2 wraps to 0 and m3 needs a
    // grow, which moves [free_head, cap), where b and m1 live. Copy-slot
    // path (> 4 KiB), then inline path (<= 4 KiB in total).
    struct wrap_case {
        std::size_t a, b, m1, m2, m3;
    };
    for (const wrap_case& c : {wrap_case{600000, 300000, 100000, 100000, 600000},
                               wrap_case{2000, 1046000, 300, 300, 2000}}) {
        auto q = shm_queue::create(0);
        std::string a = pattern(c.a, 'A'), b = pattern(c.b, 'B');
        ASSERT_EQ(push_str(q, a), status::ok);
        ASSERT_EQ(push_str(q, b), status::ok);
        std::string s;
        ASSERT_TRUE(pop_str(q, s));
        ASSERT_TRUE(s == a);
        ASSERT_EQ(q.capacity_bytes(), std::uint64_t{1} << 20);
        std::vector<std::string> batch{pattern(c.m1, '1'), pattern(c.m2, '2'), pattern(c.m3, '3')};
        push_batch(q, batch);
        EXPECT_GT(q.capacity_bytes(), std::uint64_t{1} << 20);
        ASSERT_TRUE(pop_str(q, s));
        ASSERT_TRUE(s == b);
        for (const auto& want : batch) {
            ASSERT_TRUE(pop_str(q, s));
            ASSERT_TRUE(s == want) << "m1=" << c.m1 << " size " << want.size();
        }
        EXPECT_FALSE(pop_str(q, s));
    }
}

TEST(Queue, HugeMessageAndShrinkAfterDrain) {
    auto q = shm_queue::create(0);
    std::string big(64u << 20, 'z');
    big[12345] = 'q';
    ASSERT_EQ(push_str(q, big), status::ok);
    EXPECT_GE(q.capacity_bytes(), big.size());
    std::string s;
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, big);
    EXPECT_LE(q.capacity_bytes(), std::uint64_t{32} << 20);
}

TEST(Queue, MultiProducerMultiConsumerThreads) {
    auto q = shm_queue::create(64);
    constexpr int producers = 3, per = 20000;
    std::atomic<long> sum{0}, got{0};
    std::vector<std::thread> ts;
    for (int p = 0; p < producers; ++p)
        ts.emplace_back([&, p] {
            for (int i = 0; i < per; ++i) {
                long v = p * per + i;
                while (q.try_push(message_view{1, &v, sizeof v}) != status::ok) {
                    auto t = q.not_full_ticket();
                    q.wait_not_full(t, std::chrono::milliseconds(10));
                }
            }
        });
    for (int c = 0; c < 2; ++c)
        ts.emplace_back([&] {
            while (got.load() < producers * per) {
                auto t = q.not_empty_ticket();
                std::size_t taken = 0;
                q.try_pop(16, [&](std::uint32_t, const std::byte* d, std::size_t) {
                    long v;
                    std::memcpy(&v, d, sizeof v);
                    sum += v;
                }, taken);
                got += static_cast<long>(taken);
                if (!taken) q.wait_not_empty(t, std::chrono::milliseconds(10));
            }
        });
    for (auto& t : ts) t.join();
    long n = producers * per;
    EXPECT_EQ(sum.load(), n * (n - 1) / 2);
}

TEST(Queue, AcrossForkAndAttach) {
    auto q = shm_queue::create(0);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 1000; ++i) push_str(q, std::to_string(i));
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    auto q2 = shm_queue::attach(dup(q.fd()), dup(q.doorbell_fd()));
    std::string s;
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(pop_str(q2, s));
        ASSERT_EQ(s, std::to_string(i));
    }
}

TEST(Queue, HolderKilledInsideLockIsRecovered) {
    auto q = shm_queue::create(0);
    ASSERT_EQ(push_str(q, "before"), status::ok);
    pid_t pid = fork();
    if (pid == 0) {
        // Push large messages forever; SIGKILL lands mid-copy under the lock
        // most of the time (and mid-growth some of the time).
        auto q_child = shm_queue::attach(dup(q.fd()), dup(q.doorbell_fd()));
        std::string big(48u << 20, 'b');
        for (;;) push_str(q_child, big);
    }
    usleep(200 * 1000);
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    std::string s;
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, "before");
    ASSERT_EQ(push_str(q, "after"), status::ok);
    // Whatever the child completed before dying is intact; then "after".
    std::string last;
    while (pop_str(q, s)) last = s;
    EXPECT_EQ(last, "after");
}

TEST(Queue, AttachRejectsForeignFd) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    EXPECT_THROW(shm_queue::attach(fds[0], dup(fds[1])), sys_error);
    close(fds[1]);
}

#include <poll.h>

static bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

TEST(Queue, DoorbellIsReadableExactlyWhileItemsAreQueued) {
    auto q = shm_queue::create(0);
    ASSERT_EQ(push_str(q, "early"), status::ok);
    EXPECT_FALSE(readable(q.doorbell_fd()));  // silent until enabled
    q.enable_doorbell();
    EXPECT_TRUE(readable(q.doorbell_fd()));
    ASSERT_EQ(push_str(q, "second"), status::ok);
    std::string s;
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_TRUE(readable(q.doorbell_fd()));
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_FALSE(readable(q.doorbell_fd()));
    ASSERT_EQ(push_str(q, "third"), status::ok);
    EXPECT_TRUE(readable(q.doorbell_fd()));
}

TEST(Queue, GatheredPartsArriveAsOnePayload) {
    auto q = shm_queue::create(0);
    std::string a = "head:", b(100000, 'b'), c = ":tail";
    message_part parts[2] = {{b.data(), b.size()}, {c.data(), c.size()}};
    ASSERT_EQ(q.try_push(message_view{7, a.data(), a.size(), parts, 2}), status::ok);
    std::string s;
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, a + b + c);
}

TEST(Queue, LargeRingGrowsOnlyWhenAllowed) {
    auto q = shm_queue::create(0);
    std::string chunk(4u << 20, 'c');
    // Small rings grow freely, whatever the caller says.
    while (q.capacity_bytes() < (std::uint64_t{64} << 20)) ASSERT_EQ(q.try_push(message_view{1, chunk.data(), chunk.size()}, false), status::ok);
    // Fill the large ring, then ask without permission to grow.
    status st;
    std::size_t pushed = 0;
    while ((st = q.try_push(message_view{1, chunk.data(), chunk.size()}, false)) == status::ok) ++pushed;
    EXPECT_EQ(st, status::would_grow);
    const auto cap = q.capacity_bytes();
    EXPECT_EQ(q.try_push(message_view{1, chunk.data(), chunk.size()}, true), status::ok);  // permission: grows
    EXPECT_GT(q.capacity_bytes(), cap);
    // A message larger than half the ring always grows it.
    std::string huge(cap, 'h');
    EXPECT_EQ(q.try_push(message_view{1, huge.data(), huge.size()}, false), status::ok);
}

#include <sys/mman.h>

TEST(Queue, ProducerKilledMidCopyAfterGrowingAWrappedRingLosesNothing) {
    auto q = shm_queue::create(0);
    // Wrap the 1 MiB ring: 6 x 150 KB in, 3 out, 3 in.
    std::string rec(150000, 'r');
    for (int i = 0; i < 6; ++i) {
        rec[0] = static_cast<char>('a' + i);
        ASSERT_EQ(q.try_push(message_view{1, rec.data(), rec.size()}), status::ok);
    }
    std::string s;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(pop_str(q, s));
    for (int i = 6; i < 9; ++i) {
        rec[0] = static_cast<char>('a' + i);
        ASSERT_EQ(q.try_push(message_view{1, rec.data(), rec.size()}), status::ok);
    }
    pid_t pid = fork();
    if (pid == 0) {
        // A 2 MiB source whose file ends at 600 KB: the copy into the (grown)
        // ring dies of SIGBUS halfway, with the queue lock held.
        int fd = memfd_create("src", 0);
        if (ftruncate(fd, 600000) != 0) _exit(2);
        void* src = mmap(nullptr, 2u << 20, PROT_READ, MAP_SHARED, fd, 0);
        auto qc = shm_queue::attach(dup(q.fd()));
        qc.try_push(message_view{1, src, 2u << 20});
        _exit(3);  // not reached
    }
    int st = 0;
    waitpid(pid, &st, 0);
    // Killed by SIGBUS (or, under AddressSanitizer, exited from its SIGBUS
    // handler): either way it did not get past the copy.
    ASSERT_FALSE(WIFEXITED(st) && (WEXITSTATUS(st) == 3 || WEXITSTATUS(st) == 2)) << "child finished its put";
    for (int i = 3; i < 9; ++i) {
        ASSERT_TRUE(pop_str(q, s)) << i;
        ASSERT_EQ(s.size(), rec.size());
        EXPECT_EQ(s[0], static_cast<char>('a' + i));
    }
    EXPECT_FALSE(pop_str(q, s));
    ASSERT_EQ(push_str(q, "after"), status::ok);
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, "after");
}

// --- internal lock and copy slots (issue 9, items 2 and 3) ------------------

namespace {
// Tells the parent that the child reached a state, through a pipe.
struct handshake {
    int fds[2];
    handshake() { EXPECT_EQ(pipe(fds), 0); }
    ~handshake() {
        close(fds[0]);
        close(fds[1]);
    }
    void signal() { EXPECT_EQ(write(fds[1], "x", 1), 1); }
    void wait() {
        char c;
        EXPECT_EQ(read(fds[0], &c, 1), 1);
    }
};
void reap(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
}
}  // namespace

TEST(Queue, LockHeldByAStoppedProcessTimesOutInsteadOfBlocking) {
    auto q = shm_queue::create(0);
    ASSERT_EQ(push_str(q, "x"), status::ok);
    handshake hs;
    pid_t pid = fork();
    if (pid == 0) {
        // Hold the queue's internal lock (as a put or get does for an instant).
        mapping m(q.fd(), 0, page_size());
        reinterpret_cast<detail::queue_header*>(m.data())->mutex.lock();
        hs.signal();
        pause();
        _exit(0);
    }
    hs.wait();
    kill(pid, SIGSTOP);  // stopped inside the critical section
    const auto short_wait = deadline(std::chrono::milliseconds(30));
    std::string s = "y";
    std::size_t done = 0;
    message_view m{1, s.data(), s.size()};
    EXPECT_EQ(q.try_push(&m, 1, done, true, short_wait), status::timed_out);
    EXPECT_EQ(done, 0u);
    std::size_t taken = 0;
    EXPECT_EQ(q.try_pop(1, [](std::uint32_t, const std::byte*, std::size_t) {}, taken,
                        deadline(std::chrono::milliseconds(30))),
              status::timed_out);
    // Killed while holding it: the kernel marks the lock, the next taker repairs.
    kill(pid, SIGKILL);
    reap(pid);
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, "x");
    ASSERT_EQ(push_str(q, "after"), status::ok);
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, "after");
}

TEST(Queue, ProducerStoppedOrKilledMidCopyWedgesNothing) {
    auto q = shm_queue::create(0);
    handshake hs;
    pid_t pid = fork();
    if (pid == 0) {
        // Reserve room for a message, then stop before copying it.
        auto qc = shm_queue::attach(dup(q.fd()));
        std::string big(300000, 'w');
        message_view m{1, big.data(), big.size()};
        queue_reservation r;
        if (qc.try_reserve(&m, 1, r, true, deadline()) != status::ok) _exit(2);
        hs.signal();
        pause();
        _exit(0);
    }
    hs.wait();
    kill(pid, SIGSTOP);
    // The lock is free: other producers and consumers go on.
    ASSERT_EQ(push_str(q, "later"), status::ok);
    EXPECT_EQ(q.slots_in_use(), 2u);  // "later" is copied, but waits for its turn
    std::string s;
    // FIFO: "later" waits for the earlier reservation.
    EXPECT_FALSE(pop_str(q, s));
    kill(pid, SIGKILL);
    reap(pid);
    // The dead reservation is skipped, never read half-written.
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_EQ(s, "later");
    EXPECT_FALSE(pop_str(q, s));
    EXPECT_EQ(q.slots_in_use(), 0u);
    for (int i = 0; i < 50; ++i) ASSERT_EQ(push_str(q, std::string(100000, 'a' + i % 26)), status::ok);
    for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(pop_str(q, s));
        ASSERT_EQ(s, std::string(100000, 'a' + i % 26));
    }
}

TEST(Queue, ConsumerKilledMidCopyFreesItsRecords) {
    auto q = shm_queue::create(0);
    std::string rec(200000, 'c');
    for (int i = 0; i < 3; ++i) ASSERT_EQ(push_str(q, rec), status::ok);
    handshake hs;
    pid_t pid = fork();
    if (pid == 0) {
        auto qc = shm_queue::attach(dup(q.fd()));
        queue_claim c;
        if (qc.try_claim(1, c, deadline()) != status::ok) _exit(2);
        hs.signal();
        pause();  // never finishes its copy
        _exit(0);
    }
    hs.wait();
    kill(pid, SIGSTOP);
    std::string s;
    ASSERT_TRUE(pop_str(q, s));  // the next records are not held up
    EXPECT_EQ(q.slots_in_use(), 1u);
    kill(pid, SIGKILL);
    reap(pid);
    ASSERT_TRUE(pop_str(q, s));
    EXPECT_FALSE(pop_str(q, s));
    EXPECT_EQ(q.slots_in_use(), 0u);
    // Its space is reused: many wraps of the 1 MiB ring without growing.
    for (int i = 0; i < 40; ++i) {
        ASSERT_EQ(push_str(q, rec), status::ok);
        ASSERT_TRUE(pop_str(q, s));
    }
    EXPECT_EQ(q.capacity_bytes(), std::uint64_t{1} << 20);
}

TEST(Queue, SleeperKilledInItsSleepStopsCostingWakeups) {
    auto q = shm_queue::create(0);
    pid_t pid = fork();
    if (pid == 0) {
        auto qc = shm_queue::attach(dup(q.fd()));
        for (;;) qc.wait_not_empty(qc.not_empty_ticket(), std::nullopt);
    }
    while (!q.consumer_wake_pending()) usleep(1000);  // it sleeps
    kill(pid, SIGKILL);
    reap(pid);
    // Its registration expires (a live sleeper renews it every 200 ms).
    int polls = 0;
    while (q.consumer_wake_pending() && polls < 5000) {
        usleep(1000);
        ++polls;
    }
    EXPECT_FALSE(q.consumer_wake_pending());
}

TEST(Queue, ConcurrentLargeProducersAndConsumersKeepEveryMessageIntact) {
    auto q = shm_queue::create(0);
    constexpr int producers = 3, per = 300;
    std::vector<std::thread> ts;
    for (int p = 0; p < producers; ++p)
        ts.emplace_back([&q, p] {
            for (int i = 0; i < per; ++i) {
                std::string m(1000 + (i * 7919) % 300000, static_cast<char>('a' + p));
                m[0] = static_cast<char>(p);
                while (push_str(q, m) != status::ok) {
                }
            }
        });
    std::atomic<int> got{0};
    std::vector<int> last(producers, -1);
    std::vector<std::thread> cs;
    std::atomic<bool> bad{false};
    for (int c = 0; c < 2; ++c)
        cs.emplace_back([&] {
            std::string s;
            while (got.load() < producers * per) {
                if (!pop_str(q, s)) continue;
                int p = s[0];
                for (std::size_t k = 1; k < s.size(); ++k)
                    if (s[k] != static_cast<char>('a' + p)) bad = true;
                got.fetch_add(1);
            }
        });
    for (auto& t : ts) t.join();
    for (auto& t : cs) t.join();
    EXPECT_FALSE(bad.load());
    EXPECT_EQ(got.load(), producers * per);
    EXPECT_EQ(q.slots_in_use(), 0u);
}
