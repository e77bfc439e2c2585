// The direct kernels of the three ops: one thread per element of the result, summing its terms in
// a fixed order. They compute what the tiled GEMM and the depthwise kernels do not take: narrow
// groups (a product with fewer than 8 rows or columns per group, such as a stem's input gradient
// with its 3 input channels) and grids too large for the tiled kernels. Each thread finds the
// filter taps that contribute to its element once, with the positions they read, and sums over
// the channels innermost by pointer steps: no index arithmetic, no bounds test per term.
// Host code here too (the launch through a caller's launcher), so the tests can run these kernels
// on the CPU (tests/emulated_cuda/) where there is no GPU.
#pragma once

#include "../conv2d.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

namespace conv_ext {
namespace direct {

// An element's position in a 4-D tensor (e.g. n, c, h, w) from its index, the outer extent implied.
struct Position {
  int64_t outer, channel, row, column;
};

__device__ __forceinline__ Position position_of(int64_t index, int64_t channels, int64_t rows, int64_t columns) {
  return {index / (columns * rows * channels), index / (columns * rows) % channels, index / columns % rows,
          index % columns};
}

// y[n, k, oh, ow] = bias[k] + sum_{r, s, c} w[k, c, r, s] * x[n, group's c, ih, iw], ih = oh * sh -
// ph + r * dh (likewise iw), taps reading outside the input skipped.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t total = g.batch * g.out_channels * g.out_h * g.out_w;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t in_plane = g.in_h * g.in_w, taps = g.kernel_h * g.kernel_w;
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, k, oh, ow] = position_of(index, g.out_channels, g.out_h, g.out_w);
    const scalar_t* x_group = x + (n * g.in_channels + k / kg * cg) * in_plane;
    const scalar_t* w_k = w + k * cg * taps;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[k]) : acc_t(0);
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t s = 0; s < g.kernel_w; ++s) {
        const int64_t iw = ow * g.stride_w - g.pad_w + s * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        const scalar_t* xp = x_group + ih * g.in_w + iw;
        const scalar_t* wp = w_k + r * g.kernel_w + s;
        for (int64_t c = 0; c < cg; ++c, xp += in_plane, wp += taps) {
          sum += static_cast<acc_t>(*xp) * static_cast<acc_t>(*wp);
        }
      }
    }
    y[index] = static_cast<scalar_t>(sum);
  }
}

// Along one dimension, the taps t through which input position i feeds an output o: i + pad =
// o * stride + t * dilation with 0 <= o. They come `step` apart from `first` (kernel when there is
// none), their outputs `o_step` apart downwards from `o_first`; those past the output's end are
// the caller's to skip.
struct TapsFeeding {
  int64_t first, step, o_first, o_step;
};

__device__ __forceinline__ int64_t greatest_common_divisor(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

__device__ __forceinline__ TapsFeeding taps_feeding(int64_t padded, int64_t kernel, int64_t stride,
                                                    int64_t dilation) {
  // t * dilation = padded (mod stride) holds for every step-th t, so the first lies below step.
  const int64_t step = stride / greatest_common_divisor(stride, dilation);
  int64_t first = 0;
  while (first < kernel && first < step && (padded - first * dilation) % stride != 0) ++first;
  if (first == step || first >= kernel || padded - first * dilation < 0) return {kernel, step, -1, 1};
  return {first, step, (padded - first * dilation) / stride, step * dilation / stride};
}

// gx[n, c, ih, iw] = sum over the taps (r, s) that feed (ih, iw) into outputs (oh, ow) and over the
// group's output channels k of gy[n, k, oh, ow] * w[k, c, r, s].
template <typename scalar_t>
__global__ void grad_input_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ w,
                                  scalar_t* __restrict__ gx, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t total = g.batch * g.in_channels * g.in_h * g.in_w;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t out_plane = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w;
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, c, ih, iw] = position_of(index, g.in_channels, g.in_h, g.in_w);
    const int64_t group = c / cg;
    const scalar_t* gy_group = gy + (n * g.out_channels + group * kg) * out_plane;
    const scalar_t* w_c = w + (group * kg * cg + c % cg) * taps;
    const TapsFeeding rows = taps_feeding(ih + g.pad_h, g.kernel_h, g.stride_h, g.dilation_h);
    const TapsFeeding cols = taps_feeding(iw + g.pad_w, g.kernel_w, g.stride_w, g.dilation_w);
    acc_t sum = 0;
    for (int64_t r = rows.first, oh = rows.o_first; r < g.kernel_h && oh >= 0; r += rows.step, oh -= rows.o_step) {
      if (oh >= g.out_h) continue;
      for (int64_t s = cols.first, ow = cols.o_first; s < g.kernel_w && ow >= 0; s += cols.step, ow -= cols.o_step) {
        if (ow >= g.out_w) continue;
        const scalar_t* gyp = gy_group + oh * g.out_w + ow;
        const scalar_t* wp = w_c + r * g.kernel_w + s;
        for (int64_t k = 0; k < kg; ++k, gyp += out_plane, wp += cg * taps) {
          sum += static_cast<acc_t>(*gyp) * static_cast<acc_t>(*wp);
        }
      }
    }
    gx[index] = static_cast<scalar_t>(sum);
  }
}

