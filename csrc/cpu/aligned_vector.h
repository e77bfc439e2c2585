// std::vector on cache-line (64-byte) boundaries, for the kernels' scratch buffers: a vector load
// or store that straddles two lines costs two, and malloc's 16-byte alignment left it to chance
// (measured: Winograd's transformed filters misaligned by 16 bytes made the forward of 512
// channels at 7x7 1.3x slower at batch 8 and 1.7x at batch 1).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace conv_ext {

template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};

  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}

  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlignment); }

  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace conv_ext
