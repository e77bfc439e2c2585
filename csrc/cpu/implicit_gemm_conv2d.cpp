// The GEMM follows BLIS's design (Van Zee & van de Geijn): per block of the patch, a panel of
// the im2col matrix kWidth pixels wide is packed contiguously, then the micro-kernel accumulates
// each tile of its rows' output channels in registers, one broadcast of a filter value per
// channel and patch element. The filters are packed once per call, each tile's patch-major, so
// the kernel broadcasts from one stream instead of one per row. The input is first split into
// zero-padded stride phases (PhaseLayout), where every panel row is a contiguous run: panels
// made of whole runs of an output row are not packed at all, the micro-kernel reads them in
// place through a table of the patch's offsets.
#include "implicit_gemm_conv2d.h"

#include "bands.h"
#include "cpu_features.h"
#include "micro_kernel.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace conv_ext {
namespace {

// Output elements a chunk of pixels keeps (about half a 1 MiB L2 of float32), and the pixels of
// a chunk at least: a few of the micro-kernel's column blocks (of at most kBlockPixels, two
// panels of 16 float32).
constexpr int64_t kChunkElements = int64_t{1} << 17;
constexpr int64_t kMinChunkPixels = 64, kBlockPixels = 32;
// Below this many pixels per thread, the threads split the output channels instead; from
// kPackedFilterPixels in the batch on, they pack filters whose rows share a set of L1.
constexpr int64_t kSplitPixels = 4 * kBlockPixels, kPackedFilterPixels = 4 * kBlockPixels;

// The input as the panels read it: zero-padded and split by stride phase, plane (n, c, a, b)
// holding x[n, c, i * sh + a - ph, j * sw + b - pw] at (i, j). Tap (ki, kj) of output pixel
// (oh, ow) is then in phase (ki * dh % sh, kj * dw % sw) at (oh + ki * dh / sh, ow + kj * dw / sw),
// so each patch element of a run of an output row's pixels is one contiguous run of a plane:
// packing copies runs, with no bounds checks or strided gathers (the 7x7/2 stem's packing had
// cost as much as its FMAs). With stride 1 and no padding the planes are the input itself.
struct PhaseLayout {
  int64_t rows, cols, channel, image;  // a plane's size; elements per channel (all its phases) and image
  std::vector<int64_t> taps;           // per patch element (c, ki, kj) of a group: its offset

  explicit PhaseLayout(const Conv2dGeometry& g)
      : rows(g.out_h + (g.kernel_h - 1) * g.dilation_h / g.stride_h),
        cols(g.out_w + (g.kernel_w - 1) * g.dilation_w / g.stride_w),
        channel(g.stride_h * g.stride_w * rows * cols), image(g.in_channels * channel) {
    taps.reserve(g.patch_size());
    for (int64_t c = 0; c < g.in_channels_per_group(); ++c) {
      for (int64_t dy = 0; dy < g.kernel_h * g.dilation_h; dy += g.dilation_h) {
        for (int64_t dx = 0; dx < g.kernel_w * g.dilation_w; dx += g.dilation_w) {
          const int64_t phase = dy % g.stride_h * g.stride_w + dx % g.stride_w;
          taps.push_back(c * channel + (phase * rows + dy / g.stride_h) * cols + dx / g.stride_w);
        }
      }
    }
  }

  static bool is_input(const Conv2dGeometry& g) {
    return g.unit_stride() && g.pad_h == 0 && g.pad_w == 0;
  }
};

// The output pixels q of the batch (q = n * OH * OW + oh * OW + ow) that the micro-kernel's
// panels cover (column j in panel j / kWidth): where each column's output lies (past its
// channel's offset), and the runs of columns within one output row (or rows that join) and one
// panel, each of which reads one run of a phase plane per patch element.
template <typename scalar_t>
struct PanelPixels {
  static constexpr int64_t kWidth = kPanelWidth<scalar_t>, kMaxWidth = kWidth * kMaxMicroKernelPanels;
  struct Segment {
    int64_t j, count, source;  // first column, length, its tap-0 element in the phase planes
  } segments[kMaxWidth];
  int64_t segment_count = 0, width, panels;
  int64_t out_offset[kMaxWidth];  // n * K * OH * OW + oh * OW + ow
  bool contiguous;                // one image's consecutive pixels, filling the panels
  bool whole_runs;                // each panel one run of kWidth pixels

