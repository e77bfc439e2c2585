// Each task takes a band of output rows of one image: the input rows they read are copied
// channels-innermost and zero-padded into a band that stays in L2 (bands.h), and the output
// rows are summed in another, moved to the output's layout at the end. A tile of one output
// row's pixels (the micro-kernel's rows, stride x channels apart in the band, each pixel's patch
// read in place through a table of offsets) times two panels of output channels is one product
// over the patch, in blocks of the kernel's depth; the filters are the packed operand, whose
// block stays in L1 while the band's tiles pass over it. A grouped convolution is that of each
// group on its channels: the bands hold one group's channels, problems (group, image) the tasks.
#include "channels_last_gemm_conv2d.h"

#include "aligned_vector.h"
#include "bands.h"
#include "cpu_features.h"
#include "micro_kernel.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

namespace conv_ext {
namespace {

// Bytes of a band's input and output: about a core's L2, which holds them while every tap adds
// to the output.
constexpr int64_t kBandBytes = int64_t{1} << 20;

// Input columns that a row of output reads, and input rows that output_rows rows read.
int64_t band_input_width(const Conv2dGeometry& g) { return (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1; }
int64_t band_input_rows(const Conv2dGeometry& g, int64_t output_rows) {
  return (output_rows - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
}

// Bands of output rows whose input rows (channels-innermost) and output rows (out_pixel values
// per pixel) stay in L2.
Bands output_bands(const Conv2dGeometry& g, int64_t out_pixel, int64_t element_size) {
  const int64_t input_row = band_input_width(g) * g.in_channels;  // elements of a band's input row
  return Bands(g.out_h, g.batch, g.out_h, (g.stride_h * input_row + g.out_w * out_pixel) * element_size,
               band_input_rows(g, 1) * input_row * element_size, kBandBytes);
}

// A group's packed filters larger than a core's L2 (every thread on the group's problems reads
// them all) are written with non-temporal stores, sparing the reads of the lines they overwrite:
// 3x3/2 128->256 @28 at batch 1 (1.2 MB) ran 0.70-0.73 ms streamed against 0.90-1.15 ms through the
// cache in the same minutes (the machine's shared caches busy), forward 0.89x -> 1.06x torch (8
// alternating processes); at batch 8 alike. Where a thread's groups' filters stay in its L2
// (ResNeXt's 32 groups, 1.2 MB in all) streaming them cost 3%.
constexpr int64_t kStreamedPackBytes = int64_t{1} << 20;

// One 64-byte line (W float32 or float64) from src (in L1) to dst, both 64-byte aligned,
// non-temporally when stream.
inline void copy_line(void* dst, const void* src, bool stream) {
  if (!stream) {
    std::memcpy(dst, src, 64);
    return;
  }
  auto* to = static_cast<__m128i*>(dst);
  const auto* from = static_cast<const __m128i*>(src);
  for (int q = 0; q < 4; ++q) _mm_stream_si128(to + q, _mm_load_si128(from + q));
}

// The micro-kernel's packed panels of W columns of each group's filters (group g's at
// w + g * group_stride, its panels at packed + g * panels * steps * W):
// packed[panel][t][d][j] = w[(panel * W + j) * column_stride + d * depth_stride + taps[t]] for the
// columns that exist (zero past them), step t * depth + d of the product at that times W. The
// forward's columns are the output channels, the input gradient's the input channels. taps is
// an order of all the filter's taps (0 to filter - 1; {0} for 1x1 filters).
template <typename scalar_t>
at::Tensor pack_panels(const at::Tensor& weight, int64_t groups, int64_t group_stride, int64_t columns,
                       int64_t column_stride, int64_t depth, int64_t depth_stride, const std::vector<int64_t>& taps) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const int64_t filter = static_cast<int64_t>(taps.size());
  const int64_t panels = (columns + W - 1) / W, steps = filter * depth;
  at::Tensor packed = at::empty({groups * panels * steps * W}, weight.options());
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* out = packed.mutable_data_ptr<scalar_t>();
  const auto transpose = transpose_for_this_cpu<scalar_t>();
  const bool stream = packed.nbytes() / groups > kStreamedPackBytes && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  at::parallel_for(0, groups * panels, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<scalar_t> lines(filter > 1 ? W * filter * W : 0);
    for (int64_t gp = begin; gp < end; ++gp) {
      const int64_t p = gp % panels, present = std::min(W, columns - p * W);
      const scalar_t* src = w + gp / panels * group_stride + p * W * column_stride;  // the panel's filters
      scalar_t* dst = out + gp * steps * W;
      if (filter == 1 && depth_stride == 1) {  // 1x1 filters, each column's channels a run: transposed whole
        if (present < W) std::fill(dst, dst + steps * W, scalar_t(0));
        transpose(src, column_stride, present, depth, dst, W, false);
        continue;
      }
      if (filter == 1) {  // 1x1 filters, each channel's columns a run: copied
        for (int64_t d = 0; d < depth; ++d, dst += W) {
          for (int64_t j = 0; j < present; ++j) dst[j] = src[j * column_stride + d * depth_stride + taps[0]];
          std::fill(dst + present, dst + W, scalar_t(0));
        }
        continue;
      }
      // Per block of W channels, the columns' runs transposed into `lines` (in L1), whose lines
      // are then copied to their steps, W consecutive ones per tap. Transposed run by run
      // straight to their steps (lines depth * W apart, in one set of L1), the forward's packing
      // had taken 15-30% of 3x3/2 128->256 @28 at batch 1, this way 9% (perf; forward 0.90x ->
      // 0.93x torch, medians of 8 fresh processes); element by element the input gradient's
      // had taken a fifth of it. The forward's channels' runs are adjacent, transposed at once.
      // Columns past the filters: their sums are never stored, but garbage might hold denormals.
      if (present < W) std::fill(lines.begin(), lines.end(), scalar_t(0));
      for (int64_t d0 = 0; d0 < depth; d0 += W) {
        const int64_t channels = std::min(W, depth - d0);
        if (depth_stride == filter) {
          transpose(src + d0 * filter, column_stride, present, channels * filter, lines.data(), W, false);
        } else {
          for (int64_t d = 0; d < channels; ++d) {
            transpose(src + (d0 + d) * depth_stride, column_stride, present, filter, lines.data() + d * filter * W, W, false);
          }
        }
        for (int64_t t = 0; t < filter; ++t) {
          for (int64_t d = 0; d < channels; ++d) {
            copy_line(dst + (t * depth + d0 + d) * W, lines.data() + (d * filter + taps[t]) * W, stream);
          }
        }
      }
    }
    if (stream) _mm_sfence();  // the non-temporal stores reach memory before the threads join
  });
  return packed;
}

// Pixels of a block of the weight gradient's products whose input lines and grad_output panel
// (a cache line a pixel each, AVX2's kernel taking one panel) fill a 32 KiB L1 together.
constexpr int64_t kLineBlockPixels = 256;

// The fewest tiles of at most `most` pixels for a row of `count`, as even as they come (14
// pixels: 7 + 7, not 12 + 2): their pixels.
int64_t even_tile_pixels(int64_t count, int64_t most) {
  const int64_t tiles = (count + most - 1) / most;
  return (count + tiles - 1) / tiles;
}

// One group's convolution (groups 1, its channels), whose batch is the problems (group, image)
// of g: the geometry that the bands and products below see.
Conv2dGeometry one_group(const Conv2dGeometry& g) {
  Conv2dGeometry one = g;
  one.batch = g.batch * g.groups;
  one.in_channels = g.in_channels_per_group();
  one.out_channels = g.out_channels_per_group();
  one.groups = 1;
  return one;
}

// A tensor of g's as one_group(g)'s: problem p is image p % batch, group p / batch (a thread's
// run of problems shares a group's filters), which fill_band and store_band read or write
// through the layout of a group's channels from the group's first.
struct GroupedLayout {
  Layout layout;
  int64_t batch;
  GroupedLayout(const at::Tensor& t, const Conv2dGeometry& g) : layout(t), batch(g.batch) { layout.channels /= g.groups; }
  int64_t group(int64_t p) const { return p / batch; }
  int64_t image(int64_t p) const { return p % batch; }
  int64_t offset(int64_t p) const { return group(p) * layout.channels * layout.c; }  // of the group's first channel
};

// Where step k = tap * C + c of a pixel's patch lies in an input band (pixels C apart, rows
// band_w pixels long), from the pixel's first tap.
std::vector<int64_t> patch_offsets(const Conv2dGeometry& g, int64_t band_w) {
  const int64_t C = g.in_channels;
  std::vector<int64_t> offsets;
  offsets.reserve(g.kernel_h * g.kernel_w * C);
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      for (int64_t c = 0; c < C; ++c) offsets.push_back((ki * g.dilation_h * band_w + kj * g.dilation_w) * C + c);
    }
  }
  return offsets;
}

