// The kernels of depthwise convolutions: each output channel k reads one input channel, k / m
// (groups == in_channels, any channel multiplier m = out_channels / groups). Their products are
// too thin for the tiled GEMM (one column and R S deep per group in the forward, one row in the
// weight gradient), so each op has a kernel of its own:
// - forward and input gradient: blocks of one channel each; their threads walk the channel's
//   (n, row, column) pixels a grid's width apart, each result summed from its R x S window, the
//   filter in registers where its size is a compiled-in one (3 x 3, 5 x 5);
// - weight gradient: the long sum over (n, oh, ow) split across blocks of one channel (and of one
//   tap where the size is not compiled in), each thread summing every kThreads-th position, the
//   block its threads' sums in a fixed tree, and a second kernel the splits in split order:
//   deterministic, no atomics.
// Host code here too (the plans, the launches through a caller's launcher), so the tests can run
// these kernels on the CPU (tests/emulated_cuda/) where there is no GPU.
#pragma once

#include "../conv2d.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <type_traits>

namespace conv_ext {
namespace depthwise {

inline bool applies(const Conv2dGeometry& g) { return g.in_channels_per_group() == 1; }

// A filter's extent: kSize x kSize where kSize > 0, a compile-time size that lets the loops over
// it unroll; the geometry's where kSize == 0.
template <int kSize>
struct Taps {
  int h, w;
  __device__ explicit Taps(const Conv2dGeometry& g)
      : h(kSize > 0 ? kSize : static_cast<int>(g.kernel_h)), w(kSize > 0 ? kSize : static_cast<int>(g.kernel_w)) {}
  __device__ int count() const { return h * w; }
};

// One filter's taps w[r, s], in the accumulation type: held in registers where the size is
// compiled in, read where they lie otherwise.
template <typename scalar_t, int kSize>
struct Filter {
  using acc_t = at::acc_type<scalar_t, true>;
  acc_t tap[kSize * kSize];
  __device__ Filter(const scalar_t* w, const Taps<kSize>&) {
#pragma unroll
    for (int i = 0; i < kSize * kSize; ++i) tap[i] = static_cast<acc_t>(w[i]);
  }
  __device__ acc_t operator()(int r, int s) const { return tap[r * kSize + s]; }
};

template <typename scalar_t>
struct Filter<scalar_t, 0> {
  using acc_t = at::acc_type<scalar_t, true>;
  const scalar_t* w;
  int width;
  __device__ Filter(const scalar_t* w, const Taps<0>& taps) : w(w), width(taps.w) {}
  __device__ acc_t operator()(int r, int s) const { return static_cast<acc_t>(w[r * width + s]); }
};

// Calls visit(p) for the positions p = (n, row, column) of one channel's planes (`plane` their
// radix) from first to end, stride apart: the divisions to find the first only.
template <typename Visit>
__device__ __forceinline__ void walk(const Radix& plane, int64_t first, int64_t end, int64_t stride, Visit visit) {
  Digits at = plane.digits(first);
  const Digits step = plane.digits(stride);
  for (int64_t i = first; i < end; i += stride) {
    visit(at);
    plane.advance(at, step);
  }
}

// A forward or input-gradient block's walk: channel blockIdx.x's `count` pixels, shared by the
// gridDim.y blocks of the channel.
template <typename Visit>
__device__ __forceinline__ void walk_channel(const Radix& plane, int64_t count, Visit visit) {
  walk(plane, int64_t{blockIdx.y} * kThreads + threadIdx.x, count, int64_t{gridDim.y} * kThreads, visit);
}

// y[n, k, oh, ow] = bias[k] + sum_{r, s} x[n, k / m, oh * sh - ph + r * dh, ow * sw - pw + s * dw] w[k, 0, r, s]
template <typename scalar_t, int kSize>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                             const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const Taps<kSize> taps(g);
  const int64_t k = blockIdx.x, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const Filter<scalar_t, kSize> filter(w + k * taps.count(), taps);
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[k]) : acc_t(0);
  const scalar_t* x_k = x + k / g.out_channels_per_group() * in_plane;  // in the first image
  scalar_t* y_k = y + k * out_plane;
  walk_channel({g.out_h, g.out_w}, g.batch * out_plane, [&](const Digits& p) {
    const scalar_t* plane = x_k + p.outer * g.in_channels * in_plane;
    const int64_t ih0 = p.middle * g.stride_h - g.pad_h, iw0 = p.inner * g.stride_w - g.pad_w;
    acc_t sum = b;
#pragma unroll
    for (int r = 0; r < taps.h; ++r) {
      const int64_t ih = ih0 + r * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
#pragma unroll
      for (int s = 0; s < taps.w; ++s) {
        const int64_t iw = iw0 + s * g.dilation_w;
        if (iw >= 0 && iw < g.in_w) sum += static_cast<acc_t>(plane[ih * g.in_w + iw]) * filter(r, s);
      }
    }
    y_k[p.outer * g.out_channels * out_plane + p.middle * g.out_w + p.inner] = static_cast<scalar_t>(sum);
  });
}

