// Unit tests of the synchronisation core (no Python): arena, Lock/RLock,
// Semaphore, Event, Condition table, Barrier state, and recovery from dead holders.
#include <fastmp/sync.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace fastmp;
using namespace std::chrono_literals;

namespace {

// The binding's run_blocking loop, without Python.
bool lock_blocking(shm_lock& l, clock::duration timeout = 10s) {
    deadline dl(timeout);
    bool waited = false;
    for (;;) {
        auto t = l.ticket();
        if (waited ? l.try_acquire_after_wait() : l.try_acquire()) return true;
        if (dl.expired()) return false;
        waited = true;
        l.wait(t, dl.slice(100ms));
    }
}

bool sem_blocking(shm_semaphore& s, clock::duration timeout = 10s) {
    deadline dl(timeout);
    for (;;) {
        auto t = s.ticket();
        if (s.try_acquire()) return true;
        if (dl.expired()) return false;
        s.wait(t, dl.slice(100ms));
    }
}

// Runs fn in a forked child that then dies by SIGKILL; returns after it is reaped.
template <class Fn>
void in_child_that_dies(Fn fn) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        fn();
        ::kill(::getpid(), SIGKILL);
        ::_exit(1);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st));
}

}  // namespace

TEST(SyncArena, AllocatesFreesAndReusesSlots) {
    auto a = sync_arena::create(64);
    std::int64_t first = a->allocate(4);
    ASSERT_GE(first, 0);
    EXPECT_EQ(a->used_slots(), 4u);
    std::int64_t second = a->allocate(60);
    ASSERT_GE(second, 0);
    EXPECT_EQ(a->allocate(1), -1);  // full
    a->add_ref(static_cast<std::uint32_t>(first));
    a->drop_ref(static_cast<std::uint32_t>(first));
    EXPECT_EQ(a->used_slots(), 64u);
    a->drop_ref(static_cast<std::uint32_t>(first));
    EXPECT_EQ(a->used_slots(), 60u);
    EXPECT_EQ(a->allocate(4), first);
}

TEST(SyncArena, ManyObjectsShareOneArena) {
    std::vector<shm_lock> locks;
    for (int i = 0; i < 3000; ++i) locks.push_back(shm_lock::create(false));
    std::uint64_t id = locks.front().ref().arena()->id();
    int same = 0;
    for (auto& l : locks) same += l.ref().arena()->id() == id;
    EXPECT_GE(same, 2000);
}

TEST(SyncArena, AttachFindsTheSameObject) {
    auto l = shm_lock::create(false);
    ASSERT_TRUE(l.try_acquire());
    int fd = ::dup(l.ref().arena()->fd());
    auto again = shm_lock::attach(sync_attach(fd, l.ref().arena()->id(), l.ref().index()));
    EXPECT_TRUE(again.locked());
    EXPECT_EQ(again.release(), status::ok);
    EXPECT_FALSE(l.locked());
    EXPECT_THROW(sync_attach(-1, 12345, 0), sys_error);
}

TEST(SyncLock, MutualExclusionAcrossThreads) {
    auto l = shm_lock::create(false);
    long counter = 0;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 20000; ++i) {
                ASSERT_TRUE(lock_blocking(l));
                ++counter;
                ASSERT_EQ(l.release(), status::ok);
            }
        });
    for (auto& t : ts) t.join();
    EXPECT_EQ(counter, 80000);
    EXPECT_FALSE(l.locked());
}

TEST(SyncLock, EverySleeperIsWoken) {
    // Three threads sleep on a held lock; each release must hand it on
    // promptly (a lost waiters bit would leave one asleep for a whole slice).
    auto l = shm_lock::create(false);
    ASSERT_TRUE(l.try_acquire());
    std::atomic<int> done{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t)
        ts.emplace_back([&] {
            bool waited = false;
            for (;;) {
                auto tk = l.ticket();
                if (waited ? l.try_acquire_after_wait() : l.try_acquire()) break;
                waited = true;
                // An endless slice: only a wake-up gets us out (a lost one
                // hangs the test until ctest's timeout fails it).
                l.wait(tk, 100000s);
            }
            ++done;
            EXPECT_EQ(l.release(), status::ok);
        });
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(l.release(), status::ok);
    for (auto& t : ts) t.join();
    EXPECT_EQ(done.load(), 3);
}

TEST(SyncLock, ReleaseUnlockedIsTooMany) {
    auto l = shm_lock::create(false);
    EXPECT_EQ(l.release(), status::too_many);
    ASSERT_TRUE(l.try_acquire());
    EXPECT_FALSE(l.try_acquire());
    EXPECT_TRUE(l.is_mine());
    std::thread([&] { EXPECT_EQ(l.release(), status::ok); }).join();  // any thread may release a Lock
    EXPECT_FALSE(l.locked());
}

