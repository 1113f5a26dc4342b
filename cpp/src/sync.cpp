#include <fastmp/sync.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>

#include <pthread.h>
#include <stdexcept>

#include <sys/random.h>
#include <signal.h>
#include <cerrno>
#include <unistd.h>

namespace fastmp {

namespace {

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

constexpr std::size_t table_offset() { return round_up(sizeof(sync_arena_header), sync_slot_bytes); }
constexpr std::size_t slots_offset(std::uint32_t nslots) {
    return round_up(table_offset() + std::size_t{nslots} * sizeof(std::uint32_t), sync_slot_bytes);
}
constexpr std::size_t arena_bytes(std::uint32_t nslots) {
    return slots_offset(nslots) + std::size_t{nslots} * sync_slot_bytes;
}

std::uint64_t random_id() {
    std::uint64_t id = 0;
    if (::getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id) || id == 0)
        id = (std::uint64_t(current_pid()) << 32) ^ std::uint64_t(clock::now().time_since_epoch().count()) ^ 1;
    return id;
}

template <class Layout>
Layout* init_layout(const sync_ref& r, sync_kind kind) {
    auto* l = reinterpret_cast<Layout*>(r.data());
    // Slots come zeroed; the header goes in last so a reader never sees half an object.
    l->h.kind = static_cast<std::uint16_t>(kind);
    l->h.layout_version = sync_object_version;
    l->h.size = sizeof(Layout);
    atomic(l->h.magic).store(sync_object_magic, std::memory_order_release);
    return l;
}

template <class Layout>
Layout* check_layout(const sync_ref& r, sync_kind kind) {
    auto* l = reinterpret_cast<Layout*>(r.data());
    if (atomic(l->h.magic).load(std::memory_order_acquire) != sync_object_magic ||
        l->h.layout_version != sync_object_version || l->h.size != sizeof(Layout) ||
        l->h.kind != static_cast<std::uint16_t>(kind))
        throw sys_error(EINVAL, "not a fastmp synchronisation object of the expected kind");
    return l;
}

constexpr std::uint32_t bytes_to_slots(std::uint32_t bytes) {
    return (bytes + sync_slot_bytes - 1) / sync_slot_bytes;
}

}  // namespace

// ---------------------------------------------------------------- arena

std::uint32_t* sync_arena::ref_table() const noexcept {
    return reinterpret_cast<std::uint32_t*>(seg_.data() + table_offset());
}

std::byte* sync_arena::slot(std::uint32_t index) const noexcept {
    return seg_.data() + slots_offset(header()->nslots) + std::size_t{index} * sync_slot_bytes;
}

std::shared_ptr<sync_arena> sync_arena::create(std::uint32_t nslots) {
    auto a = std::shared_ptr<sync_arena>(new sync_arena());
    a->seg_ = segment::create("fastmp-sync", arena_bytes(nslots));
    auto* h = a->header();
    h->size = arena_bytes(nslots);
    h->id = random_id();
    h->nslots = nslots;
    h->hint = 0;
    h->creator_pid = static_cast<std::uint32_t>(current_pid());
    h->layout_version = layout_version;
    atomic(h->magic).store(magic_value, std::memory_order_release);
    return a;
}

std::shared_ptr<sync_arena> sync_arena::attach(int fd) {
    auto a = std::shared_ptr<sync_arena>(new sync_arena());
    a->seg_ = segment::attach(fd);
    const auto* h = a->header();
    if (a->seg_.size() < sizeof(sync_arena_header) || h->magic != magic_value ||
        h->layout_version != layout_version || h->size != a->seg_.size() || h->size != arena_bytes(h->nslots))
        throw sys_error(EINVAL, "not a fastmp synchronisation arena");
    return a;
}

