// The forward convolution on the tensor cores over channels-last tensors (sm_80 and newer):
// float16 and bfloat16, and float32 as TF32. The input gradient at stride 1 is the same kernel, run
// on the transposed layer (run_grad_input).
//
// Per group, an implicit GEMM: C[rows x cols] = A[rows x depth] B[depth x cols] with
//   rows (n, oh, ow), the output pixels; cols k, the output channels; depth (r, s, c),
// A gathered from x (N, H, W, C) and B read from the filters in (K, R, S, C / groups) order, so
// that both operands' depth runs along channels, contiguous in memory: each thread copies whole
// 16-byte chunks (8 elements of 16 bits, 4 of 32) straight into shared memory (cp.async), and a
// chunk is in the layer or outside it (padding, past the channels) as a whole, where the copy
// writes zeros. That needs the channels per group to be whole chunks (applies()).
//
// A block of 256 threads computes a tile of C (128 x 128, 128 x 64 or 64 x 64: plan()) kChunksK
// chunks deep per step, with kStages steps in flight: while the warps multiply one step's tiles,
// the next steps' copies land. Each warp multiplies its part of the tile from fragments that
// ldmatrix loads, in m16 n8 tensor-core products (mma.sync), accumulating in float32; the chunks
// of shared memory are permuted (swizzled) so that those loads meet no bank conflicts.
//
// Host code here too (the plan, the launches through a caller's launcher), so the tests can run
// the kernel on the CPU (tests/emulated_cuda/) where there is no GPU.
#pragma once

#include "../conv2d.h"
#include "common.cuh"
#include "warp_mma.cuh"

#include <ATen/ATen.h>

#include <type_traits>