TEST(SyncLock, RecursiveOwnership) {
    auto r = shm_lock::create(true);
    ASSERT_TRUE(r.try_acquire());
    ASSERT_TRUE(r.try_acquire());
    EXPECT_EQ(r.count(), 2u);
    std::thread([&] {
        EXPECT_FALSE(r.try_acquire());
        EXPECT_EQ(r.release(), status::not_owner);
    }).join();
    EXPECT_EQ(r.release(), status::ok);
    EXPECT_TRUE(r.locked());
    EXPECT_EQ(r.release(), status::ok);
    EXPECT_FALSE(r.locked());
    EXPECT_EQ(r.release(), status::not_owner);
}

TEST(SyncLock, TimesOut) {
    auto l = shm_lock::create(false);
    ASSERT_TRUE(l.try_acquire());
    bool got = true;
    std::thread([&] { got = lock_blocking(l, 50ms); }).join();
    EXPECT_FALSE(got);
}

TEST(SyncLock, DeadHolderIsRecovered) {
    for (bool recursive : {false, true}) {
        auto l = shm_lock::create(recursive);
        in_child_that_dies([&] { l.try_acquire(); });
        EXPECT_TRUE(l.locked());
        EXPECT_TRUE(lock_blocking(l, 5s));
        EXPECT_TRUE(l.is_mine());
        EXPECT_EQ(l.release(), status::ok);
    }
}

TEST(SyncSemaphore, CountsAndBounds) {
    auto s = shm_semaphore::create(2, 2);
    EXPECT_TRUE(s.try_acquire());
    EXPECT_TRUE(s.try_acquire());
    EXPECT_FALSE(s.try_acquire());
    EXPECT_EQ(s.held_by_me(), 2u);
    EXPECT_EQ(s.release(), status::ok);
    EXPECT_EQ(s.release(), status::ok);
    EXPECT_EQ(s.release(), status::too_many);
    EXPECT_EQ(s.value(), 2u);
}

TEST(SyncSemaphore, ThreadsNeverExceedTheCount) {
    auto s = shm_semaphore::create(2, 0x7fffffff);
    std::atomic<int> inside{0}, peak{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 2000; ++i) {
                ASSERT_TRUE(sem_blocking(s));
                int now = ++inside;
                int p = peak.load();
                while (now > p && !peak.compare_exchange_weak(p, now)) {
                }
                --inside;
                ASSERT_EQ(s.release(), status::ok);
            }
        });
    for (auto& t : ts) t.join();
    EXPECT_LE(peak.load(), 2);
    EXPECT_EQ(s.value(), 2u);
}

TEST(SyncSemaphore, DeadHoldersUnitsReturnUpToTheInitialValue) {
    auto s = shm_semaphore::create(3, 0x7fffffff);
    ASSERT_TRUE(s.try_acquire());
    in_child_that_dies([&] {
        s.try_acquire();
        s.try_acquire();
    });
    EXPECT_EQ(s.value(), 0u);
    EXPECT_EQ(s.recover_dead_holders(), 2u);
    EXPECT_EQ(s.value(), 2u);

    auto signal = shm_semaphore::create(0, 0x7fffffff);
    ASSERT_EQ(signal.release(), status::ok);       // one item ready
    in_child_that_dies([&] { signal.try_acquire(); });  // consumed, then died
    EXPECT_EQ(signal.recover_dead_holders(), 0u);  // not topped up
    EXPECT_EQ(signal.value(), 0u);
}

TEST(SyncEvent, SetWakesWaiters) {
    auto e = shm_event::create();
    std::atomic<int> woke{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t)
        ts.emplace_back([&] {
            deadline dl(10s);
            while (!e.is_set() && !dl.expired()) e.wait(e.ticket(), dl.slice(100ms));
            if (e.is_set()) ++woke;
        });
    std::this_thread::sleep_for(20ms);
    e.set();
    for (auto& t : ts) t.join();
    EXPECT_EQ(woke.load(), 3);
    e.clear();
    EXPECT_FALSE(e.is_set());
    EXPECT_EQ(e.wait(0, 10ms), wait_result::timed_out);
}