std::int64_t sync_arena::allocate(std::uint32_t n) {
    auto* h = header();
    std::uint32_t* refs = ref_table();
    const std::uint32_t total = h->nslots;
    if (n == 0 || n > total) return -1;
    robust_lock_guard g(h->alloc_lock);
    // Objects of the same size tend to be allocated and freed together, so a
    // first-fit scan from a moving hint keeps this short.
    for (std::uint32_t pass = 0; pass < 2; ++pass) {
        std::uint32_t start = pass == 0 ? std::min(h->hint, total) : 0;
        std::uint32_t end = pass == 0 ? total : std::min(h->hint + n, total);
        std::uint32_t run = 0;
        for (std::uint32_t i = start; i < end; ++i) {
            if (atomic(refs[i]).load() != 0) {
                run = 0;
                continue;
            }
            if (++run == n) {
                std::uint32_t first = i + 1 - n;
                std::memset(slot(first), 0, std::size_t{n} * sync_slot_bytes);
                for (std::uint32_t k = 1; k < n; ++k) atomic(refs[first + k]).store(continuation_mark);
                atomic(refs[first]).store(1);
                h->hint = first + n;
                return first;
            }
        }
    }
    return -1;
}

void sync_arena::add_ref(std::uint32_t index) noexcept { atomic(ref_table()[index]).fetch_add(1); }

void sync_arena::drop_ref(std::uint32_t index) noexcept {
    std::uint32_t* refs = ref_table();
    // Always under the allocator lock (objects die rarely): two holders
    // dropping at once must not both skip the cleanup of the continuation
    // slots, which would leave them marked forever.
    robust_lock_guard g(header()->alloc_lock);
    if (atomic(refs[index]).load() == 0) return;
    if (atomic(refs[index]).fetch_sub(1) == 1) {
        std::uint32_t k = index + 1;
        while (k < header()->nslots && atomic(refs[k]).load() == continuation_mark) atomic(refs[k++]).store(0);
        if (index < header()->hint) header()->hint = index;
    }
}

std::uint32_t sync_arena::refs(std::uint32_t index) const noexcept { return atomic(ref_table()[index]).load(); }

std::uint32_t sync_arena::used_slots() const noexcept {
    std::uint32_t used = 0;
    for (std::uint32_t i = 0; i < header()->nslots; ++i) used += atomic(ref_table()[i]).load() != 0;
    return used;
}

// ---------------------------------------------------------------- references and the registry

namespace {

struct registry {
    std::mutex mu;  // arenas and current
    std::map<std::uint64_t, std::weak_ptr<sync_arena>> arenas;
    std::weak_ptr<sync_arena> current;
    std::mutex refs_mu;
    std::set<sync_ref::state*> refs;  // every live handle in this process
};

registry& reg() {
    static registry* r = new registry();  // never destroyed: handles may outlive static destruction
    return *r;
}

int test_pause_fd = -1;  // see sync_test_pause_child_after_fork

// A forked child uses every handle it inherited, so it owns a reference for
// each, and that reference must exist before the child does: the parent may
// drop its own handle the moment fork() returns (the stdlib's Process.start()
// deletes its arguments right away), before the child has run at all. So the
// *prepare* handler takes the child's references, with both registry mutexes
// held until fork() is done, and the child handler only records that its
// handles now own them. The parent keeps its own references as they were.
// (If fork() itself fails, the references taken for the child that never
// was stay counted: those slots are only reused once the arena is gone.)
void take_refs_for_child() {
    registry& r = reg();
    r.mu.lock();
    r.refs_mu.lock();
    for (sync_ref::state* s : r.refs)
        if (s->owner != 0) s->arena->add_ref(s->index);
}

void parent_after_fork() {
    registry& r = reg();
    r.refs_mu.unlock();
    r.mu.unlock();
}

void child_after_fork() {
    if (test_pause_fd >= 0) {
        char c;
        while (::read(test_pause_fd, &c, 1) < 0 && errno == EINTR) {
        }
        test_pause_fd = -1;
    }
    registry& r = reg();
    // Not current_pid(): its own fork handler may not have run yet.
    pid_t me = ::getpid();
    for (sync_ref::state* s : r.refs)
        if (s->owner != 0) s->owner = me;
    r.refs_mu.unlock();  // locked by this very thread in take_refs_for_child
    r.mu.unlock();
}

struct fork_hook {
    fork_hook() { ::pthread_atfork(take_refs_for_child, parent_after_fork, child_after_fork); }
} fork_hook_instance;

}  // namespace

sync_ref::sync_ref(std::shared_ptr<sync_arena> a, std::uint32_t index, bool counted)
    : s_(new state{std::move(a), index, counted ? current_pid() : 0}) {
    registry& r = reg();
    std::lock_guard<std::mutex> g(r.refs_mu);
    r.refs.insert(s_.get());
}

