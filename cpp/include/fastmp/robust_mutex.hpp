// A process-shared mutex that survives the death of its holder.
//
// Design notes
// - Lives inside a shared-memory layout (a single 32-bit word, trivially
//   copyable); whoever creates the layout zero-initialises it (= unlocked).
// - The word holds the holder's pid, plus a bit saying someone may sleep on
//   it. Waiters sleep on the futex in short slices; after each slice they ask
//   whether the holder still lives, and if not they take the lock over and are
//   told so (status::owner_died), so they can repair the state it guarded.
// - Meant for short critical sections inside fastmp's own structures: its
//   wait is not interruptible by signals.
#pragma once

#include <cstdint>
#include <type_traits>

#include <fastmp/status.hpp>

namespace fastmp {

struct robust_mutex {
    std::uint32_t word;  // 0 = free, else holder pid | waiters_bit

    static constexpr std::uint32_t waiters_bit = 0x80000000u;
    static constexpr std::uint32_t pid_mask = 0x7fffffffu;

    // status::ok, or status::owner_died when taken over from a dead holder.
    status lock() noexcept;
    bool try_lock() noexcept;
    void unlock() noexcept;
};
static_assert(std::is_trivially_copyable_v<robust_mutex>);
static_assert(std::is_standard_layout_v<robust_mutex>);

// RAII holder; `recovered()` tells whether the previous owner died.
class robust_lock_guard {
public:
    explicit robust_lock_guard(robust_mutex& m) noexcept : m_(m), st_(m.lock()) {}
    ~robust_lock_guard() { m_.unlock(); }
    robust_lock_guard(const robust_lock_guard&) = delete;
    robust_lock_guard& operator=(const robust_lock_guard&) = delete;
    bool recovered() const noexcept { return st_ == status::owner_died; }

private:
    robust_mutex& m_;
    status st_;
};

}  // namespace fastmp
