// Event (see sync.hpp).
#include <fastmp/sync.hpp>

#include <algorithm>

#include "sync_layout.hpp"

namespace fastmp {

using sync_detail::check_layout;
using sync_detail::init_layout;

shm_event shm_event::create() {
    shm_event e;
    e.ref_ = sync_allocate(sizeof(event_layout));
    e.layout_ = init_layout<event_layout>(e.ref_, sync_kind::event);
    return e;
}

shm_event shm_event::attach(sync_ref ref) {
    shm_event e;
    e.ref_ = std::move(ref);
    e.layout_ = check_layout<event_layout>(e.ref_, sync_kind::event);
    return e;
}

void shm_event::set() noexcept {
    // Clears the sleepers bit: every sleeper is woken, and a sleeper that was
    // killed leaves nothing behind after this one needless wake-up.
    if (atomic(layout_->flag).exchange(set_bit) & sleepers_bit) futex_wake(&layout_->flag, 0);
}

wait_result shm_event::wait(std::uint32_t ticket, clock::duration slice) noexcept {
    if (ticket & set_bit) return wait_result::woken;
    // A round trip between two processes on two cores is shorter than a
    // sleep and wake-up, so spin for a few microseconds first, but only
    // while spinning pays: when the setter is not running (a busy machine,
    // or a peer that takes long), the spin fails, and each failure halves
    // the next spin (down to none), so we do not burn the time slice the
    // setter may be waiting for. A spin that succeeds grows it back.
    // The budget is a per-handle heuristic that threads sharing the handle may race on: atomic, relaxed.
    auto budget = atomic(spin_budget_);
    std::int64_t spin = budget.load(std::memory_order_relaxed);
    if (spin > 0) {
        const auto spin_until = clock::now() + std::chrono::nanoseconds(spin);
        do {
            for (int i = 0; i < 32; ++i) {
                if (atomic(layout_->flag).load(std::memory_order_relaxed) & set_bit) {
                    budget.store(std::min(spin * 2 + 250, max_spin_ns), std::memory_order_relaxed);
                    return wait_result::woken;
                }
                cpu_relax();
            }
        } while (clock::now() < spin_until);
    }
    budget.store(spin / 2 < 100 ? 0 : spin / 2, std::memory_order_relaxed);
    ticket = atomic(layout_->flag).load();
    if (ticket & set_bit) return wait_result::woken;
    if (!(ticket & sleepers_bit)) {
        if (!atomic(layout_->flag).compare_exchange_strong(ticket, ticket | sleepers_bit)) return wait_result::woken;
        ticket |= sleepers_bit;
    }
    wait_result r = futex_wait(&layout_->flag, ticket, slice);
    // Woken by a set while we slept: the setter was running after all, so a
    // spin next time may succeed. Try a short one again.
    if (r == wait_result::woken && budget.load(std::memory_order_relaxed) == 0)
        budget.store(500, std::memory_order_relaxed);
    return r;
}

}  // namespace fastmp
