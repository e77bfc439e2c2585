// Winograd convolution on the CPU: F(4x4, 3x3) for 3x3 kernels and F(2x2, 5x5) for 5x5, both
// over 6x6 blocks of input (M = 7 - R output pixels per tile side for an R x R kernel). The
// output is cut into M x M tiles; per chunk of tiles (one chunk per task, sized to stay in the
// core's cache):
//   V[e] = B^T d B     the 6x6 input block of each tile, per input channel   (e = 36 elements)
//   P[e] = V[e] U[e]   36 GEMMs (tiles x C) (C x K), U = G w G^T per filter, transformed once
//   y    = A^T P A     the M x M output block, per output channel, plus bias
// The weight gradient is the adjoint: W[e] = A gy A^T per tile and output channel, the 36
// products W[e]^T V[e] summed over tiles (per thread, then across threads), and
// grad_w = G^T (sum) G.
// The transforms run channels-innermost, so they vectorise across channels; rows of the input
// and output are moved between the tensors' layout (NCHW or NHWC) and that order in cache.
//
// Interpolation points 0, +-sqrt(2)/2, +-sqrt(2) (and infinity) rather than the usual 0, +-1,
// +-2: the smaller spread of the transform entries keeps the float32 error at ~1-2e-6 of the
// result's scale instead of ~7e-6. B^T's rows are rescaled to entries of magnitude <= 2.5, and
// A^T's columns take the inverse factors. B^T depends only on the points, so both kernel sizes
// share it; A^T[i][e] = s_e p_e^i and G[e][k] = p_e^k (with the infinite point's row and column
// the unit vector at the end): G's rows start with 1, which spares the filter transforms a
// multiplication per pair of rows.
#include "winograd_conv2d.h"