namespace conv_ext {
namespace channels_last_mma {

constexpr int kWarpSize = 32, kWarps = kThreads / kWarpSize;
constexpr int kChunkBytes = 16;
constexpr int kChunksK = 4;  // a step's depth in chunks: 32 elements of 16 bits, 16 of float32
constexpr int kStages = 3;

struct alignas(kChunkBytes) Chunk {
  uint32_t words[4];
};

// Where chunk `chunk` of a tile's row `row` lies in its shared array: row-major, each row's chunks
// permuted by bits 1-2 of the row, so that the eight rows of one chunk column that ldmatrix reads
// at once (64 bytes apart) land in eight different groups of four banks.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kChunksK + (chunk ^ (row >> 1 & 3)); }

// A block's tile of C and how its 8 warps share it (warps_m along the rows).
template <int tile_m, int tile_n, int warps_m>
struct Tile {
  static constexpr int m = tile_m, n = tile_n;
  static constexpr int warp_m = tile_m / warps_m, warp_n = tile_n / (kWarps / warps_m);
  static constexpr int frags_m = warp_m / 16, frags_n = warp_n / 8;  // each warp's m16 n8 products
  static constexpr int a_copies = tile_m * kChunksK / kThreads, b_copies = tile_n * kChunksK / kThreads;
  static_assert(frags_m >= 1 && frags_n % 2 == 0 && a_copies >= 1 && b_copies >= 1, "tile too small");
};
using Tiles128x128 = Tile<128, 128, 2>;
using Tiles128x64 = Tile<128, 64, 4>;
using Tiles64x64 = Tile<64, 64, 2>;

// The kernel's tensors: x (N, H, W, C), the filters (K, R, S, C / groups), the bias (K) or null,
// the result y (N, OH, OW, K).
template <typename scalar_t>
struct Operands {
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* bias;
  scalar_t* y;
  Conv2dGeometry g;
};

// The block (x, y): rows tile x; y = (group, cols tile), cols tile fastest.
template <typename Tile, typename scalar_t>
__global__ void __launch_bounds__(kThreads) channels_last_mma_kernel(Operands<scalar_t> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int kElements = kChunkBytes / sizeof(scalar_t);  // per chunk
  constexpr int kStepDepth = kChunksK * kElements;
  __shared__ Chunk a_tiles[kStages][Tile::m * kChunksK];
  __shared__ Chunk b_tiles[kStages][Tile::n * kChunksK];
  const Conv2dGeometry& g = p.g;
  const int64_t channels = g.in_channels_per_group(), filters = g.out_channels_per_group();
  const int64_t rows = g.batch * g.out_h * g.out_w;
  const int64_t tiles_n = (filters + Tile::n - 1) / Tile::n;
  const int64_t group = blockIdx.y / tiles_n, m0 = blockIdx.x * int64_t{Tile::m};
  const int64_t n0 = blockIdx.y % tiles_n * Tile::n;
  const int t = threadIdx.x, lane = t % kWarpSize, warp = t / kWarpSize;
  const int chunk = t % kChunksK;  // the chunk of a tile row this thread copies

  // This thread's rows of the A tile (output pixels: their image's channels of the group at this
  // chunk, their window's corner) and of the B tile (filters at this chunk); null past C's edges.
  const scalar_t* image[Tile::a_copies];
  int64_t ih0[Tile::a_copies], iw0[Tile::a_copies];
#pragma unroll
  for (int i = 0; i < Tile::a_copies; ++i) {
    const int64_t m = m0 + t / kChunksK + i * (kThreads / kChunksK);
    const int64_t n = m / (g.out_h * g.out_w), oh = m / g.out_w % g.out_h, ow = m % g.out_w;
    image[i] = m < rows ? p.x + n * g.in_h * g.in_w * g.in_channels + group * channels + chunk * kElements : nullptr;
    ih0[i] = oh * g.stride_h - g.pad_h;
    iw0[i] = ow * g.stride_w - g.pad_w;
  }
  const scalar_t* filter[Tile::b_copies];
#pragma unroll
  for (int i = 0; i < Tile::b_copies; ++i) {
    const int64_t k = n0 + t / kChunksK + i * (kThreads / kChunksK);
    filter[i] = k < filters ? p.w + (group * filters + k) * g.kernel_h * g.kernel_w * channels + chunk * kElements
                            : nullptr;
  }

  // The steps run over (r, s, c0): every tap, kStepDepth channels at a time.
  const int64_t channel_steps = (channels + kStepDepth - 1) / kStepDepth;
  const int64_t steps = g.kernel_h * g.kernel_w * channel_steps;
  int64_t r = 0, s = 0, c0 = 0;  // the next step to copy
  auto copy_next_step = [&](int stage) {
    const bool channel_inside = c0 + chunk * kElements < channels;
#pragma unroll
    for (int i = 0; i < Tile::a_copies; ++i) {
      const int64_t ih = ih0[i] + r * g.dilation_h, iw = iw0[i] + s * g.dilation_w;
      const bool inside = image[i] != nullptr && channel_inside && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
      const scalar_t* src = inside ? image[i] + (ih * g.in_w + iw) * g.in_channels + c0 : p.x;
      warp_mma::cp_async_16(&a_tiles[stage][swizzled(t / kChunksK + i * (kThreads / kChunksK), chunk)], src, inside);
    }
#pragma unroll
    for (int i = 0; i < Tile::b_copies; ++i) {
      const bool inside = filter[i] != nullptr && channel_inside;
      const scalar_t* src = inside ? filter[i] + (r * g.kernel_w + s) * channels + c0 : p.w;
      warp_mma::cp_async_16(&b_tiles[stage][swizzled(t / kChunksK + i * (kThreads / kChunksK), chunk)], src, inside);
    }
    c0 += kStepDepth;
    if (c0 >= channels) {
      c0 = 0;
      if (++s == g.kernel_w) {
        s = 0;
        ++r;
      }
    }
  };

  const int warp_m0 = warp % (Tile::m / Tile::warp_m) * Tile::warp_m;
  const int warp_n0 = warp / (Tile::m / Tile::warp_m) * Tile::warp_n;
  float sum[Tile::frags_m][Tile::frags_n][4] = {};
#pragma unroll
  for (int stage = 0; stage < kStages - 1; ++stage) {
    if (stage < steps) copy_next_step(stage);
    warp_mma::cp_async_commit();  // empty groups too: one group per step keeps the count below right
  }
  for (int64_t step = 0; step < steps; ++step) {
    warp_mma::cp_async_wait<kStages - 2>();  // this thread's copies of `step` have landed
    __syncthreads();  // everyone's have, and no warp still reads the stage refilled next
    if (step + kStages - 1 < steps) copy_next_step((step + kStages - 1) % kStages);
    warp_mma::cp_async_commit();
    const Chunk* a_tile = a_tiles[step % kStages];
    const Chunk* b_tile = b_tiles[step % kStages];
#pragma unroll
    for (int k = 0; k < kChunksK; k += 2) {  // one product's depth: two chunks
      uint32_t a[Tile::frags_m][4], b[Tile::frags_n][2];
#pragma unroll
      for (int i = 0; i < Tile::frags_m; ++i) {
        // Matrices (rows 0-7, chunk k), (rows 8-15, k), (rows 0-7, k + 1), (rows 8-15, k + 1): a's registers in order.
        warp_mma::ldmatrix_x4(a[i], &a_tile[swizzled(warp_m0 + 16 * i + lane % 16, k + lane / 16)]);
        warp_mma::round_operands<scalar_t>(a[i]);
      }
#pragma unroll
      for (int j = 0; j < Tile::frags_n; j += 2) {
        // Matrices (cols 0-7, chunk k), (cols 0-7, k + 1), (cols 8-15, k), (cols 8-15, k + 1): two products' b.
        uint32_t pair[4];
        warp_mma::ldmatrix_x4(pair, &b_tile[swizzled(warp_n0 + 8 * j + lane % 8 + lane / 16 * 8, k + lane / 8 % 2)]);
        warp_mma::round_operands<scalar_t>(pair);
        b[j][0] = pair[0];
        b[j][1] = pair[1];
        b[j + 1][0] = pair[2];
        b[j + 1][1] = pair[3];
      }
#pragma unroll
      for (int i = 0; i < Tile::frags_m; ++i) {
#pragma unroll
        for (int j = 0; j < Tile::frags_n; ++j) warp_mma::mma_16x8<scalar_t>(sum[i][j], a[i], b[j]);
      }
    }
  }
  warp_mma::cp_async_wait<0>();

  // Each lane holds, of each m16 n8 product, rows lane / 4 and lane / 4 + 8, columns 2 (lane % 4) and
  // the next.
#pragma unroll
  for (int i = 0; i < Tile::frags_m; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m0 + warp_m0 + 16 * i + lane / 4 + 8 * half;
      if (m >= rows) continue;
      scalar_t* out = p.y + m * g.out_channels + group * filters;
#pragma unroll
      for (int j = 0; j < Tile::frags_n; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t k = n0 + warp_n0 + 8 * j + 2 * (lane % 4) + e;
          if (k >= filters) continue;
          const float bias = p.bias != nullptr ? static_cast<float>(p.bias[group * filters + k]) : 0.0f;
          out[k] = static_cast<scalar_t>(sum[i][j][2 * half + e] + bias);
        }
      }
    }
  }
#endif
}

