// The tiled kernels of the three ops, written once. Per group, each op is a matrix product
// C[rows x cols] = A[rows x depth] B[depth x cols] whose operands are gathered from the tensors as
// the tiles load (an implicit GEMM: no im2col matrix in memory):
//
//   forward      rows (n, oh, ow)  cols k (output channel)    depth (c, r, s)
//   grad_input   rows (n, ih, iw)  cols c (input channel)     depth (k, r, s)
//   grad_weight  rows k            cols (c, r, s)             depth (n, oh, ow)
//
// The input gradient is one such product per stride phase (sh x sw of them): the input positions
// whose (ih + ph) mod sh, (iw + pw) mod sw agree are fed by the same taps, so each phase's depth
// holds only those (a quarter of the filter at stride 2, where one product over every tap would
// multiply zeros for three quarters of its terms).
//
// A block of 256 threads computes a 64 x 64 tile of C through shared memory, in one of two ways:
// - tiled_gemm_kernel (every dtype): 8 deep at a time, each thread a 4 x 4 patch in registers, in
//   the accumulation type;
// - tensor_core_gemm_kernel (float16, bfloat16, and float32 as TF32): 16 deep at a time, each of
//   its 8 warps a 16 x 32 slab on the tensor cores (wmma), accumulating in float32.
// Where the grid has too few blocks to fill the GPU (a weight gradient, small images), the depth is
// split across blocks whose partial products a second kernel sums in a fixed order:
// deterministic, no atomics.
//
// Host code here too (the plan, the launches through a caller's launcher), so the tests can run
// these kernels on the CPU (tests/emulated_cuda/) where there is no GPU.
#pragma once

#include "../conv2d.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <vector>

#ifndef CONV_EXT_EMULATED_CUDA  // tests/emulated_cuda/cuda_on_cpu.h defines these on the CPU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace conv_ext {
namespace tiled_gemm {

constexpr int kTileM = 64, kTileN = 64, kTileK = 8, kTensorTileK = 16;
constexpr int kWarpSize = 32;
constexpr int kPatch = 4;                        // each thread's results: kPatch x kPatch
constexpr int kThreadsAlong = kTileM / kPatch;   // 16 x 16 threads
static_assert(kThreadsAlong * kThreadsAlong == kThreads && kTileM == kTileN, "one thread per patch");

// The product each op computes, per group.
struct GemmShape {
  int64_t groups, rows, cols, depth;
};

inline GemmShape forward_shape(const Conv2dGeometry& g) {
  return {g.groups, g.batch * g.out_h * g.out_w, g.out_channels_per_group(), g.patch_size()};
}
inline GemmShape grad_weight_shape(const Conv2dGeometry& g) {
  return {g.groups, g.out_channels_per_group(), g.patch_size(), g.batch * g.out_h * g.out_w};
}

inline GemmShape grad_input_shape(const InputPhase& p) {
  return {p.g.groups, p.g.batch * p.h.count * p.w.count, p.g.in_channels_per_group(),
          p.g.out_channels_per_group() * p.h.taps * p.w.taps};
}

// Which index of an operand's tile consecutive threads load: the one along which the tensor is
// contiguous, so that a warp's loads coalesce.
enum class Fastest { outer, depth };

struct TilePosition {
  int outer, depth;
};

// The i-th element of a tile_k x 64 operand tile that thread t loads (i < tile_k / 4).
template <Fastest fastest, int tile_k>
__device__ __forceinline__ TilePosition load_position(int t, int i) {
  if (fastest == Fastest::outer) return {t % kTileM, t / kTileM + i * (kThreads / kTileM)};
  return {t / tile_k + i * (kThreads / tile_k), t % tile_k};
}

// y[n, k, oh, ow] = bias[k] + sum_{c, r, s} x[n, c, oh * sh - ph + r * dh, ow * sw - pw + s * dw] w[k, c, r, s]
template <typename scalar_t>
struct ForwardProblem {
  using value_t = scalar_t;
  using acc_t = at::acc_type<scalar_t, true>;
  static constexpr Fastest a_fastest = Fastest::outer, b_fastest = Fastest::depth;
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* bias;
  scalar_t* y;
  Conv2dGeometry g;
  GemmShape shape;

