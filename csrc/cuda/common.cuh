// What the CUDA kernels of every algorithm share: the block size, grid-stride loops, positions
// held as digits that a thread steps by additions and carries, and the input gradient's stride
// phases.
#pragma once

#include "../conv2d.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

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

// One stride phase of the input along a dimension: the positions i = first + j * stride (j <
// count) with (i + pad) mod stride = residue, fed by the taps first_tap + t * tap_step (t < taps)
// through the outputs first_out + j - t * out_step (those outside the output feed nothing).
struct AxisPhase {
  int64_t first, count, first_tap, taps, tap_step, first_out, out_step;
};

inline AxisPhase axis_phase(int64_t in, int64_t pad, int64_t kernel, int64_t stride, int64_t dilation,
                            int64_t residue) {
  const int64_t first = ((residue - pad) % stride + stride) % stride;
  const int64_t count = first < in ? (in - 1 - first) / stride + 1 : 0;
  // The taps t with t * dilation = residue (mod stride) recur every tap_step.
  const int64_t tap_step = stride / std::gcd(stride, dilation);
  int64_t first_tap = 0;
  while (first_tap < tap_step && first_tap * dilation % stride != residue) ++first_tap;
  const int64_t taps = first_tap < std::min(tap_step, kernel) ? (kernel - 1 - first_tap) / tap_step + 1 : 0;
  return {first, count, first_tap, taps, tap_step, (first + pad - first_tap * dilation) / stride,
          tap_step * dilation / stride};
}

// A stride phase of both dimensions of the input gradient: the part of it whose positions the same
// taps feed.
struct InputPhase {
  Conv2dGeometry g;
  AxisPhase h, w;
};

// The input gradient's phases that hold input positions (with stride 1, one: every position).
inline std::vector<InputPhase> input_phases(const Conv2dGeometry& g) {
  std::vector<InputPhase> phases;
  for (int64_t rh = 0; rh < g.stride_h; ++rh) {
    for (int64_t rw = 0; rw < g.stride_w; ++rw) {
      const InputPhase p{g, axis_phase(g.in_h, g.pad_h, g.kernel_h, g.stride_h, g.dilation_h, rh),
                         axis_phase(g.in_w, g.pad_w, g.kernel_w, g.stride_w, g.dilation_w, rw)};
      if (p.h.count > 0 && p.w.count > 0) phases.push_back(p);
    }
  }
  return phases;
}

}  // namespace conv_ext
