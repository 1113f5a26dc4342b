// Anonymous shared memory: memfds, mapped, shared by inheritance or fd passing.
//
// Design notes
// - Creator: memfd_create (close-on-exec) + ftruncate. There is no name in
//   /dev/shm, so nothing can leak after kill -9: the kernel frees the memory
//   when the last fd and mapping are gone, whichever process dies last.
// - Other processes get the fd by fork (inherited) or by the stdlib's DupFd
//   under spawn/forkserver, and map it themselves.
// - Files are sparse: pages cost memory only once written; `punch` returns
//   them. Only the owner's uid can reopen the fd through /proc (0600).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace fastmp {

std::size_t page_size() noexcept;

class unique_fd {
public:
    unique_fd() = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }
    int get() const noexcept { return fd_; }
    void reset() noexcept;

private:
    int fd_ = -1;
};

// A new anonymous shared file of `size` bytes (zero-filled, sparse).
unique_fd make_memfd(const char* debug_name, std::size_t size);
// Adopts a received fd: checks it is a non-empty regular file, sets close-on-exec.
unique_fd adopt_memfd(int fd);
std::size_t file_size(int fd);
void grow_file(int fd, std::size_t size);  // never shrinks
// Returns the pages of [offset, offset+len) to the kernel (reads give zeros); best effort.
void punch(int fd, std::size_t offset, std::size_t len) noexcept;

// A MAP_SHARED view of part of a file.
class mapping {
public:
    mapping() = default;
    mapping(int fd, std::size_t offset, std::size_t size);
    mapping(mapping&& o) noexcept
        : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    mapping& operator=(mapping&& o) noexcept {
        if (this != &o) {
            reset();
            base_ = std::exchange(o.base_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;
    ~mapping() { reset(); }

    std::byte* data() const noexcept { return base_; }
    std::size_t size() const noexcept { return size_; }
    // Resizes this view (the file must be large enough). May move it:
    // pointers into the old view become invalid.
    void resize(std::size_t size);
    // Maps [offset, offset+len) in one go instead of one page fault per page
    // (allocating the pages when `write`); best effort.
    void populate(std::size_t offset, std::size_t len, bool write) const noexcept;

private:
    void reset() noexcept;
    std::byte* base_ = nullptr;
    std::size_t size_ = 0;
};

// The common case: one file, mapped whole.
struct segment {
    unique_fd fd;
    mapping map;

    static segment create(const char* debug_name, std::size_t size) {
        segment s;
        s.fd = make_memfd(debug_name, size);
        s.map = mapping(s.fd.get(), 0, size);
        return s;
    }
    // Takes ownership of fd (closed on failure too).
    static segment attach(int fd) {
        segment s;
        s.fd = adopt_memfd(fd);
        s.map = mapping(s.fd.get(), 0, file_size(s.fd.get()));
        return s;
    }
    std::byte* data() const noexcept { return map.data(); }
    std::size_t size() const noexcept { return map.size(); }
};

}  // namespace fastmp
