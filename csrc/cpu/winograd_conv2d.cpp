// Winograd F(4x4, 3x3) on the CPU. The output is cut into 4x4 tiles; per chunk of tiles (one
// chunk per task, sized to stay in the core's cache):
//   V[e] = B^T d B     the 6x6 input block of each tile, per input channel   (e = 36 elements)
//   M[e] = V[e] U[e]   36 GEMMs (tiles x C) (C x K), U = G w G^T per filter, transformed once
//   y    = A^T M A     the 4x4 output block, per output channel, plus bias
// The transforms run channels-innermost, so they vectorise across channels; rows of the input
// and output are moved between the tensors' layout (NCHW or NHWC) and that order in cache.
//
// Interpolation points 0, +-sqrt(2)/2, +-sqrt(2) (and infinity) rather than the usual 0, +-1,
// +-2: the smaller spread of the transform entries keeps the float32 error at ~1-2e-6 of the
// result's scale instead of ~7e-6. B^T's rows are rescaled to entries of magnitude <= 2.5 and
// G's rows divided by the same factors.
#include "winograd_conv2d.h"

#include "cpu_features.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
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
constexpr double kOutputTransform[4][6] = {  // A^T
    {1, 1, 1, 1, 1, 0},
    {0, r, -r, 2 * r, -2 * r, 0},
    {0, 0.5, 0.5, 2, 2, 0},
    {0, r / 2, -r / 2, 4 * r, -4 * r, 1},
};
constexpr double kFilterTransform[6][3] = {  // G
    {1, 0, 0},
    {4.0 / 3, 4 * r / 3, 2.0 / 3},
    {4.0 / 3, -4 * r / 3, 2.0 / 3},
    {1.0 / 6, r / 3, 1.0 / 3},
    {1.0 / 6, -r / 3, 1.0 / 3},
    {0, 0, 1},
};

namespace generic {
#include "winograd_transforms.inc"
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "winograd_transforms.inc"
}  // namespace avx2
#pragma GCC pop_options

using at::Tensor;

constexpr int64_t kTile = 4;         // output pixels per tile side
constexpr int64_t kBlock = 6;        // input pixels per tile side
constexpr int64_t kElements = 36;    // kBlock * kBlock
constexpr int64_t kLanes = 64;       // channels transformed together
// Elements of V and M one task keeps: about a 1 MiB L2 cache of float32; at least kMinChunk
// tiles, or packing U[e] for each GEMM costs more than the GEMM (measured).
constexpr int64_t kChunkElements = int64_t{1} << 18;
constexpr int64_t kMinChunk = 64;
// Transformed filters beyond this many elements (16 MiB of float32) cost more to allocate and
// write on every call than the algorithm saves at common batch sizes (measured: 512x512). The
// same bound keeps a task's V and M small: a chunk holds at least one whole row of tiles.
constexpr int64_t kMaxFilterElements = int64_t{1} << 22;

template <typename scalar_t>
struct Transforms {
  decltype(&generic::filter_transform<scalar_t>) filter;
  decltype(&generic::input_tile_transform<scalar_t>) input;
  decltype(&generic::output_tile_transform<scalar_t>) output;
};

template <typename scalar_t>
Transforms<scalar_t> transforms_for_this_cpu() {
  if (use_avx2()) {
    return {&avx2::filter_transform<scalar_t>, &avx2::input_tile_transform<scalar_t>,
            &avx2::output_tile_transform<scalar_t>};
  }
  return {&generic::filter_transform<scalar_t>, &generic::input_tile_transform<scalar_t>,
          &generic::output_tile_transform<scalar_t>};
}

// U[e, k, c] = (G w[k, c] G^T)[e].
template <typename scalar_t>
void transform_filters(const Transforms<scalar_t>& transforms, const scalar_t* w, scalar_t* u,
                       int64_t channels, int64_t filters) {
  at::parallel_for(0, filters, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> tmp((9 + 18) * kLanes);  // the filters and G w, per channel
    for (int64_t k = begin; k < end; ++k) {
      for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
        scalar_t* uk[36];
        for (int64_t e = 0; e < kElements; ++e) uk[e] = u + (e * filters + k) * channels + c0;
        transforms.filter(w + (k * channels + c0) * 9, uk, tmp.data(), std::min(kLanes, channels - c0));
      }
    }
  });
}

