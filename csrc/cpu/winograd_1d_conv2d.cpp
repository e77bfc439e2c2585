// Winograd along one dimension on the CPU. The output is cut into tiles of M pixels along the
// kernel's dimension; per task, a band of the input's rows (every channel, channels innermost,
// zero-padded) in cache:
//   V[e] = B^T d       each tile's block of N inputs, per input channel     (e = N elements)
//   P[e] = V[e] U[e]   N GEMMs (tiles x C) (C x K), U = G w per filter, transformed once
//   y    = A^T P       the tile's M outputs, per output channel, plus bias
// then the band's output rows are stored in the output's layout (NCHW or NHWC).

#include "winograd_1d_conv2d.h"

#include "aligned_vector.h"
#include "bands.h"
#include "cpu_features.h"
#include "micro_kernel.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

namespace conv_ext {
namespace {

// F(M, R) over N = M + R - 1 points, N - 1 finite ones and infinity (Toom-Cook): a tile's M
// outputs are A^T [(G filter) * (B^T block)] for its block of N inputs.
template <int M, int R>
struct Filtering {
  static constexpr int kOutputs = M, kTaps = R, kElements = M + R - 1;
  double output[M][M + R - 1] = {};         // A^T
  double filter[M + R - 1][R] = {};         // G
  double input[M + R - 1][M + R - 1] = {};  // B^T
};

constexpr double magnitude(double x) { return x < 0 ? -x : x; }

// For the finite points p_e: A^T[i][e] = p_e^i, G[e][t] = p_e^t / (the product over the other
// points p of p_e - p), and B^T's row e the coefficients of m(x) / (x - p_e), where m(x) is the
// product over the points of x - p; infinity's column of A^T and row of G pick the last output
// and tap, its row of B^T holds m's coefficients. B^T's and G's rows are then scaled to entries
// of magnitude at most 1, A^T's columns taking the factors.
template <int M, int R>
constexpr Filtering<M, R> filtering(const double (&points)[M + R - 2]) {
  constexpr int N = M + R - 1;
  Filtering<M, R> f;
  double m[N] = {1};  // coefficients from x^0 up
  for (int l = 0; l < N - 1; ++l) {
    for (int j = l + 1; j > 0; --j) m[j] = m[j - 1] - points[l] * m[j];
    m[0] *= -points[l];
  }
  for (int e = 0; e < N - 1; ++e) {
    const double p = points[e];
    double q = 0;  // synthetic division, from the top coefficient down
    for (int j = N - 1; j > 0; --j) {
      q = m[j] + p * q;
      f.input[e][j - 1] = q;
    }
    double norm = 1;
    for (int l = 0; l < N - 1; ++l) {
      if (l != e) norm *= p - points[l];
    }
    double power = 1;
    for (int k = 0; k < M || k < R; ++k) {
      if (k < R) f.filter[e][k] = power / norm;
      if (k < M) f.output[k][e] = power;
      power *= p;
    }
  }
  for (int j = 0; j < N; ++j) f.input[N - 1][j] = m[j];
  f.filter[N - 1][R - 1] = 1;
  f.output[M - 1][N - 1] = 1;
  for (int e = 0; e < N; ++e) {
    double in = 0, taps = 0;
    for (int j = 0; j < N; ++j) in = std::max(in, magnitude(f.input[e][j]));
    for (int t = 0; t < R; ++t) taps = std::max(taps, magnitude(f.filter[e][t]));
    for (int j = 0; j < N; ++j) f.input[e][j] /= in;
    for (int t = 0; t < R; ++t) f.filter[e][t] /= taps;
    for (int i = 0; i < M; ++i) f.output[i][e] *= in * taps;
  }
  return f;
}

// Whether output i of a tile is sum over t of filter[t] * block[i + t] (cross-correlation), for
// every filter and block: sum over e of A^T[i][e] G[e][t] B^T[e][j] is 1 where j = i + t, else 0.
template <int M, int R>
constexpr bool computes_correlation(const Filtering<M, R>& f) {
  for (int i = 0; i < M; ++i) {
    for (int t = 0; t < R; ++t) {
      for (int j = 0; j < M + R - 1; ++j) {
        double sum = 0;
        for (int e = 0; e < M + R - 1; ++e) sum += f.output[i][e] * f.filter[e][t] * f.input[e][j];
        if (magnitude(sum - (j == i + t ? 1 : 0)) > 1e-12) return false;
      }
    }
  }
  return true;
}

// F(4, 3)'s six points: 0, +-sqrt(2)/2, +-sqrt(2), as the 2-D algorithm's (float32 error, emulated
// over 192 channels: 8.6e-7 of the result's scale, 2.5e-6 with 0, +-1, +-2).
constexpr double kHalfRoot2 = 0.70710678118654752440;
constexpr double kSixPoints[5] = {0, kHalfRoot2, -kHalfRoot2, 2 * kHalfRoot2, -2 * kHalfRoot2};
// F(4, 5)'s and F(2, 7)'s eight: 0, +-1/2, +-1, +-2 (2.2e-6 and 2.7e-6; with +-sqrt(2)'s
// multiples 7-8e-6, with +-3 1.8e-5).
constexpr double kEightPoints[7] = {0, 0.5, -0.5, 1, -1, 2, -2};

// The algorithm for R taps.
template <int R>
struct Minimal;
template <>
struct Minimal<3> {
  static constexpr Filtering<4, 3> f = filtering<4, 3>(kSixPoints);
};
template <>
struct Minimal<5> {
  static constexpr Filtering<4, 5> f = filtering<4, 5>(kEightPoints);
};
template <>
struct Minimal<7> {
  static constexpr Filtering<2, 7> f = filtering<2, 7>(kEightPoints);
};
static_assert(computes_correlation(Minimal<3>::f) && computes_correlation(Minimal<5>::f) &&
              computes_correlation(Minimal<7>::f));

// The transforms of one instruction set (the .inc fills them in).
template <typename scalar_t>
struct Transforms1d {
  void (*input_tile)(const scalar_t* in, int64_t step, int64_t channels, scalar_t* v, int64_t e_stride,
                     int64_t panel_step);
  void (*output_tile)(const scalar_t* p, int64_t e_stride, const scalar_t* bias, int64_t columns, scalar_t* out,
                      int64_t step);
  void (*filter_panel)(const scalar_t* taps, int64_t tap_row, int64_t count, scalar_t* u, int64_t e_stride);
  void (*flipped_filter_panel)(const scalar_t* taps, int64_t tap_row, int64_t count, scalar_t* u, int64_t e_stride);
  void (*grad_output_tile)(const scalar_t* gy, int64_t step, int64_t columns, scalar_t* wg, int64_t e_stride);
  void (*weight_gradient_row)(const scalar_t* s, int64_t e_stride, int64_t columns, scalar_t* out, int64_t out_row);
};

}  // namespace

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "winograd_1d_conv2d.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {
#include "winograd_1d_conv2d.inc"
}  // namespace avx512
#pragma GCC pop_options