// Whether kernel row ki of output row oh's patches lies inside the image, not in the padding
// (whose products are zeros: torch's oneDNN skips them, which had made dilated and tall kernels
// on small images 1.1-1.6x slower here than there).
bool kernel_row_inside(const Conv2dGeometry& g, int64_t oh, int64_t ki) {
  const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
  return ih >= 0 && ih < g.in_h;
}

// Of [begin, end), the range of i where inside(i) holds (it holds on one range), or none.
template <typename Inside>
std::pair<int64_t, int64_t> range_inside(int64_t begin, int64_t end, Inside inside) {
  while (begin < end && !inside(begin)) ++begin;
  while (end > begin && !inside(end - 1)) --end;
  return {begin, end};
}

// Whether kernel column kj of output column ow's patches lies inside the image.
bool kernel_column_inside(const Conv2dGeometry& g, int64_t ow, int64_t kj) {
  const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
  return iw >= 0 && iw < g.in_w;
}

// A tile of an output row's pixels [first, first + pixels) and the kernel columns [kj_begin,
// kj_end) its products take: those inside the image for some of its pixels (all of them where
// none is: zeros).
struct ColumnTile {
  int64_t first, pixels, kj_begin, kj_end;
};

// The cost of a tile per kernel column, in pixels' products: at least kLatencyRows pixels (with
// fewer the micro-kernel's sums in flight no longer hide its FMAs' latency) and kTileOverhead
// more for loading and storing its sums (fitted to 3x3 dilated by 4, 512 @14 at batch 8: cut
// into tiles of 4, 6 and 4 pixels, two of them skipping a column, it ran 1.08x faster, not the
// 1.24x its products promise).
constexpr int64_t kLatencyRows = 4, kTileOverhead = 3;