#include "aligned_vector.h"
#include "bands.h"
#include "cpu_features.h"
#include "micro_kernel.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace conv_ext {
namespace {

constexpr double r = 0.70710678118654752440;  // sqrt(2) / 2

constexpr double kInputTransform[6][6] = {  // B^T
    {1, 0, -2.5, 0, 1, 0},
    {0, r, 1, -r / 2, -0.5, 0},
    {0, -r, 1, r / 2, -0.5, 0},
    {0, -r, -0.5, 2 * r, 1, 0},
    {0, r, -0.5, -2 * r, 1, 0},
    {0, 1, 0, -2.5, 0, 1},
};

template <int R>
struct Matrices;

template <>
struct Matrices<3> {
  static constexpr double output[4][6] = {  // A^T
      {1, 4.0 / 3, 4.0 / 3, 1.0 / 6, 1.0 / 6, 0},
      {0, 4 * r / 3, -4 * r / 3, r / 3, -r / 3, 0},
      {0, 2.0 / 3, 2.0 / 3, 1.0 / 3, 1.0 / 3, 0},
      {0, 2 * r / 3, -2 * r / 3, 2 * r / 3, -2 * r / 3, 1},
  };
  static constexpr double filter[6][3] = {  // G
      {1, 0, 0},
      {1, r, 0.5},
      {1, -r, 0.5},
      {1, 2 * r, 2},
      {1, -2 * r, 2},
      {0, 0, 1},
  };
};

template <>
struct Matrices<5> {
  static constexpr double output[2][6] = {  // A^T
      {1, 4.0 / 3, 4.0 / 3, 1.0 / 6, 1.0 / 6, 0},
      {0, 4 * r / 3, -4 * r / 3, r / 3, -r / 3, 1},
  };
  static constexpr double filter[6][5] = {  // G
      {1, 0, 0, 0, 0},
      {1, r, 0.5, r / 2, 0.25},
      {1, -r, 0.5, -r / 2, 0.25},
      {1, 2 * r, 2, 4 * r, 4},
      {1, -2 * r, 2, -4 * r, 4},
      {0, 0, 0, 0, 1},
  };
};

// The structure apply_filter_matrix relies on: G's first and last rows pick the first and last
// tap, and rows 1 and 2, and 3 and 4, are equal but for the sign of their odd columns and start
// with 1 (their even parts one multiplication short).
template <int R>
constexpr bool filter_rows_pair_up() {
  constexpr auto& G = Matrices<R>::filter;
  bool pairs = true;
  for (int i = 0; i < R; ++i) {
    pairs = pairs && G[0][i] == (i == 0) && G[5][i] == (i == R - 1);
    for (int p = 1; p < 5; p += 2) pairs = pairs && G[p + 1][i] == (i % 2 == 0 ? G[p][i] : -G[p][i]);
  }
  for (int p = 1; p < 5; ++p) pairs = pairs && G[p][0] == 1;
  return pairs;
}
static_assert(filter_rows_pair_up<3>() && filter_rows_pair_up<5>());

// Pointers to the transforms of one instruction set (the .inc fills them in). The few-tile
// forward's kernels (filter_rows, multiply_by_filter_rows) only where filter_row_tiles > 0: up
// to that many tiles at a time.
template <int R, typename scalar_t>
struct Transforms {
  static constexpr int M = 7 - R;
  void (*filter)(const scalar_t*, int64_t, scalar_t*, int64_t);
  void (*grad_filter)(const scalar_t* const (&)[36], scalar_t*, scalar_t*, int64_t);
  void (*input)(const scalar_t* const (&)[6][6], scalar_t* const (&)[36], scalar_t*, int64_t);
  void (*output)(const scalar_t* const (&)[36], const scalar_t*, scalar_t* const (&)[M][M], scalar_t*, int64_t);
  void (*grad_output)(const scalar_t* const (&)[M][M], scalar_t* const (&)[36], scalar_t*, int64_t);
  Transpose<scalar_t> transpose;
  void (*filter_rows)(const scalar_t*, int64_t, scalar_t*, int64_t) = nullptr;
  void (*multiply_by_filter_rows)(const scalar_t*, int64_t, int64_t, const scalar_t*, int64_t, int64_t, scalar_t*, int64_t,
                                  bool) = nullptr;
  int filter_row_tiles = 0;
};

// The sums multiply_by_filter_row keeps in registers (the elements of a row or half a row of U
// times the tiles): 24 of AVX-512's 32 registers, 9 of AVX2's 16 (up to 3 tiles). With AVX2, 1
// to 3 tiles ran 1.03-1.5x faster than on the GEMMs (Zen 3: 128 to 512 channels, 3 x 3 and 4 x 4
// images at batch 1 to 3); 4 tiles, as pairs of elements in 8 registers, ran level at 512 channels
// and up to 1.18x slower at 64 to 128 (each pair's 8 products take 11 loads). The baseline
// build has none.
namespace generic {
constexpr int kFilterRowSums = 0;
template <typename scalar_t>
struct Vec {  // the baseline build's vectors: single values, for the filter transforms
  using type = scalar_t;
  static constexpr int kLanes = 1;
  static type load(const scalar_t* p) { return *p; }
  static type load_first(const scalar_t* p, int /*n: always 1*/) { return *p; }
  static void store(scalar_t* p, type v) { *p = v; }
  static void store_first(scalar_t* p, type v, int /*n: always 1*/) { *p = v; }
};
using ::conv_ext::generic::transpose;
#include "winograd_transforms.inc"
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kFilterRowSums = 9;
using ::conv_ext::avx2::transpose;
using ::conv_ext::avx2::Vec;
#include "winograd_transforms.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512")
namespace avx512 {
constexpr int kFilterRowSums = 24;
using ::conv_ext::avx512::transpose;
using ::conv_ext::avx512::Vec;
#include "winograd_transforms.inc"
}  // namespace avx512
#pragma GCC pop_options

template <int R, typename scalar_t>
Transforms<R, scalar_t> transforms_for_this_cpu() {
  switch (cpu_isa()) {
    case Isa::avx512:
      return avx512::transforms<R, scalar_t>();
    case Isa::avx2:
      return avx2::transforms<R, scalar_t>();
    default:
      return generic::transforms<R, scalar_t>();
  }
}

using at::Tensor;

constexpr int64_t kBlock = 6;        // input pixels per tile side
constexpr int64_t kElements = 36;    // kBlock * kBlock
constexpr int64_t kLanes = 64;       // channels transformed together
// Elements of V and P one task keeps: about a 1 MiB L2 cache of float32; at least kMinChunk
// tiles, or the weight gradient's GEMMs (MKL) spend more on packing than on multiplying, and
// the forward's fill too few register tiles per panel (measured: 16 to 64 tiles perform alike).
constexpr int64_t kChunkElements = int64_t{1} << 18;
constexpr int64_t kMinChunk = 64;
// Bound on the transformed filters of one pass (16 MiB of float32), and on each weight-gradient
// task's sum of products: larger layers run in slices of output channels. Beyond it a buffer
// comes fresh from mmap on every call (glibc's largest threshold is 32 MiB) and its page faults
// cost more than the algorithm saves (measured: 512x512). It also bounds the smallest chunk, one
// whole row of tiles.
constexpr int64_t kMaxFilterElements = int64_t{1} << 22;
// The transformed filters the forward by panels multiplies at a time: half a core's L2 (with 2
// MiB rather than 1, blocks of 1 MiB ran 256 @14 at batch 8 1.07x faster, 512 @7 1.03x). Twice
// an L2 under 1 MiB: on Zen 3 (512 KiB) blocks of a quarter of that, the shallower GEMMs and
// more of them, had run every layer measured slower (3x3 128 to 512 channels @7 to @28, batch 1
// to 8: forward 1.03-1.13x the time, input gradient 1.04-1.10x, float64 1.03-1.2x).
int64_t filter_block_bytes() {
  const int64_t l2 = core_l2_bytes();
  return l2 < (int64_t{1} << 20) ? 2 * l2 : l2 / 2;
}

// Channels ahead whose filters transform_filter_panel prefetches when it reads the weight rotated.
constexpr int64_t kPrefetchChannels = 4;

// The M x M tiles of F(M x M, R x R) over a geometry's output.
struct TileGrid {
  int64_t size, rows, cols;  // output pixels per tile side; tiles per image
  explicit TileGrid(const Conv2dGeometry& g)
      : size(kBlock + 1 - g.kernel_h),
        rows((g.out_h + size - 1) / size),
        cols((g.out_w + size - 1) / size) {}
};

// Work comes in chunks of whole rows of tiles, numbered across the batch: the chunk's
// transformed blocks in cache, but enough tiles that the GEMMs repay packing their operands,
// and the same number of chunks for every thread (measured: 3 chunks on 2 threads cost 1.3x),
// their rows as even as they come, so that each thread's run of chunks has as many rows as the
// others' but one (14 rows in 4 chunks: 3, 4, 3, 4; as 4, 4, 4, 2 one thread had taken 8 rows,
// the other 6).
struct Chunks {
  int64_t tile_rows, rows_per_chunk, count;  // rows_per_chunk: the most rows of a chunk
  Chunks(const Conv2dGeometry& g, const TileGrid& grid) : tile_rows(g.batch * grid.rows) {
    const int64_t channels = g.in_channels + g.out_channels;
    const int64_t wanted_tiles = std::max(kMinChunk, kChunkElements / (kElements * channels));
    const int64_t threads = at::get_num_threads();
    const int64_t wanted_rows = std::max<int64_t>(1, wanted_tiles / grid.cols);
    const int64_t balanced = threads * ((tile_rows + threads * wanted_rows - 1) / (threads * wanted_rows));
    count = std::max<int64_t>(1, std::min(balanced, tile_rows));
    rows_per_chunk = (tile_rows + count - 1) / count;
  }
  int64_t first_row(int64_t chunk) const { return chunk * tile_rows / count; }
  int64_t rows(int64_t chunk) const { return first_row(chunk + 1) - first_row(chunk); }
};

// Pointers to tile t's 36 elements in a transformed buffer of element planes `element` values
// apart, each (count, channels), from channel c0 on.
template <typename T>
void element_pointers_apart(T* data, int64_t element, int64_t t, int64_t channels, int64_t c0, T* (&out)[36]) {
  for (int64_t e = 0; e < kElements; ++e) out[e] = data + e * element + t * channels + c0;
}

// The same in a dense buffer (36, count, channels).
template <typename T>
void element_pointers(T* data, int64_t count, int64_t t, int64_t channels, int64_t c0, T* (&out)[36]) {
  element_pointers_apart(data, count * channels, t, channels, c0, out);
}

// Pointers to the Size x Size pixels of tile column col's block in a band of `channels` values
// per pixel (blocks `step` pixels apart), from channel c0 on.
template <int Size, typename T>
void block_pointers(T* band, int64_t band_w, int64_t col, int64_t step, int64_t channels, int64_t c0,
                    T* (&out)[Size][Size]) {
  for (int64_t i = 0; i < Size; ++i) {
    for (int64_t j = 0; j < Size; ++j) out[i][j] = band + (i * band_w + col * step + j) * channels + c0;
  }
}

// V[e][t][c] = (B^T d B)[e] for the tiles t = first, first + 1, ... of one row of tiles, from
// the 6 input rows of its band; V holds `count` tiles per element.
template <int R, typename scalar_t>
void transform_input_row(const Transforms<R, scalar_t>& transforms, const scalar_t* band,
                         int64_t band_w, int64_t cols, int64_t C, scalar_t* v, int64_t count,
                         int64_t first, scalar_t* tmp) {
  constexpr int M = 7 - R;
  for (int64_t col = 0; col < cols; ++col) {
    for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
      const scalar_t* d[6][6];
      block_pointers<6>(band, band_w, col, M, C, c0, d);
      scalar_t* vt[36];
      element_pointers(v, count, first + col, C, c0, vt);
      transforms.input(d, vt, tmp, std::min(kLanes, C - c0));
    }
  }
}

// Where the forward's filters are: filter (k, c) at w + k * k_stride + c * c_stride, its R x R
// taps in order, or in reverse (rotated by 180 degrees) when the forward is an input gradient
// that reads the layer's own weight (c, k) in place instead of a flipped, transposed copy (the
// copy had cost a sixth of the input gradient's time at 512x512 @7, measured).
template <typename scalar_t>
struct FilterSource {
  bool reversed;
  const scalar_t* w;
  int64_t k_stride, c_stride;