TEST(SyncCondition, NotifyOldestFirstAndCount) {
    auto c = shm_condition::create();
    std::uint32_t since = c.ticket();
    std::int32_t a = c.enlist(), b = c.enlist(), d = c.enlist();
    EXPECT_EQ(c.waiting(), 3u);
    EXPECT_EQ(c.notify(2), 2u);
    EXPECT_TRUE(c.notified(a, since));
    EXPECT_TRUE(c.notified(b, since));
    EXPECT_FALSE(c.notified(d, since));
    EXPECT_TRUE(c.finish(a, since));
    EXPECT_TRUE(c.finish(b, since));
    EXPECT_FALSE(c.finish(d, since));
    EXPECT_EQ(c.waiting(), 0u);
    EXPECT_EQ(c.notify(5), 0u);
}

TEST(SyncCondition, WaitersInThreads) {
    auto c = shm_condition::create();
    std::atomic<int> notified{0}, enlisted{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            std::uint32_t since = c.ticket();
            std::int32_t i = c.enlist();
            ++enlisted;
            deadline dl(10s);
            while (!c.notified(i, since) && !dl.expired()) c.wait(i, c.ticket(), dl.slice(100ms));
            if (c.finish(i, since)) ++notified;
        });
    while (enlisted.load() < 4) std::this_thread::yield();
    EXPECT_EQ(c.notify(~std::uint64_t{0}), 4u);
    for (auto& t : ts) t.join();
    EXPECT_EQ(notified.load(), 4);
}

TEST(SyncCondition, NotificationOfADeadWaiterIsPassedOn) {
    auto c = shm_condition::create();
    std::uint32_t since = c.ticket();
    in_child_that_dies([&] {
        c.enlist();
        c.notify(1);  // the child is notified, then dies before consuming it
    });
    std::int32_t mine = c.enlist();
    EXPECT_FALSE(c.notified(mine, since));
    c.rescue_orphans();
    EXPECT_TRUE(c.notified(mine, since));
    EXPECT_TRUE(c.finish(mine, since));
}

TEST(SyncBarrierState, ArriveLeaveAndReap) {
    auto b = shm_barrier_state::create(3);
    EXPECT_EQ(b.parties(), 3u);
    b.arrive();
    EXPECT_EQ(b.count(), 1);
    in_child_that_dies([&] { b.arrive(); });
    EXPECT_EQ(b.count(), 2);
    EXPECT_EQ(b.reap_dead(true), 1u);
    EXPECT_EQ(b.count(), 1);
    b.leave();
    EXPECT_EQ(b.count(), 0);
    b.set_state(-2);
    EXPECT_EQ(b.state(), -2);
}

// ---------------------------------------------------------------- identities (pid + start time)

TEST(ProcessIdentity, StartTimeTellsARecycledPidApart) {
    ASSERT_NE(current_start_tag(), 0u);
    EXPECT_TRUE(process_alive(::getpid(), current_start_tag()));
    EXPECT_TRUE(process_alive(::getpid(), 0));  // tag unknown: cannot be judged dead
    EXPECT_FALSE(process_alive(::getpid(), current_start_tag() + 1));  // same pid, another process
}

namespace {
// A child that reports its identity and then sleeps until killed.
pid_t sleeping_child(std::uint64_t* id) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        std::uint64_t mine = current_identity();
        (void)!::write(fds[1], &mine, sizeof mine);
        for (;;) ::pause();
    }
    ::close(fds[1]);
    EXPECT_EQ(::read(fds[0], id, sizeof *id), static_cast<ssize_t>(sizeof *id));
    ::close(fds[0]);
    return pid;
}
}  // namespace

TEST(SyncLock, HolderIsJudgedByPidAndStartTime) {
    auto l = shm_lock::create(false);
    auto* layout = reinterpret_cast<lock_layout*>(l.ref().data());
    // A holder whose pid now belongs to another process (this one): recycled, so dead.
    atomic(layout->word).store(std::uint64_t{current_start_tag() ^ 0x5a5au} << 32 | current_pid());
    EXPECT_TRUE(l.recover_dead_holder());
    EXPECT_FALSE(l.locked());
    // A live holder in another process is not touched; once dead, it is.
    std::uint64_t id = 0;
    pid_t pid = sleeping_child(&id);
    ASSERT_EQ(id_pid(id), static_cast<std::uint32_t>(pid));
    atomic(layout->word).store(id);
    EXPECT_FALSE(l.recover_dead_holder());
    EXPECT_TRUE(l.locked());
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    EXPECT_TRUE(l.recover_dead_holder());
    EXPECT_FALSE(l.locked());
    EXPECT_TRUE(l.try_acquire());
}