// An output row's tiles of at most `most` pixels. Where the padding's columns are a large part of
// some pixels' patches (dilated kernels on small images: dilation 4 on 14 columns leaves a fifth
// of the products in the padding, which oneDNN skips), the row is cut where the columns inside
// change, so that tiles skip the kernel columns none of their pixels reads inside; only where the
// products saved outweigh the shorter tiles' cost, which leaves most layers one run of even tiles.
std::vector<ColumnTile> column_tiles(const Conv2dGeometry& g, int64_t most) {
  struct Run {
    int64_t first, end, kj_begin, kj_end;
  };
  std::vector<Run> runs;  // of columns with the same kernel columns inside
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    auto [kj_begin, kj_end] = range_inside(0, g.kernel_w, [&](int64_t kj) { return kernel_column_inside(g, ow, kj); });
    if (kj_begin == kj_end) kj_begin = 0, kj_end = g.kernel_w;
    if (runs.empty() || runs.back().kj_begin != kj_begin || runs.back().kj_end != kj_end) {
      runs.push_back({ow, ow + 1, kj_begin, kj_end});
    } else {
      runs.back().end = ow + 1;
    }
  }
  // The cost of a piece of `count` columns in even tiles, each taking `columns` kernel columns.
  const auto cost = [&](int64_t count, int64_t columns) {
    const int64_t tile = even_tile_pixels(count, most), tiles = (count + tile - 1) / tile;
    const int64_t pixels = (tiles - 1) * std::max(tile, kLatencyRows) + std::max(count - (tiles - 1) * tile, kLatencyRows);
    return (pixels + tiles * kTileOverhead) * columns;
  };
  // The cheapest cut of the runs into pieces (at most 2 runs per kernel column and 1): best[j]
  // for runs [0, j), its last piece runs [cut[j], j) and takes kernel columns [from[j], to[j]).
  const size_t n = runs.size();
  std::vector<int64_t> best(n + 1, std::numeric_limits<int64_t>::max()), from(n + 1), to(n + 1);
  std::vector<size_t> cut(n + 1, 0);
  best[0] = 0;
  for (size_t j = 1; j <= n; ++j) {
    int64_t kj_begin = g.kernel_w, kj_end = 0;
    for (size_t i = j; i-- > 0;) {
      kj_begin = std::min(kj_begin, runs[i].kj_begin), kj_end = std::max(kj_end, runs[i].kj_end);
      const int64_t total = best[i] + cost(runs[j - 1].end - runs[i].first, kj_end - kj_begin);
      if (total <= best[j]) best[j] = total, cut[j] = i, from[j] = kj_begin, to[j] = kj_end;  // ties: the longer piece
    }
  }
  // A cut that promises less than 5% is within the model's error: the row stays one piece.
  int64_t kj_begin = g.kernel_w, kj_end = 0;
  for (const Run& run : runs) kj_begin = std::min(kj_begin, run.kj_begin), kj_end = std::max(kj_end, run.kj_end);
  if (best[n] * 20 > cost(g.out_w, kj_end - kj_begin) * 19) cut[n] = 0, from[n] = kj_begin, to[n] = kj_end;
  std::vector<size_t> ends;  // of the pieces, last first
  for (size_t j = n; j > 0; j = cut[j]) ends.push_back(j);
  std::vector<ColumnTile> tiles;
  for (auto j = ends.rbegin(); j != ends.rend(); ++j) {
    const int64_t first = runs[cut[*j]].first, end = runs[*j - 1].end, tile = even_tile_pixels(end - first, most);
    for (int64_t ow = first; ow < end; ow += tile) tiles.push_back({ow, std::min(tile, end - ow), from[*j], to[*j]});
  }
  return tiles;
}

// Output rows [0, rows) of a band, the image's rows from first_row: out[r][ow][k] (pixels panels
// * W apart) from the input band (pixels `channels` apart, rows band_w pixels long, starting at
// output row 0's first tap), each sum starting from bias[k] (bias null, or panels * W of them:
// zero past the channels), a row's pixels in `tiles` (column_tiles). The micro-kernel reads each
// pixel's patch in place through `offsets`, so its products are as deep as it takes, whatever
// the channels (the stem's 7 x 7 x 3 in one); kernel rows in the padding it skips
// (kernel_row_inside), and kernel columns that none of a tile's pixels reads inside: the steps
// of the others, kernel rows outermost in patch_offsets' order, are one range per kernel row, or
// one range where the tile takes every column.
template <typename scalar_t>
void forward_band(const MicroKernel<scalar_t>& kernel, const scalar_t* band, int64_t band_w, const scalar_t* packed,
                  int64_t panels, const int64_t* offsets, const scalar_t* bias, const Conv2dGeometry& g,
                  const std::vector<ColumnTile>& tiles, int64_t first_row, int64_t rows, scalar_t* out) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const int64_t channels = g.in_channels, out_pixel = panels * W, band_row = band_w * channels;
  const int64_t patch = g.kernel_h * g.kernel_w * channels, kernel_row_steps = g.kernel_w * channels;
  // Blocks of the kernel's depth, but a patch up to a quarter deeper in one, whose panels still
  // fit in L1: a short second block costs a pass over the output for little work (32 channels
  // per group, 288 deep: the grouped 3x3 @7 at batch 8 1.07x faster, Zen 5).
  const int64_t max_depth = patch <= kernel.depth * 5 / 4 ? patch : kernel.depth;
  for (int64_t p0 = 0; p0 < panels; p0 += kernel.panels) {
    const int tile_panels = static_cast<int>(std::min<int64_t>(kernel.panels, panels - p0));
    const Bias<scalar_t> start{bias != nullptr ? bias + p0 * W : nullptr, true};
    for (int64_t k0 = 0; k0 < patch; k0 += max_depth) {
      const int64_t k1 = std::min(k0 + max_depth, patch);
      for (int64_t r = 0; r < rows; ++r) {
        auto [ki_begin, ki_end] =
            range_inside(0, g.kernel_h, [&](int64_t ki) { return kernel_row_inside(g, first_row + r, ki); });
        if (ki_begin == ki_end) ki_begin = 0, ki_end = g.kernel_h;  // no row inside: all of them, zeros
        const scalar_t* a = band + r * g.stride_h * band_row;
        scalar_t* y = out + r * g.out_w * out_pixel + p0 * W;
        for (const ColumnTile& tile : tiles) {
          const bool whole_rows = tile.kj_begin == 0 && tile.kj_end == g.kernel_w;
          // The tile's ranges of steps: [first, first + length) and every kernel_row_steps on.
          const int64_t first = ki_begin * kernel_row_steps + tile.kj_begin * channels;
          const int64_t length = whole_rows ? (ki_end - ki_begin) * kernel_row_steps : (tile.kj_end - tile.kj_begin) * channels;
          const int64_t ranges = whole_rows ? 1 : ki_end - ki_begin;
          for (int64_t i = 0; i < ranges; ++i) {
            const int64_t begin = std::max(k0, first + i * kernel_row_steps), end = std::min(k1, first + i * kernel_row_steps + length);
            if (begin >= end) continue;
            kernel.run(static_cast<int>(tile.pixels), tile_panels, end - begin, a + tile.first * g.stride_w * channels,
                       g.stride_w * channels, packed + (p0 * patch + begin) * W, patch * W, offsets + begin, start,
                       begin == first ? Write::store : Write::add, y + tile.first * out_pixel, out_pixel);
          }
        }
      }
    }
  }
}

