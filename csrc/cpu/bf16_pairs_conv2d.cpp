// bfloat16 convolutions as implicit GEMMs on units that multiply pairs of bfloat16 (AMX's tiles
// or AVX512_BF16's vectors, see the header): the forward (and so the input gradient, a forward
// on the flipped filters or per stride phase) and the weight gradient. Both sum in float32 and
// round once.
//
// Forward: output (channels x pixels) = filters (channels x patch) times the im2col matrix
// (patch x pixels), in blocks of 32 output channels x 32 pixels (a strip), held in four
// accumulator tiles or, 8 channels at a time, in 16 vectors. The reduction runs over blocks of
// 32 input channels and, inside each, the kernel's taps: a filter tile is 16 output channels x
// 32 input channels of one tap, packed once per call; an input tile is the same 32 channels (16
// pairs) at 16 pixels, read in place from a copy of the input laid out for it (PairLayout), so
// nothing is packed per block. The vectors read the same tiles: a row of an input tile (16
// pixels of a pair) is a vector, a pair of a filter row is broadcast. The weight gradient: see
// GradWeightLayout.
#include "bf16_pairs_conv2d.h"

#include "bands.h"
#include "cpu_features.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

// GCC 12's AVX-512 intrinsics start some results from a deliberately undefined vector, which
// -Wmaybe-uninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <type_traits>
#include <utility>
#include <cstring>
#include <vector>

namespace conv_ext {
namespace {

// Every tile is 16 rows of 64 bytes: 16 x 32 bfloat16 (filters), 16 pairs of input channels x 16
// pixels (input), or 16 x 16 float32 (accumulators).
constexpr int64_t kTileRows = 16, kTileChannels = 32, kTilePixels = 16;
constexpr int64_t kTileElements = kTileRows * kTileChannels;
constexpr int64_t kStripPixels = 2 * kTilePixels;
// A task's filter tiles fit in a core's L2 cache, and the input of kStripBlock strips with them.
constexpr int64_t kFilterChunkBytes = int64_t{512} << 10, kStripBlock = 8;
// The input copy is made for this many bytes' worth of images at a time, so that the kernels
// still find it in the caches (Zen 5, 1x1 256->64 @56 at batch 8: forward 1.15x, forward and
// backward 1.1x faster than with 32 MiB).
constexpr int64_t kMaxCopyBytes = int64_t{4} << 20;
// The weight gradient's operands for a chunk of pixels stay in the cache.
constexpr int64_t kGradChunkBytes = int64_t{1} << 20;

// Linux gives a process the tiles' 8 KiB of register state only when it asks (arch_prctl).
bool tiles_granted() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr int kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
  return false;
#endif
}

// What multiplies the pairs of bfloat16: AMX's tiles, or AVX512_BF16's dot products on vectors
// (AMD's Zen 4 and later; the stores also use VBMI2's compress, which Intel's Cooper Lake, the
// other CPU with AVX512_BF16 but no AMX, lacks). The vectors where the tiles exist too when
// bf16_vectors_forced, so the tests can run both.
enum class PairUnits { none, tiles, vectors };

PairUnits pair_units() {
  static const bool vectors = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16") &&
                              __builtin_cpu_supports("avx512vbmi2");
  static const bool tiles = vectors && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                            tiles_granted();
  if (!vectors || !use_avx512()) return PairUnits::none;
  return tiles && !bf16_vectors_forced() ? PairUnits::tiles : PairUnits::vectors;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A bfloat16 tensor's elements as the 16-bit patterns the kernels move.
const uint16_t* bits(const at::Tensor& t) { return static_cast<const uint16_t*>(t.const_data_ptr()); }
uint16_t* mutable_bits(at::Tensor& t) { return static_cast<uint16_t*>(t.mutable_data_ptr()); }

// Room for n of them, not zeroed: the copies into it write every element they later read.
at::Tensor copy_buffer(int64_t n) { return at::empty({n}, at::kBFloat16); }

// The input as the tiles read it. Per image, group and pair of input channels (zero past the
// group's channels), a plane of the zero-padded image split into its stride phases (as
// implicit_gemm_conv2d.cpp does), each phase flattened row by row, whose elements are the pair's
// two values side by side (the layout the pair units multiply). Output pixel q = oh * grid_w + ow then
// reads tap (ki, kj) at q plus the tap's offset: in phase (ki * dh % sh, kj * dw % sw), row
// ki * dh / sh and column kj * dw / sw of it. The columns ow >= out_w in between are computed
// and dropped, and in return 16 consecutive pixels of the 16 pairs of a block of 32 channels
// are one tile, its rows a plane apart.
struct PairLayout {
  int64_t grid_w, pixels, blocks;  // pixels: out_h * grid_w, whole strips
  int64_t phase_plane, plane;      // elements (pairs) per phase and per channel pair
  std::vector<int64_t> taps;       // per tap (ki, kj): its offset in a plane

  std::vector<std::pair<int64_t, int64_t>> gaps;  // [begin, end) of a plane that no row of the image fills

  explicit PairLayout(const Conv2dGeometry& g);
  int64_t pairs() const { return blocks * kTileRows; }
  int64_t image() const { return pairs() * plane * 2; }  // elements per image and group
};

// fn(first, count, position) for each run of input row ih's columns that lands contiguously in
// a plane: columns first, first + sw, ... (count of them) at positions position, position + 1, ...
template <typename Fn>
void for_each_phase_run(int64_t ih, const Conv2dGeometry& g, const PairLayout& l, Fn&& fn) {
  const int64_t hp = ih + g.pad_h, row = hp % g.stride_h * g.stride_w * l.phase_plane + hp / g.stride_h * l.grid_w;
  for (int64_t b = 0; b < g.stride_w; ++b) {  // columns iw with (iw + pw) % sw == b
    const int64_t first = ((b - g.pad_w) % g.stride_w + g.stride_w) % g.stride_w;
    if (first < g.in_w) fn(first, ceil_div(g.in_w - first, g.stride_w), row + b * l.phase_plane + (first + g.pad_w) / g.stride_w);
  }
}

// fn(ih, iw, count, position) for each run of the image's rows that lands contiguously in a
// plane (for_each_phase_run's, row ih's). With stride 1 and no padding columns the rows follow
// one another, and the image is one run.
template <typename Fn>
void for_each_plane_run(const Conv2dGeometry& g, const PairLayout& l, Fn&& fn) {
  const bool one_run = g.stride_h == 1 && g.stride_w == 1 && g.pad_w == 0;
  for (int64_t ih = 0; ih < (one_run ? 1 : g.in_h); ++ih) {
    for_each_phase_run(ih, g, l, [&](int64_t iw, int64_t count, int64_t position) {
      fn(ih, iw, one_run ? g.in_h * g.in_w : count, position);
    });
  }
}

PairLayout::PairLayout(const Conv2dGeometry& g)
    : grid_w(ceil_div(g.in_w + 2 * g.pad_w, g.stride_w)),
      pixels(ceil_div(g.out_h * grid_w, kStripPixels) * kStripPixels),
      blocks(ceil_div(g.in_channels_per_group(), kTileChannels)) {
  std::vector<int64_t> phases;  // per tap; taps first hold the offsets within a phase
  for (int64_t dy = 0; dy < g.kernel_h * g.dilation_h; dy += g.dilation_h) {
    for (int64_t dx = 0; dx < g.kernel_w * g.dilation_w; dx += g.dilation_w) {
      phases.push_back(dy % g.stride_h * g.stride_w + dx % g.stride_w);
      taps.push_back(dy / g.stride_h * grid_w + dx / g.stride_w);
    }
  }
  // A phase covers its share of the padded image and the last strip's reach.
  const int64_t reach = *std::max_element(taps.begin(), taps.end());
  phase_plane = ceil_div(std::max(ceil_div(g.in_h + 2 * g.pad_h, g.stride_h) * grid_w, pixels + reach), kTilePixels) * kTilePixels;
  for (size_t t = 0; t < taps.size(); ++t) taps[t] += phases[t] * phase_plane;
  // An odd number of cache lines, so that a tile's 16 rows fall into different sets of L1.
  plane = g.stride_h * g.stride_w * phase_plane;
  if (plane / kTilePixels % 2 == 0) plane += kTilePixels;
  // The padding and what lies past the image: zeroed per copy, where the image's rows are
  // copied (zeroing whole planes first doubled the copy's writes to memory).
  std::vector<std::pair<int64_t, int64_t>> runs;
  for_each_plane_run(g, *this, [&](int64_t, int64_t, int64_t count, int64_t position) { runs.emplace_back(position, position + count); });
  std::sort(runs.begin(), runs.end());
  int64_t filled = 0;
  for (const auto& [begin, end] : runs) {
    if (begin > filled) gaps.emplace_back(filled, begin);
    filled = std::max(filled, end);
  }
  if (filled < plane) gaps.emplace_back(filled, plane);
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) bytes_per_row[t] = 64, rows[t] = kTileRows;
  }
};

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi2,avx2,fma,f16c")

