// A growable managed heap in one memfd, with a robust lock and an undo
// journal, holding the manager's shared containers (dict, list).
//
// Design notes
// - Creator: the manager's server process creates one memfd per container
//   (`shm_heap::create`); every user maps the whole file itself. Nothing has a
//   name: the kernel frees the memory with the last fd or mapping, whoever
//   dies last (kill -9 included). Other processes reach the fd by fork, DupFd
//   or /proc/<server>/fd/<n> (the Python layer decides).
// - Layout: page 0 is a fixed header ({magic, layout_version, size}, the
//   robust lock, the journal state and two "views"); the rest of the file is
//   one *region*, a Boost.Interprocess managed heap
//   (basic_managed_external_buffer + rbtree_best_fit, null_mutex_family: the
//   heap is only touched under the header's robust lock). A view says where
//   the region is, where its undo log is, and holds the container's root
//   words; `cur` selects the live view.
// - Everything shared is addressed by *file offsets*, so each process may map
//   the file at its own address, and remap it when it grew (the header keeps
//   the file size; every lock taker compares it with its own mapping).
// - Growth: when the heap is full, the file is extended and Boost's `grow`
//   adds the new space to the heap. Giving back: freed blocks of 64 KiB or
//   more have their pages punched at once; when three quarters of a large
//   region are free (after deletes, or `clear()`), the live content is copied
//   into a fresh, smaller region (*relocation*) and the old one is punched.
// - Atomicity: each operation runs between `begin()` and `commit()`. Every
//   store to a word reachable from the live view goes through `set()`, which
//   first appends {offset, old value} to the undo log; new blocks are built
//   unreachable and linked in by such stores; blocks are freed only after
//   commit. A process killed inside an operation leaves state == active: the
//   next lock taker (robust lock: within ~20 ms of the death) undoes the log,
//   so the operation did not happen at all; the log also lists the blocks
//   the operation allocated, which the undo frees. Only when the death hit
//   inside Boost's allocator (`in_alloc`: its free tree is then suspect) does
//   the recovering process relocate the live content into a fresh region
//   (O(content) instead of O(operation)). A relocation commits by flipping
//   `cur` (one store) and is redone from the old view if its builder dies.
//   A kill between an allocation and its log entry, or among the frees after
//   a commit, can leave a block unreachable inside the heap until the next
//   relocation (never outside it).
// - Who frees: the region's blocks are freed by the process that commits the
//   operation that unlinked them; the memfd by the kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fastmp/robust_mutex.hpp>
#include <fastmp/segment.hpp>
#include <memory>
#include <type_traits>
#include <vector>

namespace fastmp {

inline constexpr std::size_t shm_root_words = 8;

struct shm_view {
    std::uint64_t region_off, region_size;
    std::uint64_t log_off, log_cap;  // undo log: array of {offset, old value}
    std::uint64_t root[shm_root_words];
};

struct shm_header {
    std::uint32_t magic, layout_version;
    std::uint64_t size;  // of this header
    robust_mutex lock;  // pid-polled, not process_mutex: held across remaps (robust_mutex.hpp)
    std::uint32_t kind;
    std::uint32_t closed;    // set by the manager at shutdown
    std::uint32_t state;     // shm_heap::state_*
    std::uint32_t cur;       // live view
    std::uint32_t in_alloc;  // inside Boost's allocator: a death here needs a relocation
    std::uint64_t file_size;
    std::uint64_t log_count;
    std::uint64_t stale_off, stale_size;  // a region an interrupted relocation was building
    std::uint64_t pause_at;               // test hook: stop (SIGSTOP) at this log length; 0 = never
    std::uint64_t recoveries;             // how many times a dead holder's state was repaired
    shm_view views[2];
};
static_assert(std::is_trivially_copyable_v<shm_header>);
static_assert(std::is_standard_layout_v<shm_header>);

class shm_heap {
  public:
    enum : std::uint32_t { state_idle = 0, state_active = 1, state_relocating = 2 };
    static constexpr std::uint32_t magic_value = 0x66686561;  // "fhea"
    static constexpr std::uint32_t layout_version = 1;
    static constexpr std::size_t punch_threshold = 64 << 10;