// Rows [begin, end) of a pointwise layer's product on NHWC tensors: out (rows `columns` apart)
// = bias + a (rows `depth` apart) times the packed panels of B, block by block of the depth as
// the implicit GEMM sums them. The rows are read in place or, given a_tiles, per block packed
// into it by `transpose` (kernel.rows x the block per tile).
template <typename scalar_t>
void pointwise_rows(const MicroKernel<scalar_t>& kernel, Transpose<scalar_t, scalar_t> transpose, const scalar_t* a,
                    int64_t depth, const scalar_t* packed, int64_t columns, const scalar_t* bias, int64_t begin,
                    int64_t end, scalar_t* a_tiles, Write write, scalar_t* out) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const int64_t panels = columns / W, rows = kernel.rows;
  const bool pack = a_tiles != nullptr;
  for (int64_t k0 = 0; k0 < depth; k0 += kernel.depth) {
    const int64_t block = std::min(kernel.depth, depth - k0);
    for (int64_t i = begin; pack && i < end; i += rows) {
      transpose(a + i * depth + k0, depth, std::min(rows, end - i), block, a_tiles + (i - begin) * block, rows, false);
    }
    for (int64_t p0 = 0; p0 < panels; p0 += kernel.panels) {
      const int tile_panels = static_cast<int>(std::min<int64_t>(kernel.panels, panels - p0));
      const scalar_t* panel = packed + (p0 * depth + k0) * W;
      const Bias<scalar_t> start{bias != nullptr ? bias + p0 * W : nullptr, true};
      for (int64_t i = begin; i < end; i += rows) {
        const scalar_t* tile = pack ? a_tiles + (i - begin) * block : a + i * depth + k0;
        kernel.run(static_cast<int>(std::min(rows, end - i)), tile_panels, block, tile, pack ? 0 : depth, panel, depth * W,
                   nullptr, start, k0 > 0 ? Write::add : write, out + i * columns + p0 * W, columns);
      }
    }
  }
}

// out (rows x columns, channels_last) = rows (channels_last) times B, whose packed panels come
// from pack_panels, in chunks of rows whose part of both stays in L2 while the panels' blocks
// pass over them.
at::Tensor pointwise_product(const at::Tensor& rows, const at::Tensor& packed, int64_t columns, const at::Tensor& bias) {
  const int64_t batch = rows.size(0), height = rows.size(2), width = rows.size(3), depth = rows.size(1);
  at::Tensor out = at::empty({batch, columns, height, width}, rows.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t count = batch * height * width;
  if (count == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "conv_ext_pointwise_product", [&] {
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const auto transpose = transpose_for_this_cpu<scalar_t>();
    const int64_t row_bytes = (std::min<int64_t>(depth, kernel.depth) + columns) * int64_t{sizeof(scalar_t)};
    const int64_t chunk = std::max<int64_t>(1, kBandBytes / 2 / row_bytes / kernel.rows) * kernel.rows;
    const scalar_t* a = rows.const_data_ptr<scalar_t>();
    const scalar_t* b = packed.const_data_ptr<scalar_t>();
    const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    // Rows that share a set of L1 (1024 float32 channels) have their tiles packed (measured on
    // one Zen 4 core: 1x1 1024->256 @14 at batch 8 1.13x and 2048->512 @7 1.12x faster packed;
    // 256->64 @56 1.08x and 384->64 @28 1.18x slower).
    const bool pack = rows_share_l1_set<scalar_t>(depth);
    // Streamed where one block of the depth writes it whole (aligned: whole panels per row).
    const bool stream = depth <= kernel.depth && streams(out);
    at::parallel_for(0, (count + kernel.rows - 1) / kernel.rows, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> a_tiles(pack ? chunk * std::min(depth, kernel.depth) : 0);
      for (int64_t first = begin * kernel.rows; first < std::min(count, end * kernel.rows); first += chunk) {
        pointwise_rows(kernel, transpose, a, depth, b, columns, bias_data, first,
                       std::min({count, end * kernel.rows, first + chunk}), pack ? a_tiles.data() : nullptr,
                       stream ? Write::stream : Write::store, y);
      }
      if (stream) _mm_sfence();  // the non-temporal stores reach memory before the threads join
    });
  });
  return out;
}

}  // namespace

