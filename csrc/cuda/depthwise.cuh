// The kernels of depthwise convolutions: each output channel k reads one input channel, k / m
// (groups == in_channels, any channel multiplier m = out_channels / groups). Their products are
// too thin for the tiled GEMM (one column and R S deep per group in the forward, one row in the
// weight gradient), so each op has a kernel of its own. They read and write tensors through their
// strides, NCHW and channels_last alike, a block's threads laid out for the result's layout
// (Lanes): one channel a block for NCHW, 32 neighbouring channels for channels_last.
// - forward and input gradient: the threads of a channel walk its (n, row, column) pixels a grid's
//   width apart, each result summed from its R x S window, the filter in registers where its size
//   is a compiled-in one (3 x 3, 5 x 5);
// - weight gradient: the long sum over (n, oh, ow) split across blocks of a tile of channels (and
//   of one tap where the size is not compiled in), each thread of a channel summing every kRows-th
//   position, the block its channel's threads' sums in a fixed tree, and a second kernel the splits
//   in split order: deterministic, no atomics.
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

// Where element (n, c, h, w) of a 4-d tensor lies: its strides, so that one kernel reads and
// writes NCHW and channels_last tensors alike.
struct Strides {
  int64_t n, c, h, w;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// How a block's threads share work: kLanes channels a block (blockIdx.x's tile of them), the
// kRows threads of a channel walking its pixels. One channel a block for NCHW tensors, where a
// warp's threads then read neighbouring pixels of a plane; 32 for channels_last ones, where a
// warp reads 32 neighbouring channels of a pixel: coalesced either way.
template <int kLanes>
struct Lanes {
  static constexpr int kRows = kThreads / kLanes;
  static_assert(kThreads % kLanes == 0 && (kRows & (kRows - 1)) == 0, "rows are a power of two, for lane_sum");
  __device__ static int64_t channel(int64_t tile) { return tile * kLanes + threadIdx.x % kLanes; }
  __device__ static int row() { return threadIdx.x / kLanes; }
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

// A forward or input-gradient thread's walk: its share of its channel's `count` pixels, which the
// gridDim.y blocks of the channel's tile share.
template <int kLanes, typename Visit>
__device__ __forceinline__ void walk_channel(const Radix& plane, int64_t count, Visit visit) {
  using L = Lanes<kLanes>;
  walk(plane, int64_t{blockIdx.y} * L::kRows + L::row(), count, int64_t{gridDim.y} * L::kRows, visit);
}

// y[n, k, oh, ow] = bias[k] + sum_{r, s} x[n, k / m, oh * sh - ph + r * dh, ow * sw - pw + s * dw] w[k, 0, r, s]
template <typename scalar_t, int kSize, int kLanes>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_kernel(const scalar_t* __restrict__ x, Strides xs, const scalar_t* __restrict__ w,
                             const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Strides ys,
                             Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const Taps<kSize> taps(g);
  const int64_t k = Lanes<kLanes>::channel(blockIdx.x);
  if (k >= g.out_channels) return;
  const Filter<scalar_t, kSize> filter(w + k * taps.count(), taps);
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[k]) : acc_t(0);
  const scalar_t* x_k = x + k / g.out_channels_per_group() * xs.c;  // in the first image
  scalar_t* y_k = y + k * ys.c;
  walk_channel<kLanes>({g.out_h, g.out_w}, g.batch * g.out_h * g.out_w, [&](const Digits& p) {
    const scalar_t* image = x_k + p.outer * xs.n;
    const int64_t ih0 = p.middle * g.stride_h - g.pad_h, iw0 = p.inner * g.stride_w - g.pad_w;
    acc_t sum = b;
#pragma unroll
    for (int r = 0; r < taps.h; ++r) {
      const int64_t ih = ih0 + r * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
#pragma unroll
      for (int s = 0; s < taps.w; ++s) {
        const int64_t iw = iw0 + s * g.dilation_w;
        if (iw >= 0 && iw < g.in_w) sum += static_cast<acc_t>(image[ih * xs.h + iw * xs.w]) * filter(r, s);
      }
    }
    y_k[p.outer * ys.n + p.middle * ys.h + p.inner * ys.w] = static_cast<scalar_t>(sum);
  });
}

// The terms of one output channel in an input pixel's gradient: the sum over (r, s) with
// h - r * dh = oh * sh and v - s * dw = ow * sw of gy_plane[oh, ow] f(r, s) (the plane's rows and
// columns gys.h and gys.w apart), where (h, v) is the pixel's position in the padded input.
template <typename scalar_t, int kSize>
__device__ __forceinline__ at::acc_type<scalar_t, true> transposed_window(const Filter<scalar_t, kSize>& f,
                                                                          const Taps<kSize>& taps,
                                                                          const scalar_t* gy_plane, const Strides& gys,
                                                                          int64_t h, int64_t v,
                                                                          const Conv2dGeometry& g) {
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
      if (ow >= 0 && ow < g.out_w) sum += static_cast<acc_t>(gy_plane[oh * gys.h + ow * gys.w]) * f(r, s);
    }
  }
  return sum;
}

