#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fastmp/containers.hpp>
#include <string>

using namespace fastmp;

namespace {

struct key_buf {
    std::string canon;
    key_view view() const {
        return key_view{std::hash<std::string>{}(canon), canon.data(), static_cast<std::uint32_t>(canon.size()), false,
                        message_view{1, canon.data(), canon.size()}};
    }
};

key_buf key(std::uint64_t i) { return {"k" + std::to_string(i)}; }
message_view val(const std::string& s) { return message_view{2, s.data(), s.size()}; }
auto no_eq = [](std::uint64_t) { return false; };

std::string value_of(shm_heap& h, std::uint64_t blob) {
    blob_ref b = blob_at(h, blob);
    return std::string(reinterpret_cast<const char*>(b.value()), b.h->val_len);
}

std::string dict_get(shm_heap& h, std::uint64_t i) {
    shm_dict d(h);
    auto k = key(i);
    auto r = d.find(k.view(), no_eq);
    return r.found ? value_of(h, d.entry(r.entry)) : std::string("<missing>");
}

void dict_set(shm_heap& h, std::uint64_t i, const std::string& v) {
    h.lock();
    h.begin();
    auto k = key(i);
    shm_dict(h).set(k.view(), val(v), no_eq);
    h.commit();
    h.unlock();
}

// Waits until the child stopped itself (the test hook) and kills it.
void kill_when_stopped(pid_t pid) {
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, WUNTRACED), pid);
    ASSERT_TRUE(WIFSTOPPED(st));
    ::kill(pid, SIGKILL);
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
}

}  // namespace

TEST(Containers, DictSetGetDeleteInOrder) {
    shm_heap h = create_container(container_dict);
    for (std::uint64_t i = 0; i < 1000; ++i) dict_set(h, i, "v" + std::to_string(i));
    dict_set(h, 5, "five");
    h.lock();
    shm_dict d(h);
    EXPECT_EQ(d.size(), 1000u);
    EXPECT_EQ(dict_get(h, 5), "five");
    EXPECT_EQ(dict_get(h, 999), "v999");
    EXPECT_EQ(dict_get(h, 1000), "<missing>");
    h.begin();
    auto k = key(5);
    auto r = d.find(k.view(), no_eq);
    ASSERT_TRUE(r.found);
    d.erase(r);
    h.commit();
    EXPECT_EQ(d.size(), 999u);
    EXPECT_EQ(dict_get(h, 5), "<missing>");
    // Insertion order: entry 0 is key 0, entry 5 deleted.
    EXPECT_EQ(value_of(h, d.entry(0)), "v0");
    h.unlock();
}

TEST(Containers, AbortUndoes) {
    shm_heap h = create_container(container_dict);
    dict_set(h, 1, "one");
    h.lock();
    h.begin();
    for (std::uint64_t i = 2; i < 500; ++i) {
        auto k = key(i);
        shm_dict(h).set(k.view(), val("x"), no_eq);
    }
    auto k = key(1);
    shm_dict(h).set(k.view(), val("uno"), no_eq);  // as long as "one": rewritten in place
    EXPECT_EQ(dict_get(h, 1), "uno");
    shm_dict(h).set(k.view(), val("changed"), no_eq);
    h.abort();
    EXPECT_EQ(shm_dict(h).size(), 1u);
    EXPECT_EQ(dict_get(h, 1), "one");
    h.unlock();
}

TEST(Containers, GrowsAndGivesBack) {
    shm_heap h = create_container(container_dict);
    std::string big(64 << 20, 'x');
    dict_set(h, 1, big);
    EXPECT_GE(h.memory_used(), big.size());
    h.lock();
    EXPECT_EQ(dict_get(h, 1).size(), big.size());
    h.clear_all();
    EXPECT_EQ(shm_dict(h).size(), 0u);
    EXPECT_LT(h.memory_used(), 1u << 20);
    h.unlock();
    for (std::uint64_t i = 0; i < 100000; ++i) dict_set(h, i, "value");
    const auto grown = h.region_size();
    EXPECT_GT(grown, 4u << 20);
    for (std::uint64_t i = 0; i < 100000; ++i) {
        h.lock();
        h.begin();
        auto k = key(i);
        shm_dict d(h);
        auto r = d.find(k.view(), no_eq);
        ASSERT_TRUE(r.found);
        d.erase(r);
        h.commit();
        h.unlock();
    }
    EXPECT_LT(h.region_size(), grown / 2);  // relocated into a smaller region
    EXPECT_LT(h.memory_used(), 1u << 20);
}

