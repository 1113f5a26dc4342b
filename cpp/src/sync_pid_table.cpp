// pid_table: which processes hold how much (see sync.hpp), and the test stop points.
#include <fastmp/sync.hpp>

#include <cstring>
#include <string>

#include <signal.h>

namespace fastmp {

pid_slot* pid_table::claim(std::uint64_t id, std::uint32_t& hint_ref, bool take_over) noexcept {
    // The hint is a per-handle cache that threads sharing the handle may race on: harmless, but atomic.
    auto hint_cache = atomic(hint_ref);
    std::uint32_t h = hint_cache.load(std::memory_order_relaxed);
    if (h < n_ && atomic(slots_[h].id).load(std::memory_order_relaxed) == id) return &slots_[h];
    auto remember = [&](std::uint32_t i) { hint_cache.store(i, std::memory_order_relaxed); };
    for (std::uint32_t i = 0; i < n_; ++i) {
        if (atomic(slots_[i].id).load(std::memory_order_relaxed) == id) {
            remember(i);
            return &slots_[i];
        }
    }
    for (std::uint32_t i = 0; i < n_; ++i) {
        std::uint64_t expected = 0;
        if (atomic(slots_[i].id).load(std::memory_order_relaxed) == 0 &&
            atomic(slots_[i].id).compare_exchange_strong(expected, id)) {
            remember(i);
            return &slots_[i];
        }
    }
    if (!take_over) return nullptr;
    // Full: take over the empty slot of a process that is gone (slots are
    // never given back by their owner, who might still use them).
    for (std::uint32_t i = 0; i < n_; ++i) {
        std::uint64_t old = atomic(slots_[i].id).load();
        if (old == 0 || atomic(slots_[i].count).load() != 0 || id_alive(old)) continue;
        if (atomic(slots_[i].id).compare_exchange_strong(old, id)) {
            remember(i);
            return &slots_[i];
        }
    }
    return nullptr;
}

pid_slot* pid_table::holding(std::uint64_t id) const noexcept {
    for (std::uint32_t i = 0; i < n_; ++i)
        if (atomic(slots_[i].id).load(std::memory_order_relaxed) == id && atomic(slots_[i].count).load() > 0)
            return &slots_[i];
    return nullptr;
}

std::uint32_t pid_table::held_by(std::uint64_t id) const noexcept {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < n_; ++i)
        if (atomic(slots_[i].id).load(std::memory_order_relaxed) == id) n += atomic(slots_[i].count).load();
    return n;
}

namespace detail {
const char* sync_test_stop_point = nullptr;

void sync_test_stop_here(const char* point) noexcept {
    const char* want = sync_test_stop_point;
    if (want != nullptr && std::strcmp(want, point) == 0) ::raise(SIGSTOP);
}
}  // namespace detail

void sync_test_stop_at(const char* point) noexcept {
    static std::string armed;  // owns the text while armed
    if (point == nullptr) {
        detail::sync_test_stop_point = nullptr;
        return;
    }
    armed = point;
    detail::sync_test_stop_point = armed.c_str();
}

}  // namespace fastmp