TEST(SyncSemaphore, UnitsOfARecycledPidComeBack) {
    auto s = shm_semaphore::create(1, 1);
    auto* layout = reinterpret_cast<semaphore_layout*>(s.ref().data());
    // As if a process with our pid but another start time took the unit and died.
    layout->holders[0].id = std::uint64_t{current_start_tag() ^ 0x5a5au} << 32 | current_pid();
    layout->holders[0].count = 1;
    layout->value = 0;
    EXPECT_EQ(s.held_by_me(), 0u);
    EXPECT_EQ(s.recover_dead_holders(), 1u);
    EXPECT_EQ(s.value(), 1u);
    EXPECT_EQ(s.recover_dead_holders(), 0u);
}

TEST(SyncSemaphore, EverySleeperIsWokenByQuickReleases) {
    // Three sleepers, three releases in a row: the first wake-up is passed
    // on while units remain (only one release sees the sleepers bit).
    auto s = shm_semaphore::create(0, 0x7fffffff);
    std::atomic<int> asleep{0}, done{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t)
        ts.emplace_back([&] {
            bool waited = false;
            ++asleep;
            for (;;) {
                auto tk = s.ticket();
                if (waited ? s.try_acquire_after_wait() : s.try_acquire()) break;
                waited = true;
                s.wait(tk, 100000s);  // only a wake-up gets us out
            }
            ++done;
        });
    while (asleep.load() < 3 || !s.sleepers()) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(20ms);  // let all three reach the futex (not needed for correctness)
    for (int i = 0; i < 3; ++i) ASSERT_EQ(s.release(), status::ok);
    for (auto& t : ts) t.join();
    EXPECT_EQ(done.load(), 3);
    EXPECT_EQ(s.value(), 0u);
}

TEST(SyncEvent, SetClearsTheSleepersBit) {
    auto e = shm_event::create();
    std::thread t([&] {
        for (;;) {
            auto tk = e.ticket();
            if (e.is_set()) break;
            e.wait(tk, 100000s);
        }
    });
    while (!e.sleepers()) std::this_thread::sleep_for(1ms);
    e.set();
    t.join();
    EXPECT_FALSE(e.sleepers());
    e.clear();
    EXPECT_FALSE(e.is_set());
}

TEST(SyncEvent, SpinningBacksOffWhenTheSetterDoesNotCome) {
    // A setter that is not running (a busy machine) makes every spin fail:
    // after a few waits the event no longer spins at all before sleeping.
    auto e = shm_event::create();
    EXPECT_EQ(e.spin_budget(), shm_event::max_spin_ns);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(e.wait(e.ticket(), 1ms), wait_result::timed_out);
    EXPECT_EQ(e.spin_budget(), 0);
    // Spins that succeed bring it back (a setter on another core).
    e.set();
    EXPECT_EQ(e.wait(e.ticket(), 1ms), wait_result::woken);
}

TEST(SyncLock, HolderInAnotherPidNamespaceIsNeverJudgedDead) {
    // A holder in another pid namespace records a pid that means nothing
    // here (here it may name no process at all, which looked "dead" to a
    // pid check): it must not be released while it lives.
    auto l = shm_lock::create(false);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t outer = ::fork();
    ASSERT_GE(outer, 0);
    if (outer == 0) {
        if (::unshare(CLONE_NEWPID) != 0) {
            char skip = 's';
            (void)!::write(fds[1], &skip, 1);
            ::_exit(0);
        }
        pid_t init = ::fork();  // pid 1 of the new namespace
        if (init == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the test kills `outer`: the namespace goes with it
            // Make the next pid one that does not exist outside (pid_max is at least 32768).
            int fd = ::open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
            if (fd >= 0) {
                (void)!::write(fd, "30999", 5);
                ::close(fd);
            }
            pid_t holder = ::fork();
            if (holder == 0) {
                char ok = l.try_acquire() ? 'h' : 'n';
                (void)!::write(fds[1], &ok, 1);
                for (;;) ::pause();
            }
            ::waitpid(holder, nullptr, 0);  // until the test kills this namespace
            ::_exit(0);
        }
        ::waitpid(init, nullptr, 0);
        ::_exit(0);
    }
    ::close(fds[1]);
    char got = 0;
    ASSERT_EQ(::read(fds[0], &got, 1), 1);
    ::close(fds[0]);
    if (got == 's') {
        ::waitpid(outer, nullptr, 0);
        GTEST_SKIP() << "cannot create a pid namespace here";
    }
    ASSERT_EQ(got, 'h');
    EXPECT_TRUE(l.locked());
    EXPECT_FALSE(l.recover_dead_holder());  // its pid is not ours to judge
    EXPECT_TRUE(l.locked());
    // Killing `outer` kills the namespace's init (death signal), and so every process in it.
    ::kill(outer, SIGKILL);
    ::waitpid(outer, nullptr, 0);
}