TEST(Containers, ListOps) {
    shm_heap h = create_container(container_list);
    shm_list l(h);
    h.lock();
    h.begin();
    for (int i = 0; i < 100; ++i) l.append(make_blob(h, nullptr, val(std::to_string(i))));
    h.commit();
    EXPECT_EQ(l.size(), 100u);
    EXPECT_EQ(value_of(h, l.item(42)), "42");
    h.begin();
    std::vector<std::uint64_t> rev;
    for (std::uint64_t i = l.size(); i-- > 0;) rev.push_back(l.item(i));
    rev.push_back(rev[0]);  // the same item twice is copied
    l.set_items(rev);
    h.commit();
    EXPECT_EQ(l.size(), 101u);
    EXPECT_EQ(value_of(h, l.item(0)), "99");
    EXPECT_EQ(value_of(h, l.item(100)), "99");
    EXPECT_NE(l.item(0), l.item(100));
    h.unlock();
}

TEST(Containers, KilledMidOperationIsUndone) {
    shm_heap h = create_container(container_dict);
    for (std::uint64_t i = 0; i < 100; ++i) dict_set(h, i, "old");
    const auto region = h.region_size();
    h.set_pause_at(150);  // inside the big update below
    pid_t pid = ::fork();
    if (pid == 0) {
        h.lock();
        h.begin();
        for (std::uint64_t i = 0; i < 1000; ++i) {
            auto k = key(i);
            shm_dict(h).set(k.view(), val("new"), no_eq);
        }
        h.commit();
        h.unlock();
        ::_exit(0);
    }
    kill_when_stopped(pid);
    h.set_pause_at(0);
    h.lock();  // the dead holder's update is undone
    EXPECT_EQ(h.recoveries(), 1u);
    EXPECT_EQ(h.region_size(), region);  // undone in place: no relocation needed
    EXPECT_EQ(shm_dict(h).size(), 100u);
    for (std::uint64_t i = 0; i < 100; ++i) EXPECT_EQ(dict_get(h, i), "old");
    h.unlock();
    dict_set(h, 7, "after");
    h.lock();
    EXPECT_EQ(dict_get(h, 7), "after");
    h.unlock();
}

TEST(Containers, RandomKillsStayConsistent) {
    shm_heap h = create_container(container_list);
    for (int round = 0; round < 20; ++round) {
        pid_t pid = ::fork();
        if (pid == 0) {
            shm_list l(h);
            for (;;) {
                h.lock();
                h.begin();
                for (int i = 0; i < 50; ++i) l.append(make_blob(h, nullptr, val(std::string(100 + i * 37, 'a'))));
                h.commit();
                h.unlock();
            }
        }
        ::usleep(static_cast<useconds_t>(200 + round * 150));
        ::kill(pid, SIGKILL);
        int st;
        ::waitpid(pid, &st, 0);
        h.lock();
        shm_list l(h);
        EXPECT_EQ(l.size() % 50, 0u) << "a partly applied batch";
        for (std::uint64_t i = 0; i < l.size(); ++i) EXPECT_EQ(blob_at(h, l.item(i)).h->val_len, 100 + (i % 50) * 37);
        h.begin();
        l.set_items({});
        h.commit();
        // The allocator is sound: churn it.
        for (int i = 0; i < 200; ++i) {
            h.begin();
            l.append(make_blob(h, nullptr, val(std::string(10 + i * 53 % 3000, 'b'))));
            if (i % 3 == 0) l.set_items({l.item(l.size() - 1)});
            h.commit();
        }
        h.begin();
        l.set_items({});
        h.commit();
        h.unlock();
    }
}
