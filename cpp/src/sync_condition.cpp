// The waiter table of a Condition (see sync.hpp).
//
// A waiter killed inside one of these short critical sections (the kernel
// reports it through process_mutex) can leave `waiting` one too high; it is a
// hint (notify() skips the table when it is 0), so the cost is a table scan.
#include <fastmp/sync.hpp>

#include <algorithm>
#include <iterator>

#include "sync_layout.hpp"

namespace fastmp {

using sync_detail::check_layout;
using sync_detail::init_layout;

// ---------------------------------------------------------------- condition

shm_condition shm_condition::create() {
    shm_condition c;
    c.ref_ = sync_allocate(sizeof(condition_layout));
    reinterpret_cast<condition_layout*>(c.ref_.data())->m.init();
    c.layout_ = init_layout<condition_layout>(c.ref_, sync_kind::condition);
    c.arena_ = c.ref_.arena().get();
    return c;
}

shm_condition shm_condition::attach(sync_ref ref) {
    shm_condition c;
    c.ref_ = std::move(ref);
    c.layout_ = check_layout<condition_layout>(c.ref_, sync_kind::condition);
    c.arena_ = c.ref_.arena().get();
    return c;
}

std::int32_t shm_condition::enlist() noexcept {
    condition_layout* l = layout_;
    const bool judge = arena_->judges();
    process_lock_guard g(l->m);
    atomic(l->waiting).fetch_add(1);
    std::int32_t found = overflow_index;
    for (std::int32_t pass = 0; pass < 2 && found == overflow_index; ++pass) {
        for (std::int32_t i = 0; i < static_cast<std::int32_t>(std::size(l->entries)); ++i) {
            cond_entry& e = l->entries[i];
            // Second pass: take over entries left by dead waiters.
            if (e.state == 0 || (pass == 1 && e.state == 1 && judge && !id_alive(e.id))) {
                if (e.state == 1) atomic(l->waiting).fetch_sub(1);
                found = i;
                break;
            }
        }
    }
    if (found == overflow_index) {
        ++l->overflow;
        return found;
    }
    cond_entry& e = l->entries[found];
    e.id = arena_->holder_identity();
    e.tid = static_cast<std::uint32_t>(current_tid());
    e.order = l->next_order++;
    atomic(e.state).store(1);
    return found;
}

bool shm_condition::notified(std::int32_t index, std::uint32_t since) const noexcept {
    if (index == overflow_index) return ticket() != since;
    return atomic(layout_->entries[index].state).load() == 2;
}

wait_result shm_condition::wait(std::int32_t index, std::uint32_t ticket, clock::duration slice) noexcept {
    if (notified(index, ticket) && index != overflow_index) return wait_result::woken;
    wait_result r = futex_wait(&layout_->seq, ticket, slice);
    if (r == wait_result::timed_out) rescue_orphans();
    return r;
}

bool shm_condition::finish(std::int32_t index, std::uint32_t since) noexcept {
    condition_layout* l = layout_;
    process_lock_guard g(l->m);
    if (index == overflow_index) {
        --l->overflow;
        atomic(l->waiting).fetch_sub(1);
        return atomic(l->seq).load() != since;
    }
    cond_entry& e = l->entries[index];
    bool was_notified = e.state == 2;
    if (e.state == 1) atomic(l->waiting).fetch_sub(1);
    atomic(e.state).store(0);
    e.id = 0;
    return was_notified;
}

std::uint32_t shm_condition::notify(std::uint64_t n) noexcept {
    condition_layout* l = layout_;
    if (n == 0 || atomic(l->waiting).load() == 0) return 0;
    std::uint32_t done = 0;
    {
        process_lock_guard g(l->m);
        while (done < n) {
            // Oldest waiter first, like threading.Condition.
            cond_entry* oldest = nullptr;
            for (cond_entry& e : l->entries)
                if (e.state == 1 && (!oldest || std::int32_t(e.order - oldest->order) < 0)) oldest = &e;
            if (!oldest) break;
            atomic(oldest->state).store(2);
            atomic(l->waiting).fetch_sub(1);
            ++done;
        }
        // Waiters beyond the table cannot be told apart: any notification wakes them.
        if (done < n && l->overflow > 0) done += std::min<std::uint64_t>(n - done, l->overflow);
        atomic(l->seq).fetch_add(1);
    }
    futex_wake(&l->seq, 0);
    return done;
}

void shm_condition::rescue_orphans() noexcept {
    condition_layout* l = layout_;
    if (!arena_->judges()) return;
    bool moved = false;
    {
        process_lock_guard g(l->m);
        for (cond_entry& dead : l->entries) {
            if (dead.state != 2 || id_alive(dead.id)) continue;
            atomic(dead.state).store(0);
            dead.id = 0;
            cond_entry* oldest = nullptr;
            for (cond_entry& e : l->entries)
                if (e.state == 1 && (!oldest || std::int32_t(e.order - oldest->order) < 0)) oldest = &e;
            if (oldest) {
                atomic(oldest->state).store(2);
                atomic(l->waiting).fetch_sub(1);
                moved = true;
            }
        }
        if (moved) atomic(l->seq).fetch_add(1);
    }
    if (moved) futex_wake(&l->seq, 0);
}

}  // namespace fastmp