  FilterSource(const Tensor& weight, FilterOrder order)
      : reversed(order == FilterOrder::flipped_transposed),
        w(weight.const_data_ptr<scalar_t>()),
        k_stride(weight.stride(reversed ? 1 : 0)),
        c_stride(weight.stride(reversed ? 0 : 1)) {}
};

// The filters of one panel (output channels panel * width + j, j < width) of input channels
// c_first + c, c < C, a block of channels at a time: per_block(c0, n, wt) for channels c0 + c,
// c < n, with wt[c][tap][j] = w[panel * width + j, c_first + c0 + c][tap], zero past the last
// filter. The filters are regrouped by input channel and tap by block transposes in L1 (a few
// channels at a time where their taps are contiguous), so that the transforms run across the
// panel's output channels and write whole rows. (Element by element, into one buffer for all
// channels, the regrouping took longer than the transforms: 512 channels at 7x7.)
template <int R, typename scalar_t, typename PerBlock>
void for_each_filter_block(const Transforms<R, scalar_t>& transforms, const FilterSource<scalar_t>& f,
                           int64_t c_first, int64_t C, int64_t K, int64_t panel, int64_t width,
                           AlignedVector<scalar_t>& grouped, PerBlock&& per_block) {
  constexpr int64_t taps = R * R;
  const int64_t filters = std::min(width, K - panel * width);
  const int64_t block = f.c_stride == taps ? 16 : 1;  // channels regrouped at a time
  grouped.resize(block * taps * width);
  if (filters < width) std::fill(grouped.begin(), grouped.end(), scalar_t(0));  // lanes no filter writes
  const scalar_t* w_panel = f.w + panel * width * f.k_stride + c_first * f.c_stride;
  for (int64_t c0 = 0; c0 < C; c0 += block) {
    const int64_t channels = std::min(block, C - c0);
    const scalar_t* w_block = w_panel + c0 * f.c_stride;
    if (f.reversed) {
      // grouped[c][tap][j] = w[panel * width + j][c0 + c][taps - 1 - tap]: a channel's filters
      // are one run of the weight, transposed with its taps' rows written last to first. The
      // runs lie a row of the weight apart, beyond the hardware prefetchers (which stop at page
      // boundaries): the run kPrefetchChannels on is fetched ahead (measured at 512 @7, batch 8:
      // the input gradient 1.2x faster).
      if (c0 + kPrefetchChannels < C) {
        const char* ahead = reinterpret_cast<const char*>(w_block + kPrefetchChannels * f.c_stride);
        for (int64_t b = 0; b < filters * f.k_stride * int64_t{sizeof(scalar_t)}; b += 64) __builtin_prefetch(ahead + b);
      }
      for (int64_t c = 0; c < channels; ++c) {
        transforms.transpose(w_block + c * f.c_stride, f.k_stride, filters, taps, &grouped[(c * taps + taps - 1) * width], -width, false);
      }
    } else {  // grouped[c][tap][j] = w[panel * width + j][c0 + c][tap]
      transforms.transpose(w_block, f.k_stride, filters, channels * taps, grouped.data(), width, false);
    }
    per_block(c0, channels, grouped.data());
  }
}

// The transforms of one panel's filters of input channels c_first + c, c < C, packed as the B
// operand of the forward's GEMMs: u[e * e_stride + c * width + j] = (G w[k, c_first + c] G^T)[e]
// for output channel k = panel * width + j, zero past the last channel.
template <int R, typename scalar_t>
void transform_filter_panel(const Transforms<R, scalar_t>& transforms, const FilterSource<scalar_t>& f, int64_t c_first,
                            int64_t C, int64_t K, int64_t panel, int64_t width, scalar_t* u, int64_t e_stride,
                            AlignedVector<scalar_t>& grouped) {
  for_each_filter_block(transforms, f, c_first, C, K, panel, width, grouped, [&](int64_t c0, int64_t channels, const scalar_t* wt) {
    transforms.filter(wt, channels, u + c0 * width, e_stride);
  });
}

// The distance between the 36 elements' planes of transformed filters: a cache line more than a
// plane. At plane sizes that are multiples of 4 KiB the 36 rows each filter transform writes
// all fell into the same L1 sets (measured: the forward by panels 1.1-1.15x faster at 512@7
// batch 8 and 256@14 batch 1 and 8).
template <typename scalar_t>
int64_t filter_element_stride(int64_t plane) {
  return plane + kPanelWidth<scalar_t>;
}

// Every panel's filter transforms, in u (36, panels, C, width), planes u_stride apart.
template <int R, typename scalar_t>
void transform_filters(const Transforms<R, scalar_t>& transforms, const FilterSource<scalar_t>& f, scalar_t* u, int64_t u_stride,
                       int64_t C, int64_t K, int64_t width) {
  const int64_t panels = (K + width - 1) / width;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<scalar_t> grouped;
    for (int64_t panel = begin; panel < end; ++panel) {
      transform_filter_panel(transforms, f, 0, C, K, panel, width, u + panel * C * width, u_stride, grouped);
    }
  });
}

// The weight gradient's products S[e] = W[e]^T V[e] (output channels x input channels, summed
// over tiles) on the micro-kernel, for where MKL, which at::bmm calls, runs narrower kernels than
// ours (blas_keeps_up): on Zen 5 the weight gradients of the suite's 3x3 and 5x5 layers ran
// 1.4-2.1x faster than with at::bmm (measured at batch 8 and 1). The tiles are the depth; the
// kernel's rows are output channels, read in place from W's columns, and its panels are input
// channels, V packed by pack_tile_panels.

