// Semaphore and BoundedSemaphore (see sync.hpp for the recovery rule).
//
// Lock-free: the value word holds the units and a sleepers bit; each process
// counts its own units in its pid_slot, recorded *before* a unit is taken
// and dropped *after* it is given back, so a process killed between the two
// steps is over-counted, which the recovery rule absorbs (it never brings
// value + live holders above the initial value). Only recovering waiters
// take a (kernel robust) mutex, among themselves.
#include <fastmp/sync.hpp>

#include <algorithm>

#include "sync_layout.hpp"

namespace fastmp {

using sync_detail::check_layout;
using sync_detail::init_layout;

shm_semaphore shm_semaphore::create(std::uint32_t value, std::uint32_t maxvalue) {
    shm_semaphore s;
    s.ref_ = sync_allocate(sizeof(semaphore_layout));
    auto* l = reinterpret_cast<semaphore_layout*>(s.ref_.data());
    l->value = value & units_mask;
    l->maxvalue = maxvalue;
    l->initial = value;
    l->recovery.init();
    s.layout_ = init_layout<semaphore_layout>(s.ref_, sync_kind::semaphore);
    s.arena_ = s.ref_.arena().get();
    return s;
}

shm_semaphore shm_semaphore::attach(sync_ref ref) {
    shm_semaphore s;
    s.ref_ = std::move(ref);
    s.layout_ = check_layout<semaphore_layout>(s.ref_, sync_kind::semaphore);
    s.arena_ = s.ref_.arena().get();
    return s;
}

bool shm_semaphore::take(bool after_wait) noexcept {
    semaphore_layout* l = layout_;
    std::uint32_t w = atomic(l->value).load(std::memory_order_relaxed);
    if ((w & units_mask) == 0) return false;
    // Record first (see the top of this file).
    pid_slot* mine = holders().claim(arena_->holder_identity(), hint_, arena_->judges());
    std::uint32_t& counter = mine ? mine->count : l->untracked;
    atomic(counter).fetch_add(1);
    sync_test_point("semaphore.recorded");
    for (;;) {
        if ((w & units_mask) == 0) {
            atomic(counter).fetch_sub(1);
            return false;
        }
        // After a wait, keep the sleepers bit set: others may sleep too, and
        // our own bit may have been cleared by the release that woke us.
        std::uint32_t next = (w - 1) | (after_wait ? sleepers_bit : 0);
        if (atomic(l->value).compare_exchange_weak(w, next, std::memory_order_acquire, std::memory_order_relaxed))
            break;
    }
    // More units than the one we took (several releases, one wake-up): pass it on.
    if (after_wait && ((w & units_mask) - 1) > 0) futex_wake(&l->value, 1);
    return true;
}

status shm_semaphore::release() noexcept {
    semaphore_layout* l = layout_;
    std::uint32_t w = atomic(l->value).load(std::memory_order_relaxed);
    for (;;) {
        if ((w & units_mask) >= l->maxvalue) return status::too_many;
        // The sleepers bit is cleared: the one we wake sets it again if needed.
        if (atomic(l->value).compare_exchange_weak(w, (w & units_mask) + 1, std::memory_order_release,
                                                   std::memory_order_relaxed))
            break;
    }
    sync_test_point("semaphore.given");
    // Give first, then unrecord (see the top of this file).
    if (pid_slot* mine = holders().holding(arena_->holder_identity())) {
        atomic(mine->count).fetch_sub(1);
    } else {
        // Released by a process that holds none (signalling), or by one that
        // found the table full: count it against the untracked units.
        std::uint32_t u = atomic(l->untracked).load();
        while (u > 0 && !atomic(l->untracked).compare_exchange_weak(u, u - 1)) {
        }
    }
    if (w & sleepers_bit) futex_wake(&l->value, 1);
    return status::ok;
}

wait_result shm_semaphore::wait(std::uint32_t ticket, clock::duration slice) noexcept {
    if ((ticket & units_mask) != 0) return wait_result::woken;
    if (!(ticket & sleepers_bit)) {
        if (!atomic(layout_->value).compare_exchange_strong(ticket, ticket | sleepers_bit)) return wait_result::woken;
        ticket |= sleepers_bit;
    }
    wait_result r = futex_wait(&layout_->value, ticket, slice);
    if (r == wait_result::timed_out) recover_dead_holders();
    return r;
}

std::uint32_t shm_semaphore::recover_dead_holders() noexcept {
    if (!arena_->judges()) return 0;
    semaphore_layout* l = layout_;
    std::uint32_t restored = 0;
    {
        process_lock_guard g(l->recovery);  // a dead recoverer leaves nothing to repair: see below
        std::uint64_t live = atomic(l->untracked).load();
        pid_slot* dead[std::size(semaphore_layout{}.holders)];
        std::size_t ndead = 0;
        for (pid_slot& e : holders()) {
            std::uint64_t id = atomic(e.id).load();
            std::uint32_t c = atomic(e.count).load();
            if (id == 0 || c == 0) continue;
            if (id_alive(id))
                live += c;
            else
                dead[ndead++] = &e;
        }
        std::uint32_t w = atomic(l->value).load();
        std::uint64_t v = w & units_mask;
        std::uint64_t want = l->initial > v + live ? l->initial - v - live : 0;
        want = std::min<std::uint64_t>(want, l->maxvalue > v ? l->maxvalue - v : 0);
        for (std::size_t i = 0; i < ndead && want > 0; ++i) {
            std::uint32_t c = atomic(dead[i]->count).load();
            auto r = static_cast<std::uint32_t>(std::min<std::uint64_t>(c, want));
            // Give first, then take from the dead slot: a recoverer killed in
            // between leaves an over-count, which the rule absorbs.
            atomic(l->value).fetch_add(r);
            atomic(dead[i]->count).fetch_sub(r);
            want -= r;
            restored += r;
        }
    }
    if (restored) futex_wake(&l->value, static_cast<int>(restored));
    return restored;
}

std::uint32_t shm_semaphore::held_by_me() const noexcept { return holders().held_by(arena_->holder_identity()); }

}  // namespace fastmp