namespace {

template <int R, typename scalar_t>
Transforms1d<scalar_t> transforms_1d_for_this_cpu() {
  return use_avx512() ? avx512::transforms_1d<R, scalar_t>() : avx2::transforms_1d<R, scalar_t>();
}

// The tiles of F(M, R) over a geometry's output: along its rows for a 1 x R kernel, along its
// columns for R x 1; a tile row is `across` tiles side by side (one output row of them, or M
// rows' columns). Bands hold the input of whole tile rows.
struct Tiling {
  bool along_rows;
  int64_t M, R, across, rows;
  int64_t band_w;    // pixels of a band's rows: the tile row's inputs (with the padding's columns)
  int64_t output_w;  // pixels of an output band's rows (along rows, whole tiles)
  Tiling(const Conv2dGeometry& g, int64_t outputs)
      : along_rows(g.kernel_h == 1),
        M(outputs),
        R(along_rows ? g.kernel_w : g.kernel_h),
        across(along_rows ? (g.out_w + M - 1) / M : g.out_w),
        rows(along_rows ? g.out_h : (g.out_h + M - 1) / M),
        band_w(along_rows ? across * M + R - 1 : g.out_w),
        output_w(along_rows ? across * M : g.out_w) {}
  // Output rows of a tile row, and input rows of a band of `tile_rows` of them.
  int64_t output_rows(int64_t tile_rows) const { return along_rows ? tile_rows : tile_rows * M; }
  int64_t input_rows(int64_t tile_rows) const { return along_rows ? tile_rows : tile_rows * M + R - 1; }
  // An image's tiles.
  int64_t tiles() const { return rows * across; }
  // Where tile (a, b) of a band starts, in pixels, and the pixels between its inputs (outputs).
  int64_t input_offset(int64_t a, int64_t b) const { return along_rows ? a * band_w + b * M : a * M * band_w + b; }
  int64_t output_offset(int64_t a, int64_t b) const { return along_rows ? a * output_w + b * M : a * M * output_w + b; }
  int64_t input_step() const { return along_rows ? 1 : band_w; }
  int64_t output_step() const { return along_rows ? 1 : output_w; }
};

// M of the algorithm for R taps (Minimal's).
int64_t outputs_per_tile(int64_t R) {
  switch (R) {
    case 3: return Minimal<3>::f.kOutputs;
    case 5: return Minimal<5>::f.kOutputs;
    default: return Minimal<7>::f.kOutputs;
  }
}

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Bands of tile rows whose buffers (the input band, V, P and the output band) stay within half a
// core's L2, as many for each thread (Xeon, 7x1 192 @17 at batch 1: 9 tile rows had gone in 3
// bands of 3, 6 rows to one thread and 3 to the other; in 4, forward 0.84x -> 0.98x torch).
Bands tile_row_bands(const Conv2dGeometry& g, const Tiling& tiling, int64_t channels, int64_t columns,
                     int64_t element_size) {
  const int64_t N = tiling.M + tiling.R - 1;
  const int64_t row_bytes = (tiling.input_rows(1) * tiling.band_w * channels + N * tiling.across * (channels + columns) +
                             tiling.output_rows(1) * tiling.output_w * columns) * element_size;
  return Bands(tiling.rows, g.batch, tiling.rows, row_bytes, 0, core_l2_bytes() / 2);
}

// V's rows: the band's channels, a cache line more where rows a multiple of 4 KiB apart would
// share a set of L1 as the micro-kernel reads them.
template <typename scalar_t>
int64_t v_row_length(int64_t channels) {
  return channels + (rows_share_l1_set<scalar_t>(channels) ? kPanelWidth<scalar_t> : 0);
}

// Transformed filters (N elements, planes u_stride apart, each the packed panels of C input
// channels x the output channels of `panels` panels from panel p0): each filter's R taps
// transformed by G, from the weight in the given order (rotated and transposed: the (C, K)
// weight of the layer whose input gradient this forward is), for the input channels [c_begin,
// c_end). taps: a buffer of kFilterChannels * R * panels * W values (past the last filter's
// column, whatever it holds: the outputs there are not stored).
constexpr int64_t kFilterChannels = 16;

// The weight gradient's chunks of tiles: their transformed inputs and grad_output (the depth of
// its products, which pass over each chunk's sums) about 4 MiB.
constexpr int64_t kGradWeightChunkBytes = int64_t{4} << 20;

template <typename scalar_t>
void transform_filters(const Transforms1d<scalar_t>& transforms, const at::Tensor& weight, FilterOrder order, int64_t R,
                       int64_t K, int64_t c_begin, int64_t c_end, int64_t p0, int64_t panels, scalar_t* taps,
                       scalar_t* u, int64_t u_stride) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const int64_t C = weight.size(order == FilterOrder::as_given ? 1 : 0), columns = panels * W;
  const int64_t k0 = p0 * W, filters = std::min(K - k0, columns);
  const auto transpose = transpose_for_this_cpu<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const bool flipped = order == FilterOrder::flipped_transposed;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kFilterChannels) {
    const int64_t count = std::min(kFilterChannels, c_end - c0);
    if (flipped) {
      // w[c][k][t]: each channel's (filters x R) block, value by value (the register transposes'
      // partial squares, R columns wide, had taken a quarter of 1x3 384 @8's input gradient at
      // batch 1).
      for (int64_t c = 0; c < count; ++c) {
        const scalar_t* src = w + ((c0 + c) * K + k0) * R;
        scalar_t* dst = taps + c * R * columns;
        for (int64_t k = 0; k < filters; ++k) {
          for (int64_t t = 0; t < R; ++t) dst[t * columns + k] = src[k * R + t];
        }
      }
    } else {  // w[k][c][t]: the block's columns of the (filters x C * R) matrix
      transpose(w + (k0 * C + c0) * R, C * R, filters, count * R, taps, columns, false);
    }
    const auto panel = flipped ? transforms.flipped_filter_panel : transforms.filter_panel;
    for (int64_t p = 0; p < panels; ++p) panel(taps + p * W, columns, count, u + (p * C + c0) * W, u_stride);
  }
}