// dst[2 i] = a[i * step], dst[2 i + 1] = b[i * step] (b null: zero) for i < count.
void interleave_pair(const uint16_t* a, const uint16_t* b, int64_t step, int64_t count, uint16_t* dst) {
  if (step != 1) {
    for (int64_t i = 0; i < count; ++i) dst[2 * i] = a[i * step], dst[2 * i + 1] = b != nullptr ? b[i * step] : 0;
    return;
  }
  // Elements 0-15 of a and of b alternately, then 16-31: whole vectors, then masked ones.
  const __m512i low = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5,
                                       36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
  int64_t i = 0;
  for (; i + 2 * kTilePixels <= count; i += 2 * kTilePixels) {
    const __m512i x = _mm512_loadu_si512(a + i), y = b != nullptr ? _mm512_loadu_si512(b + i) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + 2 * i, _mm512_permutex2var_epi16(x, low, y));
    _mm512_storeu_si512(dst + 2 * i + 2 * kTilePixels, _mm512_permutex2var_epi16(x, high, y));
  }
  for (; i < count; i += kTilePixels) {
    const int64_t n = std::min(kTilePixels, count - i);
    const __mmask16 in = static_cast<__mmask16>((1u << n) - 1);
    const __m256i x = _mm256_maskz_loadu_epi16(in, a + i);
    const __m256i y = b != nullptr ? _mm256_maskz_loadu_epi16(in, b + i) : _mm256_setzero_si256();
    const __m512i pairs = _mm512_permutex2var_epi16(_mm512_castsi256_si512(x), low, _mm512_castsi256_si512(y));
    const __mmask32 out = static_cast<__mmask32>((uint64_t{1} << 2 * n) - 1);
    _mm512_mask_storeu_epi16(dst + 2 * i, out, pairs);
  }
}

// Pair `pair` of image n's group into its PairLayout plane.
void copy_pair_plane(const uint16_t* x, const Conv2dGeometry& g, const PairLayout& l, int64_t n, int64_t group,
                     int64_t pair, uint16_t* plane) {
  const int64_t cg = g.in_channels_per_group(), area = g.in_h * g.in_w, c = 2 * pair;
  if (c >= cg) {
    std::memset(plane, 0, l.plane * 2 * sizeof(uint16_t));
    return;
  }
  for (const auto& [begin, end] : l.gaps) std::memset(plane + 2 * begin, 0, (end - begin) * 2 * sizeof(uint16_t));
  const uint16_t* first = x + (n * g.in_channels + group * cg + c) * area;
  const uint16_t* second = c + 1 < cg ? first + area : nullptr;
  // In runs as long as they come, of whole vectors (1x1 256 @56's input at batch 8: 1.1-1.5 ms on
  // one thread, 4.1-4.8 row by row with masked vectors, Zen 5).
  for_each_plane_run(g, l, [&](int64_t ih, int64_t iw, int64_t count, int64_t position) {
    const int64_t at = ih * g.in_w + iw;
    interleave_pair(first + at, second != nullptr ? second + at : nullptr, g.stride_w, count, plane + 2 * position);
  });
}