// The terms of one output channel in an input pixel's gradient: the sum over (r, s) with
// h - r * dh = oh * sh and v - s * dw = ow * sw of gy_plane[oh, ow] f(r, s), where (h, v) is the
// pixel's position in the padded input.
template <typename scalar_t, int kSize>
__device__ __forceinline__ at::acc_type<scalar_t, true> transposed_window(const Filter<scalar_t, kSize>& f,
                                                                          const Taps<kSize>& taps,
                                                                          const scalar_t* gy_plane, int64_t h,
                                                                          int64_t v, const Conv2dGeometry& g) {
  using acc_t = at::acc_type<scalar_t, true>;
  acc_t sum = 0;
#pragma unroll
  for (int r = 0; r < taps.h; ++r) {
    const int64_t hr = h - r * g.dilation_h;
    if (hr < 0) break;  // and every later row
    const int64_t oh = exact_quotient(hr, g.stride_h);
    if (oh < 0 || oh >= g.out_h) continue;
#pragma unroll
    for (int s = 0; s < taps.w; ++s) {
      const int64_t vs = v - s * g.dilation_w;
      if (vs < 0) break;
      const int64_t ow = exact_quotient(vs, g.stride_w);
      if (ow >= 0 && ow < g.out_w) sum += static_cast<acc_t>(gy_plane[oh * g.out_w + ow]) * f(r, s);
    }
  }
  return sum;
}

// gx[n, c, ih, iw] = sum_{j < m} of channel k = c m + j's terms: gy[n, k, oh, ow] w[k, 0, r, s] over
// the (r, s, oh, ow) with ih + ph - r * dh = oh * sh, likewise the width.
template <typename scalar_t, int kSize>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_input_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ w,
                                scalar_t* __restrict__ gx, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const Taps<kSize> taps(g);
  const int64_t c = blockIdx.x, m = g.out_channels_per_group(), in_plane = g.in_h * g.in_w,
                out_plane = g.out_h * g.out_w;
  const Filter<scalar_t, kSize> first(w + c * m * taps.count(), taps);  // the only one where m == 1
  const scalar_t* gy_c = gy + c * m * out_plane;                       // in the first image
  scalar_t* gx_c = gx + c * in_plane;
  walk_channel({g.in_h, g.in_w}, g.batch * in_plane, [&](const Digits& p) {
    const scalar_t* gy_planes = gy_c + p.outer * g.out_channels * out_plane;
    const int64_t h = p.middle + g.pad_h, v = p.inner + g.pad_w;
    acc_t sum = 0;
    for (int64_t j = 0; j < m; ++j) {
      const Filter<scalar_t, kSize> f = j == 0 ? first : Filter<scalar_t, kSize>(w + (c * m + j) * taps.count(), taps);
      sum += transposed_window(f, taps, gy_planes + j * out_plane, h, v, g);
    }
    gx_c[p.outer * g.in_channels * in_plane + p.middle * g.in_w + p.inner] = static_cast<scalar_t>(sum);
  });
}