    // The container kind decides how live content is copied on relocation.
    struct layout {
        virtual ~layout() = default;
        // Copies the live content of `from` (the view being replaced) into the
        // heap being built, filling `to.root`; `empty` drops the content.
        virtual void copy_live(shm_heap& h, const shm_view& from, shm_view& to, bool empty) = 0;
        // Bytes the live content needs (an estimate that is never too small).
        virtual std::uint64_t live_bytes(shm_heap& h, const shm_view& v) = 0;
    };

    shm_heap(shm_heap&&) noexcept;
    shm_heap& operator=(shm_heap&&) noexcept;
    ~shm_heap();

    static shm_heap create(std::uint32_t kind, std::unique_ptr<layout> l);
    static shm_heap attach(int fd, std::unique_ptr<layout> l);  // takes ownership of fd
    static std::uint32_t kind_of(int fd);                       // reads the header of a memfd

    int fd() const noexcept { return seg_.fd.get(); }
    std::uint32_t kind() const noexcept { return hdr()->kind; }

    // --- locking: lock() blocks (no GIL rules here); both recover a dead
    // holder's operation and remap a grown file before returning.
    void lock();
    bool try_lock();
    void unlock() noexcept;
    bool closed() const noexcept;
    void set_closed() noexcept;

    // --- transactions (lock held) ---
    void begin();
    void commit();
    void abort() noexcept;

    std::byte* ptr(std::uint64_t off) const noexcept { return seg_.map.data() + off; }
    std::uint64_t& word(std::uint64_t off) const noexcept { return *reinterpret_cast<std::uint64_t*>(ptr(off)); }
    shm_view& view() const noexcept { return hdr()->views[hdr()->cur]; }
    std::uint64_t root(std::size_t i) const noexcept { return view().root[i]; }
    std::uint64_t root_off(std::size_t i) const noexcept;
    // A logged store to a live word (undone if the operation does not commit).
    void set(std::uint64_t off, std::uint64_t value);
    void set_root(std::size_t i, std::uint64_t value) { set(root_off(i), value); }
    // A new block of n bytes (16-aligned); may grow (and remap) the file, so
    // pointers taken before are invalid afterwards: keep offsets.
    std::uint64_t alloc(std::size_t n);
    // Frees the block after commit (nothing if the operation aborts).
    void free_later(std::uint64_t off, std::size_t size);
    // Replaces the content with nothing, giving every page back (commits).
    void clear_all();

    // --- introspection (tests) ---
    std::uint64_t region_size() const noexcept { return view().region_size; }
    std::uint64_t free_bytes() const;
    std::uint64_t file_size() const noexcept { return hdr()->file_size; }
    std::uint64_t memory_used() const;  // pages the file holds (holes excluded)
    std::uint64_t recoveries() const noexcept { return hdr()->recoveries; }
    void set_pause_at(std::uint64_t n) noexcept { hdr()->pause_at = n; }

    struct impl;

  private:
    shm_heap();
    shm_header* hdr() const noexcept { return reinterpret_cast<shm_header*>(seg_.map.data()); }
    void after_lock(bool owner_died);
    void remap();
    void recover();
    void undo(bool free_blocks) noexcept;
    void append_log(std::uint64_t off, std::uint64_t old);
    std::uint64_t raw_alloc(std::size_t n);  // not logged
    struct allocator_section;
    void relocate(bool empty);
    void grow(std::size_t need);
    void reopen_heap();
    void do_free(std::uint64_t off, std::size_t size) noexcept;

    segment seg_;
    std::unique_ptr<layout> layout_;
    std::unique_ptr<impl> impl_;                                  // the Boost heap handle for the live region
    std::vector<std::pair<std::uint64_t, std::size_t>> to_free_;  // freed at commit
};

}  // namespace fastmp