sync_ref::~sync_ref() {
    if (!s_) return;
    registry& r = reg();
    {
        std::lock_guard<std::mutex> g(r.refs_mu);
        r.refs.erase(s_.get());
    }
    if (s_->owner != 0 && s_->owner == current_pid()) s_->arena->drop_ref(s_->index);
}

void sync_test_pause_child_after_fork(int fd) noexcept { test_pause_fd = fd; }

void sync_drop_all_refs() noexcept {
    registry& r = reg();
    std::lock_guard<std::mutex> g(r.refs_mu);
    pid_t me = current_pid();
    for (sync_ref::state* s : r.refs) {
        if (s->owner == me) s->arena->drop_ref(s->index);
        s->owner = 0;
    }
}

sync_ref sync_allocate(std::uint32_t bytes) {
    const std::uint32_t n = bytes_to_slots(bytes);
    registry& r = reg();
    std::lock_guard<std::mutex> g(r.mu);
    std::shared_ptr<sync_arena> a = r.current.lock();
    // Never allocate in an arena inherited through fork: our objects must die with us.
    if (a && a->creator() == current_pid()) {
        std::int64_t i = a->allocate(n);
        if (i >= 0) return sync_ref(a, static_cast<std::uint32_t>(i), true);
    }
    a = sync_arena::create(std::max(sync_arena::default_slots, n));
    for (auto it = r.arenas.begin(); it != r.arenas.end();)
        it = it->second.expired() ? r.arenas.erase(it) : std::next(it);
    r.arenas[a->id()] = a;
    r.current = a;
    std::int64_t i = a->allocate(n);
    if (i < 0) throw sys_error(ENOMEM, "cannot allocate a synchronisation object");
    return sync_ref(a, static_cast<std::uint32_t>(i), true);
}

sync_ref sync_attach(int fd, std::uint64_t arena_id, std::uint32_t index) {
    registry& r = reg();
    std::shared_ptr<sync_arena> a;
    {
        std::lock_guard<std::mutex> g(r.mu);
        auto it = r.arenas.find(arena_id);
        if (it != r.arenas.end()) a = it->second.lock();
        if (a) {
            // Under spawn the fd arrives with the number it has here already.
            if (fd >= 0 && fd != a->fd()) ::close(fd);
        } else {
            if (fd < 0) throw sys_error(EBADF, "synchronisation arena was not passed to this process");
            a = sync_arena::attach(fd);
            if (a->id() != arena_id) throw sys_error(EINVAL, "synchronisation arena id mismatch");
            r.arenas[arena_id] = a;
        }
    }
    if (index >= a->nslots() || a->refs(index) == 0 || a->refs(index) == sync_arena::continuation_mark)
        throw sys_error(EINVAL, "no synchronisation object at this slot");
    a->add_ref(index);
    return sync_ref(std::move(a), index, true);
}

// ---------------------------------------------------------------- lock

shm_lock shm_lock::create(bool recursive) {
    shm_lock l;
    l.ref_ = sync_allocate(sizeof(lock_layout));
    l.layout_ = init_layout<lock_layout>(l.ref_, recursive ? sync_kind::rlock : sync_kind::lock);
    l.recursive_ = recursive;
    return l;
}

shm_lock shm_lock::attach(sync_ref ref) {
    shm_lock l;
    l.ref_ = std::move(ref);
    auto kind = static_cast<sync_kind>(reinterpret_cast<sync_object_header*>(l.ref_.data())->kind);
    l.recursive_ = kind == sync_kind::rlock;
    l.layout_ = check_layout<lock_layout>(l.ref_, l.recursive_ ? sync_kind::rlock : sync_kind::lock);
    return l;
}

void shm_lock::took_it() noexcept {
    atomic(layout_->owner_tid).store(static_cast<std::uint32_t>(current_tid()), std::memory_order_relaxed);
    if (recursive_) layout_->count = 1;
}

bool shm_lock::try_acquire_after_wait() noexcept {
    // Not try_acquire(): taking the word without the waiters bit would let
    // our release skip the wake-up that another sleeper needs.
    std::uint32_t expected = 0;
    std::uint32_t mine = static_cast<std::uint32_t>(current_pid()) | waiters_bit;
    if (atomic(layout_->word).compare_exchange_strong(expected, mine, std::memory_order_acquire)) {
        took_it();
        return true;
    }
    return false;
}

