// The convolution on the tensor cores over channels-last tensors (sm_80 and newer), as implicit
// GEMMs, per group:
//
//   forward      rows (n, oh, ow)  cols k (output channel)   depth (r, s, c)
//   grad_weight  rows k            cols (r, s, c)            depth (n, oh, ow)
//
// with the input (N, H, W, C), the gradient of the output (N, OH, OW, K) and the filters
// (K, R, S, C / groups), so that every operand runs along channels, contiguous in memory: each
// thread copies whole 16-byte chunks (8 elements of 16 bits, 4 of 32) straight into shared memory
// (cp.async), and a chunk lies inside the layer or outside it (padding, past the channels) as a
// whole, where the copy writes zeros. That needs the channels per group to be whole chunks
// (applies_*; a single group's input channels are padded to them: chunked_channels). The input
// gradient is the forward's kernel too, once per stride phase: each phase's positions are the
// output of a stride-1 layer over the output gradient with the taps that feed them, rotated; or,
// for few input channels, a 1 x 1 layer into columns that a second kernel gathers (run_grad_input).
//
// In float16, bfloat16 and float32: float32 as TF32 where PyTorch lets cuDNN use it, else each
// operand split into two TF32 parts (big + small) and multiplied as big * big + big * small +
// small * big: three TF32 products that keep about 21 bits of each operand, float32's accuracy at
// tensor-core speed (3xTF32).
//
// A block of 256 threads computes a tile of C (128 or 64 by 128 or 64: plan_*) 64 bytes deep per
// step (32 elements of 16 bits, 16 of float32), with kStages steps in flight: while the warps
// multiply one step's tiles, the next steps' copies land. Each warp multiplies its part of the
// tile from fragments that ldmatrix loads, in m16 n8 tensor-core products (mma.sync),
// accumulating in float32. The forward's operand tiles hold their rows along the depth (4 chunks
// each); the weight gradient's hold rows of the depth (pixels) along C's rows and columns, which
// ldmatrix transposes as it loads (16-bit elements; 32-bit ones are read one by one). Shared
// memory's chunks are permuted (swizzled) so that those loads meet no bank conflicts. The weight
// gradient's long depth is split across blocks whose float32 partial products a second kernel
// sums in a fixed order: deterministic, no atomics; so is the forward's where its grid would leave
// multiprocessors idle.
//
// Host code here too (the plans, the launches through a caller's launcher), so the tests can run
// the kernels on the CPU (tests/emulated_cuda/) where there is no GPU.
#pragma once