struct TileGrid {
  int64_t rows, cols;  // tiles per image
  explicit TileGrid(const Conv2dGeometry& g)
      : rows((g.out_h + kTile - 1) / kTile), cols((g.out_w + kTile - 1) / kTile) {}
};

// Strides of a dense 4-D tensor, NCHW or NHWC.
struct Strides {
  int64_t n, c, h, w;
  explicit Strides(const Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// band[a][col][c] = x[n, c, ih0 + a, col - pad_w] for the 6 input rows of one row of tiles,
// zero outside the image: the tiles' 6x6 blocks read it channels-innermost, whatever x's layout.
template <typename scalar_t>
void fill_input_band(const scalar_t* x, Strides s, const Conv2dGeometry& g, int64_t n, int64_t ih0,
                     int64_t band_w, scalar_t* band) {
  const int64_t C = g.in_channels;
  std::fill(band, band + kBlock * band_w * C, scalar_t(0));
  const int64_t columns = std::min(g.in_w, band_w - g.pad_w);  // input columns the band holds
  for (int64_t a = 0; a < kBlock; ++a) {
    const int64_t ih = ih0 + a;
    if (ih < 0 || ih >= g.in_h) continue;
    const scalar_t* src = x + n * s.n + ih * s.h;
    scalar_t* dst = band + (a * band_w + g.pad_w) * C;
    if (s.c == 1) {
      for (int64_t iw = 0; iw < columns; ++iw) std::copy(src + iw * s.w, src + iw * s.w + C, dst + iw * C);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t iw = 0; iw < columns; ++iw) dst[iw * C + c] = src[c * s.c + iw * s.w];
      }
    }
  }
}

// y[n, k, oh0 + i, ow] = band[i][ow][k] for the output rows and columns that exist.
template <typename scalar_t>
void store_output_band(const scalar_t* band, int64_t band_w, const Conv2dGeometry& g, int64_t n,
                       int64_t oh0, scalar_t* y, Strides s) {
  const int64_t K = g.out_channels;
  for (int64_t i = 0; i < kTile && oh0 + i < g.out_h; ++i) {
    const scalar_t* src = band + i * band_w * K;
    scalar_t* dst = y + n * s.n + (oh0 + i) * s.h;
    if (s.c == 1) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) std::copy(src + ow * K, src + (ow + 1) * K, dst + ow * s.w);
    } else {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) dst[k * s.c + ow * s.w] = src[ow * K + k];
      }
    }
  }
}