// The row length of the products' sums: C, or C's whole panels where the micro-kernel writes them.
template <typename scalar_t>
int64_t product_sum_row(int64_t C, bool on_micro_kernel) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  return on_micro_kernel ? (C + W - 1) / W * W : C;
}

// The distance between the 36 planes of product sums (rows x s_row each): where the
// micro-kernel writes them, a cache line more than a plane, as filter_element_stride's. Planes of
// 16 x 256 float32, 16 KiB, had put the filter transforms' 36 reads of a channel's sums all into
// one set of L1 (Zen 4, 3x3 256 @14 at batch 1, weight gradient: 1.25-1.43 -> 1.07-1.14 ms).
// at::bmm's are dense.
template <typename scalar_t>
int64_t product_sum_element(int64_t rows, int64_t s_row, bool on_micro_kernel) {
  return on_micro_kernel ? filter_element_stride<scalar_t>(rows * s_row) : rows * s_row;
}

// The bytes of a block of the few-tile weight gradient's sums (winograd_grad_weight_by_panels):
// half a 1 MiB L2.
constexpr int64_t kSumBlockBytes = int64_t{1} << 19;

// V (36, count, C) as (36, C's panels, count, W), zero past C.
template <typename scalar_t>
void pack_tile_panels(const scalar_t* v, int64_t count, int64_t C, scalar_t* packed) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const int64_t panels = (C + W - 1) / W;
  for (int64_t e = 0; e < kElements; ++e) {
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t lanes = std::min(W, C - p * W);
      for (int64_t t = 0; t < count; ++t) {
        const scalar_t* src = v + (e * count + t) * C + p * W;
        scalar_t* dst = packed + ((e * panels + p) * count + t) * W;
        std::copy(src, src + lanes, dst);
        std::fill(dst + lanes, dst + W, scalar_t(0));
      }
    }
  }
}

// The part of a task that the forward and the weight gradient share: for each chunk in
// [begin, end), V (36, count, C) of its tiles, transformed from the input row by row, and a
// (36, count, K) buffer for the output side. per_row(r, n, row, other) runs after row r's
// input transform (tile row `row` of image n), per_chunk(v, other, first_row, rows) at the end.
// The output side has K values per tile and element.
template <int R, typename scalar_t, typename io_t, typename PerRow, typename PerChunk>
void for_each_chunk(const Transforms<R, scalar_t>& transforms, const Tensor& input,
                    const Conv2dGeometry& g, const TileGrid& grid, const Chunks& chunks,
                    int64_t begin, int64_t end, int64_t K, PerRow&& per_row, PerChunk&& per_chunk) {
  constexpr int M = 7 - R;
  const int64_t C = g.in_channels, band_w = grid.cols * M + R - 1;
  const int64_t max_tiles = chunks.rows_per_chunk * grid.cols;
  const io_t* x = input.const_data_ptr<io_t>();
  const Layout x_layout(input);
  const BandMoves<io_t, scalar_t> read_x;
  Tensor v_buffer = at::empty({kElements * max_tiles * C}, compute_options<scalar_t>(input));
  Tensor other_buffer = at::empty({kElements * max_tiles * K}, compute_options<scalar_t>(input));
  AlignedVector<scalar_t> tmp(kElements * kLanes), band(kBlock * band_w * C);
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t first_row = chunks.first_row(chunk), rows = chunks.rows(chunk);
    const int64_t count = rows * grid.cols;
    Tensor v = v_buffer.narrow(0, 0, kElements * count * C).view({kElements, count, C});
    Tensor other = other_buffer.narrow(0, 0, kElements * count * K).view({kElements, count, K});
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = (first_row + r) / grid.rows, row = (first_row + r) % grid.rows;
      fill_band(read_x, x, x_layout, n, row * M - g.pad_h, kBlock, -g.pad_w, band_w, band.data());
      transform_input_row(transforms, band.data(), band_w, grid.cols, C, v.mutable_data_ptr<scalar_t>(),
                          count, r * grid.cols, tmp.data());
      per_row(r, n, row, other);
    }
    per_chunk(v, other, first_row, rows);
  }
}

template <int R, typename scalar_t, typename io_t>
void winograd_forward_kernel(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                             Tensor& output, const Conv2dGeometry& g) {
  constexpr int M = 7 - R;
  const TileGrid grid(g);
  const Chunks chunks(g, grid);
  const int64_t C = g.in_channels, K = g.out_channels, band_w = grid.cols * M;

  const auto transforms = transforms_for_this_cpu<R, scalar_t>();
  constexpr int64_t width = kPanelWidth<scalar_t>;
  const int64_t panels = (K + width - 1) / width, padded_k = panels * width;
  const int64_t u_stride = filter_element_stride<scalar_t>(panels * C * width);
  Tensor u = at::empty({kElements * u_stride}, weight.options());
  transform_filters(transforms, FilterSource<scalar_t>(weight, order), u.mutable_data_ptr<scalar_t>(), u_stride, C, K, width);
  const scalar_t* u_data = u.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  io_t* y = output.mutable_data_ptr<io_t>();
  const bool stream = streams(output);
  const Layout y_layout(output);
  const BandMoves<scalar_t, io_t> write_y;

  at::parallel_for(0, chunks.count, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // not inherited by workers
    AlignedVector<scalar_t> tmp(kElements * kLanes), band(M * band_w * K);
    const auto no_row_work = [](int64_t, int64_t, int64_t, Tensor&) {};
    // P = V U per element, then each row's output blocks y = A^T P A, stored a row at a time.
    const auto multiply_and_store = [&](const Tensor& v, Tensor& p, int64_t first_row, int64_t rows) {
      const int64_t count = rows * grid.cols;
      multiply_by_filters(kElements, v.const_data_ptr<scalar_t>(), C, u_data, u_stride, p.mutable_data_ptr<scalar_t>(), count, C, panels, false);
      const scalar_t* p_data = p.const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = (first_row + r) / grid.rows, row = (first_row + r) % grid.rows;
        for (int64_t col = 0; col < grid.cols; ++col) {
          const int64_t t = r * grid.cols + col;
          for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
            const scalar_t* pt[36];
            element_pointers(p_data, count, t, padded_k, k0, pt);
            scalar_t* yt[M][M];
            block_pointers<M>(band.data(), band_w, col, M, K, k0, yt);
            transforms.output(pt, b != nullptr ? b + k0 : nullptr, yt, tmp.data(), std::min(kLanes, K - k0));
          }
        }
        store_band(write_y, band.data(), M, band_w, y, y_layout, n, row * M, y_layout.channels, stream);
      }
    };
    for_each_chunk<R, scalar_t, io_t>(transforms, input, g, grid, chunks, begin, end, padded_k, no_row_work,
                                      multiply_and_store);
  });
}