  Radix a_radix, b_radix;  // A by (c, r, s), B as one index

  using Part = Conv2dGeometry;  // one product: the whole op
  static std::vector<Part> parts(const Conv2dGeometry& g) { return {g}; }
  static GemmShape shape_of(const Part& g) { return forward_shape(g); }

  ForwardProblem(const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* y, const Conv2dGeometry& g)
      : x(x), w(w), bias(bias), y(y), g(g), shape(forward_shape(g)), a_radix{g.kernel_h, g.kernel_w}, b_radix{1, 1} {}

  struct Row {  // an output pixel: its image's first channel of the group, its window's corner
    const scalar_t* x;
    int64_t ih0, iw0;
  };
  __device__ Row row(int64_t group, int64_t m) const {
    const int64_t n = m / (g.out_h * g.out_w), oh = m / g.out_w % g.out_h, ow = m % g.out_w;
    return {x + (n * g.in_channels + group * g.in_channels_per_group()) * g.in_h * g.in_w,
            oh * g.stride_h - g.pad_h, ow * g.stride_w - g.pad_w};
  }
  __device__ acc_t a(const Row& p, const Digits& crs) const {
    const int64_t ih = p.ih0 + crs.middle * g.dilation_h, iw = p.iw0 + crs.inner * g.dilation_w;
    if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return acc_t(0);
    return static_cast<acc_t>(p.x[(crs.outer * g.in_h + ih) * g.in_w + iw]);
  }
  struct Col {  // an output channel's filter
    const scalar_t* w;
  };
  __device__ Col col(int64_t group, int64_t k) const {
    return {w + (group * shape.cols + k) * shape.depth};
  }
  __device__ acc_t b(const Col& f, const Digits& crs) const { return static_cast<acc_t>(f.w[crs.outer]); }
  __device__ void store(int64_t group, int64_t m, int64_t k, acc_t v) const {
    const int64_t pixels = g.out_h * g.out_w, channel = group * shape.cols + k;
    if (bias != nullptr) v += static_cast<acc_t>(bias[channel]);
    y[(m / pixels * g.out_channels + channel) * pixels + m % pixels] = static_cast<scalar_t>(v);
  }
};

// gx[n, c, ih, iw] = sum over (k, r, s) with ih + ph - r * dh = oh * sh (likewise the width) of
// gy[n, k, oh, ow] w[k, c, r, s], over one stride phase's positions (n, ih, iw) and the taps
// (r, s) that feed them: rows (n, j, i) for ih = h.first + j * sh, iw = w.first + i * sw, depth
// (k, t, u) for r = h.first_tap + t * h.tap_step, s = w.first_tap + u * w.tap_step.
template <typename scalar_t>
struct GradInputProblem {
  using value_t = scalar_t;
  using acc_t = at::acc_type<scalar_t, true>;
  static constexpr Fastest a_fastest = Fastest::outer, b_fastest = Fastest::depth;
  const scalar_t* gy;
  const scalar_t* w;
  scalar_t* gx;
  Conv2dGeometry g;
  AxisPhase ph, pw;
  GemmShape shape;

  Radix a_radix, b_radix;  // both by (k, t, u)

  using Part = InputPhase;
  static std::vector<Part> parts(const Conv2dGeometry& g) { return input_phases(g); }
  static GemmShape shape_of(const Part& p) { return grad_input_shape(p); }

  GradInputProblem(const scalar_t* gy, const scalar_t* w, scalar_t* gx, const InputPhase& p)
      : gy(gy), w(w), gx(gx), g(p.g), ph(p.h), pw(p.w), shape(grad_input_shape(p)),
        // A phase fed by no tap has no depth (its positions' gradient is 0); its radix only must not divide by 0.
        a_radix{std::max<int64_t>(p.h.taps, 1), std::max<int64_t>(p.w.taps, 1)}, b_radix(a_radix) {}