  PanelPixels(const Conv2dGeometry& g, const PhaseLayout& layout, int64_t first, int64_t width)
      : width(width), panels((width + kWidth - 1) / kWidth) {
    const int64_t pixels = g.out_h * g.out_w;
    // Where the planes' rows are as wide as the output's (kernels one column wide), a run goes on
    // into the next row.
    const bool rows_join = layout.cols == g.out_w;
    for (int64_t j = 0; j < width;) {
      const int64_t n = (first + j) / pixels, p = (first + j) % pixels;
      const int64_t oh = p / g.out_w, ow = p % g.out_w;
      const int64_t count = std::min({width - j, rows_join ? pixels - p : g.out_w - ow, kWidth - j % kWidth});
      segments[segment_count++] = {j, count, n * layout.image + oh * layout.cols + ow};
      for (int64_t i = 0; i < count; ++i) out_offset[j + i] = n * g.out_channels * pixels + p + i;
      j += count;
    }
    contiguous = width == panels * kWidth && out_offset[width - 1] == out_offset[0] + width - 1;
    whole_runs = width == panels * kWidth && segment_count == panels;
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
  // By register transposes: element by element, reading `rows` streams 4 KiB apart (1024
  // channels), the packing had taken a fifth of 1x1 1024->256 @14 at batch 1 on one Zen 4 core.
  const auto transpose = transpose_for_this_cpu<scalar_t>();
  at::parallel_for(0, g.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gt = begin; gt < end; ++gt) {
      const int64_t group = gt / tiles, first = gt % tiles * rows;
      scalar_t* dst = out + gt * patch * rows;
      const int64_t present = std::min(rows, kg - first);
      if (present < rows) std::fill(dst, dst + patch * rows, scalar_t(0));
      transpose(w + (group * kg + first) * patch, patch, present, patch, dst, rows, false);
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
                    const PhaseLayout& layout, const Filters<scalar_t>& filters,
                    const scalar_t* bias, scalar_t* y, const Conv2dGeometry& g, int64_t first, int64_t end,
                    int64_t tile_begin, int64_t tile_end, bool stream) {
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
    const scalar_t* x_group = x + group * cg * layout.channel;
    scalar_t* y_group = y + group * kg * pixels;
    for (int64_t p0 = 0; p0 == 0 || p0 < patch; p0 += block_depth) {  // once for an empty patch: bias
      const int64_t depth = std::min(block_depth, patch - p0);
      const bool accumulate = p0 > 0, last = p0 + depth >= patch;
      for (int64_t pixel = first; pixel < end; pixel += kernel.panels * kWidth) {
        const PanelPixels<scalar_t> columns(g, layout, pixel, std::min(kernel.panels * kWidth, end - pixel));
        // Panels of whole runs are read in place (with packed filters), the others packed.
        const int64_t* taps = layout.taps.data() + p0;
        const bool gather = filters.packed && columns.whole_runs;
        const scalar_t* b_panels = gather ? x_group + columns.segments[0].source : panels;
        const int64_t b_step = !gather ? depth * kWidth : columns.panels > 1 ? columns.segments[1].source - columns.segments[0].source : 0;
        if (!gather) pack_panels(x_group, taps, depth, columns, panels);
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
          const bool aligned = reinterpret_cast<uintptr_t>(out) % 64 == 0 && out_row * sizeof(scalar_t) % 64 == 0;
          const Write write = accumulate ? Write::add : stream && last && columns.contiguous && aligned ? Write::stream : Write::store;
          kernel.run(rows, static_cast<int>(columns.panels), depth, f, filters.a_row(), b_panels, b_step, gather ? taps : nullptr, {b}, write, out, out_row);
          if (!columns.contiguous) {
            for (int i = 0; i < rows; ++i) {
              for (int64_t j = 0; j < columns.width; ++j) yk[i * pixels + columns.out_offset[j]] = edge[i * kMaxWidth + j];
            }
          }
        }
      }
    }
  }
  if (stream) _mm_sfence();  // the non-temporal stores reach memory before the threads join
}

#pragma GCC pop_options

// The input in PhaseLayout's planes (the input itself where they are).
template <typename scalar_t>
at::Tensor phase_planes(const at::Tensor& input, const Conv2dGeometry& g, const PhaseLayout& layout) {
  if (PhaseLayout::is_input(g)) return input;
  at::Tensor phases = at::empty({g.batch * layout.image}, input.options());
  const auto split_phases = use_avx512() ? &avx512::split_phases<scalar_t> : &avx2::split_phases<scalar_t>;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  scalar_t* out = phases.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.batch * g.in_channels * g.stride_h * g.stride_w, 1, [&](int64_t begin, int64_t end) {
    split_phases(x, g, layout, begin, end, out);
  });
  return phases;
}

}  // namespace