// A filter tile's row of 32 input channels: values[c * step] for the first count, zeros after.
// Apart (step > 1) and all 32 there, two gathers of 16 dwords take them, each value the high half
// of the dword that ends with it, except where values is the weight's first element (that dword
// would begin before the weight): there the low half of the dword it starts. So no gather reads
// outside the weight, and a conversion keeps those halves.
void filter_tile_row(const uint16_t* values, int64_t step, int64_t count, bool starts_weight, uint16_t* row) {
  if (step == 1) {
    const __mmask32 present = static_cast<__mmask32>((uint64_t{1} << count) - 1);
    _mm512_storeu_si512(row, _mm512_maskz_loadu_epi16(present, values));
    return;
  }
  if (count == kTileChannels) {
    const __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                               _mm512_set1_epi32(static_cast<int>(step)));
    const int shift = starts_weight ? 0 : 16;
    const uint16_t* base = starts_weight ? values : values - 1;
    for (int64_t half = 0; half < 2; ++half) {
      const __m512i dwords = _mm512_i32gather_epi32(offsets, base + half * kTilePixels * step, 2);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + half * kTilePixels),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(dwords, shift)));
    }
    return;
  }
  for (int64_t c = 0; c < kTileChannels; ++c) row[c] = c < count ? values[c * step] : 0;
}

// The filter tiles, (group, block of 16 output channels, block of 32 input channels, tap), each
// 16 output channels x 32 input channels, zero past the group's channels, from the weight read
// in the given order.
at::Tensor filter_tiles(const at::Tensor& weight, FilterOrder order, const Conv2dGeometry& g, const PairLayout& l) {
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t row_blocks = ceil_div(kg, kTileRows), taps = l.taps.size();
  const bool flipped = order == FilterOrder::flipped_transposed;
  at::Tensor tiles = at::empty({g.groups * row_blocks * l.blocks * taps * kTileElements}, weight.options());
  const uint16_t* w = bits(weight);
  uint16_t* out = mutable_bits(tiles);
  // Filter k of a group: its channel c's tap t at filter(group, k) + c * step, plus t as given
  // or taps - 1 - t flipped.
  const int64_t step = flipped ? kg * taps : taps;
  const auto filter = [&](int64_t group, int64_t k) {
    return w + (flipped ? (group * cg * kg + k) * taps : (group * kg + k) * cg * taps);
  };
  // Per tile row: a filter's row in its tiles, or zeros below the group's last filter.
  at::parallel_for(0, g.groups * row_blocks * kTileRows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      const int64_t group = slot / (row_blocks * kTileRows), row = slot % (row_blocks * kTileRows);
      uint16_t* dst = out + (group * row_blocks + row / kTileRows) * l.blocks * taps * kTileElements + row % kTileRows * kTileChannels;
      for (int64_t block = 0; block < l.blocks; ++block) {
        for (int64_t t = 0; t < taps; ++t, dst += kTileElements) {
          if (row < kg) {
            const uint16_t* values = filter(group, row) + block * kTileChannels * step + (flipped ? taps - 1 - t : t);
            filter_tile_row(values, step, std::min(kTileChannels, cg - block * kTileChannels), values == w, dst);
          } else {
            std::fill(dst, dst + kTileChannels, uint16_t{0});
          }
        }
      }
    }
  });
  return tiles;
}

// acc (kRowTiles x 2 tiles of 16 x 16) = the filter tiles from `a` (the second row's a_next
// further) times the input tiles of the strip of 32 pixels at `b`, over the whole patch.
template <int kRowTiles>
void multiply_strip(const uint16_t* a, int64_t a_next, const uint16_t* b, const PairLayout& l, float* acc) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (kRowTiles == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t pair_bytes = l.plane * 2 * sizeof(uint16_t);
  for (int64_t block = 0; block < l.blocks; ++block) {
    const uint16_t* pairs = b + block * kTileRows * l.plane * 2;
    for (const int64_t tap : l.taps) {
      // Each load waits for the products still reading its tile (tiles are not renamed), so
      // loads and products alternate (measured: 1.3x faster than four loads, then four products).
      _tile_loadd(4, pairs + tap * 2, pair_bytes);
      _tile_loadd(6, a, 64);
      _tile_dpbf16ps(0, 6, 4);
      if constexpr (kRowTiles == 2) {
        _tile_loadd(7, a + a_next, 64);
        _tile_dpbf16ps(2, 7, 4);
      }
      _tile_loadd(5, pairs + (tap + kTilePixels) * 2, pair_bytes);
      _tile_dpbf16ps(1, 6, 5);
      if constexpr (kRowTiles == 2) _tile_dpbf16ps(3, 7, 5);
      a += kTileElements;
    }
  }
  _tile_stored(0, acc, 64);
  _tile_stored(1, acc + kTileRows * kTilePixels, 64);
  if constexpr (kRowTiles == 2) {
    _tile_stored(2, acc + 2 * kTileRows * kTilePixels, 64);
    _tile_stored(3, acc + 3 * kTileRows * kTilePixels, 64);
  }
}

// The vector kernels' rows per pass: 8 filters x 2 vectors of 16 pixels (or channels) are 16
// accumulators, and each pair of channels (or pixels) loaded feeds 16 dot products.
constexpr int kPassRows = 8;