  struct Row {  // an input position: its image's first output channel of the group, the outputs its first taps feed
    const scalar_t* gy;
    int64_t oh, ow;
  };
  __device__ Row row(int64_t group, int64_t m) const {
    const int64_t n = m / (ph.count * pw.count), j = m / pw.count % ph.count, i = m % pw.count;
    return {gy + (n * g.out_channels + group * g.out_channels_per_group()) * g.out_h * g.out_w, ph.first_out + j,
            pw.first_out + i};
  }
  __device__ acc_t a(const Row& p, const Digits& ktu) const {
    const int64_t oh = p.oh - ktu.middle * ph.out_step, ow = p.ow - ktu.inner * pw.out_step;
    if (oh < 0 || ow < 0 || oh >= g.out_h || ow >= g.out_w) return acc_t(0);
    return static_cast<acc_t>(p.gy[(ktu.outer * g.out_h + oh) * g.out_w + ow]);
  }
  struct Col {  // an input channel's taps in the group's first filter
    const scalar_t* w;
  };
  __device__ Col col(int64_t group, int64_t c) const {
    return {w + (group * g.out_channels_per_group() * shape.cols + c) * g.kernel_h * g.kernel_w};
  }
  __device__ acc_t b(const Col& f, const Digits& ktu) const {
    const int64_t r = ph.first_tap + ktu.middle * ph.tap_step, s = pw.first_tap + ktu.inner * pw.tap_step;
    return static_cast<acc_t>(f.w[(ktu.outer * shape.cols * g.kernel_h + r) * g.kernel_w + s]);
  }
  __device__ void store(int64_t group, int64_t m, int64_t c, acc_t v) const {
    const int64_t n = m / (ph.count * pw.count), j = m / pw.count % ph.count, i = m % pw.count;
    const int64_t ih = ph.first + j * g.stride_h, iw = pw.first + i * g.stride_w;
    gx[((n * g.in_channels + group * shape.cols + c) * g.in_h + ih) * g.in_w + iw] = static_cast<scalar_t>(v);
  }
};

// gw[k, c, r, s] = sum_{n, oh, ow} gy[n, k, oh, ow] x[n, c, oh * sh - ph + r * dh, ow * sw - pw + s * dw]
template <typename scalar_t>
struct GradWeightProblem {
  using value_t = scalar_t;
  using acc_t = at::acc_type<scalar_t, true>;
  static constexpr Fastest a_fastest = Fastest::depth, b_fastest = Fastest::depth;
  const scalar_t* x;
  const scalar_t* gy;
  scalar_t* gw;
  Conv2dGeometry g;
  GemmShape shape;

  Radix a_radix, b_radix;  // A by (n, oh ow), B by (n, oh, ow)

  using Part = Conv2dGeometry;  // one product: the whole op
  static std::vector<Part> parts(const Conv2dGeometry& g) { return {g}; }
  static GemmShape shape_of(const Part& g) { return grad_weight_shape(g); }

  GradWeightProblem(const scalar_t* x, const scalar_t* gy, scalar_t* gw, const Conv2dGeometry& g)
      : x(x), gy(gy), gw(gw), g(g), shape(grad_weight_shape(g)), a_radix{1, g.out_h * g.out_w},
        b_radix{g.out_h, g.out_w} {}

