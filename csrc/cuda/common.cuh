// What the CUDA kernels of every algorithm share: the block size, grid-stride loops, and positions
// held as digits that a thread steps by additions and carries.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace conv_ext {

constexpr int kThreads = 256;

// Enough blocks of kThreads for n elements with a grid-stride loop, capped so the grid stays legal.
inline int64_t blocks_for(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20);
}

#define CONV_EXT_GRID_STRIDE_LOOP(i, n)                                          \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n);     \
       i += int64_t{blockDim.x} * gridDim.x)

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// a / b where b divides a, else -1; for a >= 0 and b > 0. Division by 1 (stride 1, the common
// case) is skipped, and operands below 2^32 take a 32-bit division: a 64-bit one is a subroutine
// call on the GPU, and the registers it saves spill.
__device__ __forceinline__ int64_t exact_quotient(int64_t a, int64_t b) {
  if (b == 1) return a;
  const int64_t q = (a | b) >> 32 == 0 ? int64_t{static_cast<uint32_t>(a) / static_cast<uint32_t>(b)} : a / b;
  return q * b == a ? q : -1;
}

// A position in a three-level index space as its digits (outer, middle, inner), e.g. a filter's
// (c, r, s) or the pixels' (n, oh, ow). A thread that visits positions a fixed step apart finds
// the first one's digits once and steps them by additions and carries, where finding each anew
// would take 64-bit divisions, on a GPU dozens of instructions each.
struct Digits {
  int64_t outer, middle, inner;
};

// The extents of the middle and inner digits; (1, 1) for a space read as one index.
struct Radix {
  int64_t middle, inner;

  __device__ Digits digits(int64_t k) const { return {k / (middle * inner), k / inner % middle, k % inner}; }

  // d += step, both in digits of this radix (each carry needs one subtraction: both digits were below
  // their extents).
  __device__ void advance(Digits& d, const Digits& step) const {
    d.inner += step.inner;
    if (d.inner >= inner) {
      d.inner -= inner;
      ++d.middle;
    }
    d.middle += step.middle;
    if (d.middle >= middle) {
      d.middle -= middle;
      ++d.outer;
    }
    d.outer += step.outer;
  }
};

}  // namespace conv_ext
