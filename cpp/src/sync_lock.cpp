// Lock and RLock (see sync.hpp).
#include <fastmp/sync.hpp>

#include "sync_layout.hpp"

namespace fastmp {

using sync_detail::check_layout;
using sync_detail::init_layout;
using sync_detail::low_half;

shm_lock shm_lock::create(bool recursive) {
    shm_lock l;
    l.ref_ = sync_allocate(sizeof(lock_layout));
    l.layout_ = init_layout<lock_layout>(l.ref_, recursive ? sync_kind::rlock : sync_kind::lock);
    l.arena_ = l.ref_.arena().get();
    l.recursive_ = recursive;
    return l;
}

shm_lock shm_lock::attach(sync_ref ref) {
    shm_lock l;
    l.ref_ = std::move(ref);
    auto kind = static_cast<sync_kind>(reinterpret_cast<sync_object_header*>(l.ref_.data())->kind);
    l.recursive_ = kind == sync_kind::rlock;
    l.layout_ = check_layout<lock_layout>(l.ref_, l.recursive_ ? sync_kind::rlock : sync_kind::lock);
    l.arena_ = l.ref_.arena().get();
    return l;
}

void shm_lock::took_it() noexcept {
    atomic(layout_->owner_tid).store(static_cast<std::uint32_t>(current_tid()), std::memory_order_relaxed);
    if (recursive_) layout_->count = 1;
}

bool shm_lock::try_acquire_after_wait() noexcept {
    // Not try_acquire(): taking the word without the waiters bit would let
    // our release skip the wake-up that another sleeper needs.
    std::uint64_t expected = 0;
    std::uint64_t mine = arena_->holder_identity() | waiters_bit;
    if (atomic(layout_->word).compare_exchange_strong(expected, mine, std::memory_order_acquire)) {
        took_it();
        return true;
    }
    return false;
}

status shm_lock::release() noexcept {
    lock_layout* l = layout_;
    std::uint64_t w = atomic(l->word).load(std::memory_order_relaxed);
    if (recursive_) {
        if ((w & ~waiters_bit) != arena_->holder_identity() ||
            atomic(l->owner_tid).load(std::memory_order_relaxed) != static_cast<std::uint32_t>(current_tid()))
            return status::not_owner;
        if (--l->count != 0) return status::ok;
    } else if ((w & pid_mask) == 0) {
        return status::too_many;
    }
    atomic(l->owner_tid).store(0, std::memory_order_relaxed);
    // A plain Lock may be released by any thread or process (it is a
    // semaphore of value 1), so the word is swapped whoever holds it.
    w = atomic(l->word).exchange(0, std::memory_order_release);
    if ((w & pid_mask) == 0) return status::too_many;  // lost a race with another releaser
    if (w & waiters_bit) futex_wake(low_half(l->word), 1);
    return status::ok;
}

wait_result shm_lock::wait(std::uint64_t ticket, clock::duration slice) noexcept {
    if ((ticket & pid_mask) == 0) return wait_result::woken;
    if (!(ticket & waiters_bit)) {
        if (!atomic(layout_->word).compare_exchange_strong(ticket, ticket | waiters_bit)) return wait_result::woken;
        ticket |= waiters_bit;
    }
    wait_result r = futex_wait(low_half(layout_->word), static_cast<std::uint32_t>(ticket), slice);
    if (r == wait_result::timed_out) recover_dead_holder();
    return r;
}

bool shm_lock::recover_dead_holder() noexcept {
    if (!arena_->judges()) return false;
    std::uint64_t w = atomic(layout_->word).load();
    std::uint64_t holder = w & ~waiters_bit;
    if ((w & pid_mask) == 0 || holder == arena_->holder_identity() || id_alive(holder)) return false;
    // Release on the dead holder's behalf; whoever tries next gets the lock.
    if (!atomic(layout_->word).compare_exchange_strong(w, 0)) return false;
    futex_wake(low_half(layout_->word), 0);
    return true;
}

bool shm_lock::is_mine() const noexcept {
    return held_by_this_process() &&
           atomic(layout_->owner_tid).load(std::memory_order_relaxed) == static_cast<std::uint32_t>(current_tid());
}

std::uint32_t shm_lock::count() const noexcept {
    if (!held_by_this_process()) return 0;
    return recursive_ ? layout_->count : 1;
}

}  // namespace fastmp