// gx[n, c, ih, iw] = sum_{j < m} of channel k = c m + j's terms: gy[n, k, oh, ow] w[k, 0, r, s] over
// the (r, s, oh, ow) with ih + ph - r * dh = oh * sh, likewise the width.
template <typename scalar_t, int kSize, int kLanes>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_input_kernel(const scalar_t* __restrict__ gy, Strides gys, const scalar_t* __restrict__ w,
                                scalar_t* __restrict__ gx, Strides gxs, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const Taps<kSize> taps(g);
  const int64_t c = Lanes<kLanes>::channel(blockIdx.x), m = g.out_channels_per_group();
  if (c >= g.in_channels) return;
  const Filter<scalar_t, kSize> first(w + c * m * taps.count(), taps);  // the only one where m == 1
  const scalar_t* gy_c = gy + c * m * gys.c;                           // in the first image
  scalar_t* gx_c = gx + c * gxs.c;
  walk_channel<kLanes>({g.in_h, g.in_w}, g.batch * g.in_h * g.in_w, [&](const Digits& p) {
    const scalar_t* gy_image = gy_c + p.outer * gys.n;
    const int64_t h = p.middle + g.pad_h, v = p.inner + g.pad_w;
    acc_t sum = transposed_window(first, taps, gy_image, gys, h, v, g);
    for (int64_t j = 1; j < m; ++j) {
      const Filter<scalar_t, kSize> f(w + (c * m + j) * taps.count(), taps);
      sum += transposed_window(f, taps, gy_image + j * gys.c, gys, h, v, g);
    }
    gx_c[p.outer * gxs.n + p.middle * gxs.h + p.inner * gxs.w] = static_cast<scalar_t>(sum);
  });
}

// The sum of v over the kRows threads of each lane (Lanes<kLanes>), in a fixed order (a tree in
// shared memory); all threads call it and get their lane's.
template <int kLanes, typename acc_t>
__device__ acc_t lane_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int width = Lanes<kLanes>::kRows / 2; width > 0; width /= 2) {
    if (Lanes<kLanes>::row() < width) shared[threadIdx.x] += shared[threadIdx.x + width * kLanes];
    __syncthreads();
  }
  const acc_t total = shared[threadIdx.x % kLanes];
  __syncthreads();  // before the next call writes
  return total;
}