// The algorithm's parts, and its schedules: the forward by bands of the input, the filters
// transformed first (many tiles), or by panels of output channels, each transformed as its
// products need it; the weight gradient by chunks of bands and blocks of output channels. `out`
// is the output side: the forward's output,
// the weight gradient's grad_output; `weight` the forward's weight, or the weight gradient.
template <int R, typename scalar_t, typename io_t>
struct Winograd1d {
  static constexpr int M = Minimal<R>::f.kOutputs, N = Minimal<R>::f.kElements;
  static constexpr int64_t W = kPanelWidth<scalar_t>;
  const at::Tensor &input, &weight;
  FilterOrder order;
  const at::Tensor& out;
  const Conv2dGeometry& g;
  const Tiling tiling{g, M};
  const int64_t C = g.in_channels, K = g.out_channels, channels = round_up(C, W), panels = (K + W - 1) / W;
  const int64_t columns = panels * W, v_row = v_row_length<scalar_t>(channels);
  const Transforms1d<scalar_t> transforms = transforms_1d_for_this_cpu<R, scalar_t>();
  const Layout x_layout{input}, out_layout{out};
  const BandMoves<io_t, scalar_t> read_x, read_out;
  const BandMoves<scalar_t, io_t> write_out;
  const bool stream = streams(out);
  AlignedVector<scalar_t> bias;  // padded to whole panels; empty without one