// The sum of every thread's v, in a fixed order (a tree in shared memory); all threads call it
// and get it.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();  // before the next call writes
  return total;
}

// gw[k, 0, r, s] = sum_{n, oh, ow} gy[n, k, oh, ow] x[n, k / m, oh * sh - ph + r * dh, ow * sw - pw + s * dw]
// Block (x, y) sums split y of the (n, oh, ow) positions for channel k = x / tap_blocks: all its
// taps where the size is compiled in (tap_blocks = 1), else tap x % tap_blocks alone. With more
// than one split it writes partial[y][k, r, s].
template <typename scalar_t, int kSize>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_weight_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                 scalar_t* __restrict__ gw, at::acc_type<scalar_t, true>* __restrict__ partial,
                                 Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  constexpr int kBlockTaps = kSize > 0 ? kSize * kSize : 1;
  __shared__ acc_t shared[kThreads];
  const Taps<kSize> taps(g);
  const int tap_blocks = kSize > 0 ? 1 : taps.count();
  const int64_t k = blockIdx.x / tap_blocks, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int only_tap = blockIdx.x % tap_blocks;
  const int64_t count = g.batch * out_plane, per_split = (count + gridDim.y - 1) / gridDim.y;
  const int64_t begin = blockIdx.y * per_split, end = std::min(count, begin + per_split);
  const scalar_t* x_k = x + k / g.out_channels_per_group() * in_plane;  // in the first image
  const scalar_t* gy_k = gy + k * out_plane;

  acc_t sum[kBlockTaps] = {};
  walk({g.out_h, g.out_w}, begin + threadIdx.x, end, kThreads, [&](const Digits& p) {
    const acc_t d = static_cast<acc_t>(gy_k[p.outer * g.out_channels * out_plane + p.middle * g.out_w + p.inner]);
    const scalar_t* plane = x_k + p.outer * g.in_channels * in_plane;
    const int64_t ih0 = p.middle * g.stride_h - g.pad_h, iw0 = p.inner * g.stride_w - g.pad_w;
#pragma unroll
    for (int t = 0; t < kBlockTaps; ++t) {
      const int tap = kSize > 0 ? t : only_tap;
      const int64_t ih = ih0 + tap / taps.w * g.dilation_h, iw = iw0 + tap % taps.w * g.dilation_w;
      if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) sum[t] += d * static_cast<acc_t>(plane[ih * g.in_w + iw]);
    }
  });

  const int64_t weights = g.out_channels * taps.count();
#pragma unroll  // so that sum[] stays in registers
  for (int t = 0; t < kBlockTaps; ++t) {
    const acc_t total = block_sum(sum[t], shared);
    if (threadIdx.x != 0) continue;
    const int64_t index = k * taps.count() + (kSize > 0 ? t : only_tap);
    if (gridDim.y == 1) {
      gw[index] = static_cast<scalar_t>(total);
    } else {
      partial[blockIdx.y * weights + index] = total;
    }
  }
}

// out[i] = the sum of the splits' partial[split][i], in split order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sum_splits_kernel(const at::acc_type<scalar_t, true>* __restrict__ partial, scalar_t* __restrict__ out,
                      int64_t count, int64_t splits) {
  using acc_t = at::acc_type<scalar_t, true>;
  CONV_EXT_GRID_STRIDE_LOOP(i, count) {
    acc_t sum = 0;
    for (int64_t split = 0; split < splits; ++split) sum += partial[split * count + i];
    out[i] = static_cast<scalar_t>(sum);
  }
}

// How many blocks share a channel's `positions` (or one tap's): enough for the grid to hold some
// eight blocks per multiprocessor, each with at least min_positions, at most 65535 (the grid's y).
inline int64_t blocks_per_channel(int64_t channel_blocks, int64_t positions, int64_t multiprocessors,
                                  int64_t min_positions) {
  const int64_t wanted = (8 * multiprocessors + channel_blocks - 1) / std::max<int64_t>(channel_blocks, 1);
  return std::clamp<int64_t>(std::min(wanted, positions / min_positions), 1, 65535);
}