// gw[k, 0, r, s] = sum_{n, oh, ow} gy[n, k, oh, ow] x[n, k / m, oh * sh - ph + r * dh, ow * sw - pw + s * dw]
// Block (x, y) sums split y of the (n, oh, ow) positions for the channels of tile x / tap_blocks:
// all their taps where the size is compiled in (tap_blocks = 1), else tap x % tap_blocks alone.
// With more than one split it writes partial[y][k, r, s].
template <typename scalar_t, int kSize, int kLanes>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_weight_kernel(const scalar_t* __restrict__ x, Strides xs, const scalar_t* __restrict__ gy,
                                 Strides gys, scalar_t* __restrict__ gw,
                                 at::acc_type<scalar_t, true>* __restrict__ partial, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  constexpr int kBlockTaps = kSize > 0 ? kSize * kSize : 1;
  __shared__ acc_t shared[kThreads];
  const Taps<kSize> taps(g);
  const int tap_blocks = kSize > 0 ? 1 : taps.count();
  const int64_t k = Lanes<kLanes>::channel(blockIdx.x / tap_blocks);
  const bool inside = k < g.out_channels;  // a thread past the last channel still joins lane_sum
  const int only_tap = blockIdx.x % tap_blocks;
  const int64_t count = g.batch * g.out_h * g.out_w, per_split = (count + gridDim.y - 1) / gridDim.y;
  const int64_t begin = blockIdx.y * per_split, end = inside ? std::min(count, begin + per_split) : begin;
  const scalar_t* x_k = x + k / g.out_channels_per_group() * xs.c;  // in the first image
  const scalar_t* gy_k = gy + k * gys.c;

  acc_t sum[kBlockTaps] = {};
  walk(Radix{g.out_h, g.out_w}, begin + Lanes<kLanes>::row(), end, Lanes<kLanes>::kRows, [&](const Digits& p) {
    const acc_t d = static_cast<acc_t>(gy_k[p.outer * gys.n + p.middle * gys.h + p.inner * gys.w]);
    const scalar_t* image = x_k + p.outer * xs.n;
    const int64_t ih0 = p.middle * g.stride_h - g.pad_h, iw0 = p.inner * g.stride_w - g.pad_w;
#pragma unroll
    for (int t = 0; t < kBlockTaps; ++t) {
      const int tap = kSize > 0 ? t : only_tap;
      const int64_t ih = ih0 + tap / taps.w * g.dilation_h, iw = iw0 + tap % taps.w * g.dilation_w;
      if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) sum[t] += d * static_cast<acc_t>(image[ih * xs.h + iw * xs.w]);
    }
  });

  const int64_t weights = g.out_channels * taps.count();
#pragma unroll  // so that sum[] stays in registers
  for (int t = 0; t < kBlockTaps; ++t) {
    const acc_t total = lane_sum<kLanes>(sum[t], shared);
    if (Lanes<kLanes>::row() != 0 || !inside) continue;
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

// How many blocks share a tile of channels' `positions` (or one tap's): enough for the grid to hold
// some eight blocks per multiprocessor, each with at least min_positions, at most 65535 (the
// grid's y).
inline int64_t blocks_per_channel(int64_t channel_blocks, int64_t positions, int64_t multiprocessors,
                                  int64_t min_positions) {
  const int64_t wanted = (8 * multiprocessors + channel_blocks - 1) / std::max<int64_t>(channel_blocks, 1);
  return std::clamp<int64_t>(std::min(wanted, positions / min_positions), 1, 65535);
}

// Calls f(std::integral_constant<int, size>{}, std::integral_constant<int, lanes>{}) with the
// kernels' size for this filter (3 or 5 where it is that square, 0: read from the geometry
// otherwise) and their lanes for the layout of `result` (Lanes: 32 where it is channels_last).
template <typename F>
void with_filter_size_and_lanes(const Conv2dGeometry& g, const at::Tensor& result, F f) {
  const auto with_size = [&](auto lanes) {
    if (g.kernel_h == 3 && g.kernel_w == 3) return f(std::integral_constant<int, 3>{}, lanes);
    if (g.kernel_h == 5 && g.kernel_w == 5) return f(std::integral_constant<int, 5>{}, lanes);
    f(std::integral_constant<int, 0>{}, lanes);
  };
  if (result.suggest_memory_format() == at::MemoryFormat::ChannelsLast) return with_size(std::integral_constant<int, 32>{});
  with_size(std::integral_constant<int, 1>{});
}

// Tiles of `lanes` channels that cover `channels`.
inline int64_t channel_tiles(int64_t channels, int lanes) { return (channels + lanes - 1) / lanes; }

// Each run_* fills its op's result, in any strides, from inputs in any strides (coalesced where
// they share the result's layout, NCHW or channels_last), on `multiprocessors`, through
// launch(kernel, grid, block, arguments...): on the GPU's current stream or, in the tests, on the
// CPU. Each returns how many blocks share a tile of channels' (or a tap's) work.
template <typename Launch>
int64_t run_forward(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& y,
                    const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (y.numel() == 0) return 0;
  int64_t blocks = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_ext_depthwise", [&] {
    with_filter_size_and_lanes(g, y, [&](auto size, auto lanes) {
      constexpr int kSize = decltype(size)::value, kLanes = decltype(lanes)::value;
      const int64_t tiles = channel_tiles(g.out_channels, kLanes);
      blocks = blocks_per_channel(tiles, g.batch * g.out_h * g.out_w, multiprocessors, Lanes<kLanes>::kRows);
      launch(depthwise_forward_kernel<scalar_t, kSize, kLanes>, dim3(tiles, blocks), dim3(kThreads),
             data_or_null<scalar_t>(x), strides_of(x), data_or_null<scalar_t>(w), data_or_null<scalar_t>(bias),
             y.mutable_data_ptr<scalar_t>(), strides_of(y), g);
    });
  });
  return blocks;
}