// Work is split into chunks of whole rows of tiles; per row, the input is first gathered into a
// band and the output collected in one, so that the layout changes happen in cache.
template <typename scalar_t>
void winograd_forward_kernel(const Tensor& input, const Tensor& weight, const Tensor& bias,
                             Tensor& output, const Conv2dGeometry& g) {
  const TileGrid grid(g);
  const int64_t C = g.in_channels, K = g.out_channels;
  const int64_t in_band_w = grid.cols * kTile + 2, out_band_w = grid.cols * kTile;
  // Rows of tiles per chunk: V and M in cache, but enough tiles that the GEMMs repay packing
  // U, and at least one chunk per thread.
  const int64_t tile_rows = g.batch * grid.rows;
  const int64_t wanted_tiles = std::max(kMinChunk, kChunkElements / (kElements * (C + K)));
  const int64_t per_thread = (tile_rows + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t rows_per_chunk = std::max<int64_t>(1, std::min(wanted_tiles / grid.cols, per_thread));
  const int64_t chunks = (tile_rows + rows_per_chunk - 1) / rows_per_chunk;

  const auto transforms = transforms_for_this_cpu<scalar_t>();
  Tensor u = at::empty({kElements, K, C}, weight.options());
  transform_filters(transforms, weight.const_data_ptr<scalar_t>(), u.mutable_data_ptr<scalar_t>(), C, K);
  const Tensor u_t = u.transpose(1, 2);  // (36, C, K)
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y = output.mutable_data_ptr<scalar_t>();
  const Strides x_strides(input), y_strides(output);

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // not inherited by workers
    const int64_t max_tiles = rows_per_chunk * grid.cols;
    Tensor v_buffer = at::empty({kElements * max_tiles * C}, input.options());
    Tensor m_buffer = at::empty({kElements * max_tiles * K}, input.options());
    std::vector<scalar_t> tmp(kElements * kLanes), in_band(kBlock * in_band_w * C),
        out_band(kTile * out_band_w * K);
    for (int64_t chunk_index = begin; chunk_index < end; ++chunk_index) {
      const int64_t first_row = chunk_index * rows_per_chunk;
      const int64_t rows = std::min(rows_per_chunk, tile_rows - first_row), count = rows * grid.cols;
      Tensor v = v_buffer.narrow(0, 0, kElements * count * C).view({kElements, count, C});
      Tensor m = m_buffer.narrow(0, 0, kElements * count * K).view({kElements, count, K});
      scalar_t* v_data = v.mutable_data_ptr<scalar_t>();
      scalar_t* m_data = m.mutable_data_ptr<scalar_t>();

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = (first_row + r) / grid.rows, row = (first_row + r) % grid.rows;
        fill_input_band(x, x_strides, g, n, row * kTile - g.pad_h, in_band_w, in_band.data());
        for (int64_t col = 0; col < grid.cols; ++col) {
          const int64_t t = r * grid.cols + col;
          for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
            const scalar_t* d[6][6];
            for (int64_t a = 0; a < kBlock; ++a) {
              for (int64_t bb = 0; bb < kBlock; ++bb) {
                d[a][bb] = in_band.data() + (a * in_band_w + col * kTile + bb) * C + c0;
              }
            }
            scalar_t* vt[36];
            for (int64_t e = 0; e < kElements; ++e) vt[e] = v_data + (e * count + t) * C + c0;
            transforms.input(d, vt, tmp.data(), std::min(kLanes, C - c0));
          }
        }
      }

      at::bmm_out(m, v, u_t);

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = (first_row + r) / grid.rows, row = (first_row + r) % grid.rows;
        for (int64_t col = 0; col < grid.cols; ++col) {
          const int64_t t = r * grid.cols + col;
          for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
            const scalar_t* mt[36];
            for (int64_t e = 0; e < kElements; ++e) mt[e] = m_data + (e * count + t) * K + k0;
            scalar_t* yt[4][4];
            for (int64_t i = 0; i < kTile; ++i) {
              for (int64_t j = 0; j < kTile; ++j) {
                yt[i][j] = out_band.data() + (i * out_band_w + col * kTile + j) * K + k0;
              }
            }
            transforms.output(mt, b != nullptr ? b + k0 : nullptr, yt, tmp.data(), std::min(kLanes, K - k0));
          }
        }
        store_output_band(out_band.data(), out_band_w, g, n, row * kTile, y, y_strides);
      }
    }
  });
}

}  // namespace

bool winograd_applies(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1 && g.in_channels > 0 &&
         g.batch * g.out_h * g.out_w * g.out_channels > 0;
}

bool winograd_pays_off(const Conv2dGeometry& g) {
  // With few channels the transforms cost about as much as the GEMMs save; partial tiles on
  // small images waste work (ask for at most half the multiplications of a direct 3x3); and the
  // filter transform needs enough tiles in the batch to pay for itself (measured).
  const TileGrid grid(g);
  const int64_t tiles = grid.rows * grid.cols;
  // V and M of one row of tiles, the smallest chunk.
  const int64_t row_workspace = grid.cols * kElements * (g.in_channels + g.out_channels);
  return g.in_channels >= 16 && g.out_channels >= 16 &&
         kElements * g.in_channels * g.out_channels <= kMaxFilterElements &&
         row_workspace <= kMaxFilterElements &&
         2 * kElements * tiles <= 9 * g.out_h * g.out_w && g.batch * tiles >= 32;
}

Tensor winograd_conv2d_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                               const Conv2dGeometry& g, at::MemoryFormat output_format) {
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                            input.options().memory_format(output_format));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_ext_winograd_forward", [&] {
    winograd_forward_kernel<scalar_t>(input, weight, bias, output, g);
  });
  return output;
}

}  // namespace conv_ext