// V (36, tiles, C) for every tile of the batch, transformed in parallel by rows of tiles.
template <int R, typename scalar_t, typename io_t>
Tensor transform_batch_input(const Transforms<R, scalar_t>& transforms, const Tensor& input,
                             const Conv2dGeometry& g, const TileGrid& grid) {
  constexpr int M = 7 - R;
  const int64_t C = g.in_channels, tile_rows = g.batch * grid.rows, tiles = tile_rows * grid.cols;
  const int64_t band_w = grid.cols * M + R - 1;
  Tensor v = at::empty({kElements, tiles, C}, compute_options<scalar_t>(input));
  scalar_t* v_data = v.mutable_data_ptr<scalar_t>();
  const io_t* x = input.const_data_ptr<io_t>();
  const Layout x_layout(input);
  const BandMoves<io_t, scalar_t> read_x;
  at::parallel_for(0, tile_rows, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<scalar_t> tmp(kElements * kLanes), band(kBlock * band_w * C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / grid.rows, row = r % grid.rows;
      fill_band(read_x, x, x_layout, n, row * M - g.pad_h, kBlock, -g.pad_w, band_w, band.data());
      transform_input_row(transforms, band.data(), band_w, grid.cols, C, v_data, tiles, r * grid.cols, tmp.data());
    }
  });
  return v;
}

// What the forward and the weight gradient by panels share: the batch's tiles and their
// transformed input V (36, tiles, C).
template <int R, typename scalar_t, typename io_t>
struct BatchTiles {
  static constexpr int M = 7 - R;
  TileGrid grid;
  int64_t tile_rows, tiles, band_w;  // rows of tiles in the batch, tiles, output band width
  Transforms<R, scalar_t> transforms;
  Tensor v;

  BatchTiles(const Tensor& input, const Conv2dGeometry& g)
      : grid(g), tile_rows(g.batch * grid.rows), tiles(tile_rows * grid.cols), band_w(grid.cols * M),
        transforms(transforms_for_this_cpu<R, scalar_t>()), v(transform_batch_input<R, scalar_t, io_t>(transforms, input, g, grid)) {}
};

// V (36, tiles, C) regrouped by rows of elements for multiply_by_filter_rows: (6, C, 6, tiles),
// element 6a + b's tile t of channel c at [a][c][b][t].
template <int R, typename scalar_t>
Tensor elements_by_rows(const Transforms<R, scalar_t>& transforms, const Tensor& v) {
  const int64_t tiles = v.size(1), C = v.size(2);
  Tensor rows = at::empty({6, C, 6, tiles}, v.options());
  for (int64_t a = 0; a < 6; ++a) {
    transforms.transpose(v.const_data_ptr<scalar_t>() + a * 6 * tiles * C, C, 6 * tiles, C,
                         rows.mutable_data_ptr<scalar_t>() + a * C * 6 * tiles, 6 * tiles, false);
  }
  return rows;
}

// Input channels whose filters multiply_by_filter_rows takes at a time: their first-pass
// transforms (6 x R runs of a panel each, 36 KiB at 3x3) stay in L1 while the six rows of
// elements are made from them (measured, 3x3 512 @7 at batch 1: blocks of 16 channels 1.42x
// torch, 32 1.50x, 64 1.47x).
constexpr int64_t kFilterRowChannels = 32;

// The forward for few tiles (a small batch of small images, deep layers): chunks of tiles would
// leave each thread one chunk too small for its GEMMs, and every chunk reads all the
// transformed filters from memory. Here the input is transformed once, whole, and the threads
// split the output channels a panel at a time: each panel's filters are transformed in cache,
// multiplied by every tile and transformed back into the output. With as few tiles as the
// build's filter_row_tiles, the filters' second transform pass is made in registers as the
// products use it (multiply_by_filter_rows), from their first pass in L1: there each filter's
// 36 transformed elements serve only a few products, and storing them to L2 and reading them
// back had cost more than the products (3x3 512 @7 at batch 1: forward 1.30x -> 1.50x torch).
template <int R, typename scalar_t, typename io_t>
void winograd_forward_by_panels(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                                Tensor& output, const Conv2dGeometry& g) {
  constexpr int M = 7 - R;
  constexpr int64_t width = kPanelWidth<scalar_t>;
  const BatchTiles<R, scalar_t, io_t> batch(input, g);
  const auto& [grid, tile_rows, tiles, band_w, transforms, v] = batch;
  const int64_t C = g.in_channels, K = g.out_channels;
  const scalar_t* v_data = v.template const_data_ptr<scalar_t>();
  const bool filter_rows = tiles <= transforms.filter_row_tiles;
  const Tensor v_rows = filter_rows ? elements_by_rows(transforms, v) : Tensor();

  const FilterSource<scalar_t> filters(weight, order);
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  io_t* y = output.mutable_data_ptr<io_t>();
  const bool stream = streams(output);
  const Layout y_layout(output);
  const BandMoves<scalar_t, io_t> write_y;
  // Units of the micro-kernel's panels, when there are enough to share evenly, else single ones.
  const int64_t panels = (K + width - 1) / width, kernel_panels = micro_kernel_for_this_cpu<scalar_t>().panels;
  const int64_t step = !filter_rows && panels >= 2 * at::get_num_threads() * kernel_panels ? kernel_panels : 1;
  // Even blocks of input channels whose transformed filters (of a unit's panels) stay in L2
  // while the tiles are multiplied by them (all 512 channels' at once had come back from L3:
  // Zen 5, 512 @7 at batch 1 1.2x faster).
  const int64_t block_bytes = kElements * step * width * C * int64_t{sizeof(scalar_t)};
  const int64_t c_blocks = (block_bytes + filter_block_bytes() - 1) / filter_block_bytes();
  const int64_t c_block = filter_rows ? kFilterRowChannels : (C + c_blocks - 1) / c_blocks;
  at::parallel_for(0, (panels + step - 1) / step, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // not inherited by workers
    const int64_t u_stride = filter_element_stride<scalar_t>(step * c_block * width);
    // The transformed filters and their products, written before they are read: uncleared.
    Tensor u_buffer = at::empty({filter_rows ? 6 * R * c_block * width : kElements * u_stride}, compute_options<scalar_t>(input));
    Tensor p_buffer = at::empty({kElements * tiles * step * width}, compute_options<scalar_t>(input));
    scalar_t* u = u_buffer.mutable_data_ptr<scalar_t>();
    scalar_t* p = p_buffer.mutable_data_ptr<scalar_t>();
    AlignedVector<scalar_t> band(M * band_w * width), grouped, output_tmp(kElements * kLanes);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t first = unit * step, count = std::min(step, panels - first);
      for (int64_t c0 = 0; c0 < C; c0 += c_block) {
        const int64_t channels = std::min(c_block, C - c0);
        if (filter_rows) {  // one panel: gw (6, channels, R, width)
          for_each_filter_block(transforms, filters, c0, channels, K, first, width, grouped,
                                [&](int64_t c, int64_t n, const scalar_t* wt) {
                                  transforms.filter_rows(wt, n, u + c * R * width, channels * R * width);
                                });
          transforms.multiply_by_filter_rows(u, channels, width, v_rows.const_data_ptr<scalar_t>() + c0 * 6 * tiles,
                                             C * 6 * tiles, tiles, p, width, c0 > 0);
          continue;
        }
        for (int64_t i = 0; i < count; ++i) {
          transform_filter_panel(transforms, filters, c0, channels, K, first + i, width, u + i * channels * width,
                                 u_stride, grouped);
        }
        multiply_by_filters(kElements, v_data + c0, C, u, u_stride, p, tiles, channels, count, c0 > 0);
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t k0 = (first + i) * width, lanes = std::min(width, K - k0);
        Layout panel_layout = y_layout;  // the panel's output channels
        panel_layout.channels = lanes;
        for (int64_t r = 0; r < tile_rows; ++r) {
          for (int64_t col = 0; col < grid.cols; ++col) {
            const scalar_t* pt[36];
            element_pointers(static_cast<const scalar_t*>(p), tiles, r * grid.cols + col, count * width, i * width, pt);
            scalar_t* yt[M][M];
            block_pointers<M>(band.data(), band_w, col, M, lanes, 0, yt);
            transforms.output(pt, b != nullptr ? b + k0 : nullptr, yt, output_tmp.data(), lanes);
          }
          store_band(write_y, band.data(), M, band_w, y + k0 * y_layout.c, panel_layout, r / grid.rows,
                     r % grid.rows * M, panel_layout.channels, stream);
        }
      }
    }
  });
}