template <typename Launch>
int64_t run_grad_input(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gx,
                       const at::Tensor& gy, const at::Tensor& w) {
  if (gx.numel() == 0) return 0;
  int64_t blocks = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "conv_ext_depthwise", [&] {
    with_filter_size_and_lanes(g, gx, [&](auto size, auto lanes) {
      constexpr int kSize = decltype(size)::value, kLanes = decltype(lanes)::value;
      const int64_t tiles = channel_tiles(g.in_channels, kLanes);
      blocks = blocks_per_channel(tiles, g.batch * g.in_h * g.in_w, multiprocessors, Lanes<kLanes>::kRows);
      launch(depthwise_grad_input_kernel<scalar_t, kSize, kLanes>, dim3(tiles, blocks), dim3(kThreads),
             data_or_null<scalar_t>(gy), strides_of(gy), data_or_null<scalar_t>(w), gx.mutable_data_ptr<scalar_t>(),
             strides_of(gx), g);
    });
  });
  return blocks;
}

// The weight gradient's layout is the activations': lanes by x's layout. A split of its sum gets at
// least 16 positions per thread, so the block's sum of its threads' stays a small part of its
// work.
template <typename Launch>
int64_t run_grad_weight(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gw,
                        const at::Tensor& x, const at::Tensor& gy) {
  if (gw.numel() == 0) return 0;
  int64_t splits = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gw.scalar_type(), "conv_ext_depthwise", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    with_filter_size_and_lanes(g, x, [&](auto size, auto lanes) {
      constexpr int kSize = decltype(size)::value, kLanes = decltype(lanes)::value;
      const int64_t channel_blocks =
          channel_tiles(g.out_channels, kLanes) * (kSize > 0 ? 1 : g.kernel_h * g.kernel_w);
      splits = blocks_per_channel(channel_blocks, g.batch * g.out_h * g.out_w, multiprocessors,
                                  16 * Lanes<kLanes>::kRows);
      const auto kernel = depthwise_grad_weight_kernel<scalar_t, kSize, kLanes>;
      const dim3 grid(channel_blocks, splits);
      at::Tensor partial;
      if (splits > 1) partial = at::empty({splits, gw.numel()}, gw.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      launch(kernel, grid, dim3(kThreads), data_or_null<scalar_t>(x), strides_of(x), data_or_null<scalar_t>(gy),
             strides_of(gy), gw.mutable_data_ptr<scalar_t>(), splits > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr,
             g);
      if (splits > 1) {
        launch(sum_splits_kernel<scalar_t>, dim3(blocks_for(gw.numel())), dim3(kThreads),
               static_cast<const acc_t*>(partial.const_data_ptr<acc_t>()), gw.mutable_data_ptr<scalar_t>(),
               gw.numel(), splits);
      }
    });
  });
  return splits;
}

}  // namespace depthwise
}  // namespace conv_ext