  Winograd1d(const at::Tensor& input, const at::Tensor& weight, FilterOrder order, const at::Tensor& b,
             const at::Tensor& out, const Conv2dGeometry& g)
      : input(input), weight(weight), order(order), out(out), g(g) {
    if (b.defined()) {
      bias.assign(columns, scalar_t(0));
      std::copy_n(b.const_data_ptr<scalar_t>(), K, bias.begin());
    }
  }

  at::Tensor buffer(int64_t size) const { return at::empty({size}, weight.options()); }

  // Where transform_inputs puts a tile's values: V as rows (the forward's: (N, count, v_row)), or
  // as the packed panels the weight gradient's products read ((N, channels' panels, count, W)).
  struct VLayout {
    int64_t tile, element, panel;
  };
  VLayout v_rows(int64_t count) const { return {v_row, count * v_row, W}; }
  VLayout v_panels(int64_t count) const { return {W, channels * count, count * W}; }

  // The tiles of tile rows [first, first + rows) of image n into V, from tile `tile` on, through
  // `band`.
  void transform_inputs(int64_t n, int64_t first, int64_t rows, scalar_t* band, scalar_t* v, int64_t tile,
                        VLayout layout) const {
    fill_band(read_x, input.const_data_ptr<io_t>(), x_layout, n, tiling.output_rows(first) - g.pad_h,
              tiling.input_rows(rows), -g.pad_w, tiling.band_w, band, channels);
    for (int64_t a = 0; a < rows; ++a) {
      for (int64_t b = 0; b < tiling.across; ++b) {
        transforms.input_tile(band + tiling.input_offset(a, b) * channels, tiling.input_step() * channels, channels,
                              v + (tile + a * tiling.across + b) * layout.tile, layout.element, layout.panel);
      }
    }
  }

  // The outputs of a band's tiles (rows of them) from P (planes `count` tiles apart, rows of
  // p_columns, from tile `tile` on), output channels [k0, k0 + p_columns), into the output band
  // `y` (columns per pixel).
  void transform_outputs(const scalar_t* p, int64_t tile, int64_t count, int64_t p_columns, int64_t rows, int64_t k0,
                         scalar_t* y) const {
    for (int64_t a = 0; a < rows; ++a) {
      for (int64_t b = 0; b < tiling.across; ++b) {
        transforms.output_tile(p + (tile + a * tiling.across + b) * p_columns, count * p_columns,
                               bias.empty() ? nullptr : bias.data() + k0, p_columns,
                               y + tiling.output_offset(a, b) * columns + k0, tiling.output_step() * columns);
      }
    }
  }

