#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fastmp/process.hpp>
#include <fastmp/robust_mutex.hpp>

using namespace fastmp;

namespace {
robust_mutex* shared_mutex() {
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return static_cast<robust_mutex*>(p);  // zero-filled = unlocked
}
}  // namespace

TEST(RobustMutex, ExcludesThreads) {
    robust_mutex m{};
    long counter = 0;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 20000; ++i) {
                robust_lock_guard g(m);
                ++counter;
            }
        });
    for (auto& t : ts) t.join();
    EXPECT_EQ(counter, 80000);
}

TEST(RobustMutex, TryLockAndHolderPid) {
    robust_mutex m{};
    ASSERT_TRUE(m.try_lock());
    EXPECT_EQ(m.word & robust_mutex::pid_mask, static_cast<std::uint32_t>(current_pid()));
    EXPECT_FALSE(m.try_lock());
    m.unlock();
    EXPECT_EQ(m.word, 0u);
}

TEST(RobustMutex, TakenOverFromAKilledHolder) {
    robust_mutex* m = shared_mutex();
    pid_t pid = fork();
    if (pid == 0) {
        m->lock();
        pause();  // hold it until killed
        _exit(0);
    }
    while ((__atomic_load_n(&m->word, __ATOMIC_ACQUIRE) & robust_mutex::pid_mask) != static_cast<std::uint32_t>(pid))
        usleep(1000);
    kill(pid, SIGKILL);
    // Not reaped yet: the holder is a zombie, which must count as dead.
    EXPECT_EQ(m->lock(), status::owner_died);
    EXPECT_EQ(m->word & robust_mutex::pid_mask, static_cast<std::uint32_t>(current_pid()));
    m->unlock();
    EXPECT_EQ(m->lock(), status::ok);
    m->unlock();
    int st = 0;
    waitpid(pid, &st, 0);
    munmap(m, 4096);
}

TEST(RobustMutex, LiveHolderIsWaitedFor) {
    robust_mutex* m = shared_mutex();
    pid_t pid = fork();
    if (pid == 0) {
        m->lock();
        usleep(150 * 1000);  // longer than a liveness slice
        m->unlock();
        _exit(0);
    }
    while ((__atomic_load_n(&m->word, __ATOMIC_ACQUIRE) & robust_mutex::pid_mask) != static_cast<std::uint32_t>(pid))
        usleep(1000);
    EXPECT_EQ(m->lock(), status::ok);  // not stolen from a live holder
    m->unlock();
    int st = 0;
    waitpid(pid, &st, 0);
    EXPECT_TRUE(WIFEXITED(st));
    munmap(m, 4096);
}

TEST(ProcessAlive, SelfDeadAndZombie) {
    EXPECT_TRUE(process_alive(current_pid()));
    EXPECT_FALSE(process_alive(0));
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    usleep(100 * 1000);  // exited, not reaped: a zombie
    EXPECT_FALSE(process_alive(pid));
    int st = 0;
    waitpid(pid, &st, 0);
    EXPECT_FALSE(process_alive(pid));
}

// --- process_mutex: the kernel reports the holder's death -----------------

#include <sched.h>

namespace {
process_mutex* shared_process_mutex() {
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    auto* m = static_cast<process_mutex*>(p);
    m->init();
    return m;
}
struct pipe_sync {
    int fds[2];
    pipe_sync() { EXPECT_EQ(pipe(fds), 0); }
    ~pipe_sync() {
        close(fds[0]);
        close(fds[1]);
    }
    void signal() { EXPECT_EQ(write(fds[1], "x", 1), 1); }
    void wait() {
        char c;
        EXPECT_EQ(read(fds[0], &c, 1), 1);
    }
};
}  // namespace

TEST(ProcessMutex, ExcludesThreadsAndTimesOut) {
    process_mutex* m = shared_process_mutex();
    long counter = 0;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 20000; ++i) {
                ASSERT_EQ(m->lock(), status::ok);
                ++counter;
                m->unlock();
            }
        });
    for (auto& t : ts) t.join();
    EXPECT_EQ(counter, 80000);
    ASSERT_EQ(m->lock(), status::ok);
    std::thread other([&] {
        EXPECT_EQ(m->try_lock(), status::timed_out);
        EXPECT_EQ(m->lock(deadline(std::chrono::milliseconds(20))), status::timed_out);
    });
    other.join();
    m->unlock();
    munmap(m, 4096);
}

TEST(ProcessMutex, StoppedHolderTimesOutKilledHolderIsReported) {
    process_mutex* m = shared_process_mutex();
    pipe_sync sync;
    pid_t pid = fork();
    if (pid == 0) {
        m->lock();
        sync.signal();
        pause();
        _exit(0);
    }
    sync.wait();
    kill(pid, SIGSTOP);
    EXPECT_EQ(m->lock(deadline(std::chrono::milliseconds(30))), status::timed_out);
    kill(pid, SIGKILL);
    // No pid polling: the kernel marks the word when the holder dies.
    EXPECT_EQ(m->lock(), status::owner_died);
    m->unlock();
    EXPECT_EQ(m->lock(), status::ok);  // consistent again
    m->unlock();
    int st = 0;
    waitpid(pid, &st, 0);
    munmap(m, 4096);
}

TEST(ProcessMutex, HolderThreadDeadInALiveProcessIsReported) {
    // Pid polling sees a live process here and waits forever.
    process_mutex* m = shared_process_mutex();
    std::thread t([&] { EXPECT_EQ(m->lock(), status::ok); });  // exits holding it
    t.join();
    EXPECT_EQ(m->lock(deadline(std::chrono::seconds(10))), status::owner_died);
    m->unlock();
    munmap(m, 4096);
}

TEST(ProcessMutex, HolderInAnotherPidNamespaceIsJudgedByTheKernel) {
    // The holder is pid 1 of a new pid namespace: pid polling from here would
    // look at our pid 1 (init, alive) and never take over.
    process_mutex* m = shared_process_mutex();
    pid_t outer = fork();
    if (outer == 0) {
        if (unshare(CLONE_NEWPID) != 0) _exit(77);  // not permitted here
        pid_t inner = fork();
        if (inner == 0) {
            if (getpid() != 1) _exit(3);
            m->lock();
            _exit(0);  // dies holding it
        }
        int st = 0;
        waitpid(inner, &st, 0);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 4);
    }
    int st = 0;
    waitpid(outer, &st, 0);
    ASSERT_TRUE(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77) GTEST_SKIP() << "unshare(CLONE_NEWPID) not permitted";
    ASSERT_EQ(WEXITSTATUS(st), 0);
    EXPECT_EQ(m->lock(deadline(std::chrono::seconds(10))), status::owner_died);
    m->unlock();
    munmap(m, 4096);
}