bool channels_last_gemm_available() { return use_avx2(); }

at::Tensor channels_last_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                             const at::Tensor& bias, const Conv2dGeometry& g,
                                             at::MemoryFormat result_format) {
  TORCH_INTERNAL_ASSERT(g.in_channels > 0);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(result_format));
  if (output.numel() == 0) return output;
  const Conv2dGeometry one = one_group(g);
  dispatch_band_types(input.scalar_type(), [&](auto compute, auto io) {
    using scalar_t = decltype(compute);
    using io_t = decltype(io);
    constexpr int64_t W = kPanelWidth<scalar_t>;
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const BandMoves<io_t, scalar_t> read_x;
    const BandMoves<scalar_t, io_t> write_y;
    const int64_t C = one.in_channels, K = one.out_channels, panels = (K + W - 1) / W, out_pixel = panels * W;
    const int64_t filter = g.kernel_h * g.kernel_w;
    // Column k, step (tap, c): weight[group * K + k][c][tap] as given; flipped and transposed,
    // weight[group * C + c][k][filter - 1 - tap].
    const bool flipped = order == FilterOrder::flipped_transposed;
    std::vector<int64_t> taps(filter);
    std::iota(taps.begin(), taps.end(), int64_t{0});
    if (flipped) std::reverse(taps.begin(), taps.end());
    const at::Tensor packed = pack_panels<scalar_t>(weight, g.groups, K * C * filter, K, flipped ? filter : C * filter, C,
                                                    flipped ? K * filter : filter, taps);
    const Bands bands = output_bands(one, out_pixel, sizeof(scalar_t));
    const int64_t band_w = band_input_width(one), rows = bands.rows, bands_per_image = bands.per_image;
    const auto input_rows = [&](int64_t r) { return band_input_rows(one, r); };
    const std::vector<int64_t> offsets = patch_offsets(one, band_w);
    const std::vector<ColumnTile> tiles = column_tiles(one, kernel.rows_in_place(panels));
    const GroupedLayout x_layout(input, g), y_layout(output, g);
    const io_t* x = input.const_data_ptr<io_t>();
    const scalar_t* w = packed.const_data_ptr<scalar_t>();
    // Each group's bias padded to its panels, whose vectors the micro-kernel loads whole.
    at::Tensor padded_bias;
    if (bias.defined()) {
      padded_bias = at::zeros({g.groups, out_pixel}, bias.options());
      padded_bias.narrow(1, 0, K).copy_(bias.reshape({g.groups, K}));
    }
    const scalar_t* b = padded_bias.defined() ? padded_bias.const_data_ptr<scalar_t>() : nullptr;
    io_t* y = output.mutable_data_ptr<io_t>();
    const bool stream = streams(output);
    at::parallel_for(0, one.batch * bands_per_image, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> in_band(input_rows(rows) * band_w * C), out_band(rows * one.out_w * out_pixel);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / bands_per_image, oh0 = bands.first(task % bands_per_image), group = x_layout.group(p);
        const int64_t band_rows = bands.rows_of(task % bands_per_image);
        fill_band(read_x, x + x_layout.offset(p), x_layout.layout, x_layout.image(p), oh0 * one.stride_h - one.pad_h,
                  input_rows(band_rows), -one.pad_w, band_w, in_band.data());
        forward_band(kernel, in_band.data(), band_w, w + group * panels * C * filter * W, panels, offsets.data(),
                     b != nullptr ? b + group * out_pixel : nullptr, one, tiles, oh0, band_rows, out_band.data());
        store_band(write_y, out_band.data(), band_rows, one.out_w, y + y_layout.offset(p), y_layout.layout,
                   y_layout.image(p), oh0, out_pixel, stream);
      }
    });
  });
  return output;
}

bool channels_last_pointwise_applies(int64_t columns, at::ScalarType dtype) {
  return channels_last_gemm_available() && (dtype == at::kFloat || dtype == at::kDouble) &&
         columns % (64 / at::elementSize(dtype)) == 0;
}

at::Tensor channels_last_pointwise_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                           const Conv2dGeometry& g) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t K = g.out_channels, C = g.in_channels;
  at::Tensor packed;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_ext_pointwise_forward_pack", [&] {
    packed = pack_panels<scalar_t>(weight.contiguous(), 1, 0, K, C, C, 1, {0});  // column k, step c: w[k][c]
  });
  return pointwise_product(x, packed, K, bias.defined() ? bias.contiguous() : bias);
}

at::Tensor channels_last_pointwise_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                              const Conv2dGeometry& g) {
  const at::Tensor gy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t K = g.out_channels, C = g.in_channels;
  at::Tensor packed;
  AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "conv_ext_pointwise_grad_input_pack", [&] {
    packed = pack_panels<scalar_t>(weight.contiguous(), 1, 0, C, 1, K, C, {0});  // column c, step k: w[k][c]
  });
  return pointwise_product(gy, packed, C, at::Tensor());
}

// The taps of one dimension that reach the input positions of stride phase a (those with
// (position + pad) % stride == a): tap k and its offset e = (a - k * dilation) / stride <= 0
// from grad_output's position (position + pad) / stride.
struct PhaseTaps {
  std::vector<int64_t> taps, offsets;
  PhaseTaps(int64_t a, int64_t kernel, int64_t stride, int64_t dilation) {
    for (int64_t k = 0; k < kernel; ++k) {
      if ((a - k * dilation) % stride == 0) taps.push_back(k), offsets.push_back((a - k * dilation) / stride);
    }
  }
};

