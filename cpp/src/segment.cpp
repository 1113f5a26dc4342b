#include <fastmp/segment.hpp>

#include <cerrno>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fastmp/status.hpp>

namespace fastmp {

std::size_t page_size() noexcept {
    static const std::size_t ps = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

void unique_fd::reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

unique_fd make_memfd(const char* debug_name, std::size_t size) {
    unique_fd fd(::memfd_create(debug_name, MFD_CLOEXEC));
    if (fd.get() < 0) throw_errno("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate of shared segment");
    return fd;
}

unique_fd adopt_memfd(int raw) {
    unique_fd fd(raw);
    struct stat st{};
    if (::fstat(raw, &st) != 0) throw_errno("fstat of shared segment");
    if (!S_ISREG(st.st_mode) || st.st_size <= 0)
        throw sys_error(EINVAL, "file descriptor is not a fastmp shared segment");
    // fds received through spawn's pass_fds arrive without close-on-exec.
    ::fcntl(raw, F_SETFD, FD_CLOEXEC);
    return fd;
}

std::size_t file_size(int fd) {
    struct stat st{};
    if (::fstat(fd, &st) != 0) throw_errno("fstat of shared segment");
    return static_cast<std::size_t>(st.st_size);
}

void grow_file(int fd, std::size_t size) {
    if (file_size(fd) >= size) return;
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) throw_errno("growing shared segment");
}

void punch(int fd, std::size_t offset, std::size_t len) noexcept {
    if (len == 0) return;
    ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(len));
}

mapping::mapping(int fd, std::size_t offset, std::size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (p == MAP_FAILED) throw_errno("mmap of shared segment");
    base_ = static_cast<std::byte*>(p);
    size_ = size;
}

void mapping::resize(std::size_t size) {
    if (size == size_) return;
    void* p = ::mremap(base_, size_, size, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) throw_errno("mremap of shared segment");
    base_ = static_cast<std::byte*>(p);
    size_ = size;
}

void mapping::populate(std::size_t offset, std::size_t len, bool write) const noexcept {
#ifndef MADV_POPULATE_READ
    constexpr int MADV_POPULATE_READ = 22, MADV_POPULATE_WRITE = 23;  // Linux >= 5.14
#endif
    if (!base_ || offset >= size_) return;
    if (len > size_ - offset) len = size_ - offset;
    std::size_t ps = page_size();
    std::size_t start = offset & ~(ps - 1);
    ::madvise(base_ + start, len + (offset - start), write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
}

void mapping::reset() noexcept {
    if (base_) ::munmap(base_, size_);
    base_ = nullptr;
    size_ = 0;
}

}  // namespace fastmp