  void store(const scalar_t* y, int64_t n, int64_t first, int64_t rows) const {
    store_band(write_out, y, tiling.output_rows(rows), tiling.output_w, out.mutable_data_ptr<io_t>(), out_layout, n,
               tiling.output_rows(first), columns, stream);
  }

  // Each task a band of an image's tile rows: its tiles through the products with all the
  // filters, transformed first.
  void by_bands() const {
    // A cache line between the element planes: at plane sizes that are multiples of 4 KiB the N
    // rows each filter transform writes would fall into one set of L1.
    const int64_t u_stride = panels * C * W + W;
    const at::Tensor u_buffer = buffer(N * u_stride);
    scalar_t* u = u_buffer.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (C + kFilterChannels - 1) / kFilterChannels, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> taps(kFilterChannels * R * columns, scalar_t(0));
      transform_filters(transforms, weight, order, R, K, begin * kFilterChannels, std::min(C, end * kFilterChannels), 0,
                        panels, taps.data(), u, u_stride);
    });
    const Bands bands = tile_row_bands(g, tiling, channels, columns, sizeof(scalar_t));
    const int64_t tile_rows = bands.rows;
    at::parallel_for(0, g.batch * bands.per_image, 1, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // not inherited by workers
      const int64_t most = tile_rows * tiling.across;
      // Buffers every task writes before it reads them: not zeroed first.
      const at::Tensor band = buffer(tiling.input_rows(tile_rows) * tiling.band_w * channels), v = buffer(N * most * v_row),
                       p = buffer(N * most * columns), y = buffer(tiling.output_rows(tile_rows) * tiling.output_w * columns);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / bands.per_image, first = bands.first(task % bands.per_image);
        const int64_t rows = bands.rows_of(task % bands.per_image), count = rows * tiling.across;
        transform_inputs(n, first, rows, band.mutable_data_ptr<scalar_t>(), v.mutable_data_ptr<scalar_t>(), 0, v_rows(count));
        multiply_by_filters<scalar_t>(N, v.const_data_ptr<scalar_t>(), v_row, u, u_stride, p.mutable_data_ptr<scalar_t>(),
                                      count, C, panels, false);
        transform_outputs(p.const_data_ptr<scalar_t>(), 0, count, columns, rows, 0, y.mutable_data_ptr<scalar_t>());
        store(y.const_data_ptr<scalar_t>(), n, first, rows);
      }
    });
  }

  // The batch's tiles transformed together, then each task a block of output channels' panels:
  // their filters transformed into L2 and multiplied by every tile, then the outputs stored
  // image by image. Where the tiles are few, transforming all the filters first had cost as much
  // as the products, the transformed filters written out to memory and read back.
  void by_panels() const {
    const int64_t tiles = tiling.tiles(), count = g.batch * tiles;
    const int64_t image_out = tiling.output_rows(tiling.rows) * tiling.output_w * columns;
    const at::Tensor v = buffer(N * count * v_row), y = buffer(g.batch * image_out);
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const at::Tensor band = buffer(tiling.input_rows(tiling.rows) * tiling.band_w * channels);
      for (int64_t n = begin; n < end; ++n) {
        transform_inputs(n, 0, tiling.rows, band.mutable_data_ptr<scalar_t>(), v.mutable_data_ptr<scalar_t>(), n * tiles,
                         v_rows(count));
      }
    });
    constexpr int64_t kPanels = kMaxMicroKernelPanels;
    at::parallel_for(0, (panels + kPanels - 1) / kPanels, 1, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const int64_t u_stride = kPanels * C * W + W;
      const at::Tensor u = buffer(N * u_stride), p = buffer(N * count * kPanels * W);
      AlignedVector<scalar_t> taps(kFilterChannels * R * kPanels * W, scalar_t(0));
      for (int64_t block = begin; block < end; ++block) {
        const int64_t p0 = block * kPanels, n_panels = std::min(kPanels, panels - p0), p_columns = n_panels * W;
        transform_filters(transforms, weight, order, R, K, 0, C, p0, n_panels, taps.data(), u.mutable_data_ptr<scalar_t>(), u_stride);
        multiply_by_filters<scalar_t>(N, v.const_data_ptr<scalar_t>(), v_row, u.const_data_ptr<scalar_t>(), u_stride,
                                      p.mutable_data_ptr<scalar_t>(), count, C, n_panels, false);
        for (int64_t n = 0; n < g.batch; ++n) {
          transform_outputs(p.const_data_ptr<scalar_t>(), n * tiles, count, p_columns, tiling.rows, p0 * W,
                            y.mutable_data_ptr<scalar_t>() + n * image_out);
        }
      }
    });
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) store(y.const_data_ptr<scalar_t>() + n * image_out, n, 0, tiling.rows);
    });
  }

  // The weight gradient: S[e] = sum over tiles of W[e]^T V[e], W[e] = A gy per tile and output
  // channel, the batch's tiles in chunks (in order: the same sums whatever the threads), each
  // chunk's products split among the threads by blocks of output channels; then grad_weight =
  // G^T S per output channel.
  void grad_weight(at::Tensor& grad_weight) const {
    // Items: the images' bands of tile rows; chunks: runs of items.
    const Bands bands = tile_row_bands(g, tiling, channels, columns, sizeof(scalar_t));
    const int64_t tile_rows = bands.rows, items = g.batch * bands.per_image;
    const auto first_tile = [&](int64_t item) {
      return (item / bands.per_image * tiling.rows + bands.first(item % bands.per_image)) * tiling.across;
    };
    const int64_t chunk_tiles = kGradWeightChunkBytes / (N * (channels + columns) * int64_t{sizeof(scalar_t)});
    const int64_t chunk = std::max<int64_t>(1, chunk_tiles / (tile_rows * tiling.across));
    const int64_t most = chunk * tile_rows * tiling.across;
    const int64_t block = 2 * micro_kernel_for_this_cpu<scalar_t>().rows, blocks = (K + block - 1) / block;
    const at::Tensor v = buffer(N * most * channels), wg = buffer(N * most * columns), s = buffer(N * K * channels);
    for (int64_t i0 = 0; i0 < items; i0 += chunk) {
      const int64_t i1 = std::min(items, i0 + chunk), count = first_tile(i1) - first_tile(i0);
      at::parallel_for(i0, i1, 1, [&](int64_t begin, int64_t end) {
        const at::AutoDispatchBelowADInplaceOrView below_autograd;
        const at::Tensor band = buffer(tiling.input_rows(tile_rows) * tiling.band_w * channels),
                         gy = buffer(tiling.output_rows(tile_rows) * tiling.output_w * columns);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / bands.per_image, first = bands.first(item % bands.per_image);
          const int64_t rows = bands.rows_of(item % bands.per_image);
          const int64_t tile = first_tile(item) - first_tile(i0);
          transform_inputs(n, first, rows, band.mutable_data_ptr<scalar_t>(), v.mutable_data_ptr<scalar_t>(), tile,
                           v_panels(count));
          fill_band(read_out, out.const_data_ptr<io_t>(), out_layout, n, tiling.output_rows(first), tiling.output_rows(rows),
                    0, tiling.output_w, gy.mutable_data_ptr<scalar_t>(), columns);
          for (int64_t a = 0; a < rows; ++a) {
            for (int64_t b = 0; b < tiling.across; ++b) {
              transforms.grad_output_tile(gy.const_data_ptr<scalar_t>() + tiling.output_offset(a, b) * columns,
                                          tiling.output_step() * columns, columns,
                                          wg.mutable_data_ptr<scalar_t>() + (tile + a * tiling.across + b) * columns,
                                          count * columns);
            }
          }
        }
      });
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t k0 = i * block, rows = std::min(block, K - k0);
          multiply_tiles_transposed(N, wg.const_data_ptr<scalar_t>() + k0, columns, rows, v.const_data_ptr<scalar_t>(),
                                    count * channels, C, count, i0 == 0 ? Write::store : Write::add,
                                    s.mutable_data_ptr<scalar_t>() + N * k0 * channels, channels, rows * channels);
        }
      });
    }
    const auto transpose = transpose_for_this_cpu<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> taps(R * channels);
      for (int64_t k = begin; k < end; ++k) {
        // Block k / block's sums: (N, its rows, channels).
        const int64_t k0 = k / block * block, rows = std::min(block, K - k0);
        transforms.weight_gradient_row(s.const_data_ptr<scalar_t>() + (N * k0 + k - k0) * channels, rows * channels,
                                       channels, taps.data(), channels);
        transpose(taps.data(), channels, R, C, grad_weight.mutable_data_ptr<scalar_t>() + k * C * R, R, false);  // [c][t]
      }
    });
  }
};