  struct Row {  // an output channel's plane in the first image
    const scalar_t* gy;
  };
  __device__ Row row(int64_t group, int64_t k) const {
    return {gy + (group * shape.rows + k) * g.out_h * g.out_w};
  }
  __device__ acc_t a(const Row& p, const Digits& nhw) const {
    return static_cast<acc_t>(p.gy[nhw.outer * g.out_channels * a_radix.inner + nhw.inner]);
  }
  struct Col {  // a tap: its input channel's plane in the first image, its offset from a window's corner
    const scalar_t* x;
    int64_t dh, dw;
  };
  __device__ Col col(int64_t group, int64_t crs) const {
    const int64_t rs = g.kernel_h * g.kernel_w, c = crs / rs;
    return {x + (group * g.in_channels_per_group() + c) * g.in_h * g.in_w,
            crs % rs / g.kernel_w * g.dilation_h - g.pad_h, crs % g.kernel_w * g.dilation_w - g.pad_w};
  }
  __device__ acc_t b(const Col& tap, const Digits& nhw) const {
    const int64_t ih = nhw.middle * g.stride_h + tap.dh, iw = nhw.inner * g.stride_w + tap.dw;
    if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return acc_t(0);
    return static_cast<acc_t>(tap.x[(nhw.outer * g.in_channels * g.in_h + ih) * g.in_w + iw]);
  }
  __device__ void store(int64_t group, int64_t k, int64_t crs, acc_t v) const {
    gw[(group * shape.rows + k) * shape.cols + crs] = static_cast<scalar_t>(v);
  }
};

// Where the partial product of (group, split) for C[m, n] goes when the depth is split.
__device__ __forceinline__ int64_t partial_index(const GemmShape& s, int64_t splits, int64_t group,
                                                 int64_t split, int64_t m, int64_t n) {
  return ((group * splits + split) * s.rows + m) * s.cols + n;
}

// The block (x, y) of a grid over a product: rows tile x; y = (group, split, cols tile), cols tile
// fastest. With splits > 1 the block covers its split's share of the depth, [k_begin, k_end), in
// whole steps of tile_k, and writes its partial product.
struct BlockTile {
  int64_t m0, n0, group, split, k_begin, k_end;
};

template <int tile_k>
__device__ BlockTile block_tile(const GemmShape& s, int64_t splits) {
  const int64_t tiles_n = (s.cols + kTileN - 1) / kTileN;
  const int64_t split = blockIdx.y / tiles_n % splits;
  const int64_t steps_per_split = ((s.depth + tile_k - 1) / tile_k + splits - 1) / splits;
  const int64_t k_begin = steps_per_split * tile_k * split;
  return {blockIdx.x * int64_t{kTileM}, blockIdx.y % tiles_n * kTileN, blockIdx.y / tiles_n / splits, split,
          k_begin, std::min(s.depth, k_begin + steps_per_split * tile_k)};
}

// One thread's share of loading a block's operand tiles, tile_k deep, a tile after another. Its
// loads of an operand lie along one line of the tile: at one depth (Fastest::depth), so they share
// their depth digits, or in one row or column of C (Fastest::outer), so they share what a() or b()
// needs of that (a Problem's Row or Col), found once.
template <typename Problem, int tile_k>
struct TileLoader {
  static constexpr int kLoads = kTileM * tile_k / kThreads;
  static_assert(kLoads * kThreads == kTileM * tile_k && kTileM == kTileN, "every thread loads as many");
  static constexpr bool a_one_depth = Problem::a_fastest == Fastest::depth;
  static constexpr bool b_one_depth = Problem::b_fastest == Fastest::depth;
  static constexpr int kRows = a_one_depth ? kLoads : 1, kADepths = a_one_depth ? 1 : kLoads;
  static constexpr int kCols = b_one_depth ? kLoads : 1, kBDepths = b_one_depth ? 1 : kLoads;
  TilePosition a_at[kLoads], b_at[kLoads];
  typename Problem::Row rows[kRows];
  typename Problem::Col cols[kCols];
  Digits a_depth[kADepths], b_depth[kBDepths];
  Digits a_step, b_step;  // tile_k in each operand's digits

  __device__ TileLoader(const Problem& p, const BlockTile& b, int t)
      : a_step(p.a_radix.digits(tile_k)), b_step(p.b_radix.digits(tile_k)) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      a_at[i] = load_position<Problem::a_fastest, tile_k>(t, i);
      b_at[i] = load_position<Problem::b_fastest, tile_k>(t, i);
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      if (b.m0 + a_at[i].outer < p.shape.rows) rows[i] = p.row(b.group, b.m0 + a_at[i].outer);
    }
#pragma unroll
    for (int i = 0; i < kCols; ++i) {
      if (b.n0 + b_at[i].outer < p.shape.cols) cols[i] = p.col(b.group, b.n0 + b_at[i].outer);
    }
#pragma unroll
    for (int i = 0; i < kADepths; ++i) a_depth[i] = p.a_radix.digits(b.k_begin + a_at[i].depth);
#pragma unroll
    for (int i = 0; i < kBDepths; ++i) b_depth[i] = p.b_radix.digits(b.k_begin + b_at[i].depth);
  }

  // a_tile[k][m] = A[m0 + m, k0 + k] and b_tile[k][n] = B[k0 + k, n0 + n], each converted by
  // `to`, zero past the edges of C and past k_end, where k0 is block.k_begin on the first call
  // and tile_k more on each next.
  template <typename T, int lda, int ldb, typename Convert>
  __device__ void load_next(const Problem& p, const BlockTile& b, int64_t k0, T (*a_tile)[lda], T (*b_tile)[ldb],
                            Convert to) {
    using acc_t = typename Problem::acc_t;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const auto& row = rows[kRows == 1 ? 0 : i];
      const auto& col = cols[kCols == 1 ? 0 : i];
      const Digits& ka = a_depth[kADepths == 1 ? 0 : i];
      const Digits& kb = b_depth[kBDepths == 1 ? 0 : i];
      a_tile[a_at[i].depth][a_at[i].outer] =
          to(b.m0 + a_at[i].outer < p.shape.rows && k0 + a_at[i].depth < b.k_end ? p.a(row, ka) : acc_t(0));
      b_tile[b_at[i].depth][b_at[i].outer] =
          to(b.n0 + b_at[i].outer < p.shape.cols && k0 + b_at[i].depth < b.k_end ? p.b(col, kb) : acc_t(0));
    }
    for (auto& d : a_depth) p.a_radix.advance(d, a_step);
    for (auto& d : b_depth) p.b_radix.advance(d, b_step);
  }
};

