// The GEMM follows BLIS's design (Van Zee & van de Geijn): per block of the patch, a panel of
// the im2col matrix kWidth pixels wide is packed contiguously, then the micro-kernel accumulates
// each tile of its rows' output channels in registers, one broadcast of a filter value per
// channel and patch element. The filters are packed once per call, each tile's patch-major, so
// the kernel broadcasts from one stream instead of one per row.
#include "implicit_gemm_conv2d.h"

#include "cpu_features.h"
#include "micro_kernel.h"
#include "vec.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace conv_ext {
namespace {

// Output elements a chunk of pixels keeps (about half a 1 MiB L2 of float32), and the pixels of
// a chunk at least: a few of the micro-kernel's column blocks (of at most kBlockPixels, two
// panels of 16 float32).
constexpr int64_t kChunkElements = int64_t{1} << 17;
constexpr int64_t kMinChunkPixels = 64, kBlockPixels = 32;
// Below this many pixels per thread, the threads split the output channels instead.
constexpr int64_t kSplitPixels = 4 * kBlockPixels;

// The output pixels q of the batch (q = n * OH * OW + oh * OW + ow) that the micro-kernel's
// panels cover (column j in panel j / kWidth): where each column's output lies (past its
// channel's offset), and the runs of columns within one output row and one panel, which read one
// input row per patch element.
template <typename scalar_t>
struct PanelPixels {
  static constexpr int64_t kWidth = kPanelWidth<scalar_t>, kMaxWidth = kWidth * kMaxMicroKernelPanels;
  struct Segment {
    int64_t j, count, image, ih, iw;  // first column, length, image, input row/column at tap 0
  } segments[kMaxWidth];
  int64_t segment_count = 0, width, panels;
  int64_t out_offset[kMaxWidth];  // n * K * OH * OW + oh * OW + ow
  bool contiguous;                // one image's consecutive pixels, filling the panels

  PanelPixels(const Conv2dGeometry& g, int64_t first, int64_t width)
      : width(width), panels((width + kWidth - 1) / kWidth) {
    const int64_t pixels = g.out_h * g.out_w;
    for (int64_t j = 0; j < width;) {
      const int64_t n = (first + j) / pixels, p = (first + j) % pixels;
      const int64_t oh = p / g.out_w, ow = p % g.out_w;
      const int64_t count = std::min({width - j, g.out_w - ow, kWidth - j % kWidth});
      segments[segment_count++] = {j, count, n, oh * g.stride_h - g.pad_h, ow * g.stride_w - g.pad_w};
      for (int64_t i = 0; i < count; ++i) out_offset[j + i] = n * g.out_channels * pixels + p + i;
      j += count;
    }
    contiguous = width == panels * kWidth && out_offset[width - 1] == out_offset[0] + width - 1;
  }
};

}  // namespace

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "implicit_gemm_pack.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {
#include "implicit_gemm_pack.inc"
}  // namespace avx512
#pragma GCC pop_options

namespace {

template <typename scalar_t>
using PackPanels = decltype(&avx2::pack_panels<scalar_t>);

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// The filters in the micro-kernel's packed layout: per group and tile of the kernel's rows of
// output channels, packed[k][i] = channel i's filter value k (zero past the group's channels).
template <typename scalar_t>
at::Tensor pack_filters(const at::Tensor& weight, const Conv2dGeometry& g, int64_t rows) {
  const int64_t patch = g.patch_size(), kg = g.out_channels_per_group(), tiles = (kg + rows - 1) / rows;
  at::Tensor packed = at::empty({g.groups * tiles * patch * rows}, weight.options());
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* out = packed.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gt = begin; gt < end; ++gt) {
      const int64_t group = gt / tiles, first = gt % tiles * rows;
      scalar_t* dst = out + gt * patch * rows;
      for (int64_t i = 0; i < rows; ++i) {
        const scalar_t* src = w + (group * kg + first + i) * patch;
        const bool present = first + i < kg;
        for (int64_t k = 0; k < patch; ++k) dst[k * rows + i] = present ? src[k] : scalar_t(0);
      }
    }
  });
  return packed;
}

// The micro-kernel's A operand for a tile of output channels: the filters packed (pack_filters)
// or read in place (rows of the weight tensor).
template <typename scalar_t>
struct Filters {
  const scalar_t* data;
  bool packed;
  int64_t rows, patch, tiles;  // rows per tile, patch size, tiles per group

  const scalar_t* tile(int64_t group, int64_t tile, int64_t p0) const {
    return packed ? data + ((group * tiles + tile) * patch + p0) * rows
                  : data + (group * tiles + tile) * rows * patch + p0;
  }
  int64_t a_row() const { return packed ? 0 : patch; }
};