#include "../conv2d.h"
#include "common.cuh"
#include "warp_mma.cuh"

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace conv_ext {
namespace channels_last_mma {

constexpr int kWarpSize = 32, kWarps = kThreads / kWarpSize;
constexpr int kChunkBytes = 16;
constexpr int kStepBytes = 64;  // a step's depth: 32 elements of 16 bits, 16 of float32
constexpr int kStages = 3;

struct alignas(kChunkBytes) Chunk {
  uint32_t words[4];
};

// Where chunk `chunk` of row `row` lies in a shared tile of `chunks` chunks a row: row-major, each
// row's chunks permuted by a few bits of the row, so that the eight rows of one chunk column that
// ldmatrix reads at once land in eight different groups of four banks (128 bytes hold eight
// chunks: rows of four share them in pairs).
template <int chunks>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  const int key = chunks >= 8 ? row % 8 : row / (8 / chunks) % chunks;
  return row * chunks + (chunk ^ key);
}

// A block's tile of C and how its 8 warps share it (warps_m along the rows).
template <int tile_m, int tile_n, int warps_m>
struct Tile {
  static constexpr int m = tile_m, n = tile_n;
  static constexpr int warp_m = tile_m / warps_m, warp_n = tile_n / (kWarps / warps_m);
  static constexpr int frags_m = warp_m / 16, frags_n = warp_n / 8;  // each warp's m16 n8 products
  static_assert(frags_m >= 1 && frags_n % 2 == 0, "tile too small for its warps");
};
using Tiles128x128 = Tile<128, 128, 2>;
using Tiles128x64 = Tile<128, 64, 4>;
using Tiles64x128 = Tile<64, 128, 2>;
using Tiles64x64 = Tile<64, 64, 2>;
enum class TileChoice { m128_n128, m128_n64, m64_n128, m64_n64 };

// The block (x, y) of a grid over a product: rows tile x; y = (group, split, cols tile), cols tile
// fastest; the block covers its split's share of the steps, [first_step, end_step).
struct BlockTile {
  int64_t m0, n0, group, split, first_step, end_step;
};

template <typename Tile>
__device__ BlockTile block_tile(int64_t cols, int64_t steps, int64_t splits) {
  const int64_t tiles_n = (cols + Tile::n - 1) / Tile::n;
  const int64_t split = blockIdx.y / tiles_n % splits, per_split = (steps + splits - 1) / splits;
  return {blockIdx.x * int64_t{Tile::m}, blockIdx.y % tiles_n * Tile::n, blockIdx.y / tiles_n / splits, split,
          split * per_split, std::min(steps, (split + 1) * per_split)};
}

// Which rows of a shared tile of `chunks` chunks a row thread t copies, and its chunk in them.
template <int rows, int chunks>
struct CopyPlace {
  static constexpr int chunks_a_row = chunks;
  static constexpr int copies = rows * chunks / kThreads, rows_apart = kThreads / chunks;
  static_assert(copies >= 1 && copies * kThreads == rows * chunks, "every thread copies as many chunks");
  __device__ static int row(int t, int i) { return t / chunks + i * rows_apart; }
  __device__ static int chunk(int t) { return t % chunks; }
};

// Stores v[0] at out[0] and, where `both`, v[1] at out[1]: the two in one store where out lies on
// a boundary of their size.
template <typename T>
__device__ __forceinline__ void store_one_or_two(T* out, const T (&v)[2], bool both) {
  struct alignas(2 * sizeof(T)) Two {
    T v[2];
  };
  if (both && reinterpret_cast<uintptr_t>(out) % sizeof(Two) == 0) {
    *reinterpret_cast<Two*>(out) = Two{{v[0], v[1]}};
    return;
  }
  out[0] = v[0];
  if (both) out[1] = v[1];
}

// Where a forward's output pixel (n, oh, ow) lies in y (N, h, w, K): at (n, first_h + oh * step_h,
// first_w + ow * step_w); the whole of y for a layer's forward, one stride phase of the input
// gradient for the input gradient's.
struct Placement {
  int64_t h, w, first_h, first_w, step_h, step_w;
};

inline Placement whole_output(const Conv2dGeometry& g) { return {g.out_h, g.out_w, 0, 0, 1, 1}; }

// Where a forward's filter k's channels at tap (r, s) start in w: at first + k * filter + r * tap_h
// + s * tap_w elements, the channels running on from there. A layer's (K, R, S, C / groups)
// filters, or an input gradient phase's taps read in reverse from the layer's filters without a
// copy (the tap steps negative).
struct FilterPlace {
  int64_t first, filter, tap_h, tap_w;
};

inline FilterPlace krsc_filters(const Conv2dGeometry& g) {
  const int64_t channels = g.in_channels_per_group();
  return {0, g.kernel_h * g.kernel_w * channels, g.kernel_w * channels, channels};
}

// y (N, OH, OW, K) = bias + x (N, H, W, C) * w (K, R, S, C / groups, placed as `filters` says):
// steps over (r, s, c0), every tap 32 elements of channels at a time; both tiles hold rows of C
// (pixels, filters) along the depth. Where the steps are split across blocks, each stores its float32
// partial products in `partial` (split, pixel, K), which sum_forward_partials_kernel adds up.
// split_float32: float32 by 3xTF32 rather than TF32.
template <typename scalar_t, bool split_float32 = false>
struct ForwardProblem {
  using value_t = scalar_t;
  static constexpr bool depth_major = false, kSplitFloat32 = split_float32;
  static constexpr int kElements = kChunkBytes / sizeof(scalar_t), kStepDepth = kStepBytes / sizeof(scalar_t);
  static constexpr int kChunks = kStepBytes / kChunkBytes;  // a tile row
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* bias;
  scalar_t* y;
  Conv2dGeometry g;
  Placement out;
  FilterPlace filters;
  float* partial;  // null where the steps are not split

  C10_HOST_DEVICE int64_t rows() const { return g.batch * g.out_h * g.out_w; }
  C10_HOST_DEVICE int64_t cols() const { return g.out_channels_per_group(); }
  C10_HOST_DEVICE int64_t channel_steps() const {
    return (g.in_channels_per_group() + kStepDepth - 1) / kStepDepth;
  }
  C10_HOST_DEVICE int64_t steps() const { return g.kernel_h * g.kernel_w * channel_steps(); }

  template <typename Tile>
  struct Loader {
    using A = CopyPlace<Tile::m, kChunks>;
    using B = CopyPlace<Tile::n, kChunks>;
    // This thread's rows of the A tile (output pixels: their image's channels of the group at
    // this thread's chunk, their window's corner) and of the B tile (filters at that chunk); null
    // past C's edges. The next step to copy: tap (r, s), channels from c0.
    const scalar_t* image[A::copies];
    int64_t ih0[A::copies], iw0[A::copies];
    const scalar_t* filter[B::copies];
    int64_t r, s, c0;

    __device__ Loader(const ForwardProblem& p, const BlockTile& b, int t) {
      const Conv2dGeometry& g = p.g;
      const int64_t channels = g.in_channels_per_group();
#pragma unroll
      for (int i = 0; i < A::copies; ++i) {
        const int64_t m = b.m0 + A::row(t, i);
        const int64_t n = m / (g.out_h * g.out_w), oh = m / g.out_w % g.out_h, ow = m % g.out_w;
        const int64_t first_element = n * g.in_h * g.in_w * g.in_channels + b.group * channels;
        image[i] = m < p.rows() ? p.x + first_element + A::chunk(t) * kElements : nullptr;
        ih0[i] = oh * g.stride_h - g.pad_h;
        iw0[i] = ow * g.stride_w - g.pad_w;
      }
#pragma unroll
      for (int i = 0; i < B::copies; ++i) {
        const int64_t k = b.n0 + B::row(t, i);
        const int64_t first_element = p.filters.first + (b.group * p.cols() + k) * p.filters.filter;
        filter[i] = k < p.cols() ? p.w + first_element + B::chunk(t) * kElements : nullptr;
      }
      const int64_t steps_a_tap = p.channel_steps();
      r = b.first_step / (steps_a_tap * g.kernel_w);
      s = b.first_step / steps_a_tap % g.kernel_w;
      c0 = b.first_step % steps_a_tap * kStepDepth;
    }

    __device__ void copy_next_step(const ForwardProblem& p, int t, Chunk* a_tile, Chunk* b_tile) {
      const Conv2dGeometry& g = p.g;
      const int64_t channels = g.in_channels_per_group();
      const bool channel_inside = c0 + A::chunk(t) * kElements < channels;
#pragma unroll
      for (int i = 0; i < A::copies; ++i) {
        const int64_t ih = ih0[i] + r * g.dilation_h, iw = iw0[i] + s * g.dilation_w;
        const bool inside = image[i] != nullptr && channel_inside && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        const scalar_t* src = inside ? image[i] + (ih * g.in_w + iw) * g.in_channels + c0 : p.x;
        warp_mma::cp_async_16(&a_tile[swizzled<A::chunks_a_row>(A::row(t, i), A::chunk(t))], src, inside);
      }
#pragma unroll
      for (int i = 0; i < B::copies; ++i) {
        const bool inside = filter[i] != nullptr && channel_inside;
        const scalar_t* src = inside ? filter[i] + r * p.filters.tap_h + s * p.filters.tap_w + c0 : p.w;
        warp_mma::cp_async_16(&b_tile[swizzled<B::chunks_a_row>(B::row(t, i), B::chunk(t))], src, inside);
      }
      c0 += kStepDepth;
      if (c0 >= channels) {
        c0 = 0;
        if (++s == g.kernel_w) {
          s = 0;
          ++r;
        }
      }
    }
  };

  // Where pixel m = (n, oh, ow)'s output channels start in y.
  __device__ int64_t pixel_start(int64_t m) const {
    const int64_t n = m / (g.out_h * g.out_w), oh = m / g.out_w % g.out_h, ow = m % g.out_w;
    return ((n * out.h + out.first_h + oh * out.step_h) * out.w + out.first_w + ow * out.step_w) * g.out_channels;
  }
  // Where row m of C starts, at the block's group: in y, or in its split's partial products.
  __device__ int64_t row_start(const BlockTile& b, int64_t, int64_t m) const {
    const int64_t start = partial != nullptr ? (b.split * rows() + m) * g.out_channels : pixel_start(m);
    return start + b.group * cols();
  }
  // C[m][k] = sum[0] and, where both lie inside C, C[m][k + 1] = sum[1], for the row starting at row.
  __device__ void store(const BlockTile& b, int64_t row, int64_t k, const float (&sum)[2]) const {
    const bool both = k + 1 < cols();
    if (partial != nullptr) return store_one_or_two(partial + row + k, sum, both);
    scalar_t v[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t channel = b.group * cols() + k + (both ? e : 0);
      v[e] = static_cast<scalar_t>(sum[e] + (bias != nullptr ? static_cast<float>(bias[channel]) : 0.0f));
    }
    store_one_or_two(y + row + k, v, both);
  }
};

// The float32 partial products (group, split, k, (r, s, c)) of gw (K, R, S, C / groups) =
// sum over pixels of gy (N, OH, OW, K) x (N, H, W, C) at the pixel's tap: steps over the pixels,
// 32 (16 in float32) at a time; both tiles hold rows of pixels, along C's rows (filters) and
// columns (taps). split_float32: float32 by 3xTF32 rather than TF32.
template <typename scalar_t, bool split_float32 = false>
struct GradWeightProblem {
  using value_t = scalar_t;
  static constexpr bool depth_major = true, kSplitFloat32 = split_float32;
  static constexpr int kElements = kChunkBytes / sizeof(scalar_t), kStepDepth = kStepBytes / sizeof(scalar_t);
  const scalar_t* x;
  const scalar_t* gy;
  float* partial;
  Conv2dGeometry g;

  C10_HOST_DEVICE int64_t rows() const { return g.out_channels_per_group(); }
  C10_HOST_DEVICE int64_t cols() const { return g.kernel_h * g.kernel_w * g.in_channels_per_group(); }
  C10_HOST_DEVICE int64_t pixels() const { return g.batch * g.out_h * g.out_w; }
  C10_HOST_DEVICE int64_t steps() const { return (pixels() + kStepDepth - 1) / kStepDepth; }

  template <typename Tile>
  struct Loader {
    using A = CopyPlace<kStepDepth, Tile::m / kElements>;
    using B = CopyPlace<kStepDepth, Tile::n / kElements>;
    // A: this thread's filters (a chunk of them) in the first pixel, null past C's rows, and its
    // pixels. B: its taps (a chunk of a tap's channels), in the first image, null past C's columns,
    // their offsets from a window's corner, and its pixels (n, oh, ow) as digits.
    const scalar_t* filters;
    int64_t a_pixel[A::copies];
    const scalar_t* tap;
    int64_t dh, dw;
    Digits b_pixel[B::copies];
    Radix pixel_radix;
    Digits step;

    __device__ Loader(const GradWeightProblem& p, const BlockTile& b, int t)
        : pixel_radix{p.g.out_h, p.g.out_w}, step(pixel_radix.digits(kStepDepth)) {
      const Conv2dGeometry& g = p.g;
      const int64_t k = b.m0 + A::chunk(t) * kElements;
      filters = k < p.rows() ? p.gy + b.group * p.rows() + k : nullptr;
      const int64_t crs = b.n0 + B::chunk(t) * kElements, channels = g.in_channels_per_group();
      const int64_t rs = crs / channels;
      tap = crs < p.cols() ? p.x + b.group * channels + crs % channels : nullptr;
      dh = rs / g.kernel_w * g.dilation_h - g.pad_h;
      dw = rs % g.kernel_w * g.dilation_w - g.pad_w;
#pragma unroll
      for (int i = 0; i < A::copies; ++i) a_pixel[i] = b.first_step * kStepDepth + A::row(t, i);
#pragma unroll
      for (int i = 0; i < B::copies; ++i) b_pixel[i] = pixel_radix.digits(b.first_step * kStepDepth + B::row(t, i));
    }

    __device__ void copy_next_step(const GradWeightProblem& p, int t, Chunk* a_tile, Chunk* b_tile) {
      const Conv2dGeometry& g = p.g;
#pragma unroll
      for (int i = 0; i < A::copies; ++i) {
        const bool inside = filters != nullptr && a_pixel[i] < p.pixels();
        const scalar_t* src = inside ? filters + a_pixel[i] * g.out_channels : p.gy;
        warp_mma::cp_async_16(&a_tile[swizzled<A::chunks_a_row>(A::row(t, i), A::chunk(t))], src, inside);
        a_pixel[i] += kStepDepth;
      }
#pragma unroll
      for (int i = 0; i < B::copies; ++i) {
        const Digits& q = b_pixel[i];  // (n, oh, ow)
        const int64_t ih = q.middle * g.stride_h + dh, iw = q.inner * g.stride_w + dw;
        const bool inside = tap != nullptr && q.outer < g.batch && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        const scalar_t* src = inside ? tap + ((q.outer * g.in_h + ih) * g.in_w + iw) * g.in_channels : p.x;
        warp_mma::cp_async_16(&b_tile[swizzled<B::chunks_a_row>(B::row(t, i), B::chunk(t))], src, inside);
        pixel_radix.advance(b_pixel[i], step);
      }
    }
  };

  __device__ int64_t row_start(const BlockTile& b, int64_t splits, int64_t k) const {
    return ((b.group * splits + b.split) * rows() + k) * cols();
  }
  __device__ void store(const BlockTile&, int64_t row, int64_t crs, const float (&sum)[2]) const {
    store_one_or_two(partial + row + crs, sum, crs + 1 < cols());
  }
};

// A warp's a fragment of one product: rows row to row + 15 of C, the depth of chunks k and k + 1 of
// the step, from a tile of `chunks` chunks a row holding 16-byte chunks of `elements` elements.
// Its registers in order: (rows 0-7, depth 0-7), (rows 8-15, 0-7), (rows 0-7, 8-15), (rows 8-15,
// 8-15), depth counted in 16-bit halves: ldmatrix's four matrices, transposed where the tile's
// rows run along the depth (depth_major), read one by one for 32-bit elements, which ldmatrix
// cannot transpose.
template <bool depth_major, int chunks, int elements>
__device__ __forceinline__ void load_a_fragment(uint32_t (&a)[4], const Chunk* tile, int row, int k, int lane) {
  if constexpr (!depth_major) {
    warp_mma::ldmatrix_x4(a, &tile[swizzled<chunks>(row + lane % 16, k + lane / 16)]);
  } else if constexpr (elements == 8) {
    warp_mma::ldmatrix_x4_trans(a, &tile[swizzled<chunks>(8 * k + lane % 8 + lane / 16 * 8, row / 8 + lane / 8 % 2)]);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // (row lane / 4, depth lane % 4), 8 rows on, 4 deep on, both
      const int r = row + lane / 4 + 8 * (e % 2), depth = 4 * k + lane % 4 + 4 * (e / 2);
      a[e] = tile[swizzled<chunks>(depth, r / 4)].words[r % 4];
    }
  }
}