// Calls f(std::integral_constant<int, size>{}) with the kernels' size for this filter: 3 or 5 where
// it is that square, 0 (read from the geometry) otherwise.
template <typename F>
void with_filter_size(const Conv2dGeometry& g, F f) {
  if (g.kernel_h == 3 && g.kernel_w == 3) return f(std::integral_constant<int, 3>{});
  if (g.kernel_h == 5 && g.kernel_w == 5) return f(std::integral_constant<int, 5>{});
  f(std::integral_constant<int, 0>{});
}

// Each run_* fills its op's result (contiguous NCHW, like its inputs) on `multiprocessors`, through
// launch(kernel, grid, block, arguments...): on the GPU's current stream or, in the tests, on the
// CPU. Each returns how many blocks share a channel's (or tap's) work.
template <typename Launch>
int64_t run_forward(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& y,
                    const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (y.numel() == 0) return 0;
  const int64_t blocks = blocks_per_channel(g.out_channels, g.batch * g.out_h * g.out_w, multiprocessors, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_ext_depthwise", [&] {
    with_filter_size(g, [&](auto size) {
      launch(depthwise_forward_kernel<scalar_t, decltype(size)::value>, dim3(g.out_channels, blocks), dim3(kThreads),
             data_or_null<scalar_t>(x), data_or_null<scalar_t>(w), data_or_null<scalar_t>(bias),
             y.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return blocks;
}

template <typename Launch>
int64_t run_grad_input(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gx,
                       const at::Tensor& gy, const at::Tensor& w) {
  if (gx.numel() == 0) return 0;
  const int64_t blocks = blocks_per_channel(g.in_channels, g.batch * g.in_h * g.in_w, multiprocessors, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "conv_ext_depthwise", [&] {
    with_filter_size(g, [&](auto size) {
      launch(depthwise_grad_input_kernel<scalar_t, decltype(size)::value>, dim3(g.in_channels, blocks),
             dim3(kThreads), data_or_null<scalar_t>(gy), data_or_null<scalar_t>(w), gx.mutable_data_ptr<scalar_t>(),
             g);
    });
  });
  return blocks;
}

// A split of the weight gradient's sum gets at least 16 positions per thread, so the block's sum
// of its threads' stays a small part of its work.
constexpr int64_t kMinSplitPositions = 16 * kThreads;

template <typename Launch>
int64_t run_grad_weight(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gw,
                        const at::Tensor& x, const at::Tensor& gy) {
  if (gw.numel() == 0) return 0;
  int64_t splits = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gw.scalar_type(), "conv_ext_depthwise", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    with_filter_size(g, [&](auto size) {
      const int64_t channel_blocks = g.out_channels * (size.value > 0 ? 1 : g.kernel_h * g.kernel_w);
      splits = blocks_per_channel(channel_blocks, g.batch * g.out_h * g.out_w, multiprocessors, kMinSplitPositions);
      const auto kernel = depthwise_grad_weight_kernel<scalar_t, decltype(size)::value>;
      const dim3 grid(channel_blocks, splits);
      if (splits == 1) {
        launch(kernel, grid, dim3(kThreads), data_or_null<scalar_t>(x), data_or_null<scalar_t>(gy),
               gw.mutable_data_ptr<scalar_t>(), static_cast<acc_t*>(nullptr), g);
        return;
      }
      at::Tensor partial = at::empty({splits, gw.numel()}, gw.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      launch(kernel, grid, dim3(kThreads), data_or_null<scalar_t>(x), data_or_null<scalar_t>(gy),
             gw.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), g);
      launch(sum_splits_kernel<scalar_t>, dim3(blocks_for(gw.numel())), dim3(kThreads),
             static_cast<const acc_t*>(partial.const_data_ptr<acc_t>()), gw.mutable_data_ptr<scalar_t>(), gw.numel(),
             splits);
    });
  });
  return splits;
}

}  // namespace depthwise
}  // namespace conv_ext