// The input gradient over bands of its rows, by stride phase: grad_input's pixels of phase (a, b)
// along a row are grad_output's consecutive pixels (channels-innermost in a zero-padded band)
// times the flipped filters' taps that reach that phase, one product over (taps, K) read in
// place through a table of offsets, written stride_w pixels apart into the band of grad_input.
at::Tensor channels_last_gemm_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                const Conv2dGeometry& g, at::MemoryFormat result_format) {
  TORCH_INTERNAL_ASSERT(g.out_channels > 0);
  at::Tensor grad_input = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options().memory_format(result_format));
  if (grad_input.numel() == 0) return grad_input;
  const Conv2dGeometry one = one_group(g);
  const int64_t sh = g.stride_h, sw = g.stride_w, K = one.out_channels, C = one.in_channels;
  std::vector<PhaseTaps> rows_taps, cols_taps;
  for (int64_t a = 0; a < sh; ++a) rows_taps.emplace_back(a, g.kernel_h, sh, g.dilation_h);
  for (int64_t b = 0; b < sw; ++b) cols_taps.emplace_back(b, g.kernel_w, sw, g.dilation_w);
  // grad_output's rows and columns that a band reads: from the most negative offset on.
  const int64_t top = (g.kernel_h - 1) * g.dilation_h / sh + 1, left = (g.kernel_w - 1) * g.dilation_w / sw + 1;
  const int64_t band_w = (g.in_w - 1 + g.pad_w) / sw + left + 1;
  dispatch_band_types(grad_output.scalar_type(), [&](auto compute, auto io) {
    using scalar_t = decltype(compute);
    using io_t = decltype(io);
    constexpr int64_t W = kPanelWidth<scalar_t>;
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const BandMoves<io_t, scalar_t> read_gy;
    const BandMoves<scalar_t, io_t> write_gx;
    const int64_t panels = (C + W - 1) / W, in_pixel = panels * W, band_row = band_w * K;
    // Each group's filters packed per panel of input channels, the taps phase by phase (each
    // tap reaches one phase), step (tap, k) of panel p's column j = weight[group * K + k][p * W +
    // j][kh][kw]; per phase, its first step and its offsets table over (its taps, K).
    struct Phase {
      int64_t first_step;
      std::vector<int64_t> offsets;
    };
    std::vector<Phase> phases(sh * sw);
    std::vector<int64_t> taps;  // kh * kernel_w + kw
    for (int64_t a = 0; a < sh; ++a) {
      for (int64_t b = 0; b < sw; ++b) {
        const PhaseTaps &r = rows_taps[a], &c = cols_taps[b];
        Phase& phase = phases[a * sw + b];
        phase.first_step = static_cast<int64_t>(taps.size()) * K;
        for (size_t i = 0; i < r.taps.size(); ++i) {
          for (size_t j = 0; j < c.taps.size(); ++j) {
            taps.push_back(r.taps[i] * g.kernel_w + c.taps[j]);
            for (int64_t k = 0; k < K; ++k) phase.offsets.push_back(r.offsets[i] * band_row + c.offsets[j] * K + k);
          }
        }
      }
    }
    const int64_t filter = g.kernel_h * g.kernel_w, steps = filter * K;
    const at::Tensor packed = pack_panels<scalar_t>(weight, g.groups, K * C * filter, C, filter, K, C * filter, taps);
    // Bands of grad_input rows whose output and grad_output rows stay in L2.
    const Bands bands(g.in_h, one.batch, g.in_h, (g.in_w * in_pixel + band_row / sh) * int64_t{sizeof(scalar_t)},
                      (top + 2) * band_row * int64_t{sizeof(scalar_t)}, kBandBytes);
    const int64_t rows = bands.rows, bands_per_image = bands.per_image;
    const GroupedLayout gy_layout(grad_output, g), gx_layout(grad_input, g);
    const io_t* gy = grad_output.const_data_ptr<io_t>();
    io_t* gx = grad_input.mutable_data_ptr<io_t>();
    const bool stream = streams(grad_input);
    at::parallel_for(0, one.batch * bands_per_image, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> gy_band(((rows - 1) / sh + top + 2) * band_row), out_band(rows * g.in_w * in_pixel);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / bands_per_image, ih0 = bands.first(task % bands_per_image), group = gy_layout.group(p);
        const int64_t band_rows = bands.rows_of(task % bands_per_image);
        const int64_t q0 = (ih0 + g.pad_h) / sh - top, q1 = (ih0 + band_rows - 1 + g.pad_h) / sh;  // grad_output rows
        fill_band(read_gy, gy + gy_layout.offset(p), gy_layout.layout, gy_layout.image(p), q0, q1 - q0 + 1, -left, band_w,
                  gy_band.data());
        std::fill(out_band.begin(), out_band.end(), scalar_t(0));  // pixels no tap reaches
        // Per phase and block of its filters (in L1), every row of the band in that phase.
        for (int64_t a = 0; a < sh; ++a) {
          const int64_t first_row = ih0 + ((a - (ih0 + g.pad_h)) % sh + sh) % sh;
          for (int64_t b = 0; b < sw; ++b) {
            const Phase& phase = phases[a * sw + b];
            const int64_t depth = static_cast<int64_t>(phase.offsets.size());
            const int64_t iw0 = ((b - g.pad_w) % sw + sw) % sw;  // a row's first pixel of phase b
            if (depth == 0 || iw0 >= g.in_w) continue;
            const int64_t count = (g.in_w - iw0 + sw - 1) / sw;
            const int64_t tile_pixels = even_tile_pixels(count, kernel.rows_in_place(panels));
            for (int64_t p0 = 0; p0 < panels; p0 += kernel.panels) {
              const int tile_panels = static_cast<int>(std::min<int64_t>(kernel.panels, panels - p0));
              for (int64_t k0 = 0; k0 < depth; k0 += kernel.depth) {
                const scalar_t* panel = packed.const_data_ptr<scalar_t>() + ((group * panels + p0) * steps + phase.first_step + k0) * W;
                for (int64_t ih = first_row; ih < ih0 + band_rows; ih += sh) {
                  const scalar_t* x = gy_band.data() + ((ih + g.pad_h) / sh - q0) * band_row + ((iw0 + g.pad_w) / sw + left) * K;
                  scalar_t* y = out_band.data() + ((ih - ih0) * g.in_w + iw0) * in_pixel + p0 * W;
                  for (int64_t i = 0; i < count; i += tile_pixels) {
                    kernel.run(static_cast<int>(std::min(tile_pixels, count - i)), tile_panels, std::min(kernel.depth, depth - k0),
                               x + i * K, K, panel, steps * W, phase.offsets.data() + k0, {},
                               k0 == 0 ? Write::store : Write::add, y + i * sw * in_pixel, sw * in_pixel);
                  }
                }
              }
            }
          }
        }
        store_band(write_gx, out_band.data(), band_rows, g.in_w, gx + gx_layout.offset(p), gx_layout.layout,
                   gx_layout.image(p), ih0, in_pixel, stream);
      }
    });
  });
  return grad_input;
}