// A warp's b fragments of two products: columns col to col + 7 and col + 8 to col + 15 of C, the
// depth of chunks k and k + 1; in order (cols 0-7, depth 0-7), (cols 0-7, 8-15), (cols 8-15, 0-7),
// (cols 8-15, 8-15), loaded as load_a_fragment's.
template <bool depth_major, int chunks, int elements>
__device__ __forceinline__ void load_b_fragments(uint32_t (&b)[4], const Chunk* tile, int col, int k, int lane) {
  if constexpr (!depth_major) {
    warp_mma::ldmatrix_x4(b, &tile[swizzled<chunks>(col + lane % 8 + lane / 16 * 8, k + lane / 8 % 2)]);
  } else if constexpr (elements == 8) {
    warp_mma::ldmatrix_x4_trans(b, &tile[swizzled<chunks>(8 * k + lane % 8 + lane / 8 % 2 * 8, col / 8 + lane / 16)]);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // (depth lane % 4, col lane / 4), 4 deep on, 8 columns on, both
      const int c = col + lane / 4 + 8 * (e / 2), depth = 4 * k + lane % 4 + 4 * (e % 2);
      b[e] = tile[swizzled<chunks>(depth, c / 4)].words[c % 4];
    }
  }
}

// C's tile for block (blockIdx.x, blockIdx.y) of Problem: its products over its split of the steps,
// stored two columns at a time by Problem::store where Problem::row_start says each row of C goes.
template <typename Problem, typename Tile>
__global__ void __launch_bounds__(kThreads) channels_last_mma_kernel(Problem p, int64_t splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  using scalar_t = typename Problem::value_t;
  constexpr int kElements = kChunkBytes / sizeof(scalar_t);
  // The tiles' rows: along the depth, kStepBytes each, or of the depth, a tile's width each.
  constexpr int a_chunks = Problem::depth_major ? Tile::m / kElements : kStepBytes / kChunkBytes;
  constexpr int b_chunks = Problem::depth_major ? Tile::n / kElements : kStepBytes / kChunkBytes;
  __shared__ Chunk a_tiles[kStages][Tile::m * kStepBytes / kChunkBytes];
  __shared__ Chunk b_tiles[kStages][Tile::n * kStepBytes / kChunkBytes];
  const int t = threadIdx.x, lane = t % kWarpSize, warp = t / kWarpSize;
  const BlockTile block = block_tile<Tile>(p.cols(), p.steps(), splits);
  typename Problem::template Loader<Tile> loader(p, block, t);
  const int64_t steps = block.end_step - block.first_step;

  const int warp_m0 = warp % (Tile::m / Tile::warp_m) * Tile::warp_m;
  const int warp_n0 = warp / (Tile::m / Tile::warp_m) * Tile::warp_n;
  float sum[Tile::frags_m][Tile::frags_n][4] = {};
#pragma unroll
  for (int stage = 0; stage < kStages - 1; ++stage) {
    if (stage < steps) loader.copy_next_step(p, t, a_tiles[stage], b_tiles[stage]);
    warp_mma::cp_async_commit();  // empty groups too: one group per step keeps the count below right
  }
  for (int64_t step = 0; step < steps; ++step) {
    warp_mma::cp_async_wait<kStages - 2>();  // this thread's copies of `step` have landed
    __syncthreads();  // everyone's have, and no warp still reads the stage refilled next
    const int next = (step + kStages - 1) % kStages;
    if (step + kStages - 1 < steps) loader.copy_next_step(p, t, a_tiles[next], b_tiles[next]);
    warp_mma::cp_async_commit();
    const Chunk* a_tile = a_tiles[step % kStages];
    const Chunk* b_tile = b_tiles[step % kStages];
#pragma unroll
    for (int k = 0; k < kStepBytes / kChunkBytes; k += 2) {  // a product's depth: two chunks' worth
      constexpr bool split = Problem::kSplitFloat32;
      uint32_t a[Tile::frags_m][4], a_small[split ? Tile::frags_m : 1][4];
#pragma unroll
      for (int i = 0; i < Tile::frags_m; ++i) {
        load_a_fragment<Problem::depth_major, a_chunks, kElements>(a[i], a_tile, warp_m0 + 16 * i, k, lane);
        if constexpr (split) {
          warp_mma::split_operands(a[i], a_small[i]);
        } else {
          warp_mma::round_operands<scalar_t>(a[i]);
        }
      }
#pragma unroll
      for (int j = 0; j < Tile::frags_n; j += 2) {  // b fragments two at a time: fewer registers live
        uint32_t pair[4], pair_small[4];
        load_b_fragments<Problem::depth_major, b_chunks, kElements>(pair, b_tile, warp_n0 + 8 * j, k, lane);
        if constexpr (split) {
          warp_mma::split_operands(pair, pair_small);
        } else {
          warp_mma::round_operands<scalar_t>(pair);
        }
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const uint32_t b[2] = {pair[2 * e], pair[2 * e + 1]};
#pragma unroll
          for (int i = 0; i < Tile::frags_m; ++i) {
            if constexpr (split) {
              const uint32_t b_small[2] = {pair_small[2 * e], pair_small[2 * e + 1]};
              warp_mma::mma_16x8_split(sum[i][j + e], a[i], a_small[i], b, b_small);
            } else {
              warp_mma::mma_16x8<scalar_t>(sum[i][j + e], a[i], b);
            }
          }
        }
      }
    }
  }
  warp_mma::cp_async_wait<0>();

  // Each lane holds, of each m16 n8 product, rows lane / 4 and lane / 4 + 8, columns 2 (lane % 4)
  // and the next.