// The weight gradient for few tiles, like the forward: the input transformed once, whole, and
// the threads split the output channels a panel at a time. Per panel W = A gy A^T for every
// tile, the 36 products W^T V summed over all tiles by one GEMM each, and grad_w = G^T (sum) G;
// no thread shares a sum, so none is reduced across threads.
template <int R, typename scalar_t, typename io_t>
void winograd_grad_weight_by_panels(const Tensor& input, const Tensor& grad_output,
                                    Tensor& grad_weight, const Conv2dGeometry& g) {
  constexpr int M = 7 - R;
  constexpr int64_t width = kPanelWidth<scalar_t>;
  const BatchTiles<R, scalar_t, io_t> batch(input, g);
  const auto& [grid, tile_rows, tiles, band_w, transforms, v] = batch;
  const int64_t C = g.in_channels, K = g.out_channels;

  const io_t* gy = grad_output.const_data_ptr<io_t>();
  const Layout gy_layout(grad_output);
  const BandMoves<io_t, scalar_t> read_gy;
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  const bool on_micro_kernel = !blas_keeps_up();
  const int64_t s_row = product_sum_row<scalar_t>(C, on_micro_kernel);
  AlignedVector<scalar_t> packed_v(on_micro_kernel ? kElements * tiles * s_row : 0);
  if (on_micro_kernel) pack_tile_panels(v.template const_data_ptr<scalar_t>(), tiles, C, packed_v.data());
  // The micro-kernel's sums in even blocks of input channels, each transformed while it is in L2
  // (at::bmm's all at once). All 512 channels' sums of a panel, 1.2 MB, had been read back from
  // L3 (Zen 4, 3x3 512 @7 at batch 1, weight gradient, in a slow phase of the machine: 2.85-2.97
  // -> 2.48-2.76 ms, 1.1x -> 1.2-1.3x torch).
  const int64_t channel_sums = kElements * width * int64_t{sizeof(scalar_t)};  // bytes per input channel
  const int64_t c_blocks = on_micro_kernel ? (s_row * channel_sums + kSumBlockBytes - 1) / kSumBlockBytes : 1;
  const int64_t c_block = on_micro_kernel ? (s_row / width + c_blocks - 1) / c_blocks * width : C;
  const int64_t s_element = product_sum_element<scalar_t>(width, on_micro_kernel ? c_block : s_row, on_micro_kernel);
  at::parallel_for(0, (K + width - 1) / width, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // not inherited by workers
    Tensor w = at::empty({kElements, tiles, width}, compute_options<scalar_t>(input));
    Tensor sum_buffer = at::empty({kElements * s_element}, compute_options<scalar_t>(input));
    scalar_t* sum_data = sum_buffer.mutable_data_ptr<scalar_t>();
    AlignedVector<scalar_t> band(M * band_w * width), tmp(kElements * kLanes), filter_wt(R * R * kLanes);
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t k0 = panel * width, lanes = std::min(width, K - k0);
      Layout panel_layout = gy_layout;  // the panel's output channels
      panel_layout.channels = lanes;
      scalar_t* w_data = w.mutable_data_ptr<scalar_t>();
      for (int64_t r = 0; r < tile_rows; ++r) {
        fill_band(read_gy, gy + k0 * gy_layout.c, panel_layout, r / grid.rows, r % grid.rows * M, M, 0, band_w, band.data());
        for (int64_t col = 0; col < grid.cols; ++col) {
          const scalar_t* gt[M][M];
          block_pointers<M>(static_cast<const scalar_t*>(band.data()), band_w, col, M, lanes, 0, gt);
          scalar_t* wt[36];
          element_pointers(w_data, tiles, r * grid.cols + col, width, 0, wt);
          transforms.grad_output(gt, wt, tmp.data(), lanes);
        }
      }
      const int64_t element = on_micro_kernel ? s_element : lanes * s_row;
      for (int64_t c_first = 0; c_first < C; c_first += c_block) {
        const int64_t channels = std::min(c_block, C - c_first);
        const int64_t row = on_micro_kernel ? product_sum_row<scalar_t>(channels, true) : s_row;
        if (on_micro_kernel) {
          multiply_tiles_transposed(kElements, static_cast<const scalar_t*>(w_data), width, lanes,
                                    packed_v.data() + c_first * tiles, tiles * s_row, channels, tiles, Write::store,
                                    sum_data, row, element);
        } else {
          Tensor sum = sum_buffer.narrow(0, 0, kElements * element).view({kElements, lanes, s_row});
          at::bmm_out(sum, w.narrow(2, 0, lanes).transpose(1, 2), v);
        }
        for (int64_t j = 0; j < lanes; ++j) {
          for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
            const scalar_t* sj[36];
            element_pointers_apart(static_cast<const scalar_t*>(sum_data), element, j, row, c0, sj);
            transforms.grad_filter(sj, gw + ((k0 + j) * C + c_first + c0) * R * R, filter_wt.data(),
                                   std::min(kLanes, channels - c0));
          }
        }
      }
    }
  });
}