__m512bh load_pairs(const uint16_t* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// The two bfloat16 at p (one dword) in every lane.
__m512bh broadcast_pair(const uint16_t* p) {
  int32_t pair;
  std::memcpy(&pair, p, sizeof(pair));
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
}

// multiply_strip on AVX512_BF16's dot products, each lane summing one pair's two products.
template <int kRowTiles>
void multiply_strip_by_vectors(const uint16_t* a, int64_t a_next, const uint16_t* b, const PairLayout& l, float* acc) {
  const int64_t pair_elements = l.plane * 2;
  for (int tile_row = 0; tile_row < kRowTiles; ++tile_row) {
    for (int first = 0; first < kTileRows; first += kPassRows) {
      __m512 sums[kPassRows][2];
      for (auto& s : sums) s[0] = s[1] = _mm512_setzero_ps();
      const uint16_t* filters = a + tile_row * a_next + first * kTileChannels;
      for (int64_t block = 0; block < l.blocks; ++block) {
        const uint16_t* pairs = b + block * kTileRows * pair_elements;
        for (const int64_t tap : l.taps) {
          const uint16_t* x = pairs + tap * 2;
          for (int p = 0; p < kTileRows; ++p, x += pair_elements) {
            const __m512bh x0 = load_pairs(x), x1 = load_pairs(x + 2 * kTilePixels);
            for (int r = 0; r < kPassRows; ++r) {
              const __m512bh w = broadcast_pair(filters + r * kTileChannels + 2 * p);
              sums[r][0] = _mm512_dpbf16_ps(sums[r][0], x0, w);
              sums[r][1] = _mm512_dpbf16_ps(sums[r][1], x1, w);
            }
          }
          filters += kTileElements;
        }
      }
      for (int r = 0; r < kPassRows; ++r) {
        for (int half = 0; half < 2; ++half) {
          _mm512_store_ps(acc + ((tile_row * 2 + half) * kTileRows + first + r) * kTilePixels, sums[r][half]);
        }
      }
    }
  }
}

// Where the 16 pixels from q lie in an output plane: runs of consecutive pixels, the padding
// columns between output rows dropped (with none, the 16 are one run).
struct PixelRuns {
  struct Run {
    int64_t first, count, offset;  // first pixel (of 16), count, offset in the output plane
  } runs[kTilePixels];
  int64_t size = 0;

  PixelRuns(int64_t q, const Conv2dGeometry& g, const PairLayout& l) {
    int64_t oh = q / l.grid_w, ow = q % l.grid_w;
    for (int64_t i = 0; i < kTilePixels && oh < g.out_h; ++oh, ow = 0) {
      const int64_t run = std::min(kTilePixels - i, l.grid_w - ow);
      if (ow < g.out_w) {
        const int64_t count = std::min(run, g.out_w - ow), offset = oh * g.out_w + ow;
        Run* last = size > 0 ? &runs[size - 1] : nullptr;
        if (last != nullptr && last->first + last->count == i && last->offset + last->count == offset) {
          last->count += count;
        } else {
          runs[size++] = {i, count, offset};
        }
      }
      i += run;
    }
  }
};

// One accumulator row plus the bias, rounded to bfloat16, into the output plane y.
void store_pixels(const float* acc, float bias, const PixelRuns& pixels, uint16_t* y) {
  const __m512 sum = _mm512_add_ps(_mm512_loadu_ps(acc), _mm512_set1_ps(bias));
  const __m256i rounded = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(sum));
  for (int64_t r = 0; r < pixels.size; ++r) {
    const auto& run = pixels.runs[r];
    if (run.count == kTilePixels) {  // no mask (with the runs merged, 1x1 64->256 @56's forward 1.14x faster, Zen 5)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + run.offset), rounded);
      continue;
    }
    const __mmask16 count = static_cast<__mmask16>((1u << run.count) - 1);
    const __m256i values = run.first == 0 ? rounded : _mm256_maskz_compress_epi16(static_cast<__mmask16>(count << run.first), rounded);
    _mm256_mask_storeu_epi16(y + run.offset, count, values);
  }
}

// Output channel blocks 2 * row_pair and 2 * row_pair + 1 (if any) of image n's group at strip
// `strip`, its input planes at `b`.
void multiply_and_store(bool tiles, const uint16_t* filter_tiles, const uint16_t* b, const float* bias,
                        const Conv2dGeometry& g, const PairLayout& l, int64_t n, int64_t group, int64_t strip,
                        int64_t row_pair, uint16_t* y) {
  alignas(64) float acc[4 * kTileRows * kTilePixels];
  const int64_t kg = g.out_channels_per_group(), row_blocks = ceil_div(kg, kTileRows);
  const int64_t a_next = l.blocks * l.taps.size() * kTileElements, row_block = 2 * row_pair;
  const int64_t row_tiles = row_block + 1 < row_blocks ? 2 : 1;
  const uint16_t* a = filter_tiles + (group * row_blocks + row_block) * a_next;
  const uint16_t* strip_pairs = b + strip * kStripPixels * 2;
  if (tiles) {
    (row_tiles == 2 ? multiply_strip<2> : multiply_strip<1>)(a, a_next, strip_pairs, l, acc);
  } else {
    (row_tiles == 2 ? multiply_strip_by_vectors<2> : multiply_strip_by_vectors<1>)(a, a_next, strip_pairs, l, acc);
  }
  const PixelRuns halves[2] = {{strip * kStripPixels, g, l}, {strip * kStripPixels + kTilePixels, g, l}};
  for (int64_t tile_row = 0; tile_row < row_tiles; ++tile_row) {
    for (int64_t r = 0; r < kTileRows && (row_block + tile_row) * kTileRows + r < kg; ++r) {
      const int64_t k = group * kg + (row_block + tile_row) * kTileRows + r;
      for (int64_t half = 0; half < 2; ++half) {
        store_pixels(acc + ((tile_row * 2 + half) * kTileRows + r) * kTilePixels, bias != nullptr ? bias[k] : 0.f,
                     halves[half], y + (n * g.out_channels + k) * g.out_h * g.out_w);
      }
    }
  }
}