#pragma unroll
  for (int i = 0; i < Tile::frags_m; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = block.m0 + warp_m0 + 16 * i + lane / 4 + 8 * half;
      if (m >= p.rows()) continue;
      const int64_t row = p.row_start(block, splits, m);
#pragma unroll
      for (int j = 0; j < Tile::frags_n; ++j) {
        const int64_t n = block.n0 + warp_n0 + 8 * j + 2 * (lane % 4);
        const float pair[2] = {sum[i][j][2 * half], sum[i][j][2 * half + 1]};
        if (n < p.cols()) p.store(block, row, n, pair);
      }
    }
  }
#endif
}

// y = bias + the sum of a split forward's partial products, in split order.
template <typename Problem>
__global__ void __launch_bounds__(kThreads) sum_forward_partials_kernel(Problem p, int64_t splits) {
  const int64_t channels = p.g.out_channels, count = p.rows() * channels;
  CONV_EXT_GRID_STRIDE_LOOP(index, count) {
    const int64_t m = index / channels, k = index % channels;
    float sum = 0;
    for (int64_t split = 0; split < splits; ++split) sum += p.partial[split * count + index];
    if (p.bias != nullptr) sum += static_cast<float>(p.bias[k]);
    p.y[p.pixel_start(m) + k] = static_cast<typename Problem::value_t>(sum);
  }
}