// Bound on the transformed filters by_bands makes at once, and on the weight gradient's sums (16
// MiB of float32, as the 2-D algorithm's): larger layers run in slices of output channels, each
// slice's tiles transformed anew.
constexpr int64_t kMaxFilterElements = int64_t{1} << 22;

// Few tiles for the threads' bands: the forward runs by panels (Zen 4, 1x3 384 @8 at batch 1, 16
// tiles: 0.34 -> 0.24 ms; at batch 8, 128 tiles, and 1x7 128 @17 at batch 1, 153 tiles, faster by
// bands: 1.56x against 1.49x torch, and 1.42x against 1.14x).
bool runs_by_panels(const Conv2dGeometry& g, const Tiling& tiling) {
  return g.batch * tiling.tiles() <= at::get_num_threads() * 32;
}

// fn(k0, slice) for the slices of the output channels from k0 whose N * C * K values (transformed
// filters, or the weight gradient's sums) stay within kMaxFilterElements: one where they do.
template <typename Fn>
void for_each_output_slice(const Conv2dGeometry& g, int64_t elements, Fn&& fn) {
  const int64_t K = g.out_channels;
  const int64_t slices = std::max<int64_t>(1, (elements * g.in_channels * K + kMaxFilterElements - 1) / kMaxFilterElements);
  const int64_t size = round_up((K + slices - 1) / slices, kPanelWidth<float>);
  for (int64_t k0 = 0; k0 < K; k0 += size) {
    Conv2dGeometry slice = g;
    slice.out_channels = std::min(size, K - k0);
    fn(k0, slice);
  }
}