// The weight gradient per tap t: grad_w[k, c, t] = sum over the batch's pixels q of
// grad_output[k, q] x[c, q + offset_t], on PairLayout's pixel grid. A tiles are 16 filters x 32
// pixels of grad_output, copied onto the grid with zeros in its padding columns (so the input
// there counts for nothing); B tiles are 16 pairs of pixels x 16 channels of the input, copied
// with the channels innermost, once for pairs that start at even positions and, where a tap's
// offset is odd, once for odd ones. Both are read in place, 64-byte rows one after another.
struct GradWeightLayout {
  int64_t filter_rows, grad_row;    // per group: filters (whole tiles), and elements per filter
  int64_t channel_blocks, pair_rows;  // per group: blocks of 16 channels, pixel pairs per block

  GradWeightLayout(const Conv2dGeometry& g, const PairLayout& l)
      : filter_rows(ceil_div(g.out_channels_per_group(), kTileRows) * kTileRows),
        // An odd number of cache lines per filter, so that a tile's rows fall into different sets.
        grad_row(l.pixels / kStripPixels % 2 == 1 ? l.pixels : l.pixels + kStripPixels),
        channel_blocks(ceil_div(g.in_channels_per_group(), kTilePixels)),
        pair_rows(ceil_div(l.plane, 2 * kTileRows) * kTileRows) {}
  int64_t grad_image() const { return filter_rows * grad_row; }                    // per image and group
  int64_t input_image() const { return channel_blocks * pair_rows * 2 * kTilePixels; }  // alike, per parity
};

using ::conv_ext::avx512::transpose_16x16;

// Filter row `row` of image n's group onto the grid, zero past the group's filters and in the
// padding columns.
void copy_grad_row(const uint16_t* gy, const Conv2dGeometry& g, const PairLayout& l, const GradWeightLayout& w,
                   int64_t n, int64_t group, int64_t row, uint16_t* dst) {
  if (row >= g.out_channels_per_group()) {
    std::memset(dst, 0, w.grad_row * sizeof(uint16_t));
    return;
  }
  const uint16_t* src = gy + (n * g.out_channels + group * g.out_channels_per_group() + row) * g.out_h * g.out_w;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {  // each row, then zeros up to the next (or the end)
    std::memcpy(dst + oh * l.grid_w, src + oh * g.out_w, g.out_w * sizeof(uint16_t));
    const int64_t next = oh + 1 < g.out_h ? (oh + 1) * l.grid_w : w.grad_row;
    std::memset(dst + oh * l.grid_w + g.out_w, 0, (next - oh * l.grid_w - g.out_w) * sizeof(uint16_t));
  }
}

// Block `block` of 16 channels of image n's group: their planes, as PairLayout's but of single
// channels (plane_scratch, 16 planes of 2 * w.pair_rows + 2 elements), then their pixel pairs at
// even and (unless odd is null) odd positions, channels innermost.
void copy_input_pixel_pairs(const uint16_t* x, const Conv2dGeometry& g, const PairLayout& l, const GradWeightLayout& w,
                            int64_t n, int64_t group, int64_t block, uint16_t* plane_scratch, uint16_t* even, uint16_t* odd) {
  const int64_t cg = g.in_channels_per_group(), stride = 2 * w.pair_rows + 2;
  std::memset(plane_scratch, 0, kTilePixels * stride * sizeof(uint16_t));
  for (int64_t c = 0; c < kTilePixels && block * kTilePixels + c < cg; ++c) {
    const uint16_t* src = x + (n * g.in_channels + group * cg + block * kTilePixels + c) * g.in_h * g.in_w;
    for_each_plane_run(g, l, [&](int64_t ih, int64_t iw, int64_t count, int64_t position) {
      const uint16_t* from = src + ih * g.in_w + iw;
      uint16_t* dst = plane_scratch + c * stride + position;
      if (g.stride_w == 1) {
        std::memcpy(dst, from, count * sizeof(uint16_t));
      } else {
        for (int64_t i = 0; i < count; ++i) dst[i] = from[i * g.stride_w];
      }
    });
  }
  for (int64_t parity = 0; parity < (odd != nullptr ? 2 : 1); ++parity) {
    uint16_t* out = parity == 0 ? even : odd;
    for (int64_t j = 0; j < w.pair_rows; j += kTileRows) {
      __m512i rows[16];
      for (int c = 0; c < 16; ++c) rows[c] = _mm512_loadu_si512(plane_scratch + c * stride + parity + 2 * j);
      transpose_16x16(rows);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (j + i) * 2 * kTilePixels, rows[i]);
    }
  }
}

// acc (kRows x kCols tiles of 16 filters x 16 channels) += the grad_output tiles at a (a filter's
// row a_row elements after the previous one's, the second row of tiles a_next further) times the
// pixel-pair tiles at b (the second column b_next further), over `steps` steps of 32 pixels.
template <int kRows, int kCols>
void accumulate_grad_weight(const uint16_t* a, int64_t a_row, int64_t a_next, const uint16_t* b, int64_t b_next,
                            int64_t steps, float* acc) {
  constexpr int64_t kTile = kTileRows * kTilePixels;
  _tile_loadd(0, acc, 64);
  if constexpr (kCols == 2) _tile_loadd(1, acc + kTile, 64);
  if constexpr (kRows == 2) _tile_loadd(2, acc + 2 * kTile, 64);
  if constexpr (kRows == 2 && kCols == 2) _tile_loadd(3, acc + 3 * kTile, 64);
  for (int64_t step = 0; step < steps; ++step, a += kStripPixels, b += kTileRows * 2 * kTilePixels) {
    _tile_loadd(4, b, 64);
    _tile_loadd(6, a, a_row * 2);
    _tile_dpbf16ps(0, 6, 4);
    if constexpr (kRows == 2) {
      _tile_loadd(7, a + a_next, a_row * 2);
      _tile_dpbf16ps(2, 7, 4);
    }
    if constexpr (kCols == 2) {
      _tile_loadd(5, b + b_next, 64);
      _tile_dpbf16ps(1, 6, 5);
      if constexpr (kRows == 2) _tile_dpbf16ps(3, 7, 5);
    }
  }
  _tile_stored(0, acc, 64);
  if constexpr (kCols == 2) _tile_stored(1, acc + kTile, 64);
  if constexpr (kRows == 2) _tile_stored(2, acc + 2 * kTile, 64);
  if constexpr (kRows == 2 && kCols == 2) _tile_stored(3, acc + 3 * kTile, 64);
}