// gw (K, R, S, C / groups) = the sum of the weight gradient's partial products, in split order.
template <typename Problem>
__global__ void __launch_bounds__(kThreads)
    sum_grad_weight_partials_kernel(Problem p, int64_t splits, typename Problem::value_t* gw) {
  const int64_t rows = p.rows(), cols = p.cols();
  CONV_EXT_GRID_STRIDE_LOOP(index, p.g.groups * rows * cols) {
    const int64_t group = index / (rows * cols), element = index % (rows * cols);
    float sum = 0;
    for (int64_t split = 0; split < splits; ++split) sum += p.partial[(group * splits + split) * rows * cols + element];
    gw[index] = static_cast<typename Problem::value_t>(sum);
  }
}

inline int64_t elements_a_chunk(at::ScalarType dtype) { return kChunkBytes / c10::elementSize(dtype); }
inline int64_t elements_a_step(at::ScalarType dtype) { return kStepBytes / c10::elementSize(dtype); }

// Whether the grid of a product of `rows` x `cols` per group, `splits` deep, fits (at most 2^31 - 1
// blocks along x, 65535 along y) with the smallest tiles.
inline bool grid_fits(int64_t rows, int64_t cols, int64_t groups, int64_t splits = 1) {
  return (rows + 63) / 64 < (int64_t{1} << 31) && (cols + 63) / 64 * groups * splits <= 65535;
}

// The input channels per group the kernels run layer g with in dtype: its own where they fill
// whole chunks, else, for one group, padded with zero channels to the next chunk (as a first
// layer's 3 channels are: more work, but on the tensor cores); 0 where neither, or where a group
// has none.
inline int64_t chunked_channels(const Conv2dGeometry& g, at::ScalarType dtype) {
  const int64_t channels = g.in_channels_per_group(), elements = elements_a_chunk(dtype);
  if (channels % elements == 0) return channels;
  return g.groups == 1 ? (channels + elements - 1) / elements * elements : 0;
}

// Layer g with `channels` input channels a group.
inline Conv2dGeometry with_channels(Conv2dGeometry g, int64_t channels) {
  g.in_channels = channels * g.groups;
  return g;
}

// Whether the kernel computes the forward of geometry g in dtype: float16, bfloat16 or float32,
// channels per group in whole chunks (chunked_channels), a grid that fits.
inline bool applies_forward(const Conv2dGeometry& g, at::ScalarType dtype) {
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) return false;
  return chunked_channels(g, dtype) > 0 &&
         grid_fits(g.batch * g.out_h * g.out_w, g.out_channels_per_group(), g.groups);
}

// Whether it computes the input gradient of geometry g in dtype: as the forward, with the output
// channels per group in whole chunks.
inline bool applies_grad_input(const Conv2dGeometry& g, at::ScalarType dtype) {
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) return false;
  const int64_t filters = g.out_channels_per_group();
  return filters > 0 && filters % elements_a_chunk(dtype) == 0 &&
         grid_fits(g.batch * g.in_h * g.in_w, g.in_channels_per_group(), g.groups);
}

// Whether it computes the weight gradient of geometry g in dtype: as the forward, with the output
// channels per group in whole chunks too.
inline bool applies_grad_weight(const Conv2dGeometry& g, at::ScalarType dtype) {
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) return false;
  const int64_t channels = chunked_channels(g, dtype), filters = g.out_channels_per_group();
  return channels > 0 && filters > 0 && filters % elements_a_chunk(dtype) == 0 &&
         grid_fits(filters, g.kernel_h * g.kernel_w * channels, g.groups);
}

// t contiguous in `format` (a 4-d tensor's memory order), starting at a 16-byte boundary as the
// kernels' copies need.
inline at::Tensor aligned_contiguous(const at::Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  at::Tensor c = t.contiguous(format);
  return reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 == 0 ? c : c.clone(format);
}