// Output pixels [first, end) of the batch and the output channels of tiles [tile_begin,
// tile_end) of every group, single-threaded.
template <typename scalar_t>
void forward_pixels(const MicroKernel<scalar_t>& kernel, PackPanels<scalar_t> pack_panels, const scalar_t* x,
                    const Filters<scalar_t>& filters,
                    const scalar_t* bias, scalar_t* y, const Conv2dGeometry& g, int64_t first, int64_t end,
                    int64_t tile_begin, int64_t tile_end) {
  constexpr int64_t kWidth = kPanelWidth<scalar_t>;
  const int64_t tile_rows = kernel.rows;
  // Per block of the patch (kernel.depth deep), the kernel's panels of pixels are packed and
  // multiplied by every tile of tile_rows filters in turn.
  const int64_t block_depth = kernel.depth;
  const int64_t patch = g.patch_size(), pixels = g.out_h * g.out_w;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t tiles = (kg + tile_rows - 1) / tile_rows;
  constexpr int64_t kMaxWidth = PanelPixels<scalar_t>::kMaxWidth;
  alignas(64) scalar_t panels[kMaxMicroKernelDepth * kMaxWidth];  // aligned: no vector load straddles two lines
  alignas(64) scalar_t edge[kMaxMicroKernelRows * kMaxWidth];       // tiles whose pixels are not contiguous in y
  for (int64_t group = 0; group < g.groups; ++group) {
    const scalar_t* x_group = x + group * cg * g.in_h * g.in_w;
    scalar_t* y_group = y + group * kg * pixels;
    for (int64_t p0 = 0; p0 == 0 || p0 < patch; p0 += block_depth) {  // once for an empty patch: bias
      const int64_t depth = std::min(block_depth, patch - p0);
      const bool accumulate = p0 > 0;
      for (int64_t pixel = first; pixel < end; pixel += kernel.panels * kWidth) {
        const PanelPixels<scalar_t> columns(g, pixel, std::min(kernel.panels * kWidth, end - pixel));
        pack_panels(x_group, g, p0, depth, columns, panels);
        for (int64_t tile = tile_begin; tile < std::min(tile_end, tiles); ++tile) {
          const int rows = static_cast<int>(std::min(tile_rows, kg - tile * tile_rows));
          const scalar_t* f = filters.tile(group, tile, p0);
          const scalar_t* b = bias != nullptr ? bias + group * kg + tile * tile_rows : nullptr;
          scalar_t* yk = y_group + tile * tile_rows * pixels;  // the tile's first channel, image 0
          scalar_t* out = columns.contiguous ? yk + columns.out_offset[0] : edge;
          const int64_t out_row = columns.contiguous ? pixels : kMaxWidth;
          if (!columns.contiguous && accumulate) {
            for (int i = 0; i < rows; ++i) {
              for (int64_t j = 0; j < columns.width; ++j) edge[i * kMaxWidth + j] = yk[i * pixels + columns.out_offset[j]];
            }
          }
          kernel.run(rows, static_cast<int>(columns.panels), depth, f, filters.a_row(), panels, depth * kWidth, b, accumulate, out, out_row);
          if (!columns.contiguous) {
            for (int i = 0; i < rows; ++i) {
              for (int64_t j = 0; j < columns.width; ++j) yk[i * pixels + columns.out_offset[j]] = edge[i * kMaxWidth + j];
            }
          }
        }
      }
    }
  }
}

#pragma GCC pop_options

}  // namespace

bool implicit_gemm_available() { return use_avx2(); }

at::Tensor implicit_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& bias, const Conv2dGeometry& g) {
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) return output;
  const int64_t total = g.batch * g.out_h * g.out_w, threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_ext_implicit_gemm_forward", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = output.mutable_data_ptr<scalar_t>();
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const auto pack_panels = use_avx512() ? &avx512::pack_panels<scalar_t> : &avx2::pack_panels<scalar_t>;
    const int64_t tiles = (g.out_channels_per_group() + kernel.rows - 1) / kernel.rows;
    if (g.groups == 1 && total < threads * kSplitPixels) {
      // Few pixels (deep layers of single images): chunks of them would not balance, and each
      // would read all the filters. The threads split the output channels instead, reading
      // the filters in place (packing them would cost more than the few blocks of pixels save).
      const Filters<scalar_t> filters{weight.const_data_ptr<scalar_t>(), false, kernel.rows, g.patch_size(), tiles};
      at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
        forward_pixels(kernel, pack_panels, x, filters, b, y, g, 0, total, begin, end);
      });
      return;
    }
    // The batch's pixels in chunks whose output stays in L2 while the patch's blocks pass over
    // it, the same number for every thread, whole blocks each (but for the last).
    const int64_t cache_pixels = std::max<int64_t>(kMinChunkPixels, kChunkElements / std::max<int64_t>(1, g.out_channels));
    const int64_t chunks = threads * ((total + threads * cache_pixels - 1) / (threads * cache_pixels));
    const int64_t chunk = ((total + chunks - 1) / chunks + kBlockPixels - 1) / kBlockPixels * kBlockPixels;
    const at::Tensor packed = pack_filters<scalar_t>(weight, g, kernel.rows);
    const Filters<scalar_t> filters{packed.const_data_ptr<scalar_t>(), true, kernel.rows, g.patch_size(), tiles};
    at::parallel_for(0, (total + chunk - 1) / chunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        forward_pixels(kernel, pack_panels, x, filters, b, y, g, c * chunk, std::min(total, (c + 1) * chunk), 0, tiles);
      }
    });
  });
  return output;
}

}  // namespace conv_ext