// fn(std::integral_constant<int, R>()) for a geometry's R.
template <typename Fn>
void with_taps(const Conv2dGeometry& g, Fn&& fn) {
  switch (g.kernel_h * g.kernel_w) {
    case 3: return fn(std::integral_constant<int, 3>());
    case 5: return fn(std::integral_constant<int, 5>());
    default: return fn(std::integral_constant<int, 7>());
  }
}

}  // namespace

bool winograd_1d_applies(const Conv2dGeometry& g) {
  const int64_t taps = g.kernel_h == 1 ? g.kernel_w : g.kernel_h;
  return (g.kernel_h == 1 || g.kernel_w == 1) && (taps == 3 || taps == 5 || taps == 7) && g.unit_stride() &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1 && use_avx2() && g.in_channels > 0 &&
         g.batch * g.out_h * g.out_w * g.out_channels > 0;
}

// With at least 32 channels in and out, and the tiles taking at most 2/3 of a direct
// convolution's products, it beat the paths these layers had taken (Zen 4, in ratios to torch:
// 1x7 32 @17 at batch 8 1.15x -> 1.22x, 64 @17 1.0x -> 1.35x, 128 @35 0.96x -> 1.40x; 1x3 and 3x1
// 384 @8 at batch 1 1.05x -> 1.47x, at batch 8 1.0x -> 1.5x), but for layers of under a million
// multiply-adds, whose three parallel passes cost more than the products save (3x1 64 @8 at
// batch 1: 21 -> 33 us).
constexpr int64_t kFewestMultiplyAdds = int64_t{1} << 20;