// C[m, n] = v, or the block's partial product of it, where (m, n) lies inside C.
template <typename Problem>
__device__ __forceinline__ void write_result(const Problem& p, const BlockTile& b, int64_t splits,
                                             typename Problem::acc_t* partial, int64_t m, int64_t n,
                                             typename Problem::acc_t v) {
  if (m >= p.shape.rows || n >= p.shape.cols) return;
  if (splits == 1) {
    p.store(b.group, m, n, v);
  } else {
    partial[partial_index(p.shape, splits, b.group, b.split, m, n)] = v;
  }
}

template <typename Problem>
__global__ void __launch_bounds__(kThreads)
    tiled_gemm_kernel(Problem p, int64_t splits, typename Problem::acc_t* partial) {
  using acc_t = typename Problem::acc_t;
  __shared__ acc_t a_tile[kTileK][kTileM];
  __shared__ acc_t b_tile[kTileK][kTileN];
  const int t = threadIdx.x;
  const BlockTile block = block_tile<kTileK>(p.shape, splits);
  TileLoader<Problem, kTileK> loader(p, block, t);

  // Thread t's results: rows tm + 16 i, columns tn + 16 j of the tile, so that a warp's 32 threads
  // read 16 consecutive a_tile words and 2 b_tile words (no bank conflicts) and store pixels
  // that neighbour in the forward and input gradient.
  const int tm = t % kThreadsAlong, tn = t / kThreadsAlong;
  acc_t sum[kPatch][kPatch] = {};
  for (int64_t k0 = block.k_begin; k0 < block.k_end; k0 += kTileK) {
    loader.load_next(p, block, k0, a_tile, b_tile, [](acc_t v) { return v; });
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      acc_t a[kPatch], b[kPatch];
#pragma unroll
      for (int i = 0; i < kPatch; ++i) {
        a[i] = a_tile[k][tm + kThreadsAlong * i];
        b[i] = b_tile[k][tn + kThreadsAlong * i];
      }
#pragma unroll
      for (int i = 0; i < kPatch; ++i) {
#pragma unroll
        for (int j = 0; j < kPatch; ++j) sum[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPatch; ++i) {
#pragma unroll
    for (int j = 0; j < kPatch; ++j) {
      write_result(p, block, splits, partial, block.m0 + tm + kThreadsAlong * i, block.n0 + tn + kThreadsAlong * j,
                   sum[i][j]);
    }
  }
}

// The tensor cores' view of a dtype: the operands' type in shared memory (rounded from the
// float32 the gathers give), the fragments' element type, and the depth of one wmma product.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
// Compiling for a GPU without tensor cores for these types: tensor_core_gemm_kernel only traps
// there (the host never launches it), and needs nothing but which dtypes it is instantiated for.
template <typename scalar_t>
struct TensorCoreOperand {
  static constexpr bool available = !std::is_same_v<scalar_t, double>;
};
#else
template <typename scalar_t>
struct TensorCoreOperand {
  static constexpr bool available = false;
};
template <typename T>  // float16 and bfloat16: the type itself in shared memory and fragments
struct SixteenBitOperand {
  static constexpr bool available = true;
  static constexpr int kDepth = 16;
  using shared_t = T;
  using fragment_t = T;
};
template <>
struct TensorCoreOperand<at::Half> : SixteenBitOperand<__half> {
  __device__ static __half from(float v) { return __float2half(v); }
};
template <>
struct TensorCoreOperand<at::BFloat16> : SixteenBitOperand<__nv_bfloat16> {
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16(v); }
};
template <>
struct TensorCoreOperand<float> {  // TF32: 10 bits of mantissa, rounded to nearest
  static constexpr bool available = true;
  static constexpr int kDepth = 8;
  using shared_t = float;
  using fragment_t = nvcuda::wmma::precision::tf32;
  __device__ static shared_t from(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
#endif

// Padding of the shared tiles' rows: keeps each wmma fragment's rows 32-byte aligned while moving
// consecutive rows to other banks.
constexpr int kOperandPad = 8, kResultPad = 4;

// The block grid and results of tiled_gemm_kernel, the products on tensor cores (sm_80 and newer:
// the host launches it only where its PTX version says so). Warp w computes rows 16 (w % 4) and
// columns 32 (w / 4) of the tile as two 16 x 16 wmma accumulators; the block then stages its C
// tile through shared memory so that each thread writes neighbouring pixels.
template <typename Problem>
__global__ void __launch_bounds__(kThreads)
    tensor_core_gemm_kernel(Problem p, int64_t splits, float* partial) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  using Operand = TensorCoreOperand<typename Problem::value_t>;
  using T = typename Operand::shared_t;
  constexpr int kDepth = Operand::kDepth, lda = kTileM + kOperandPad, ldb = kTileN + kOperandPad;
  constexpr int ldc = kTileM + kResultPad;
  __shared__ __align__(32) T a_tile[kTensorTileK][lda];
  __shared__ __align__(32) T b_tile[kTensorTileK][ldb];
  __shared__ __align__(32) float c_tile[kTileN][ldc];  // C's tile transposed: c_tile[n][m]
  const int t = threadIdx.x, warp = t / kWarpSize;
  const int wm = warp % 4 * 16, wn = warp / 4 * 32;
  const BlockTile block = block_tile<kTensorTileK>(p.shape, splits);
  TileLoader<Problem, kTensorTileK> loader(p, block, t);

  wmma::fragment<wmma::accumulator, 16, 16, kDepth, float> sum[2];
  for (auto& s : sum) wmma::fill_fragment(s, 0.0f);
  for (int64_t k0 = block.k_begin; k0 < block.k_end; k0 += kTensorTileK) {
    loader.load_next(p, block, k0, a_tile, b_tile, [](float v) { return Operand::from(v); });
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTensorTileK; k += kDepth) {
      wmma::fragment<wmma::matrix_a, 16, 16, kDepth, typename Operand::fragment_t, wmma::col_major> a;
      wmma::load_matrix_sync(a, &a_tile[k][wm], lda);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, kDepth, typename Operand::fragment_t, wmma::row_major> b;
        wmma::load_matrix_sync(b, &b_tile[k][wn + 16 * j], ldb);
        wmma::mma_sync(sum[j], a, b, sum[j]);
      }
    }
    __syncthreads();
  }

  for (int j = 0; j < 2; ++j) wmma::store_matrix_sync(&c_tile[wn + 16 * j][wm], sum[j], ldc, wmma::mem_col_major);
  __syncthreads();
  for (int e = t; e < kTileM * kTileN; e += kThreads) {
    const int m = e % kTileM, n = e / kTileM;
    write_result(p, block, splits, partial, block.m0 + m, block.n0 + n, c_tile[n][m]);
  }
#endif
}