status shm_lock::release() noexcept {
    lock_layout* l = layout_;
    std::uint32_t w = atomic(l->word).load(std::memory_order_relaxed);
    if (recursive_) {
        if ((w & pid_mask) != static_cast<std::uint32_t>(current_pid()) ||
            atomic(l->owner_tid).load(std::memory_order_relaxed) != static_cast<std::uint32_t>(current_tid()))
            return status::not_owner;
        if (--l->count != 0) return status::ok;
    } else if ((w & pid_mask) == 0) {
        return status::too_many;
    }
    atomic(l->owner_tid).store(0, std::memory_order_relaxed);
    // A plain Lock may be released by any thread or process (it is a
    // semaphore of value 1), so the word is swapped whatever its pid.
    w = atomic(l->word).exchange(0, std::memory_order_release);
    if ((w & pid_mask) == 0) return status::too_many;  // lost a race with another releaser
    if (w & waiters_bit) futex_wake(&l->word, 1);
    return status::ok;
}

wait_result shm_lock::wait(std::uint32_t ticket, clock::duration slice) noexcept {
    if ((ticket & pid_mask) == 0) return wait_result::woken;
    if (!(ticket & waiters_bit)) {
        if (!atomic(layout_->word).compare_exchange_strong(ticket, ticket | waiters_bit)) return wait_result::woken;
        ticket |= waiters_bit;
    }
    wait_result r = futex_wait(&layout_->word, ticket, slice);
    if (r == wait_result::timed_out) recover_dead_holder();
    return r;
}

bool shm_lock::recover_dead_holder() noexcept {
    std::uint32_t w = atomic(layout_->word).load();
    std::uint32_t pid = w & pid_mask;
    if (pid == 0 || pid == static_cast<std::uint32_t>(current_pid()) || process_alive(static_cast<pid_t>(pid)))
        return false;
    // Release on the dead holder's behalf; whoever tries next gets the lock.
    if (!atomic(layout_->word).compare_exchange_strong(w, 0)) return false;
    futex_wake(&layout_->word, 0);
    return true;
}

bool shm_lock::is_mine() const noexcept {
    return holder_pid() == static_cast<std::uint32_t>(current_pid()) &&
           atomic(layout_->owner_tid).load(std::memory_order_relaxed) == static_cast<std::uint32_t>(current_tid());
}

std::uint32_t shm_lock::count() const noexcept {
    if (holder_pid() != static_cast<std::uint32_t>(current_pid())) return 0;
    return recursive_ ? layout_->count : 1;
}

// ---------------------------------------------------------------- semaphore

shm_semaphore shm_semaphore::create(std::uint32_t value, std::uint32_t maxvalue) {
    shm_semaphore s;
    s.ref_ = sync_allocate(sizeof(semaphore_layout));
    auto* l = reinterpret_cast<semaphore_layout*>(s.ref_.data());
    l->value = value;
    l->maxvalue = maxvalue;
    l->initial = value;
    s.layout_ = init_layout<semaphore_layout>(s.ref_, sync_kind::semaphore);
    return s;
}

shm_semaphore shm_semaphore::attach(sync_ref ref) {
    shm_semaphore s;
    s.ref_ = std::move(ref);
    s.layout_ = check_layout<semaphore_layout>(s.ref_, sync_kind::semaphore);
    return s;
}

void shm_semaphore::record(std::uint32_t pid, int delta) noexcept {
    semaphore_layout* l = layout_;
    holder_entry* free_entry = nullptr;
    for (holder_entry& e : l->holders) {
        if (e.pid == pid && e.units > 0) {
            e.units += delta;
            if (e.units == 0) e.pid = 0;
            return;
        }
        if (e.units == 0 && !free_entry) free_entry = &e;
    }
    if (delta > 0) {
        if (free_entry) {
            free_entry->pid = pid;
            free_entry->units = static_cast<std::uint32_t>(delta);
        } else {
            l->untracked += delta;
        }
    } else if (l->untracked > 0) {
        l->untracked -= 1;  // released by a process we did not record (see the rule in sync.hpp)
    }
}