// x (N, C, H, W) channels_last at a 16-byte boundary, with zero channels appended up to `channels`.
inline at::Tensor padded_channels(const at::Tensor& x, int64_t channels) {
  if (x.size(1) == channels) return aligned_contiguous(x, at::MemoryFormat::ChannelsLast);
  at::Tensor padded = at::empty({x.size(0), channels, x.size(2), x.size(3)},
                                x.options().memory_format(at::MemoryFormat::ChannelsLast));
  padded.narrow(1, x.size(1), channels - x.size(1)).zero_();
  padded.narrow(1, 0, x.size(1)).copy_(x);
  return padded;
}

// The grid of a product: its tile, and into how many parts its steps are split.
struct Plan {
  TileChoice tile;
  int64_t splits;
};

inline int64_t tile_rows(TileChoice t) { return t == TileChoice::m128_n128 || t == TileChoice::m128_n64 ? 128 : 64; }
inline int64_t tile_cols(TileChoice t) { return t == TileChoice::m128_n128 || t == TileChoice::m64_n128 ? 128 : 64; }

inline int64_t blocks(TileChoice t, int64_t rows, int64_t cols, int64_t groups) {
  return (rows + tile_rows(t) - 1) / tile_rows(t) * ((cols + tile_cols(t) - 1) / tile_cols(t)) * groups;
}

// The forward's tile: 128 columns (filters) where a group has more than 64, else 64; 128 rows
// where that gives a block for each multiprocessor, else 64. Where even that does not, the 128-row
// tile's steps split into as many parts as keep the grid within one block per multiprocessor, at
// least 8 steps each (a second kernel adds them); 64 x 64 tiles where fewer than two parts would.
inline Plan plan_forward(const Conv2dGeometry& g, at::ScalarType dtype, int64_t multiprocessors) {
  const int64_t rows = g.batch * g.out_h * g.out_w, cols = g.out_channels_per_group();
  const auto candidates = cols > 64 ? std::vector<TileChoice>{TileChoice::m128_n128, TileChoice::m64_n128}
                                    : std::vector<TileChoice>{TileChoice::m128_n64};
  for (TileChoice t : candidates) {
    if (blocks(t, rows, cols, g.groups) >= multiprocessors) return {t, 1};
  }
  const TileChoice t = candidates.front();
  const int64_t step_depth = elements_a_step(dtype);
  const int64_t steps = g.kernel_h * g.kernel_w * ((g.in_channels_per_group() + step_depth - 1) / step_depth);
  const int64_t splits = std::min(multiprocessors / blocks(t, rows, cols, g.groups), steps / 8);
  if (splits >= 2 && grid_fits(rows, cols, g.groups, splits)) return {t, splits};
  return {TileChoice::m64_n64, 1};
}

// The weight gradient's tile: 128 rows (filters) where a group has more than 64, else 64, and
// likewise its columns; its steps (64 bytes of pixels each: 32 of 16 bits, 16 of float32) split
// into parts at least 8 steps long, for two blocks per multiprocessor.
inline Plan plan_grad_weight(const Conv2dGeometry& g, at::ScalarType dtype, int64_t multiprocessors) {
  const int64_t rows = g.out_channels_per_group(), cols = g.kernel_h * g.kernel_w * g.in_channels_per_group();
  const TileChoice t = rows > 64 ? (cols > 64 ? TileChoice::m128_n128 : TileChoice::m128_n64)
                                 : (cols > 64 ? TileChoice::m64_n128 : TileChoice::m64_n64);
  const int64_t grid = blocks(t, rows, cols, g.groups);
  const int64_t step_depth = elements_a_step(dtype);
  const int64_t steps = (g.batch * g.out_h * g.out_w + step_depth - 1) / step_depth;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>((2 * multiprocessors + grid - 1) / grid, steps / 8));
  while (splits > 1 && !grid_fits(rows, cols, g.groups, splits)) --splits;
  return {t, splits};
}

// run(split) with split std::true_type for float32 by 3xTF32 (!tf32), std::false_type for TF32 and
// the 16-bit types; nothing for float64, which the kernels do not compute.
template <typename scalar_t, typename Run>
void on_precision(bool tf32, Run run) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (tf32) {
      run(std::false_type{});
    } else {
      run(std::true_type{});
    }
  } else if constexpr (!std::is_same_v<scalar_t, double>) {
    run(std::false_type{});
  }
}

template <typename Tile, typename Problem, typename Launch>
void launch_tiles(Launch launch, const Problem& p, int64_t splits) {
  const dim3 grid((p.rows() + Tile::m - 1) / Tile::m, (p.cols() + Tile::n - 1) / Tile::n * p.g.groups * splits);
  launch(channels_last_mma_kernel<Problem, Tile>, grid, dim3(kThreads), p, splits);
}

template <typename Problem, typename Launch>
void launch_plan(Launch launch, const Problem& p, const Plan& plan) {
  switch (plan.tile) {
    case TileChoice::m128_n128: launch_tiles<Tiles128x128>(launch, p, plan.splits); break;
    case TileChoice::m128_n64: launch_tiles<Tiles128x64>(launch, p, plan.splits); break;
    case TileChoice::m64_n128: launch_tiles<Tiles64x128>(launch, p, plan.splits); break;
    case TileChoice::m64_n64: launch_tiles<Tiles64x64>(launch, p, plan.splits); break;
  }
}