// The weight gradient over the same bands: per run of taps along a kernel row,
// gw_run (taps * C x K) += the run's input (taps * C x pixels) times gy (pixels x K), on the
// micro-kernel with its rows as the run's (tap, input channel) entries, read in place from the
// input band through a table of the pixels' offsets, and its panels as output channels
// (grad_output packed per band into panels). A run is the kernel's whole row when its taps are
// adjacent (dilation_w 1), so that few channels still fill the kernel's rows (the stem's 7 taps
// x 3 channels fill 21 of 24), else one tap. Each thread sums its bands into its own
// (groups, runs, entries, K) buffer, of the groups its bands cover (a run of them: problems
// are ordered by group); a group's sums in several threads' buffers (at the runs' ends, or for
// one group) are added at the end, in the order of their bands (the same sum on every run).
// (Every group in every thread's buffer, zeroed and added, had made the weight gradient of
// ResNeXt's 1024 ch @7, 32 groups, 1.3x slower at batch 8 and 2.5x at batch 1: Zen 5.)
at::Tensor channels_last_gemm_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                                 const Conv2dGeometry& g) {
  TORCH_INTERNAL_ASSERT(g.in_channels > 0);
  const Conv2dGeometry one = one_group(g);
  const int64_t C = one.in_channels, K = one.out_channels;
  const int64_t run_taps = g.dilation_w == 1 ? g.kernel_w : 1, runs = g.kernel_h * g.kernel_w / run_taps;
  const int64_t entries = run_taps * C;  // of a run
  struct Sums {
    int64_t first_band, first_group;
    at::Tensor sums;  // (groups from first_group, runs, entries, padded K)
  };
  std::mutex sums_mutex;
  std::vector<Sums> sums;  // per thread
  dispatch_band_types(input.scalar_type(), [&](auto compute, auto io) {
    using scalar_t = decltype(compute);
    using io_t = decltype(io);
    constexpr int64_t W = kPanelWidth<scalar_t>;
    const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
    const BandMoves<io_t, scalar_t> read;
    const int64_t panels = (K + W - 1) / W, padded = panels * W;
    // Bands whose input and packed grad_output stay in L2, multiplied in blocks of pixels as
    // deep as the kernel takes.
    const Bands bands = output_bands(one, padded, sizeof(scalar_t));
    const int64_t band_w = band_input_width(one), rows = bands.rows, bands_per_image = bands.per_image;
    const auto input_rows = [&](int64_t r) { return band_input_rows(one, r); };
    // Where each pixel's input values lie a cache line or more past the last pixel's, a block's
    // input lines take as much of L1 as its grad_output panel (a line a pixel): the blocks are
    // then at most kLineBlockPixels deep, so that both stay in L1 while every run's entries pass
    // over them. AVX2's kernel depth, 1024, had read them from L2 (Zen 3, in-process A/B, weight
    // gradient at batch 8: 7x7 64 @28 1.15x faster, 128 @28 1.35x; the stem, whose input
    // pixels share lines, ran 1.03-1.06x slower in shorter blocks).
    const bool pixels_own_lines = C * g.stride_w * int64_t{sizeof(scalar_t)} >= 64;
    const int64_t gw_block_pixels = pixels_own_lines ? std::min(kernel.depth, kLineBlockPixels) : kernel.depth;
    const GroupedLayout x_layout(input, g), gy_layout(grad_output, g);
    const io_t* x = input.const_data_ptr<io_t>();
    const io_t* gy = grad_output.const_data_ptr<io_t>();
    at::parallel_for(0, one.batch * bands_per_image, 1, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // worker threads do not inherit it
      const int64_t first_group = gy_layout.group(begin / bands_per_image);
      const int64_t groups = gy_layout.group((end - 1) / bands_per_image) + 1 - first_group;
      at::Tensor sum_tensor = at::zeros({groups, runs, entries, padded}, compute_options<scalar_t>(input));
      scalar_t* sum = sum_tensor.mutable_data_ptr<scalar_t>();
      AlignedVector<scalar_t> in_band(input_rows(rows) * band_w * C);
      AlignedVector<scalar_t> gy_band(panels * rows * g.out_w * W);  // [panel][pixel][column]; zero past K
      std::vector<int64_t> offsets(rows * g.out_w);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / bands_per_image, oh0 = bands.first(task % bands_per_image);
        const int64_t band_rows = bands.rows_of(task % bands_per_image), pixels = band_rows * g.out_w;
        fill_band(read, x + x_layout.offset(p), x_layout.layout, x_layout.image(p), oh0 * g.stride_h - g.pad_h,
                  input_rows(band_rows), -g.pad_w, band_w, in_band.data());
        for (int64_t q = 0; q < pixels; ++q) offsets[q] = ((q / g.out_w * g.stride_h) * band_w + q % g.out_w * g.stride_w) * C;
        const Layout& l = gy_layout.layout;
        const io_t* gy_rows = gy + gy_layout.offset(p) + gy_layout.image(p) * l.n + oh0 * l.h;
        for (int64_t panel = 0; panel < panels; ++panel) {  // gy_band[panel][q][j] = gy[n, panel * W + j, pixel q of the band]
          const int64_t k0 = panel * W;
          gather_channels(read, gy_rows + k0 * l.c, l, pixels, std::min(W, K - k0), gy_band.data() + panel * pixels * W, W);
        }
        scalar_t* group_sum = sum + (gy_layout.group(p) - first_group) * runs * entries * padded;
        // Per block of pixels and of grad_output's panels (in L1), every run's entries.
        const int64_t depth = even_tile_pixels(pixels, gw_block_pixels), tile = kernel.rows_in_place(panels);
        for (int64_t d0 = 0; d0 < pixels; d0 += depth) {
          for (int64_t p0 = 0; p0 < panels; p0 += kernel.panels) {
            const scalar_t* panel = gy_band.data() + p0 * pixels * W + d0 * W;
            for (int64_t run = 0; run < runs; ++run) {
              const int64_t tap = run * run_taps, ki = tap / g.kernel_w;  // the run's first
              const scalar_t* a = in_band.data() + (ki * g.dilation_h * band_w + tap % g.kernel_w * g.dilation_w) * C;
              // The block's pixels whose rows the run reads inside the image (kernel_row_inside).
              const auto [r_begin, r_end] =
                  range_inside(0, band_rows, [&](int64_t r) { return kernel_row_inside(g, oh0 + r, ki); });
              const int64_t q0 = std::max(d0, r_begin * g.out_w), q1 = std::min({d0 + depth, pixels, r_end * g.out_w});
              if (q0 >= q1) continue;
              for (int64_t i = 0; i < entries; i += tile) {
                kernel.run(static_cast<int>(std::min(tile, entries - i)),
                           static_cast<int>(std::min<int64_t>(kernel.panels, panels - p0)), q1 - q0, a + i, 1,
                           panel + (q0 - d0) * W, pixels * W, offsets.data() + q0, {}, Write::add,
                           group_sum + (run * entries + i) * padded + p0 * W, padded);
              }
            }
          }
        }
      }
      const std::lock_guard<std::mutex> lock(sums_mutex);
      sums.push_back({begin, first_group, sum_tensor});
    });
  });
  std::sort(sums.begin(), sums.end(), [](const Sums& a, const Sums& b) { return a.first_band < b.first_band; });
  std::vector<at::Tensor> group_sums(g.groups);  // each group's (runs, entries, padded K)
  for (const Sums& s : sums) {
    for (int64_t i = 0; i < s.sums.size(0); ++i) {
      at::Tensor& sum = group_sums[s.first_group + i];
      if (sum.defined()) {
        sum.add_(s.sums[i]);
      } else {
        sum = s.sums[i];
      }
    }
  }
  // (groups, runs, run_taps * C, padded K) -> (groups * K, C, kh, kw) by register transposes:
  // each group's (taps x C) x K sums to K x (taps x C), then each filter's taps x C to C x taps
  // (torch's copy of the permuted view had taken 0.37 of a 0.86 ms weight gradient: 3x3/2
  // 128->256 @28 at batch 1, Zen 5).
  const int64_t taps = g.kernel_h * g.kernel_w, filter = taps * C, padded = group_sums.front().size(2);
  at::Tensor by_filter = at::empty({g.groups * K * filter}, group_sums.front().options());
  at::Tensor grad_weight = at::empty({g.out_channels, C, g.kernel_h, g.kernel_w}, group_sums.front().options());
  AT_DISPATCH_FLOATING_TYPES(grad_weight.scalar_type(), "conv_ext_channels_last_gemm_grad_weight_order", [&] {
    constexpr int64_t W = kPanelWidth<scalar_t>;
    const auto transpose = transpose_for_this_cpu<scalar_t>();
    scalar_t* rows = by_filter.mutable_data_ptr<scalar_t>();
    scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (K + W - 1) / W;
    at::parallel_for(0, g.groups * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t group = task / blocks, k0 = task % blocks * W, count = std::min(W, K - k0);
        scalar_t* first = rows + (group * K + k0) * filter;
        transpose(group_sums[group].const_data_ptr<scalar_t>() + k0, padded, filter, count, first, filter, false);
        for (int64_t k = 0; k < count; ++k) {
          transpose(first + k * filter, C, taps, C, out + (group * K + k0 + k) * filter, taps, false);
        }
      }
    });
  });
  return grad_weight;
}

}  // namespace conv_ext
