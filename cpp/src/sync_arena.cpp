// The slot arena of the synchronisation primitives, the per-process
// registry of arenas and handles, and the fork handlers that keep a forked
// child's references (see the design notes in sync.hpp).
#include <fastmp/sync.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include <pthread.h>
#include <sys/random.h>
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
    h->pidns = current_pidns();
    h->alloc_lock.init();
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
    process_lock_guard g(h->alloc_lock);
    if (g.recovered()) repair_after_dead_holder();
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
    process_lock_guard g(header()->alloc_lock);
    if (g.recovered()) repair_after_dead_holder();
    if (atomic(refs[index]).load() == 0) return;
    if (atomic(refs[index]).fetch_sub(1) == 1) {
        std::uint32_t k = index + 1;
        while (k < header()->nslots && atomic(refs[k]).load() == continuation_mark) atomic(refs[k++]).store(0);
        if (index < header()->hint) header()->hint = index;
    }
}

// A process killed inside allocate() or drop_ref() may leave continuation
// marks without the first slot of their object (marks written, head not yet;
// or head freed, marks not yet cleared): free them.
void sync_arena::repair_after_dead_holder() noexcept {
    std::uint32_t* refs = ref_table();
    bool in_object = false;
    for (std::uint32_t i = 0; i < header()->nslots; ++i) {
        std::uint32_t r = atomic(refs[i]).load();
        if (r == continuation_mark && !in_object) {
            atomic(refs[i]).store(0);
            r = 0;
        }
        in_object = r != 0;
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

}  // namespace fastmp