// accumulate_grad_weight on AVX512_BF16's dot products.
template <int kRows, int kCols>
void accumulate_grad_weight_by_vectors(const uint16_t* a, int64_t a_row, int64_t a_next, const uint16_t* b,
                                       int64_t b_next, int64_t steps, float* acc) {
  constexpr int64_t kTile = kTileRows * kTilePixels;
  for (int row = 0; row < kRows; ++row) {
    for (int first = 0; first < kTileRows; first += kPassRows) {
      float* tiles = acc + 2 * row * kTile + first * kTilePixels;
      __m512 sums[kPassRows][2];
      for (int r = 0; r < kPassRows; ++r) {
        for (int c = 0; c < kCols; ++c) sums[r][c] = _mm512_loadu_ps(tiles + c * kTile + r * kTilePixels);
      }
      const uint16_t* grad = a + row * a_next + first * a_row;
      const uint16_t* pixels = b;
      for (int64_t step = 0; step < steps; ++step, grad += kStripPixels) {
        for (int j = 0; j < kTileRows; ++j, pixels += 2 * kTilePixels) {
          const __m512bh x0 = load_pairs(pixels), x1 = kCols == 2 ? load_pairs(pixels + b_next) : x0;
          for (int r = 0; r < kPassRows; ++r) {
            const __m512bh gy = broadcast_pair(grad + r * a_row + 2 * j);
            sums[r][0] = _mm512_dpbf16_ps(sums[r][0], x0, gy);
            if constexpr (kCols == 2) sums[r][1] = _mm512_dpbf16_ps(sums[r][1], x1, gy);
          }
        }
      }
      for (int r = 0; r < kPassRows; ++r) {
        for (int c = 0; c < kCols; ++c) _mm512_storeu_ps(tiles + c * kTile + r * kTilePixels, sums[r][c]);
      }
    }
  }
}

#pragma GCC pop_options

}  // namespace

bool bf16_pairs_on_tiles() { return pair_units() == PairUnits::tiles; }

bool bf16_pairs_conv2d_applies(const Conv2dGeometry& g) {
  return g.in_channels_per_group() >= 16 && g.out_channels_per_group() >= 16 &&
         g.batch > 0 && g.out_h > 0 && g.out_w > 0 && pair_units() != PairUnits::none;
}

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi2,avx2,fma,f16c")

// The images are copied in batches of at most kMaxCopyBytes. The output channels run in chunks
// of one group's, whose filter tiles stay in a core's L2 cache (kFilterChunkBytes), through the
// batch's strips kStripBlock strips at a time, so the blocks' input is read from L2 too.
at::Tensor bf16_pairs_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                     const at::Tensor& bias, const Conv2dGeometry& g) {
  const PairLayout l(g);
  const int64_t row_pairs = ceil_div(ceil_div(g.out_channels_per_group(), kTileRows), 2);
  const int64_t row_pair_bytes = 2 * l.blocks * l.taps.size() * kTileElements * sizeof(uint16_t);
  const int64_t pairs_per_chunk = std::clamp<int64_t>(kFilterChunkBytes / row_pair_bytes, 1, row_pairs);
  const int64_t strips = l.pixels / kStripPixels;
  const int64_t images = std::clamp<int64_t>(kMaxCopyBytes / (g.groups * l.image() * sizeof(uint16_t)), 1, g.batch);

  const at::Tensor packed = filter_tiles(weight, order, g, l);
  const at::Tensor bias_values = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  at::Tensor copy = copy_buffer(images * g.groups * l.image());
  uint16_t* planes = mutable_bits(copy);
  const uint16_t* x = bits(input);
  const uint16_t* a = bits(packed);
  const float* bias_data = bias.defined() ? bias_values.const_data_ptr<float>() : nullptr;
  uint16_t* y = mutable_bits(output);
  const TileConfig config;
  const bool tiles = bf16_pairs_on_tiles();

  for (int64_t n_begin = 0; n_begin < g.batch; n_begin += images) {
    const int64_t n_end = std::min(g.batch, n_begin + images);
    at::parallel_for(0, (n_end - n_begin) * g.groups * l.pairs(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t image_group = task / l.pairs(), pair = task % l.pairs();
        copy_pair_plane(x, g, l, n_begin + image_group / g.groups, image_group % g.groups, pair,
                        planes + task * l.plane * 2);
      }
    });
    const int64_t batch_strips = (n_end - n_begin) * strips;
    // Output channels x strips: pairs of filter rows (the group's, one after another) x strips.
    const auto run = [&](int64_t first_row_pair, int64_t last_row_pair, int64_t first_strip, int64_t last_strip) {
      const int64_t group = first_row_pair / row_pairs;
      for (int64_t block = first_strip; block < last_strip; block += kStripBlock) {
        for (int64_t row_pair = first_row_pair; row_pair < last_row_pair; ++row_pair) {
          for (int64_t s = block; s < std::min(last_strip, block + kStripBlock); ++s) {
            const int64_t n = n_begin + s / strips;
            multiply_and_store(tiles, a, planes + ((n - n_begin) * g.groups + group) * l.image(), bias_data, g, l, n,
                               group, s % strips, row_pair % row_pairs, y);
          }
        }
      }
    };
    // The threads share the strips, each running every chunk of filters over its own, where the
    // filter tiles take fewer bytes than the copy of the input: a thread then reads all the
    // filters and its share of the copy, rather than its share of the filters and all of the
    // copy (measured on 2 threads, AMX, at batch 8: 1x1 256->64 @56 1.75x faster, 64->256 and
    // 1024->256 @14 1.2x, 3x3 64 @56 and 3x3/2 128->256 @28 1.15x, 1x1 256->64 at batch 1 1.4x).
    const int64_t copy_bytes = (n_end - n_begin) * g.groups * l.image() * int64_t{sizeof(uint16_t)};
    const bool by_strips = packed.nbytes() < copy_bytes && batch_strips >= at::get_num_threads();
    // Where a chunk of filters from row_pair ends: pairs_per_chunk on, or at its group's end.
    const auto chunk_end = [&](int64_t row_pair) {
      return std::min(row_pair + pairs_per_chunk, (row_pair / row_pairs + 1) * row_pairs);
    };
    at::parallel_for(0, (by_strips ? 1 : g.groups * row_pairs) * batch_strips, 1, [&](int64_t begin, int64_t end) {
      if (tiles) _tile_loadconfig(&config);
      if (by_strips) {
        for (int64_t first = 0; first < g.groups * row_pairs; first = chunk_end(first)) {
          run(first, chunk_end(first), begin, end);
        }
      } else {
        // Each thread takes an equal share of the (row pair, strip) units, in order: a row
        // pair's strips where its share starts or ends within them, otherwise up to
        // pairs_per_chunk whole row pairs of a group at a time.
        for (int64_t unit = begin; unit < end;) {
          const int64_t row_pair = unit / batch_strips, strip = unit % batch_strips;
          if (strip != 0 || end - unit < batch_strips) {
            const int64_t last_strip = std::min(batch_strips, strip + end - unit);
            run(row_pair, row_pair + 1, strip, last_strip);
            unit += last_strip - strip;
          } else {
            const int64_t last_row_pair = std::min(chunk_end(row_pair), row_pair + (end - unit) / batch_strips);
            run(row_pair, last_row_pair, 0, batch_strips);
            unit += (last_row_pair - row_pair) * batch_strips;
          }
        }
      }
      if (tiles) _tile_release();
    });
  }
  return output;
}

