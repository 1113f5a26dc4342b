#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>
#include <csignal>
#include <cstring>
#include <fastmp/futex.hpp>
#include <fastmp/process.hpp>
#include <fastmp/shm_heap.hpp>
#include <fastmp/status.hpp>
#include <new>
#include <optional>

namespace fastmp {

namespace bip = boost::interprocess;
using heap_t = bip::basic_managed_external_buffer<char, bip::rbtree_best_fit<bip::null_mutex_family>, bip::iset_index>;

namespace {
constexpr std::uint64_t header_bytes = 4096;
constexpr std::uint64_t initial_region = 256 << 10;
constexpr std::uint64_t shrink_min_region = 4 << 20;
constexpr std::uint64_t initial_log = 64;

std::uint64_t round_page(std::uint64_t n) {
    const std::uint64_t ps = page_size();
    return (n + ps - 1) / ps * ps;
}

struct log_entry {
    std::uint64_t off, old;  // a logged store; or, with alloc_bit, a block and its size
};
constexpr std::uint64_t alloc_bit = std::uint64_t{1} << 63;

// Stores that a SIGKILL may interrupt: keep the compiler from reordering them
// (the journal entry must reach memory before the word it protects).
inline void store(std::uint64_t& w, std::uint64_t v) noexcept {
    std::atomic_ref<std::uint64_t>(w).store(v, std::memory_order_release);
}
inline void store32(std::uint32_t& w, std::uint32_t v) noexcept {
    std::atomic_ref<std::uint32_t>(w).store(v, std::memory_order_release);
}
}  // namespace

struct shm_heap::impl {
    std::optional<heap_t> live;    // handle on the live region
    std::byte* live_at = nullptr;  // where it was opened
    std::optional<heap_t> build;   // the region a relocation builds
    shm_view* bv = nullptr;        // the view allocations go to (live or being built)
    heap_t& target() { return build ? *build : *live; }
};

// Marks the calls into Boost's allocator: a process killed inside one leaves
// its free tree suspect, and the recovery must relocate.
struct shm_heap::allocator_section {
    shm_heap& h;
    explicit allocator_section(shm_heap& heap) : h(heap) { store32(h.hdr()->in_alloc, 1); }
    ~allocator_section() { store32(h.hdr()->in_alloc, 0); }  // hdr() again: a grow may have remapped
};

shm_heap::shm_heap() : impl_(std::make_unique<impl>()) {}
shm_heap::shm_heap(shm_heap&&) noexcept = default;
shm_heap& shm_heap::operator=(shm_heap&&) noexcept = default;
shm_heap::~shm_heap() = default;

shm_heap shm_heap::create(std::uint32_t kind, std::unique_ptr<layout> l) {
    shm_heap h;
    h.layout_ = std::move(l);
    h.seg_ = segment::create("fastmp-manager", header_bytes + initial_region);
    auto* hd = h.hdr();
    hd->magic = magic_value;
    hd->layout_version = layout_version;
    hd->size = sizeof(shm_header);
    hd->kind = kind;
    hd->file_size = header_bytes + initial_region;
    auto& v = hd->views[0];
    v.region_off = header_bytes;
    v.region_size = initial_region;
    heap_t heap(bip::create_only, h.ptr(v.region_off), v.region_size);
    void* log = heap.allocate(initial_log * sizeof(log_entry));
    v.log_off = static_cast<std::uint64_t>(static_cast<std::byte*>(log) - h.ptr(0));
    v.log_cap = initial_log;
    h.reopen_heap();
    return h;
}

std::uint32_t shm_heap::kind_of(int fd) {
    shm_header hd{};
    if (::pread(fd, &hd, sizeof hd, 0) != static_cast<ssize_t>(sizeof hd) || hd.magic != magic_value ||
        hd.layout_version != layout_version || hd.size != sizeof(shm_header))
        throw sys_error(EINVAL, "file descriptor is not a fastmp manager container");
    return hd.kind;
}

shm_heap shm_heap::attach(int fd, std::unique_ptr<layout> l) {
    shm_heap h;
    h.layout_ = std::move(l);
    kind_of(fd);
    h.seg_ = segment::attach(fd);
    h.reopen_heap();
    return h;
}

void shm_heap::reopen_heap() {
    auto& v = view();
    std::byte* at = ptr(v.region_off);
    if (impl_->live && impl_->live_at == at) return;
    impl_->live.emplace(bip::open_only, at, v.region_size);
    impl_->live_at = at;
}

void shm_heap::remap() {
    const std::uint64_t fs = hdr()->file_size;
    if (fs != seg_.map.size()) {
        grow_file(fd(), fs);  // a grower died between recording and extending
        seg_.map.resize(fs);
    }
    reopen_heap();
}

void shm_heap::lock() { after_lock(hdr()->lock.lock() == status::owner_died); }

bool shm_heap::try_lock() {
    if (!hdr()->lock.try_lock()) return false;
    after_lock(false);
    return true;
}

void shm_heap::after_lock(bool owner_died) {
    try {
        remap();
        if (owner_died || hdr()->state != state_idle) recover();
    } catch (...) {
        hdr()->lock.unlock();
        throw;
    }
}

void shm_heap::unlock() noexcept { hdr()->lock.unlock(); }

bool shm_heap::closed() const noexcept { return atomic(hdr()->closed).load(std::memory_order_acquire) != 0; }
void shm_heap::set_closed() noexcept { atomic(hdr()->closed).store(1, std::memory_order_release); }

std::uint64_t shm_heap::root_off(std::size_t i) const noexcept {
    return static_cast<std::uint64_t>(reinterpret_cast<std::byte*>(&view().root[i]) - ptr(0));
}

void shm_heap::begin() {
    to_free_.clear();
    hdr()->log_count = 0;
    store32(hdr()->state, state_active);
}

void shm_heap::append_log(std::uint64_t off, std::uint64_t old) {
    if (hdr()->log_count == view().log_cap) {
        // A bigger log, filled before it replaces the old one (not itself logged).
        const std::uint64_t cap = view().log_cap * 2;
        std::uint64_t nl = raw_alloc(cap * sizeof(log_entry));
        std::memcpy(ptr(nl), ptr(view().log_off), hdr()->log_count * sizeof(log_entry));
        const std::uint64_t old_log = view().log_off, old_cap = view().log_cap;
        store(view().log_off, nl);
        store(view().log_cap, cap);
        do_free(old_log, old_cap * sizeof(log_entry));
    }
    auto* hd = hdr();
    auto* log = reinterpret_cast<log_entry*>(ptr(view().log_off));
    log[hd->log_count] = {off, old};
    store(hd->log_count, hd->log_count + 1);
    if (hd->pause_at && hd->log_count == hd->pause_at) ::raise(SIGSTOP);  // test hook (kill mid-operation)
}

void shm_heap::set(std::uint64_t off, std::uint64_t value) {
    append_log(off, word(off));
    store(word(off), value);
}

std::uint64_t shm_heap::raw_alloc(std::size_t n) {
    n = std::max<std::size_t>(n, 16);
    for (;;) {
        void* p;
        {
            allocator_section in(*this);
            p = impl_->target().allocate(n, std::nothrow);
        }
        if (p) return static_cast<std::uint64_t>(static_cast<std::byte*>(p) - ptr(0));
        allocator_section in(*this);
        grow(n);
    }
}

std::uint64_t shm_heap::alloc(std::size_t n) {
    std::uint64_t off = raw_alloc(n);
    // Inside an operation the block is the operation's until it commits: an
    // undo frees it.
    if (hdr()->state == state_active) append_log(off | alloc_bit, n);
    return off;
}

void shm_heap::grow(std::size_t need) {
    shm_view& v = impl_->bv ? *impl_->bv : view();
    auto* hd = hdr();
    const std::uint64_t end = v.region_off + v.region_size;
    if (impl_->build && end < hd->file_size && v.region_off < hdr()->views[hd->cur].region_off)
        throw std::bad_alloc();  // a front relocation target cannot grow into the live region
    const std::uint64_t extra = round_page(std::max<std::uint64_t>(v.region_size, need + (64 << 10)));
    if (end + extra > (std::uint64_t{1} << 46)) throw std::bad_alloc();
    grow_file(fd(), end + extra);
    store(hd->file_size, std::max(hd->file_size, end + extra));
    seg_.map.resize(hd->file_size);
    impl_->live_at = nullptr;  // the mapping may have moved
    if (impl_->build) {
        // Reopen the target at its (possibly moved) address, then grow it.
        impl_->build.emplace(bip::open_only, ptr(v.region_off), v.region_size);
        impl_->build->grow(extra);
        v.region_size += extra;
        reopen_heap();
    } else {
        reopen_heap();
        impl_->live->grow(extra);
        store(view().region_size, view().region_size + extra);
    }
}

void shm_heap::do_free(std::uint64_t off, std::size_t size) noexcept {
    {
        allocator_section in(*this);
        impl_->live->deallocate(ptr(off));
    }
    if (size >= punch_threshold) {
        // The free block's bookkeeping sits in its first bytes (and the next
        // block's header after it): give back only whole pages in between.
        const std::uint64_t from = round_page(off + 256);
        const std::uint64_t to = (off + size) / page_size() * page_size();
        if (to > from) punch(fd(), from, to - from);
    }
}

void shm_heap::free_later(std::uint64_t off, std::size_t size) { to_free_.emplace_back(off, size); }

void shm_heap::commit() {
    auto* hd = hdr();
    // The operation is done once the log is emptied; frees after that may be
    // lost to a kill (the next recovery's relocation reclaims them).
    store32(hd->state, state_idle);
    store(hd->log_count, 0);
    for (auto [off, size] : to_free_) do_free(off, size);
    to_free_.clear();
    if (view().region_size >= shrink_min_region && free_bytes() > view().region_size / 4 * 3) relocate(false);
}

// Undoes the log, last entry first. Restoring a word is idempotent, so it is
// done before the entry is dropped; a block is dropped from the log before it
// is freed (a death in between leaks it in the heap rather than freeing it twice).
void shm_heap::undo(bool free_blocks) noexcept {
    auto* hd = hdr();
    auto* log = reinterpret_cast<log_entry*>(ptr(view().log_off));
    for (std::uint64_t i = hd->log_count; i-- > 0;) {
        const log_entry e = log[i];
        if (e.off & alloc_bit) {
            if (!free_blocks) continue;
            store(hd->log_count, i);
            do_free(e.off & ~alloc_bit, e.old);
        } else {
            store(word(e.off), e.old);
            if (free_blocks) store(hd->log_count, i);
        }
    }
}

void shm_heap::abort() noexcept {
    undo(true);
    store(hdr()->log_count, 0);
    store32(hdr()->state, state_idle);
    to_free_.clear();
}

void shm_heap::recover() {
    auto* hd = hdr();
    ++hd->recoveries;
    to_free_.clear();
    if (hd->in_alloc || hd->state == state_relocating) {
        // The allocator may be corrupt: undo the words only, then copy the
        // live content into a fresh heap. Idempotent: a recoverer that dies
        // here is recovered in turn.
        if (hd->log_count) undo(false);
        relocate(false);
        return;
    }
    if (hd->state == state_active) undo(true);
    store(hd->log_count, 0);
    store32(hd->state, state_idle);
}

void shm_heap::clear_all() {
    to_free_.clear();
    store(hdr()->log_count, 0);
    relocate(true);
}

std::uint64_t shm_heap::memory_used() const {
    struct stat st{};
    if (::fstat(fd(), &st) != 0) throw_errno("fstat of shared segment");
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

std::uint64_t shm_heap::free_bytes() const { return impl_->live->get_free_memory(); }

void shm_heap::relocate(bool empty) {
    auto* hd = hdr();
    if (hd->stale_size) {
        punch(fd(), hd->stale_off, hd->stale_size);
        hd->stale_size = 0;
    }
    const shm_view old = view();
    const std::uint64_t live = empty ? 0 : layout_->live_bytes(*this, old);
    const std::uint64_t want = round_page(std::max<std::uint64_t>(initial_region, live + live / 2 + (256 << 10)));
    shm_view nv{};
    if (old.region_off >= header_bytes + 2 * want)
        nv.region_off = header_bytes;
    else
        nv.region_off = round_page(old.region_off + old.region_size);
    nv.region_size = want;
    store(hd->stale_off, nv.region_off);
    store(hd->stale_size, nv.region_size);
    store32(hd->state, state_relocating);
    if (nv.region_off + nv.region_size > hd->file_size) {
        grow_file(fd(), nv.region_off + nv.region_size);
        store(hd->file_size, nv.region_off + nv.region_size);
        seg_.map.resize(hd->file_size);
        impl_->live_at = nullptr;
        reopen_heap();
    }
    impl_->build.emplace(bip::create_only, ptr(nv.region_off), nv.region_size);
    impl_->bv = &nv;
    try {
        nv.log_cap = initial_log;
        nv.log_off = alloc(initial_log * sizeof(log_entry));
        layout_->copy_live(*this, old, nv, empty);
    } catch (...) {
        impl_->build.reset();
        impl_->bv = nullptr;
        throw;  // the old view stays live; the lock taker after us retries
    }
    impl_->build.reset();
    impl_->bv = nullptr;
    hd = hdr();
    const std::uint32_t next = 1 - hd->cur;
    hd->views[next] = nv;
    store32(hd->cur, next);  // commit
    store(hd->log_count, 0);
    store(hd->stale_size, 0);
    store32(hd->state, state_idle);
    punch(fd(), old.region_off, old.region_size);
    const std::uint64_t end = nv.region_off + nv.region_size;
    if (end < hd->file_size) {
        // The new region lies in front: drop the tail (other processes remap
        // at their next lock and never touch it before).
        if (::ftruncate(fd(), static_cast<off_t>(end)) == 0) {
            store(hd->file_size, end);
            seg_.map.resize(end);
        }
    }
    impl_->live_at = nullptr;
    reopen_heap();
}

}  // namespace fastmp