// y (N, OH, OW, K in memory) = the forward of geometry g on x (N, H, W, C in memory), the filters
// in w placed as `filters` says (krsc_filters(g) for w (K, R, S, C / groups)) and bias (or
// undefined), all starting at 16-byte boundaries, by launch(kernel, grid, block, arguments...): on
// the GPU's current stream or, in the tests, on the CPU; its output pixels placed in y by `out`;
// float32 as TF32 or by 3xTF32. Where `products` is given (float32, plan.splits x the outputs), the
// float32 products of every split go there, (split, pixel, K), for the caller to gather, and y is
// not written. Returns its plan.
template <typename Launch>
Plan run_forward(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& y,
                 const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const Placement& out,
                 bool tf32, const FilterPlace& filters, const at::Tensor& products = {}) {
  const Plan plan = plan_forward(g, x.scalar_type(), multiprocessors);
  const int64_t outputs = g.batch * g.out_h * g.out_w * g.out_channels;
  if (outputs == 0) return plan;
  at::Tensor partial = products;
  if (!partial.defined() && plan.splits > 1) partial = at::empty({plan.splits * outputs}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_ext_channels_last_mma", [&] {
    on_precision<scalar_t>(tf32, [&](auto split) {
      const ForwardProblem<scalar_t, decltype(split)::value> p{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(bias),
          products.defined() ? nullptr : y.mutable_data_ptr<scalar_t>(), g, out, filters,
          partial.defined() ? partial.mutable_data_ptr<float>() : nullptr};
      launch_plan(launch, p, plan);
      if (!products.defined() && plan.splits > 1) {
        launch(sum_forward_partials_kernel<decltype(p)>, dim3(blocks_for(outputs)), dim3(kThreads), p, plan.splits);
      }
    });
  });
  return plan;
}

// y (N, OH, OW, K in memory) = the forward of layer g on x and the filters w (K, C / groups, R, S),
// with bias (or undefined): run_forward on x and the filters ordered (K, R, S, C / groups), both
// with their channels padded to chunked_channels. Returns its plan.
template <typename Launch>
Plan run_layer_forward(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& y,
                       const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool tf32) {
  const Conv2dGeometry padded = with_channels(g, chunked_channels(g, y.scalar_type()));
  const int64_t extra = padded.in_channels_per_group() - g.in_channels_per_group();
  const at::Tensor w_krsc = aligned_contiguous(at::constant_pad_nd(w.permute({0, 2, 3, 1}), {0, extra}));
  return run_forward(padded, multiprocessors, launch, y, padded_channels(x, padded.in_channels), w_krsc,
                     bias.defined() ? bias.contiguous() : bias, whole_output(padded), tf32, krsc_filters(padded));
}

// The layer whose forward computes an input gradient phase of g: from grad_output (OH x OW, K
// channels) to the phase's positions of the input's C channels, over the taps that feed them in
// reverse order, so that output j reads gy[first_out + j - t * out_step] for tap t = T - 1 - t':
// dilation out_step, padding (T - 1) out_step - first_out.
inline Conv2dGeometry phase_layer(const InputPhase& p) {
  const Conv2dGeometry& g = p.g;
  return {g.batch, g.out_channels, g.out_h, g.out_w, g.in_channels, p.h.taps, p.w.taps, p.h.count, p.w.count,
          1, 1, (p.h.taps - 1) * p.h.out_step - p.h.first_out, (p.w.taps - 1) * p.w.out_step - p.w.first_out,
          p.h.out_step, p.w.out_step, g.groups};
}

// The phase layer's filters (C, T_h, T_w, K / groups) as they lie in w_crsk (C, R, S, K / groups):
// the phase's taps, reversed.
inline FilterPlace phase_filters(const InputPhase& p) {
  const Conv2dGeometry& g = p.g;
  const int64_t depth = g.out_channels_per_group(), last_h = p.h.first_tap + (p.h.taps - 1) * p.h.tap_step,
                last_w = p.w.first_tap + (p.w.taps - 1) * p.w.tap_step;
  return {(last_h * g.kernel_w + last_w) * depth, g.kernel_h * g.kernel_w * depth,
          -p.h.tap_step * g.kernel_w * depth, -p.w.tap_step * depth};
}

// The 1 x 1 layer whose forward gives the input gradient's columns: from gy (OH x OW pixels, K
// channels) to C R S channels a pixel, (c, r, s) = the rows of w_crsk (C, R, S, K / groups).
inline Conv2dGeometry columns_layer(const Conv2dGeometry& g) {
  return {g.batch, g.out_channels, g.out_h, g.out_w, g.in_channels * g.kernel_h * g.kernel_w, 1, 1, g.out_h, g.out_w,
          1, 1, 0, 0, 1, 1, g.groups};
}

// Whether the input gradient goes by columns: where the input's channels per group would fill
// under a quarter of the phases' 64-column tiles (a first layer's 3 channels): the columns' C R S
// fill them instead.
inline bool grad_input_by_columns(const Conv2dGeometry& g) { return g.in_channels_per_group() < 16; }

// gx (N, H, W, C in memory) = the sum over the taps (r, s) that reach each input pixel from an
// output pixel of the columns (split, pixel (n, oh, ow), (c, r, s)) that columns_layer's forward
// wrote, and over their splits, in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gather_columns_kernel(const float* __restrict__ columns, int64_t splits, scalar_t* __restrict__ gx,
                          Conv2dGeometry g) {
  const int64_t width = g.in_channels * g.kernel_h * g.kernel_w, split_size = g.batch * g.out_h * g.out_w * width;
  CONV_EXT_GRID_STRIDE_LOOP(index, g.batch * g.in_h * g.in_w * g.in_channels) {
    const int64_t c = index % g.in_channels, pixel = index / g.in_channels;
    const int64_t iw = pixel % g.in_w, ih = pixel / g.in_w % g.in_h, n = pixel / (g.in_w * g.in_h);
    float sum = 0;
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      const int64_t h = ih + g.pad_h - r * g.dilation_h;
      if (h < 0) break;  // and every later row
      const int64_t oh = exact_quotient(h, g.stride_h);
      if (oh < 0 || oh >= g.out_h) continue;
      for (int64_t s = 0; s < g.kernel_w; ++s) {
        const int64_t v = iw + g.pad_w - s * g.dilation_w;
        if (v < 0) break;
        const int64_t ow = exact_quotient(v, g.stride_w);
        if (ow < 0 || ow >= g.out_w) continue;
        const int64_t at = ((n * g.out_h + oh) * g.out_w + ow) * width + (c * g.kernel_h + r) * g.kernel_w + s;
        for (int64_t split = 0; split < splits; ++split) sum += columns[split * split_size + at];
      }
    }
    gx[index] = static_cast<scalar_t>(sum);
  }
}