// C[m, n] = the sum of the splits' partial products, in split order.
template <typename Problem>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(Problem p, int64_t splits, const typename Problem::acc_t* partial) {
  using acc_t = typename Problem::acc_t;
  const GemmShape& s = p.shape;
  CONV_EXT_GRID_STRIDE_LOOP(index, s.groups * s.rows * s.cols) {
    const int64_t n = index % s.cols, m = index / s.cols % s.rows, group = index / (s.cols * s.rows);
    acc_t sum = 0;
    for (int64_t split = 0; split < splits; ++split) sum += partial[partial_index(s, splits, group, split, m, n)];
    p.store(group, m, n, sum);
  }
}

// The grid of one product: blocks of tiles, into how many parts the depth is split, and whether
// the tensor cores compute it (where the dtype has a TensorCoreOperand; ignored elsewhere).
struct GemmPlan {
  GemmShape shape;
  int64_t tiles_m, tiles_n, splits;
  bool tensor_cores;

  // Whether the grid is legal (at most 2^31 - 1 blocks along x, 65535 along y).
  bool fits() const { return tiles_m < (int64_t{1} << 31) && tiles_n * shape.groups * splits <= 65535; }
};

// Splits the depth where the tiles alone would give fewer than two blocks per multiprocessor,
// into parts at least 32 steps (256) deep, at most 64.
inline GemmPlan plan_tiled_gemm(const GemmShape& s, int64_t multiprocessors, bool tensor_cores) {
  const int64_t tiles_m = (s.rows + kTileM - 1) / kTileM, tiles_n = (s.cols + kTileN - 1) / kTileN;
  const int64_t blocks = std::max<int64_t>(1, tiles_m * tiles_n * s.groups);
  const int64_t wanted = (2 * multiprocessors + blocks - 1) / blocks;
  const int64_t deep_enough = s.depth / (32 * kTileK);
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({wanted, deep_enough, 64}));
  while (splits > 1 && tiles_n * s.groups * splits > 65535) --splits;
  return {s, tiles_m, tiles_n, splits, tensor_cores};
}