bool shm_semaphore::try_acquire() noexcept {
    semaphore_layout* l = layout_;
    if (atomic(l->value).load(std::memory_order_relaxed) == 0) return false;
    robust_lock_guard g(l->m);
    // Relaxed inside the mutex: its unlock (an exchange) publishes them.
    std::uint32_t v = atomic(l->value).load(std::memory_order_relaxed);
    if (v == 0) return false;
    atomic(l->value).store(v - 1, std::memory_order_relaxed);
    record(static_cast<std::uint32_t>(current_pid()), +1);
    return true;
}

status shm_semaphore::release() noexcept {
    semaphore_layout* l = layout_;
    {
        robust_lock_guard g(l->m);
        std::uint32_t v = atomic(l->value).load(std::memory_order_relaxed);
        if (v >= l->maxvalue) return status::too_many;
        atomic(l->value).store(v + 1, std::memory_order_relaxed);
        record(static_cast<std::uint32_t>(current_pid()), -1);
    }
    // After the unlock's exchange (a full barrier on x86; seq_cst here), so a
    // waiter that counted itself before checking the value is seen.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (atomic(l->waiters).load() != 0) futex_wake(&l->value, 1);
    return status::ok;
}

wait_result shm_semaphore::wait(std::uint32_t ticket, clock::duration slice) noexcept {
    if (ticket != 0) return wait_result::woken;
    atomic(layout_->waiters).fetch_add(1);
    wait_result r = futex_wait(&layout_->value, 0, slice);
    atomic(layout_->waiters).fetch_sub(1);
    if (r == wait_result::timed_out) recover_dead_holders();
    return r;
}

std::uint32_t shm_semaphore::recover_dead_holders() noexcept {
    semaphore_layout* l = layout_;
    std::uint32_t restored = 0;
    {
        robust_lock_guard g(l->m);
        std::uint64_t live = l->untracked, dead = 0;
        for (holder_entry& e : l->holders) {
            if (e.units == 0) continue;
            if (process_alive(static_cast<pid_t>(e.pid))) {
                live += e.units;
            } else {
                dead += e.units;
                e.units = 0;
                e.pid = 0;
            }
        }
        std::uint64_t v = atomic(l->value).load();
        std::uint64_t want = l->initial > v + live ? l->initial - v - live : 0;
        restored = static_cast<std::uint32_t>(std::min(dead, want));
        if (restored) atomic(l->value).store(static_cast<std::uint32_t>(v + restored));
    }
    if (restored) futex_wake(&l->value, static_cast<int>(restored));
    return restored;
}

std::uint32_t shm_semaphore::held_by_me() const noexcept {
    std::uint32_t me = static_cast<std::uint32_t>(current_pid());
    for (const holder_entry& e : layout_->holders)
        if (e.pid == me && e.units > 0) return e.units;
    return 0;
}

// ---------------------------------------------------------------- event

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
    if (atomic(layout_->flag).exchange(1) == 0 && atomic(layout_->waiters).load() != 0)
        futex_wake(&layout_->flag, 0);
}

wait_result shm_event::wait(std::uint32_t ticket, clock::duration slice) noexcept {
    if (ticket != 0) return wait_result::woken;
    // A round trip between two processes on two cores is shorter than a
    // sleep and wake-up: spin for a few microseconds before sleeping (not longer:
    // on a loaded machine the spinner takes the core the setter needs).
    const auto spin_until = clock::now() + std::chrono::microseconds(3);
    do {
        for (int i = 0; i < 32; ++i) {
            if (atomic(layout_->flag).load(std::memory_order_relaxed) != 0) return wait_result::woken;
            cpu_relax();
        }
    } while (clock::now() < spin_until);
    atomic(layout_->waiters).fetch_add(1);
    wait_result r = futex_wait(&layout_->flag, 0, slice);
    atomic(layout_->waiters).fetch_sub(1);
    return r;
}

// ---------------------------------------------------------------- condition

shm_condition shm_condition::create() {
    shm_condition c;
    c.ref_ = sync_allocate(sizeof(condition_layout));
    c.layout_ = init_layout<condition_layout>(c.ref_, sync_kind::condition);
    return c;
}

