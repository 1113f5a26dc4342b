// A Barrier's shared state (see sync.hpp).
#include <fastmp/sync.hpp>

#include <cerrno>

#include <signal.h>

#include "sync_layout.hpp"

namespace fastmp {

using sync_detail::check_layout;
using sync_detail::init_layout;

// ---------------------------------------------------------------- barrier state

shm_barrier_state shm_barrier_state::create(std::uint32_t parties) {
    shm_barrier_state b;
    b.ref_ = sync_allocate(sizeof(barrier_layout));
    reinterpret_cast<barrier_layout*>(b.ref_.data())->parties = parties;
    b.layout_ = init_layout<barrier_layout>(b.ref_, sync_kind::barrier);
    b.arena_ = b.ref_.arena().get();
    return b;
}

shm_barrier_state shm_barrier_state::attach(sync_ref ref) {
    shm_barrier_state b;
    b.ref_ = std::move(ref);
    b.layout_ = check_layout<barrier_layout>(b.ref_, sync_kind::barrier);
    b.arena_ = b.ref_.arena().get();
    return b;
}

void shm_barrier_state::arrive() noexcept {
    atomic(layout_->count).fetch_add(1);
    // Not found (more than 56 processes inside at once): untracked.
    if (pid_slot* mine = inside().claim(arena_->holder_identity(), hint_, arena_->judges()))
        atomic(mine->count).fetch_add(1);
}

void shm_barrier_state::leave() noexcept {
    atomic(layout_->count).fetch_sub(1);
    if (pid_slot* mine = inside().holding(arena_->holder_identity())) atomic(mine->count).fetch_sub(1);
}

std::uint32_t shm_barrier_state::reap_dead(bool quick) noexcept {
    if (!arena_->judges()) return 0;
    std::uint32_t gone = 0;
    for (pid_slot& e : inside()) {
        std::uint64_t id = atomic(e.id).load();
        if (id == 0 || atomic(e.count).load() == 0) continue;
        if (quick ? !(::kill(static_cast<pid_t>(id_pid(id)), 0) != 0 && errno == ESRCH) : id_alive(id)) continue;
        gone += atomic(e.count).exchange(0);
    }
    if (gone) atomic(layout_->count).fetch_sub(static_cast<std::int32_t>(gone));
    return gone;
}

}  // namespace fastmp
