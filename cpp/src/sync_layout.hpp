// Private to the sync sources: how an object's header is written and checked.
#pragma once

#include <bit>
#include <cerrno>

#include <fastmp/sync.hpp>

namespace fastmp::sync_detail {

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

// The futex half of a 64-bit word whose low 32 bits are the futex value.
inline std::uint32_t* low_half(std::uint64_t& w) noexcept {
    static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big);
    return reinterpret_cast<std::uint32_t*>(&w) + (std::endian::native == std::endian::little ? 0 : 1);
}

}  // namespace fastmp::sync_detail