bool implicit_gemm_available() { return use_avx2(); }

namespace {
template <typename scalar_t>
void gather_row_one_by_one(const scalar_t* row, int64_t width, int64_t first, int64_t step, int64_t count,
                           scalar_t* dst) {
  for (int64_t j = 0; j < count; ++j) {
    const int64_t column = first + j * step;
    dst[j] = column >= 0 && column < width ? row[column] : scalar_t(0);
  }
}
}  // namespace

template <typename scalar_t>
GatherRow<scalar_t> row_gatherer() {
  if (use_avx512()) return &avx512::gather_row<scalar_t>;
  return use_avx2() ? &avx2::gather_row<scalar_t> : &gather_row_one_by_one<scalar_t>;
}
template GatherRow<float> row_gatherer<float>();
template GatherRow<double> row_gatherer<double>();

at::Tensor implicit_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& bias, const Conv2dGeometry& g) {
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) return output;
  const int64_t total = g.batch * g.out_h * g.out_w, threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_ext_implicit_gemm_forward", [&] {
    const PhaseLayout layout(g);
    const at::Tensor phases = phase_planes<scalar_t>(input, g, layout);
    const scalar_t* x = phases.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = output.mutable_data_ptr<scalar_t>();
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const auto pack_panels = use_avx512() ? &avx512::pack_panels<scalar_t> : &avx2::pack_panels<scalar_t>;
    const int64_t tiles = (g.out_channels_per_group() + kernel.rows - 1) / kernel.rows;
    const bool stream = streams(output);
    if (g.groups == 1 && total < threads * kSplitPixels) {
      // Few pixels (deep layers of single images): chunks of them would not balance, and each
      // would read all the filters. The threads split the output channels instead, reading
      // the filters in place (packing them would cost more than the few blocks of pixels save),
      // unless their rows share a set of L1 and enough pixels repay the packing (2 threads on
      // Zen 4: 1x1 1024->256 @14, 196 pixels, 1.2-1.5x faster packed; 2048->512 @7, 49 pixels,
      // alike).
      const bool pack = rows_share_l1_set<scalar_t>(g.patch_size()) && total >= kPackedFilterPixels;
      const at::Tensor packed = pack ? pack_filters<scalar_t>(weight, g, kernel.rows) : weight;
      const Filters<scalar_t> filters{packed.const_data_ptr<scalar_t>(), pack, kernel.rows, g.patch_size(), tiles};
      at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
        forward_pixels(kernel, pack_panels, x, layout, filters, b, y, g, 0, total, begin, end, stream);
      });
      return;
    }
    // Each thread takes the same number of blocks of pixels (within one), in chunks whose output
    // stays in L2 while the patch's blocks pass over it.
    const int64_t cache_pixels = std::max<int64_t>(kMinChunkPixels, kChunkElements / std::max<int64_t>(1, g.out_channels));
    const int64_t blocks = (total + kBlockPixels - 1) / kBlockPixels;
    const int64_t chunk_blocks = (cache_pixels + kBlockPixels - 1) / kBlockPixels;
    const at::Tensor packed = pack_filters<scalar_t>(weight, g, kernel.rows);
    const Filters<scalar_t> filters{packed.const_data_ptr<scalar_t>(), true, kernel.rows, g.patch_size(), tiles};
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; c += chunk_blocks) {
        forward_pixels(kernel, pack_panels, x, layout, filters, b, y, g, c * kBlockPixels,
                       std::min(total, std::min(end, c + chunk_blocks) * kBlockPixels), 0, tiles, stream);
      }
    });
  });
  return output;
}

}  // namespace conv_ext