// The outputs o in [0, out) whose window reads inside [0, in) at a tap offset, o * stride + offset.
struct OutputRange {
  int64_t begin, end;
};

__device__ __forceinline__ OutputRange outputs_reading_inside(int64_t in, int64_t out, int64_t stride,
                                                              int64_t offset) {
  const int64_t begin = offset >= 0 ? 0 : (stride - 1 - offset) / stride;
  const int64_t last = in - 1 - offset;
  const int64_t end = last < 0 ? 0 : std::min(out, last / stride + 1);
  return {begin, std::max(begin, end)};
}

// gw[k, c, r, s] = sum_{n, oh, ow} gy[n, k, oh, ow] * x[n, group's c, oh * sh - ph + r * dh,
// ow * sw - pw + s * dw], over the outputs whose window reads inside the input at tap (r, s).
template <typename scalar_t>
__global__ void grad_weight_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                   scalar_t* __restrict__ gw, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t total = g.out_channels * cg * g.kernel_h * g.kernel_w;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const auto [k, c, r, s] = position_of(index, cg, g.kernel_h, g.kernel_w);
    const int64_t offset_h = r * g.dilation_h - g.pad_h, offset_w = s * g.dilation_w - g.pad_w;
    const OutputRange rows = outputs_reading_inside(g.in_h, g.out_h, g.stride_h, offset_h);
    const OutputRange cols = outputs_reading_inside(g.in_w, g.out_w, g.stride_w, offset_w);
    acc_t sum = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const scalar_t* x_plane = x + (n * g.in_channels + k / kg * cg + c) * in_plane;
      const scalar_t* gy_plane = gy + (n * g.out_channels + k) * out_plane;
      for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
        const scalar_t* gyp = gy_plane + oh * g.out_w + cols.begin;
        const scalar_t* xp = x_plane + (oh * g.stride_h + offset_h) * g.in_w + cols.begin * g.stride_w + offset_w;
        for (int64_t ow = cols.begin; ow < cols.end; ++ow, ++gyp, xp += g.stride_w) {
          sum += static_cast<acc_t>(*gyp) * static_cast<acc_t>(*xp);
        }
      }
    }
    gw[index] = static_cast<scalar_t>(sum);
  }
}

// Fills out, one thread per element, by kernel_for(scalar_t{}) (one of the kernels above) on the
// inputs (contiguous): launch(kernel, grid, block, arguments...) launches it, on the GPU's current
// stream or, in the tests, on the CPU.
template <typename KernelFor, typename Launch, typename... Inputs>
void run(KernelFor kernel_for, const Conv2dGeometry& g, Launch launch, const at::Tensor& out,
         const Inputs&... inputs) {
  const int64_t n = out.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_ext_direct", [&] {
    launch(kernel_for(scalar_t{}), dim3(blocks_for(n)), dim3(kThreads), data_or_null<scalar_t>(inputs)...,
           out.mutable_data_ptr<scalar_t>(), g);
  });
}

// The three ops (inputs contiguous; bias may be undefined), launched as run() says.
template <typename Launch>
void run_forward(const Conv2dGeometry& g, Launch launch, const at::Tensor& y, const at::Tensor& x,
                 const at::Tensor& w, const at::Tensor& bias) {
  run([](auto zero) { return forward_kernel<decltype(zero)>; }, g, launch, y, x, w, bias);
}

template <typename Launch>
void run_grad_input(const Conv2dGeometry& g, Launch launch, const at::Tensor& gx, const at::Tensor& gy,
                    const at::Tensor& w) {
  run([](auto zero) { return grad_input_kernel<decltype(zero)>; }, g, launch, gx, gy, w);
}

template <typename Launch>
void run_grad_weight(const Conv2dGeometry& g, Launch launch, const at::Tensor& gw, const at::Tensor& x,
                     const at::Tensor& gy) {
  run([](auto zero) { return grad_weight_kernel<decltype(zero)>; }, g, launch, gw, x, gy);
}

}  // namespace direct
}  // namespace conv_ext