// Whether the kernel computes a forward of geometry g in dtype (float32 meaning TF32): float16,
// bfloat16 or float32, channels per group in whole chunks, a grid that fits (the caller checks
// that tensors start at 16-byte boundaries).
inline bool applies(const Conv2dGeometry& g, at::ScalarType dtype) {
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) return false;
  const int64_t elements = kChunkBytes / c10::elementSize(dtype);
  const int64_t channels = g.in_channels_per_group();
  const int64_t rows = g.batch * g.out_h * g.out_w;
  return channels > 0 && channels % elements == 0 && (rows + 63) / 64 < (int64_t{1} << 31) &&
         (g.out_channels_per_group() + 63) / 64 * g.groups <= 65535;
}

// The tiles, largest first: 128 x 128 where a group has more than 64 filters, then 128 x 64, then
// 64 x 64, the first whose grid has a block for each multiprocessor (else the smallest).
enum class TileChoice { m128_n128, m128_n64, m64_n64 };

inline TileChoice plan(const Conv2dGeometry& g, int64_t multiprocessors) {
  const int64_t rows = g.batch * g.out_h * g.out_w, filters = g.out_channels_per_group();
  auto blocks = [&](int64_t m, int64_t n) { return (rows + m - 1) / m * ((filters + n - 1) / n) * g.groups; };
  if (filters > 64 && blocks(128, 128) >= multiprocessors) return TileChoice::m128_n128;
  if (blocks(128, 64) >= multiprocessors) return TileChoice::m128_n64;
  return TileChoice::m64_n64;
}