// The input gradient's columns hold at most this many float32 elements at a time (256 MiB): its
// images go in batches that fit.
constexpr int64_t kColumnsBudget = int64_t{1} << 26;

// gx = the input gradient of geometry g by columns: for a batch of images at a time (as many as
// keep the columns within `budget` elements), gy times the filters w_crsk (C, R, S, K / groups)
// into float32 columns (columns_layer), which gather_columns_kernel sums into gx. Returns the
// first batch's plan.
template <typename Launch>
Plan run_grad_input_by_columns(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gx,
                               const at::Tensor& gy, const at::Tensor& w_crsk, bool tf32, int64_t budget) {
  const int64_t image_columns = g.out_h * g.out_w * g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t batch = std::max<int64_t>(1, budget / image_columns);
  std::vector<Plan> plans;
  for (int64_t n0 = 0; n0 < g.batch; n0 += batch) {
    Conv2dGeometry part = g;
    part.batch = std::min(batch, g.batch - n0);
    const Conv2dGeometry layer = columns_layer(part);
    const Plan plan = plan_forward(layer, gy.scalar_type(), multiprocessors);
    const at::Tensor columns = at::empty({plan.splits * part.batch * image_columns}, gy.options().dtype(at::kFloat));
    const at::Tensor gx_part = gx.narrow(0, n0, part.batch);
    run_forward(layer, multiprocessors, launch, gx_part, gy.narrow(0, n0, part.batch), w_crsk, at::Tensor(),
                whole_output(layer), tf32, krsc_filters(layer), columns);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "conv_ext_gather_columns", [&] {
      launch(gather_columns_kernel<scalar_t>, dim3(blocks_for(gx_part.numel())), dim3(kThreads),
             static_cast<const float*>(columns.const_data_ptr<float>()), plan.splits,
             gx_part.mutable_data_ptr<scalar_t>(), part);
    });
    plans.push_back(plan);
  }
  return plans.empty() ? plan_forward(columns_layer(g), gy.scalar_type(), multiprocessors) : plans.front();
}

// gx (N, H, W, C in memory) = the input gradient of geometry g from gy (N, OH, OW, K in memory,
// starting at a 16-byte boundary) and the filters w (K, C / groups, R, S): each stride phase the
// forward of its phase layer (float32 as TF32 or by 3xTF32), zeros where no tap feeds a phase.
// The phases read their taps from one copy of the filters, (C, R, S, K / groups). Few channels go
// by columns instead (grad_input_by_columns): gy times those filters, in float32, then gathered.
// Returns the plan of the first phase (of the columns' product).
template <typename Launch>
Plan run_grad_input(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gx,
                    const at::Tensor& gy, const at::Tensor& w, bool tf32, int64_t columns_budget = kColumnsBudget) {
  const int64_t groups = g.groups, filters = g.out_channels_per_group(), channels = g.in_channels_per_group();
  const at::Tensor w_crsk = at::empty({g.in_channels, g.kernel_h, g.kernel_w, filters}, w.options());
  w_crsk.view({groups, channels, g.kernel_h, g.kernel_w, filters})
      .copy_(w.reshape({groups, filters, channels, g.kernel_h, g.kernel_w}).permute({0, 2, 3, 4, 1}));
  if (grad_input_by_columns(g)) {
    return run_grad_input_by_columns(g, multiprocessors, launch, gx, gy, w_crsk, tf32, columns_budget);
  }
  std::vector<Plan> plans;
  for (const InputPhase& p : input_phases(g)) {
    if (p.h.taps == 0 || p.w.taps == 0) {
      // No tap feeds these positions: their gradient is 0.
      gx.slice(2, p.h.first, g.in_h, g.stride_h).slice(3, p.w.first, g.in_w, g.stride_w).zero_();
      continue;
    }
    plans.push_back(run_forward(phase_layer(p), multiprocessors, launch, gx, gy, w_crsk, at::Tensor(),
                                {g.in_h, g.in_w, p.h.first, p.w.first, g.stride_h, g.stride_w}, tf32,
                                phase_filters(p)));
  }
  return plans.empty() ? plan_forward(g, gx.scalar_type(), multiprocessors) : plans.front();
}

// gw_krsc (K, R, S, C / groups) = the weight gradient of geometry g from x (N, H, W, C in memory)
// and gy (N, OH, OW, K in memory, starting at a 16-byte boundary); float32 as TF32 or by 3xTF32.
// Where x's channels are padded (chunked_channels), so is the gradient, which then keeps the
// layer's channels.
template <typename Launch>
Plan run_grad_weight(const Conv2dGeometry& g, int64_t multiprocessors, Launch launch, const at::Tensor& gw_krsc,
                     const at::Tensor& x, const at::Tensor& gy, bool tf32) {
  const Conv2dGeometry padded = with_channels(g, chunked_channels(g, gw_krsc.scalar_type()));
  const Plan plan = plan_grad_weight(padded, gw_krsc.scalar_type(), multiprocessors);
  if (gw_krsc.numel() == 0) return plan;
  const bool pads = padded.in_channels != g.in_channels;
  const at::Tensor gw = pads ? at::empty({g.out_channels, g.kernel_h, g.kernel_w, padded.in_channels_per_group()},
                                         gw_krsc.options())
                             : gw_krsc;
  const at::Tensor x_padded = padded_channels(x, padded.in_channels);
  at::Tensor partial = at::empty({plan.splits * gw.numel()}, gw.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gw.scalar_type(), "conv_ext_mma_grad_weight", [&] {
    on_precision<scalar_t>(tf32, [&](auto split) {
      const GradWeightProblem<scalar_t, decltype(split)::value> p{
          x_padded.const_data_ptr<scalar_t>(), gy.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<float>(),
          padded};
      launch_plan(launch, p, plan);
      launch(sum_grad_weight_partials_kernel<decltype(p)>, dim3(blocks_for(gw.numel())), dim3(kThreads), p,
             plan.splits, gw.mutable_data_ptr<scalar_t>());
    });
  });
  if (pads) gw_krsc.copy_(gw.narrow(3, 0, g.in_channels_per_group()));
  return plan;
}

}  // namespace channels_last_mma
}  // namespace conv_ext