template <int R, typename scalar_t, typename io_t>
void winograd_grad_weight_kernel(const Tensor& input, const Tensor& grad_output,
                                 Tensor& grad_weight, const Conv2dGeometry& g) {
  constexpr int M = 7 - R;
  const TileGrid grid(g);
  const Chunks chunks(g, grid);
  const int64_t C = g.in_channels, K = g.out_channels, band_w = grid.cols * M;

  const auto transforms = transforms_for_this_cpu<R, scalar_t>();
  const io_t* gy = grad_output.const_data_ptr<io_t>();
  const Layout gy_layout(grad_output);
  const BandMoves<io_t, scalar_t> read_gy;
  std::mutex sums_mutex;
  std::vector<Tensor> sums;  // per task: 36 planes (K, s_row), s_element apart, the products summed over its tiles
  const bool on_micro_kernel = !blas_keeps_up();
  const int64_t s_row = product_sum_row<scalar_t>(C, on_micro_kernel);
  const int64_t s_element = product_sum_element<scalar_t>(K, s_row, on_micro_kernel);

  at::parallel_for(0, chunks.count, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor sum = at::zeros({kElements * s_element}, compute_options<scalar_t>(input));
    AlignedVector<scalar_t> packed_v(on_micro_kernel ? kElements * chunks.rows_per_chunk * grid.cols * s_row : 0);
    AlignedVector<scalar_t> tmp(kElements * kLanes), band(M * band_w * K);
    // W = A gy A^T for each tile of the row, from its rows of grad_output.
    const auto transform_grad_output_row = [&](int64_t r, int64_t n, int64_t row, Tensor& w) {
      const int64_t count = w.size(1);
      scalar_t* w_data = w.mutable_data_ptr<scalar_t>();
      fill_band(read_gy, gy, gy_layout, n, row * M, M, 0, band_w, band.data());
      for (int64_t col = 0; col < grid.cols; ++col) {
        const int64_t t = r * grid.cols + col;
        for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
          const scalar_t* gt[M][M];
          block_pointers<M>(static_cast<const scalar_t*>(band.data()), band_w, col, M, K, k0, gt);
          scalar_t* wt[36];
          element_pointers(w_data, count, t, K, k0, wt);
          transforms.grad_output(gt, wt, tmp.data(), std::min(kLanes, K - k0));
        }
      }
    };
    const auto add_products = [&](const Tensor& v, Tensor& w, int64_t, int64_t) {
      if (!on_micro_kernel) {
        sum.view({kElements, K, s_row}).baddbmm_(w.transpose(1, 2), v);  // dense planes there
        return;
      }
      const int64_t count = v.size(1);
      pack_tile_panels(v.const_data_ptr<scalar_t>(), count, C, packed_v.data());
      multiply_tiles_transposed(kElements, w.const_data_ptr<scalar_t>(), K, K, packed_v.data(), count * s_row, C, count,
                                Write::add, sum.mutable_data_ptr<scalar_t>(), s_row, s_element);
    };
    for_each_chunk<R, scalar_t, io_t>(transforms, input, g, grid, chunks, begin, end, K, transform_grad_output_row,
                                      add_products);
    const std::lock_guard<std::mutex> lock(sums_mutex);
    sums.push_back(sum);
  });

  Tensor total = sums.front();
  for (size_t i = 1; i < sums.size(); ++i) total.add_(sums[i]);
  const scalar_t* total_data = total.const_data_ptr<scalar_t>();
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<scalar_t> wt(R * R * kLanes);
    for (int64_t k = begin; k < end; ++k) {
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        const scalar_t* sk[36];
        element_pointers_apart(total_data, s_element, k, s_row, c0, sk);
        transforms.grad_filter(sk, gw + (k * C + c0) * R * R, wt.data(), std::min(kLanes, C - c0));
      }
    }
  });
}

// Runs fn(first channel, geometry of the slice) over slices of the output channels, as few as
// keep 36 x C x slice within kMaxFilterElements, whole panels each. Each slice redoes the input
// transform, which costs far less than its GEMMs.
template <typename Fn>
void for_each_output_slice(const Conv2dGeometry& g, Fn&& fn) {
  constexpr int64_t width = kPanelWidth<float>;
  const int64_t K = g.out_channels;
  const int64_t slices = (kElements * g.in_channels * K + kMaxFilterElements - 1) / kMaxFilterElements;
  const int64_t size = ((K + slices - 1) / slices + width - 1) / width * width;
  for (int64_t first = 0; first < K; first += size) {
    Conv2dGeometry slice = g;
    slice.out_channels = std::min(size, K - first);
    fn(first, slice);
  }
}

int64_t batch_tiles(const Conv2dGeometry& g) {
  const TileGrid grid(g);
  return g.batch * grid.rows * grid.cols;
}

// The conditions both directions share: with few channels the transforms cost about as much
// as the GEMMs save, and partial tiles on small images waste work: the tiles must take at most
// half the multiplications of a direct convolution (winograd_saves_products), or in the AVX2
// build fewer (Zen 3, 3x3 @5 in 4 tiles, 36 x 4 products for 9 x 25, against the implicit GEMM
// at batch 8 with 64 to 512 channels: forward 0.37-0.73x the time, input gradient 0.38-0.81x,
// weight gradient 0.45-0.90x; at batch 1 0.85-1.0x; @2, one tile for 4 outputs, as many
// products: the input and weight gradients at batch 8 1.24x and 1.34x slower), and so on Zen 4,
// whose AVX-512 runs at AVX2's rate (3x3 @5 at batch 8 with 128 to 512 channels, against the
// implicit GEMM: forward 0.52-0.66x the time, input gradient 0.45-0.55x, weight gradient
// 0.63-0.74x; 256 @5 at batch 1 forward 0.76x, input gradient 0.56x, weight gradient 1.18x).
bool winograd_may_pay_off(const Conv2dGeometry& g) {
  const TileGrid grid(g);
  // The transformed blocks of one row of tiles, the smallest chunk.
  const int64_t row_workspace = grid.cols * kElements * (g.in_channels + g.out_channels);
  const int64_t outputs = g.batch * g.out_h * g.out_w;
  const bool avx2_rate = cpu_isa() == Isa::avx2 || (use_avx512() && cpu_halves_avx512());
  const bool saves = avx2_rate ? kElements * batch_tiles(g) < g.kernel_h * g.kernel_w * outputs
                               : winograd_saves_products(g, outputs);
  return g.in_channels >= 16 && g.out_channels >= 16 && row_workspace <= kMaxFilterElements && saves;
}