// One of a Problem's products (Problem::parts) and its plan.
template <template <typename> class Problem>
struct PlannedPart {
  typename Problem<float>::Part part;
  GemmPlan plan;
};

// Problem's products for geometry g, each planned for a GPU of `multiprocessors`.
template <template <typename> class Problem>
std::vector<PlannedPart<Problem>> plan_parts(const Conv2dGeometry& g, int64_t multiprocessors, bool tensor_cores) {
  std::vector<PlannedPart<Problem>> planned;
  for (const auto& part : Problem<float>::parts(g)) {
    planned.push_back({part, plan_tiled_gemm(Problem<float>::shape_of(part), multiprocessors, tensor_cores)});
  }
  return planned;
}

// Runs Problem<dtype of out> on one of its parts (Problem::parts) over the plan made for its shape:
// launch(kernel, grid, block, arguments...) launches a kernel, on the GPU's current stream or, in
// the tests, on the CPU. Inputs must be contiguous.
template <template <typename> class Problem, typename Part, typename Launch, typename... Inputs>
void run_tiled_gemm(const GemmPlan& plan, const Part& part, Launch launch, const at::Tensor& out,
                    const Inputs&... inputs) {
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_ext_tiled_gemm", [&] {
    using P = Problem<scalar_t>;
    using acc_t = typename P::acc_t;
    const P p(data_or_null<scalar_t>(inputs)..., out.mutable_data_ptr<scalar_t>(), part);
    const dim3 grid(plan.tiles_m, plan.tiles_n * plan.shape.groups * plan.splits);
    auto kernel = tiled_gemm_kernel<P>;
    if constexpr (TensorCoreOperand<scalar_t>::available) {
      if (plan.tensor_cores) kernel = tensor_core_gemm_kernel<P>;
    }
    if (plan.splits == 1) {
      launch(kernel, grid, dim3(kThreads), p, int64_t{1}, static_cast<acc_t*>(nullptr));
      return;
    }
    const auto& s = plan.shape;
    at::Tensor partial = at::empty({plan.splits * s.groups * s.rows * s.cols},
                                   out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    launch(kernel, grid, dim3(kThreads), p, plan.splits, partial.mutable_data_ptr<acc_t>());
    launch(sum_partials_kernel<P>, dim3(blocks_for(s.groups * s.rows * s.cols)), dim3(kThreads), p,
           plan.splits, static_cast<const acc_t*>(partial.const_data_ptr<acc_t>()));
  });
}

}  // namespace tiled_gemm
}  // namespace conv_ext