bool winograd_1d_pays_off(const Conv2dGeometry& g) {
  const Tiling tiling(g, outputs_per_tile(g.kernel_h * g.kernel_w));
  const int64_t outputs = g.out_h * g.out_w, products = (tiling.M + tiling.R - 1) * tiling.tiles();
  return std::min(g.in_channels, g.out_channels) >= 32 && 3 * products <= 2 * tiling.R * outputs &&
         g.batch * outputs * g.in_channels * g.out_channels * tiling.R >= kFewestMultiplyAdds;
}

// Its weight gradient with at least 128 channels in and out, where MKL does not keep up (Zen 4,
// in ratios to torch: 1x7 128 @17 at batch 8 1.0x -> 1.2x, at batch 1 1.09x -> 1.37x; 7x1 192 @17
// at batch 8 0.92x -> 1.24x; 1x3 384 @8 at batch 8 0.90x -> 1.49x); with 32 or 64 channels the
// channels-last GEMM's was faster (1x7 32 @17 at batch 8 1.2-1.44x against 0.42-1.07x). Where MKL
// keeps up, for 3 taps from 64 tiles (Xeon, against MKL's GEMM: 1x3 384 @8 at batch 8 0.97x ->
// 1.39x, at batch 4 1.09x -> 1.41x, 3x1 384 @8 at batch 8 0.89x -> 1.27x, 1x3 256 @16 at batch 8
// 0.99x -> 1.11x; but 1x3 384 @8 at batch 1, 16 tiles, 1.6x -> 1.15x, 1x5 160 @17 at batch 8
// 1.07x -> 1.04x, 1x7 128 @17 0.99x -> 0.84x, 7x1 192 @17 1.08x -> 0.89x).
constexpr int64_t kFewestGradWeightTiles = 64;

bool winograd_1d_grad_weight_pays_off(const Conv2dGeometry& g) {
  if (!winograd_1d_pays_off(g) || std::min(g.in_channels, g.out_channels) < 128) return false;
  const Tiling tiling(g, outputs_per_tile(g.kernel_h * g.kernel_w));
  return !blas_keeps_up() || (tiling.R == 3 && g.batch * tiling.tiles() >= kFewestGradWeightTiles);
}

at::Tensor winograd_1d_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                      const at::Tensor& bias, const Conv2dGeometry& g,
                                      at::MemoryFormat output_format) {
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(output_format));
  const int64_t R = g.kernel_h * g.kernel_w, M = outputs_per_tile(R);
  const bool by_panels = runs_by_panels(g, Tiling(g, M));
  for_each_output_slice(g, by_panels ? 0 : M + R - 1, [&](int64_t k0, const Conv2dGeometry& slice) {
    const at::Tensor w = weight.narrow(order == FilterOrder::as_given ? 0 : 1, k0, slice.out_channels).contiguous();
    const at::Tensor b = bias.defined() ? bias.narrow(0, k0, slice.out_channels).contiguous() : bias;
    const at::Tensor y = output.narrow(1, k0, slice.out_channels);
    dispatch_band_types(input.scalar_type(), [&](auto compute, auto io) {
      with_taps(g, [&](auto r) {
        const Winograd1d<decltype(r)::value, decltype(compute), decltype(io)> forward(input, w, order, b, y, slice);
        by_panels ? forward.by_panels() : forward.by_bands();
      });
    });
  });
  return output;
}

at::Tensor winograd_1d_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output, const Conv2dGeometry& g) {
  at::Tensor grad_weight = at::empty({g.out_channels, g.in_channels, g.kernel_h, g.kernel_w},
                                     input.options().dtype(at::toOpMathType(input.scalar_type())));
  const int64_t R = g.kernel_h * g.kernel_w;
  for_each_output_slice(g, outputs_per_tile(R) + R - 1, [&](int64_t k0, const Conv2dGeometry& slice) {
    const at::Tensor gy = grad_output.narrow(1, k0, slice.out_channels);
    at::Tensor gw = grad_weight.narrow(0, k0, slice.out_channels);
    dispatch_band_types(input.scalar_type(), [&](auto compute, auto io) {
      with_taps(g, [&](auto r) {
        Winograd1d<decltype(r)::value, decltype(compute), decltype(io)>(input, gw, FilterOrder::as_given, at::Tensor(), gy, slice)
            .grad_weight(gw);
      });
    });
  });
  return grad_weight;
}

}  // namespace conv_ext