// Few tiles for the threads' chunks (each wants kMinChunk), and the whole batch's transformed
// input within bounds: the work runs by panels of output channels.
bool runs_by_panels(const Conv2dGeometry& g) {
  const int64_t tiles = batch_tiles(g);
  return tiles <= at::get_num_threads() * kMinChunk && kElements * tiles * g.in_channels <= kMaxFilterElements;
}

// The tiles in the batch that repay the filter transform when the work runs in chunks of tiles
// (measured): 32, and four times as many when the transformed filters outgrow the caches and
// every chunk reads them from memory (512x512 loses at 32 and 64 tiles, wins by 1.6x at 128).
int64_t tiles_repaying_chunks(const Conv2dGeometry& g) {
  return kElements * g.in_channels * g.out_channels <= kMaxFilterElements ? 32 : 128;
}

// fn(R, compute, io) with R the kernel's size (see dispatch_band_types).
template <typename Fn>
void dispatch(const Conv2dGeometry& g, at::ScalarType dtype, Fn&& fn) {
  dispatch_band_types(dtype, [&](auto compute, auto io) {
    if (g.kernel_h == 3) {
      fn(std::integral_constant<int, 3>{}, compute, io);
    } else {
      fn(std::integral_constant<int, 5>{}, compute, io);
    }
  });
}

}  // namespace

bool winograd_saves_products(const Conv2dGeometry& g, int64_t outputs) {
  return 2 * kElements * batch_tiles(g) <= g.kernel_h * g.kernel_w * outputs;
}

bool winograd_applies(const Conv2dGeometry& g) {
  return g.kernel_h == g.kernel_w && (g.kernel_h == 3 || g.kernel_h == 5) && g.unit_stride() &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1 &&
         g.in_channels > 0 && g.batch * g.out_h * g.out_w * g.out_channels > 0;
}

// By panels, any number of tiles repays the filter transform: against our implicit GEMM where
// MKL does not keep up (Zen 5, 3x3 with 64 to 512 channels @7 at batch 1 and 2: forward 1.1-2x
// faster, input gradient 1.4-2.5x, weight gradient 0.7-0.8x at batch 1 with 128 and 512
// channels, 1.2-1.9x elsewhere), and against GEMMs on MKL where it does (an Intel Xeon with
// AVX-512 and AMX, 3x3 @7 against the im2col+MKL path, in ratios to torch: 64 to 512 channels at
// batch 1, forward 1.20-1.44x against 0.94-0.97x, forward+backward 1.06-1.10x against
// 0.88-1.06x; 512 channels at batch 2 and 3, 1.51-1.58x against 0.85-0.87x and 1.35-1.44x
// against 0.92-0.94x).
bool winograd_pays_off(const Conv2dGeometry& g) {
  return winograd_may_pay_off(g) && (runs_by_panels(g) || batch_tiles(g) >= tiles_repaying_chunks(g));
}

// The weight gradient's products W^T V sum over the batch's tiles: over 4 of them (one 7x7
// image), the 36 transformed sums per filter cost more than they save against im2col's GEMM
// on MKL, where it keeps up (an Intel Xeon, 3x3 at batch 1: 512 @7 and 256 @7 1.3x faster on the
// GEMM; 8 tiles, 512 @7 at batch 2, alike; from 16 tiles on Winograd 1.2-2.2x faster).
constexpr int64_t kFewestGradWeightTiles = 8;

bool winograd_grad_weight_pays_off(const Conv2dGeometry& g) {
  return winograd_pays_off(g) && (!blas_keeps_up() || batch_tiles(g) >= kFewestGradWeightTiles);
}

Tensor winograd_conv2d_forward(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                               const Conv2dGeometry& g, at::MemoryFormat output_format) {
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                            input.options().memory_format(output_format));
  if (runs_by_panels(g)) {
    dispatch(g, input.scalar_type(), [&](auto r, auto compute, auto io) {
      winograd_forward_by_panels<decltype(r)::value, decltype(compute), decltype(io)>(input, weight, order, bias, output, g);
    });
    return output;
  }
  for_each_output_slice(g, [&](int64_t first, const Conv2dGeometry& slice) {
    const int64_t k = slice.out_channels;
    const Tensor w = weight.narrow(order == FilterOrder::flipped_transposed ? 1 : 0, first, k);
    const Tensor b = bias.defined() ? bias.narrow(0, first, k) : bias;
    Tensor y = output.narrow(1, first, k);
    dispatch(g, input.scalar_type(), [&](auto r, auto compute, auto io) {
      winograd_forward_kernel<decltype(r)::value, decltype(compute), decltype(io)>(input, w, order, b, y, slice);
    });
  });
  return output;
}

Tensor winograd_conv2d_grad_weight(const Tensor& input, const Tensor& grad_output,
                                   const Conv2dGeometry& g) {
  Tensor grad_weight = at::empty({g.out_channels, g.in_channels, g.kernel_h, g.kernel_w},
                                 input.options().dtype(at::toOpMathType(input.scalar_type())));
  if (runs_by_panels(g)) {
    dispatch(g, input.scalar_type(), [&](auto r, auto compute, auto io) {
      winograd_grad_weight_by_panels<decltype(r)::value, decltype(compute), decltype(io)>(input, grad_output, grad_weight, g);
    });
    return grad_weight;
  }
  for_each_output_slice(g, [&](int64_t first, const Conv2dGeometry& slice) {
    const Tensor gy = grad_output.narrow(1, first, slice.out_channels);
    Tensor gw = grad_weight.narrow(0, first, slice.out_channels);
    dispatch(g, input.scalar_type(), [&](auto r, auto compute, auto io) {
      winograd_grad_weight_kernel<decltype(r)::value, decltype(compute), decltype(io)>(input, gy, gw, slice);
    });
  });
  return grad_weight;
}

}  // namespace conv_ext