shm_condition shm_condition::attach(sync_ref ref) {
    shm_condition c;
    c.ref_ = std::move(ref);
    c.layout_ = check_layout<condition_layout>(c.ref_, sync_kind::condition);
    return c;
}

std::int32_t shm_condition::enlist() noexcept {
    condition_layout* l = layout_;
    robust_lock_guard g(l->m);
    atomic(l->waiting).fetch_add(1);
    std::int32_t found = overflow_index;
    for (std::int32_t pass = 0; pass < 2 && found == overflow_index; ++pass) {
        for (std::int32_t i = 0; i < static_cast<std::int32_t>(std::size(l->entries)); ++i) {
            cond_entry& e = l->entries[i];
            // Second pass: take over entries left by dead waiters.
            if (e.state == 0 || (pass == 1 && e.state == 1 && !process_alive(static_cast<pid_t>(e.pid)))) {
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
    e.pid = static_cast<std::uint32_t>(current_pid());
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
    robust_lock_guard g(l->m);
    if (index == overflow_index) {
        --l->overflow;
        atomic(l->waiting).fetch_sub(1);
        return atomic(l->seq).load() != since;
    }
    cond_entry& e = l->entries[index];
    bool was_notified = e.state == 2;
    if (e.state == 1) atomic(l->waiting).fetch_sub(1);
    atomic(e.state).store(0);
    e.pid = 0;
    return was_notified;
}

std::uint32_t shm_condition::notify(std::uint64_t n) noexcept {
    condition_layout* l = layout_;
    if (n == 0 || atomic(l->waiting).load() == 0) return 0;
    std::uint32_t done = 0;
    {
        robust_lock_guard g(l->m);
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
    bool moved = false;
    {
        robust_lock_guard g(l->m);
        for (cond_entry& dead : l->entries) {
            if (dead.state != 2 || process_alive(static_cast<pid_t>(dead.pid))) continue;
            atomic(dead.state).store(0);
            dead.pid = 0;
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

// ---------------------------------------------------------------- barrier state

shm_barrier_state shm_barrier_state::create(std::uint32_t parties) {
    shm_barrier_state b;
    b.ref_ = sync_allocate(sizeof(barrier_layout));
    reinterpret_cast<barrier_layout*>(b.ref_.data())->parties = parties;
    b.layout_ = init_layout<barrier_layout>(b.ref_, sync_kind::barrier);
    return b;
}

shm_barrier_state shm_barrier_state::attach(sync_ref ref) {
    shm_barrier_state b;
    b.ref_ = std::move(ref);
    b.layout_ = check_layout<barrier_layout>(b.ref_, sync_kind::barrier);
    return b;
}

void shm_barrier_state::arrive() noexcept {
    std::uint32_t me = static_cast<std::uint32_t>(current_pid());
    atomic(layout_->count).fetch_add(1);
    holder_entry* free_entry = nullptr;
    for (holder_entry& e : layout_->inside) {
        if (e.units > 0 && e.pid == me) {
            ++e.units;
            return;
        }
        if (e.units == 0 && !free_entry) free_entry = &e;
    }
    if (free_entry) {  // else: untracked (more than 60 processes inside at once)
        free_entry->pid = me;
        free_entry->units = 1;
    }
}

void shm_barrier_state::leave() noexcept {
    std::uint32_t me = static_cast<std::uint32_t>(current_pid());
    atomic(layout_->count).fetch_sub(1);
    for (holder_entry& e : layout_->inside) {
        if (e.units > 0 && e.pid == me) {
            if (--e.units == 0) e.pid = 0;
            return;
        }
    }
}

std::uint32_t shm_barrier_state::reap_dead(bool quick) noexcept {
    std::uint32_t gone = 0;
    for (holder_entry& e : layout_->inside) {
        if (e.units == 0) continue;
        if (quick ? !(::kill(static_cast<pid_t>(e.pid), 0) != 0 && errno == ESRCH)
                  : process_alive(static_cast<pid_t>(e.pid)))
            continue;
        gone += e.units;
        e.units = 0;
        e.pid = 0;
    }
    if (gone) atomic(layout_->count).fetch_sub(static_cast<std::int32_t>(gone));
    return gone;
}

}  // namespace fastmp
