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