// Each task owns a range of the (group, 32 filters, 32 channels, tap) blocks of the gradient,
// whose sums it keeps in float32 (acc) across the whole batch. The batch is copied onto the grid
// in batches of images, and each task runs through them in chunks of pixels that stay in the
// cache (kGradChunkBytes of both operands), every one of its blocks per chunk.
at::Tensor bf16_pairs_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output, const Conv2dGeometry& g) {
  const PairLayout l(g);
  const GradWeightLayout w(g, l);
  const int64_t kg = g.out_channels_per_group(), cg = g.in_channels_per_group(), taps = l.taps.size();
  const int64_t row_pairs = ceil_div(w.filter_rows / kTileRows, 2), column_pairs = ceil_div(w.channel_blocks, 2);
  const int64_t blocks = g.groups * taps * row_pairs * column_pairs;
  constexpr int64_t kBlock = 4 * kTileRows * kTilePixels;
  // The pixel pairs at odd positions only where a tap's offset is odd (chunks start at even ones).
  const int64_t parities = std::any_of(l.taps.begin(), l.taps.end(), [](int64_t t) { return t % 2 == 1; }) ? 2 : 1;
  const int64_t image_bytes = g.groups * (w.grad_image() + parities * w.input_image()) * sizeof(uint16_t);
  const int64_t images = std::clamp<int64_t>(kMaxCopyBytes / image_bytes, 1, g.batch);
  const int64_t bytes_per_pixel = g.groups * (w.filter_rows + parities * w.channel_blocks * kTilePixels) * sizeof(uint16_t);
  const int64_t chunk_pixels = std::max<int64_t>(1, kGradChunkBytes / bytes_per_pixel / kStripPixels) * kStripPixels;
  // Chunks of one image's pixels, or of several small images.
  const int64_t chunk = std::min(chunk_pixels, l.pixels), chunk_images = std::max<int64_t>(1, chunk_pixels / l.pixels);

  // The sums in two partitions of each batch's pixels, added in order at the end,
  // where they take at most half the bytes of the operands' copies and of a core's L2: the
  // threads then split the pixels too, each reading its share of the copies rather than all of
  // them, whatever their number (measured on 2 threads, AMX, at batch 8: 3x3 64 @56 1.17x
  // faster, 128 @28 1.06x, 3x3/2 64->64 @56 and 128->128 @28 1.1x, 1x1 256->64 and 64->256 @56
  // 1.2x, 1024->256 @14 1.1x; with sums of 1.2 MB, 3x3/2 128->256 @28, 0.93x).
  const int64_t acc_bytes = blocks * kBlock * int64_t{sizeof(float)};
  const int64_t partitions = 2 * acc_bytes <= images * image_bytes && acc_bytes <= core_l2_bytes() / 2 ? 2 : 1;
  std::vector<float> acc(partitions * blocks * kBlock, 0.f);
  at::Tensor grad_copy = copy_buffer(images * g.groups * w.grad_image());
  at::Tensor pairs_copy = copy_buffer(parities * images * g.groups * w.input_image());
  uint16_t* grad = mutable_bits(grad_copy);
  uint16_t* even = mutable_bits(pairs_copy);
  uint16_t* odd = parities == 2 ? even + images * g.groups * w.input_image() : nullptr;
  const uint16_t* x = bits(input);
  const uint16_t* gy = bits(grad_output);
  const TileConfig config;
  const bool tiles = bf16_pairs_on_tiles();

  for (int64_t n_begin = 0; n_begin < g.batch; n_begin += images) {
    const int64_t n_end = std::min(g.batch, n_begin + images), image_groups = (n_end - n_begin) * g.groups;
    at::parallel_for(0, image_groups * (w.filter_rows + w.channel_blocks), 1, [&](int64_t begin, int64_t end) {
      std::vector<uint16_t> scratch(kTilePixels * (2 * w.pair_rows + 2));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t image_group = task / (w.filter_rows + w.channel_blocks), part = task % (w.filter_rows + w.channel_blocks);
        const int64_t n = n_begin + image_group / g.groups, group = image_group % g.groups;
        if (part < w.filter_rows) {
          copy_grad_row(gy, g, l, w, n, group, part, grad + image_group * w.grad_image() + part * w.grad_row);
        } else {
          const int64_t offset = image_group * w.input_image() + (part - w.filter_rows) * w.pair_rows * 2 * kTilePixels;
          copy_input_pixel_pairs(x, g, l, w, n, group, part - w.filter_rows, scratch.data(), even + offset,
                                 odd != nullptr ? odd + offset : nullptr);
        }
      }
    });
    at::parallel_for(0, partitions * blocks, 1, [&](int64_t begin, int64_t end) {
      if (tiles) _tile_loadconfig(&config);
      for (int64_t partition = begin / blocks; partition * blocks < end; ++partition) {
        const int64_t first_block = std::max(begin, partition * blocks) - partition * blocks;
        const int64_t last_block = std::min(end, (partition + 1) * blocks) - partition * blocks;
        // The partition's share of the batch's pixels, in order: whole images where a chunk holds
        // several (a share of each image's few steps had doubled the loads and stores of the sums
        // per step), else steps of 32 pixels.
        const int64_t image_steps = l.pixels / kStripPixels;
        const int64_t units = (n_end - n_begin) * (chunk_images > 1 ? 1 : image_steps);
        const int64_t share_begin = units * partition / partitions, share_end = units * (partition + 1) / partitions;
        for (int64_t n = n_begin; n < n_end; n += chunk_images) {
          for (int64_t chunk_q = 0; chunk_q < l.pixels; chunk_q += chunk) {
            int64_t first_image = n, last_image = std::min(n_end, n + chunk_images), q = chunk_q;
            int64_t steps = std::min(chunk, l.pixels - chunk_q) / kStripPixels;
            if (chunk_images > 1) {
              first_image = std::max(first_image, n_begin + share_begin);
              last_image = std::min(last_image, n_begin + share_end);
            } else {
              const int64_t chunk_begin = (n - n_begin) * image_steps + chunk_q / kStripPixels;
              const int64_t first = std::max(share_begin, chunk_begin);
              steps = std::min(share_end, chunk_begin + steps) - first;
              q += (first - chunk_begin) * kStripPixels;
            }
            for (int64_t block = first_block; block < last_block && steps > 0; ++block) {
              const int64_t tap = block % taps, column_pair = block / taps % column_pairs;
              const int64_t row_pair = block / taps / column_pairs % row_pairs, group = block / taps / column_pairs / row_pairs;
              const int64_t offset = l.taps[tap] + q;
              const bool two_rows = 2 * row_pair + 1 < w.filter_rows / kTileRows, two_columns = 2 * column_pair + 1 < w.channel_blocks;
              for (int64_t image = first_image; image < last_image; ++image) {
                const int64_t image_group = (image - n_begin) * g.groups + group;
                const uint16_t* a = grad + image_group * w.grad_image() + 2 * row_pair * kTileRows * w.grad_row + q;
                const uint16_t* b = (offset % 2 == 0 ? even : odd) + image_group * w.input_image() +
                                    (2 * column_pair * w.pair_rows + offset / 2) * 2 * kTilePixels;
                const int64_t a_row = w.grad_row, a_next = kTileRows * w.grad_row;
                const int64_t b_next = w.pair_rows * 2 * kTilePixels;
                float* sums = acc.data() + (partition * blocks + block) * kBlock;
                const auto accumulate = [&](auto rows, auto columns) {
                  if (tiles) {
                    accumulate_grad_weight<rows(), columns()>(a, a_row, a_next, b, b_next, steps, sums);
                  } else {
                    accumulate_grad_weight_by_vectors<rows(), columns()>(a, a_row, a_next, b, b_next, steps, sums);
                  }
                };
                using One = std::integral_constant<int, 1>;
                using Two = std::integral_constant<int, 2>;
                if (two_rows && two_columns) {
                  accumulate(Two(), Two());
                } else if (two_rows) {
                  accumulate(Two(), One());
                } else if (two_columns) {
                  accumulate(One(), Two());
                } else {
                  accumulate(One(), One());
                }
              }
            }
          }
        }
      }
      if (tiles) _tile_release();
    });
  }

  if (partitions > 1) {  // the partitions' sums, in order, into the first
    at::parallel_for(0, blocks * kBlock, kBlock, [&](int64_t begin, int64_t end) {
      for (int64_t p = 1; p < partitions; ++p) {
        for (int64_t i = begin; i < end; ++i) acc[i] += acc[p * blocks * kBlock + i];
      }
    });
  }
  at::Tensor grad_weight = at::empty({g.out_channels, cg, g.kernel_h, g.kernel_w}, input.options().dtype(at::kFloat));
  float* out = grad_weight.mutable_data_ptr<float>();
  // Per 32 filters x 32 channels, its taps' blocks (one after another in acc) into each filter's
  // taps (one after another in grad_weight).
  at::parallel_for(0, blocks / taps, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tap_blocks = begin; tap_blocks < end; ++tap_blocks) {
      const int64_t column_pair = tap_blocks % column_pairs, row_pair = tap_blocks / column_pairs % row_pairs;
      const int64_t group = tap_blocks / column_pairs / row_pairs;
      const float* sums = acc.data() + tap_blocks * taps * kBlock;
      for (int64_t tile = 0; tile < 4; ++tile) {
        const int64_t c0 = (2 * column_pair + tile % 2) * kTilePixels, channels = std::min(cg - c0, kTilePixels);
        for (int64_t r = 0; r < kTileRows && channels > 0; ++r) {
          const int64_t k = (2 * row_pair + tile / 2) * kTileRows + r;
          if (k >= kg) break;
          const float* row = sums + (tile * kTileRows + r) * kTilePixels;
          float* filter = out + ((group * kg + k) * cg + c0) * taps;
          if (taps == 1) {
            std::memcpy(filter, row, channels * sizeof(float));
            continue;
          }
          for (int64_t c = 0; c < channels; ++c) {
            for (int64_t tap = 0; tap < taps; ++tap) filter[c * taps + tap] = row[tap * kBlock + c];
          }
        }
      }
    }
  });
  return grad_weight;
}

#pragma GCC pop_options

}  // namespace conv_ext