template <typename Tile, typename scalar_t, typename Launch>
void launch_tiles(Launch launch, const Operands<scalar_t>& p) {
  const Conv2dGeometry& g = p.g;
  const int64_t rows = g.batch * g.out_h * g.out_w;
  const dim3 grid((rows + Tile::m - 1) / Tile::m, (g.out_channels_per_group() + Tile::n - 1) / Tile::n * g.groups);
  launch(channels_last_mma_kernel<Tile, scalar_t>, grid, dim3(kThreads), p);
}

// y (N, OH, OW, K in memory) = the forward of geometry g on x (N, H, W, C in memory), the filters
// w_krsc (K, R, S, C / groups) and bias (or undefined), all starting at 16-byte boundaries, by
// launch(kernel, grid, block, arguments...): on the GPU's current stream or, in the tests, on the
// CPU. Returns the tile it took.
template <typename Launch>
TileChoice run_forward(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& y,
                       const at::Tensor& x, const at::Tensor& w_krsc, const at::Tensor& bias) {
  const TileChoice tile = plan(g, multiprocessors);
  if (y.numel() == 0) return tile;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_ext_channels_last_mma", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const Operands<scalar_t> p{x.const_data_ptr<scalar_t>(), w_krsc.const_data_ptr<scalar_t>(),
                                 data_or_null<scalar_t>(bias), y.mutable_data_ptr<scalar_t>(), g};
      switch (tile) {
        case TileChoice::m128_n128: launch_tiles<Tiles128x128>(launch, p); break;
        case TileChoice::m128_n64: launch_tiles<Tiles128x64>(launch, p); break;
        case TileChoice::m64_n64: launch_tiles<Tiles64x64>(launch, p); break;
      }
    }
  });
  return tile;
}

// The layer whose forward is the input gradient of g at stride 1: from grad_output (OH x OW, K
// channels) to the input's C channels, each filter rotated by 180 degrees, the padding what
// keeps the sizes: gx[ih] = sum_r gy[ih + ph - r dh] w[r] = sum_r' gy[ih - ph' + r' dh] w[R - 1 - r'].
inline Conv2dGeometry transposed_layer(const Conv2dGeometry& g) {
  return {g.batch, g.out_channels, g.out_h, g.out_w, g.in_channels, g.kernel_h, g.kernel_w, g.in_h, g.in_w,
          1, 1, g.dilation_h * (g.kernel_h - 1) - g.pad_h, g.dilation_w * (g.kernel_w - 1) - g.pad_w,
          g.dilation_h, g.dilation_w, g.groups};
}

// The transposed layer's filters (C, R, S, K / groups) from w (K, C / groups, R, S).
inline at::Tensor transposed_filters(const at::Tensor& w, int64_t groups) {
  const int64_t k = w.size(0), c = w.size(1), kernel_h = w.size(2), kernel_w = w.size(3);
  return w.reshape({groups, k / groups, c, kernel_h, kernel_w})
      .flip({3, 4})
      .permute({0, 2, 3, 4, 1})
      .reshape({groups * c, kernel_h, kernel_w, k / groups})
      .contiguous();
}

// gx (N, H, W, C in memory) = the input gradient of geometry g (stride 1) from gy (N, OH, OW, K in
// memory) and the filters w (K, C / groups, R, S), as the transposed layer's forward.
template <typename Launch>
TileChoice run_grad_input(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gx,
                          const at::Tensor& gy, const at::Tensor& w) {
  return run_forward(transposed_layer(g), multiprocessors, launch, gx, gy, transposed_filters(w, g.groups),
                     at::Tensor());
}

}  // namespace channels_last_mma
}  // namespace conv_ext
