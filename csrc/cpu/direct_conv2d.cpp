// Direct CPU kernels: one output (or input-gradient) plane per task, accumulated tap by tap in
// rows that the compiler vectorises, or, for stride 1 and several output channels per group,
// one group per task with those channels' accumulators kept in registers. The plane loops are
// compiled three times, for AVX-512, AVX2+FMA and the baseline instruction set, and picked at
// run time by the CPU's features; CONV_EXT_CPU_ISA=generic or avx2 caps the choice (the tests
// cover each).

// GCC 12's AVX-512 intrinsics start some results from a deliberately undefined vector, which
// -Wmaybe-uninitialized and -Wuninitialized report wherever they are inlined (GCC bug 105593,
// fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "direct_conv2d.h"

#include "aligned_vector.h"
#include "bands.h"
#include "cpu_features.h"
#include "micro_kernel.h"
#include "reduced_rows.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace conv_ext {

// The widest kernel forward_plane_rows (direct_conv2d_rows.inc) takes.
constexpr int64_t kMaxRowsKernelWidth = 16;

// The planes forward_plane_depthwise_3x3 (direct_conv2d_rows.inc) takes: one input channel, a
// 3 x 3 kernel, rows padded by 1 and undilated (stride 1).
inline bool depthwise_3x3_rows_apply(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_h == 1 && g.pad_h == 1 && g.in_channels_per_group() == 1;
}

// The planes forward_plane_depthwise_stride_2_3x3 (direct_conv2d_rows.inc) takes: one input
// channel, a 3 x 3 kernel at stride 2, padded by 1 and undilated.
inline bool depthwise_3x3_stride_2_applies(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 1 && g.pad_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.in_channels_per_group() == 1;
}

// Rows padded by 1 column, undilated, wider than a vector of `lanes`: the AVX2 build's 3 x 3
// kernels shift the padding column into their first and last vectors of columns rather than
// loading those under masks, which cost Zen 3 twice as long per row as plain loads (one thread,
// planes in cache: 28 x 28 1.15x faster, 56 x 56 1.15x; float64 alike).
inline bool columns_shift_edges(const Conv2dGeometry& g, int64_t lanes) {
  return g.pad_w == 1 && g.dilation_w == 1 && g.out_w > lanes;
}

// The planes of forward_plane_depthwise_3x3 whose rows shift their edges in.
inline bool depthwise_3x3_shifts_edges(const Conv2dGeometry& g, int64_t lanes) {
  return depthwise_3x3_rows_apply(g) && columns_shift_edges(g, lanes);
}

// Those planes of 8 KiB or more prefetch their rows as the first vector of columns walks down
// them, the output's above all: the walk writes each output line first, row after row, which
// the prefetchers do not follow (the AVX2 build prefetches no plane ahead, prefetch_plane); Zen 3,
// forward at batch 8: 144 @56 1.02-1.15 -> 0.83-0.86 ms, 96 @56 0.60 -> 0.52, 32 @112 0.89-1.14
// -> 0.68-0.85, 16 @160 0.95 -> 0.81, float64 144 @56 3.6 -> 2.9; 28 x 28 planes (3 KiB) 4%
// slower. Not on Intel's, whose prefetchers follow such walks (see prefetch_plane).
constexpr int64_t kRowPrefetchPlaneBytes = int64_t{8} << 10;
inline bool depthwise_3x3_prefetches_rows(const Conv2dGeometry& g, int64_t element_bytes) {
  return depthwise_3x3_shifts_edges(g, 32 / element_bytes) && g.in_h * g.in_w * element_bytes >= kRowPrefetchPlaneBytes &&
         !cpu_is_intel();
}

// How the AVX2 build's depthwise 3x3 planes whose edges shift in reach the output: summed into a
// scratch plane in L1 and copied out from it, sparing the reads of the output's lines that the
// walks down the columns had waited on.
// - Where streams() sends the output to memory, planes up to 56 x 56, by non-temporal stores
//   (Zen 3, forward at batch 8, A/B: 256 @28 0.47 -> 0.34 ms, 512 @28 1.04 -> 0.72, 128 @40 0.39
//   -> 0.33, 144 @56 0.84 -> 0.78; float64 256 @28 0.95 -> 0.62, 144 @56 2.3 -> 1.7). Larger
//   planes, whose scratch and input outgrow L1, ran slower (float32 64 x 64 alike, 80 x 80 1.23x
//   slower; float64 64 x 64 1.38x).
// - Elsewhere planes up to 48 x 48, by plain stores (forward, A/B: 256 @20 at batch 1 and 2
//   0.67-0.71x the time, 256 @28 and 512 @28 0.82x, 128 @40 0.88-0.9x, 96 @48 0.98x; 144 @56
//   1.03x. The one-pass backward's input gradient alike: both gradients of 256 @20 at batch 1
//   0.84x, 256 @28 at batch 1 and 2 0.92x).
enum class PlaneCopy { none, streamed, stored };
constexpr int64_t kMaxStreamedPlanePixels = 56 * 56, kMaxStoredPlanePixels = 48 * 48;
inline PlaneCopy depthwise_3x3_plane_copy(const Conv2dGeometry& g, const at::Tensor& output) {
  if (cpu_isa() != Isa::avx2 || !depthwise_3x3_shifts_edges(g, 32 / output.element_size())) return PlaneCopy::none;
  const int64_t pixels = g.out_h * g.out_w;
  if (streams(output)) return pixels <= kMaxStreamedPlanePixels ? PlaneCopy::streamed : PlaneCopy::none;
  return pixels <= kMaxStoredPlanePixels ? PlaneCopy::stored : PlaneCopy::none;
}

// A plane into L2 ahead of its kernel, which walks it in strips of columns (or blocks of rows),
// from 2 KiB, up to 64 KiB of it, where the hardware prefetchers do not follow such walks: on
// AMD's (Zen 5, depthwise 3x3 at batch 8 with AVX-512: forwards alone 144 channels @56 1.5x
// faster, 32 @112 1.15-1.3x, 256 @28 alike; forward and backward of 256 @28, whose tensors
// outgrow the caches, 1.6x faster; 7 x 7 planes alike or slower). Intel's do: there the same
// prefetches cost (Xeon with AMX: 144 @56 and 32 @112 forwards 1.15-1.25x slower, forward and
// backward of 256 @28 1.2x slower). So do the AVX2 build's, on Zen 3 (A/B in one process, at
// batch 8: depthwise 3x3 forwards 256 @28 0.91-0.97x the time, 384 @36 0.82x, 512 @28
// 0.85-0.88x, 3x3/2 144 @56 0.8x, float64 256 @28 0.77x and 3x3/2 144 @56 0.72x; weight
// gradients 256 @28 0.86x, 144 @56 and 32 @112 0.75x, 8 channels per group @28 0.9x; all three
// gradients of 256 @28 0.88x; 5x5 and 7x7 alike), where the row kernels prefetch their own rows
// from 8 KiB planes up (depthwise_3x3_prefetches_rows).
constexpr int64_t kPrefetchedPlaneBytes = int64_t{2} << 10, kMaxPrefetchBytes = int64_t{64} << 10;
inline void prefetch_plane(const void* plane, int64_t bytes) {
  if (bytes < kPrefetchedPlaneBytes || cpu_is_intel() || cpu_isa() == Isa::avx2) return;
  const char* p = static_cast<const char*>(plane);
  for (int64_t b = 0; b < std::min(bytes, kMaxPrefetchBytes); b += 64) __builtin_prefetch(p + b, 0, 2);
}

// Per build, its instruction set, the output columns of the narrowest block of accumulators,
// and of the blocks of 3 to 8 output channels: 8 channels x 8 columns of AVX2's 16 registers;
// with AVX-512, 8 x 2 vectors of its 32 (grouped 3x3 with 8 channels per group: 1.8x faster
// than the AVX2 build, measured).
namespace generic {
constexpr Isa kIsa = Isa::generic;
template <typename scalar_t>
constexpr int kBlockColumns = 8;
template <typename scalar_t>
constexpr int kGroupColumns = 8;
#include "direct_conv2d_planes.inc"
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr Isa kIsa = Isa::avx2;
template <typename scalar_t>
constexpr int kBlockColumns = 8;
template <typename scalar_t>
constexpr int kGroupColumns = 8;
#include "direct_conv2d_planes.inc"
#include "direct_conv2d_rows.inc"

// dst[0, n) = src[0, n), with non-temporal stores from dst's first 32-byte boundary on.
template <typename scalar_t>
void stream_copy(const scalar_t* src, int64_t n, scalar_t* dst) {
  using V = Vec<scalar_t>;
  int64_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; ++i) dst[i] = src[i];
  for (; i + V::kLanes <= n; i += V::kLanes) V::stream(dst + i, V::load(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2,fma,f16c,prefer-vector-width=512")
namespace avx512 {
constexpr Isa kIsa = Isa::avx512;
template <typename scalar_t>
constexpr int kBlockColumns = 64 / sizeof(scalar_t);
template <typename scalar_t>
constexpr int kGroupColumns = 2 * kBlockColumns<scalar_t>;
#include "direct_conv2d_planes.inc"
#include "direct_conv2d_rows.inc"
}  // namespace avx512
#pragma GCC pop_options

namespace {

using at::Tensor;

// Computing in scalar_t; the unit-stride kernels read (and the forward writes) io_t tensors.
template <typename scalar_t, typename io_t = scalar_t>
struct PlaneKernels {
  decltype(&generic::forward_plane<scalar_t>) forward;
  decltype(&generic::forward_plane_unit_stride<scalar_t, io_t>) forward_unit_stride;
  // The kernels that read the planes in place (forward_rows and grad_weight_rows_3x3): null
  // where the build has no vectors, and for float16 and bfloat16 but in the AVX-512 build (AVX2
  // has no masked loads of 16-bit values, and reading a plane's edges lane by lane took 3x as
  // long as copying it), where forward_rows takes only depthwise 3x3 planes
  // (depthwise_3x3_rows_apply).
  decltype(&avx512::forward_plane_depthwise_3x3<scalar_t, io_t>) forward_rows;
  decltype(&generic::forward_group_unit_stride_for<scalar_t>) forward_group_unit_stride_for;
  decltype(&generic::grad_input_plane<scalar_t>) grad_input;
  decltype(&generic::grad_weight_planes<scalar_t>) grad_weight;
  decltype(&generic::grad_weight_planes_unit_stride<scalar_t, io_t>) grad_weight_unit_stride;
  decltype(&avx512::grad_weight_rows_3x3<scalar_t, io_t>) grad_weight_rows_3x3;
  // The AVX2 build's kernels of depthwise_3x3_stride_2_applies planes, float32 and float64, which
  // read them in place (depthwise_stride_2_reads_planes): the AVX-512 build runs them too.
  void (*forward_stride_2_3x3)(const io_t*, const scalar_t*, scalar_t, io_t*, const Conv2dGeometry&);
  void (*grad_weight_stride_2_3x3)(const io_t*, const io_t*, scalar_t*, const Conv2dGeometry&);
  void (*grad_input_stride_2_3x3)(const io_t*, const scalar_t*, io_t*, const Conv2dGeometry&);
  decltype(&generic::grad_weight_planes_stride_2<scalar_t, io_t>) grad_weight_stride_2;
  decltype(&generic::sum_plane<scalar_t, io_t>) sum_plane;
};

// The plane loops of one build.
#define CONV_EXT_PLANE_KERNELS(isa, forward_rows, grad_weight_rows_3x3, stride_2_3x3)                   \
  PlaneKernels<scalar_t, io_t> {                                                                      \
    &isa::forward_plane<scalar_t>, &isa::forward_plane_unit_stride<scalar_t, io_t>, forward_rows,     \
        &isa::forward_group_unit_stride_for<scalar_t>, &isa::grad_input_plane<scalar_t>,              \
        &isa::grad_weight_planes<scalar_t>, &isa::grad_weight_planes_unit_stride<scalar_t, io_t>,     \
        grad_weight_rows_3x3, CONV_EXT_STRIDE_2_3X3_##stride_2_3x3,                                   \
        &isa::grad_weight_planes_stride_2<scalar_t, io_t>, &isa::sum_plane<scalar_t, io_t>            \
  }
#define CONV_EXT_STRIDE_2_3X3_none nullptr, nullptr, nullptr
#define CONV_EXT_STRIDE_2_3X3_avx2                                                                    \
  &avx2::forward_plane_depthwise_stride_2_3x3<scalar_t>,                                              \
      &avx2::grad_weight_depthwise_stride_2_3x3<scalar_t>, &avx2::grad_input_depthwise_stride_2_3x3<scalar_t>

template <typename scalar_t, typename io_t = scalar_t>
PlaneKernels<scalar_t, io_t> plane_kernels() {
  switch (cpu_isa()) {
    case Isa::avx512:
      if constexpr (std::is_same_v<scalar_t, io_t>) {
        return CONV_EXT_PLANE_KERNELS(avx512, &avx512::forward_plane_rows<scalar_t>, &avx512::grad_weight_rows_3x3<scalar_t>,
                                      avx2);
      } else {
        return CONV_EXT_PLANE_KERNELS(avx512, (&avx512::forward_plane_depthwise_3x3<scalar_t, io_t>),
                                      (&avx512::grad_weight_rows_3x3<scalar_t, io_t>), none);
      }
    case Isa::avx2:
      if constexpr (std::is_same_v<scalar_t, io_t>) {
        return CONV_EXT_PLANE_KERNELS(avx2, &avx2::forward_plane_rows<scalar_t>, &avx2::grad_weight_rows_3x3<scalar_t>, avx2);
      } else {
        return CONV_EXT_PLANE_KERNELS(avx2, nullptr, nullptr, none);
      }
    default:
      return CONV_EXT_PLANE_KERNELS(generic, nullptr, nullptr, none);
  }
}
#undef CONV_EXT_PLANE_KERNELS
#undef CONV_EXT_STRIDE_2_3X3_none
#undef CONV_EXT_STRIDE_2_3X3_avx2

}  // namespace

// Whether the stride-1 weight gradient reads the planes in place (grad_weight_rows_3x3, for 3x3
// kernels with undilated rows where the build has it) rather than padded copies: what
// direct_conv2d_grad_weight and direct_conv2d_backward both ask, so that they sum alike.
template <typename scalar_t, typename io_t>
bool grad_weight_reads_rows(const PlaneKernels<scalar_t, io_t>& kernels, const Conv2dGeometry& g) {
  return kernels.grad_weight_rows_3x3 != nullptr && grad_weight_rows_3x3_apply(g);
}

// forward_rows of plane x (forward_stride_2_3x3 of a strided one) into out, or, given a scratch
// plane (depthwise_3x3_plane_copy), into it and from it into out as `copy` says. x_even_rows:
// x's odd rows are zeros.
template <typename scalar_t, typename io_t>
void forward_rows_into(const PlaneKernels<scalar_t, io_t>& kernels, const io_t* x, const scalar_t* w, scalar_t bias,
                       io_t* out, const Conv2dGeometry& g, scalar_t* scratch, PlaneCopy copy, bool x_even_rows = false) {
  const auto rows_into = [&](io_t* y) {
    if (!g.unit_stride()) return kernels.forward_stride_2_3x3(x, w, bias, y, g);
    kernels.forward_rows(x, w, bias, y, g, x_even_rows);
  };
  if constexpr (std::is_same_v<io_t, scalar_t>) {
    if (copy != PlaneCopy::none) {
      rows_into(scratch);
      if (copy == PlaneCopy::stored) return static_cast<void>(std::copy(scratch, scratch + g.out_h * g.out_w, out));
      return avx2::stream_copy(scratch, g.out_h * g.out_w, out);
    }
  }
  rows_into(out);
}

// fn(io) with a value of the tensor's element type: float16 or bfloat16 (computed in float32),
// or scalar_t.
template <typename scalar_t, typename Fn>
void with_io_type(const Tensor& t, Fn&& fn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (t.scalar_type() == at::kBFloat16) return fn(c10::BFloat16());
    if (t.scalar_type() == at::kHalf) return fn(c10::Half());
  }
  fn(scalar_t());
}

bool direct_forward_reads_reduced(const Conv2dGeometry& g) {
  return g.unit_stride() && g.out_channels_per_group() == 1;
}

bool direct_grad_weight_reads_reduced(const Conv2dGeometry& g) { return g.unit_stride(); }

bool direct_pays_off(const Conv2dGeometry& g) {
  // Measured on AVX2/AVX-512 machines: direct wins clearly for depthwise layers, modestly up to 8
  // channels per group, and loses to GEMM once a group has 16 input or output channels...
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  if (cg <= 8 && kg <= 8) return true;
  // ...but for the AVX-512 build's stride-1 group kernel, up to 16 (against the implicit GEMM,
  // 32 groups: 16 channels @28 1.3-1.5x faster; stride 2 slower; the AVX2 build alike or slower;
  // wider groups run faster on the channels-last GEMM).
  return use_avx512() && g.groups > 1 && g.unit_stride() && cg <= 16 && kg <= 16;
}

// Depthwise 3x3, 5x5 and 7x7 float32 layers at stride 1 or 2 with a multiple of 8 channels, a
// block of a vector's channels at a time (depthwise_row_channel_block: 8 in the AVX2 build, 16 in
// the AVX-512 one where they come in sixteens): each task moves its image's block of planes into
// a zero-padded band, channels innermost, and each output row back, by register
// transposes. The planes' kernels, whose every tap is a broadcast, ran at a third of the FMA
// peak or less (Zen 3, forward, A/B at batch 8: 7x7 96 @56 4.9 -> 1.8 ms, 384 @14 1.25 -> 0.62,
// 5x5 240 @28 1.3 -> 0.85-0.91, 3x3 256 @28 0.90-0.95 -> 0.53-0.58, 144 @56 1.4-2.2 -> 1.0-1.2,
// 512 @14 0.59-0.79 -> 0.38-0.55; at batch 1 7x7 384 @14 0.16 -> 0.09, 3x3 256 @28 0.12-0.14 ->
// 0.075). At stride 2 too, each output pixel reading every other band pixel (against the strided
// planes' kernel, batch 8: 3x3 144 @56 1.66 -> 0.65 ms, 256 @28 0.92 -> 0.31, 512 @14 0.77 ->
// 0.24, from 0.35-0.66x torch to 1.26-2.01x). With AVX-512, blocks of 16 channels against those
// of 8 (Xeon, A/B, ratios to torch, forward, input gradient, weight gradient: batch 8 7x7 384 @14
// 0.9x, 1.0x, 21x -> 1.4x, 1.5x, 44x; 5x5 240 @28 1.05x, 1.08x, 38x -> 1.5x, 1.5x, 58x; batch 1
// 7x7 384 @14 1.55x, 1.2x, 20x -> 2.45x, 1.54x, 37x). A task's band holds its block's whole
// padded planes: up to 4 MiB (planes of about 350 x 350 for 8 channels).
constexpr int64_t kMaxChannelBlockBand = int64_t{4} << 20;

// But 3x3 planes of 400 pixels (20 x 20) up to 128 KiB whose edges shift in their padding
// (depthwise_3x3_shifts_edges) run faster on the planes' kernel, which needs no transposes (Zen 3,
// forward, A/B at batch 8: 256 @28 0.53 -> 0.47-0.49 ms, 512 @28 1.45 -> 1.24, 256 @20 0.52 ->
// 0.40-0.42, 144 @56 0.96 -> 0.86, 32 @112 0.83 -> 0.68; at batch 1 256 @28 0.073 -> 0.065, 144
// @56 0.117 -> 0.093, 32 @128 0.18 -> 0.12). Smaller planes spend more on each plane's set-up
// (512 @14 0.36 -> 0.47, 512 @16 0.47 -> 0.61, 512 @18 0.54 -> 0.62), larger ones on walking
// their columns down more than L1 holds (64 @224 at batch 1 1.0 -> 1.05). On AVX-512 CPUs, the
// AVX-512 build's planes' kernel, all stride-1 3x3 planes: against the channel blocks (Zen 4, A/B,
// batch 8, forward and forward+backward): 512 @14 0.62x and 0.53x the time, 256 @28 0.55x and
// 0.58x, 144 @56 0.66x and 0.91x, 512 @10 0.83x and 1.09x; 32 @112 1.09x and 0.98x, 1024 @7
// 1.25x and 0.8x; at batch 1 0.59-0.92x, but 1024 @7 forward 1.1x. Where AVX-512 runs at full
// width (Intel's Xeons), the AVX-512 build's blocks of 16 channels beat the planes up to 16 x 16
// pixels (Xeon, A/B, ratios to torch, planes -> blocks, forward and input gradient: batch 8 1024
// @7 0.31x and 0.36x -> 1.43x and 1.68x, 512 @14 1.01x and 0.98x -> 1.83x and 1.66x, 512 @16 1.2x
// -> 2.2x; batch 1 1024 @7 0.8x and 0.65x -> 3.7x and 1.7x, 512 @14 1.65x and 1.32x -> 3.2x and
// 2.2x), and lose from 17 x 17 on (batch 8: 384 @17 2.55x -> 1.63x, 256 @20 2.6x -> 1.9x, 256 @28
// 3.1x -> 1.7x, 128 @56 2.2x -> 2.0x). On Zen 4 the blocks of 16 beat the planes up to 8 x 8
// pixels (A/B, ratios to torch, planes -> blocks, forward, input gradient, weight gradient:
// batch 8 1024 @7 0.96x, 1.05x, 0.73x -> 1.45x, 1.4x, 1.25x; 768 @8 1.18x, 1.15x, 0.86x -> 1.34x,
// 1.31x, 1.37x; batch 1 1024 @7 forward and weight gradient 2.8x and 2.1x -> 3.5x and 3.5x), and
// lose from 10 x 10 on (batch 8 512 @10 forward 1.56x -> 1.33x, 512 @12 1.68x -> 1.2x, 512 @14
// 2.2x -> 1.5x).
constexpr int64_t kMinPlanesPixels = 400, kMaxPlanesBytes = int64_t{128} << 10;
constexpr int64_t kMaxHalfWidthBlocksPixels = 64, kMaxFullWidthBlocksPixels = 256;
// The largest output planes (in pixels) that the AVX-512 build's 3x3 layers run by channel blocks.
int64_t max_avx512_blocks_pixels() {
  return cpu_halves_avx512() ? kMaxHalfWidthBlocksPixels : kMaxFullWidthBlocksPixels;
}

bool depthwise_3x3_planes_faster(const Conv2dGeometry& g) {
  if (use_avx512()) {
    return g.unit_stride() && g.kernel_h == 3 && g.kernel_w == 3 && g.out_h * g.out_w > max_avx512_blocks_pixels();
  }
  return g.unit_stride() && depthwise_3x3_shifts_edges(g, avx2::Vec<float>::kLanes) &&
         g.out_h * g.out_w >= kMinPlanesPixels && g.in_h * g.in_w * int64_t{sizeof(float)} <= kMaxPlanesBytes;
}

// And so do 3x3 layers at stride 2 padded by 1 (forward_plane_depthwise_stride_2_3x3, which
// splits each input row into its even and odd columns) with output planes of 400 pixels or more
// and input planes up to 16 KiB (Zen 3, forward, A/B: 144 @56 at batch 8 0.73-0.8x the time, at
// batch 1 0.8x; 256 @40 0.77x; 192 @28, 196 output pixels, alike; 576 @14 1.9x and 960 @7 3.7x
// slower; 96 @112, 49 KiB planes, 0.73x at batch 1 but 1.2-1.5x slower at batch 8). float64,
// which has no channel blocks, runs it wherever it applies, against the strided planes' loops
// 1.85-2.3x faster (144 @56, 192 @28, 576 @14; 960 @7 1.1x). On AVX-512 CPUs (which run this
// AVX2 kernel: the AVX-512 build has only the strided planes' loops, 3-5x slower on Zen 4), from
// any output plane (Zen 4, A/B against the channel blocks, batch 8, forward and
// forward+backward: 144 @56 0.54x and 0.96x the time, 256 @40 0.56x and 0.78x, 256 @28 0.61x and
// 0.82x, 512 @14 0.74x and 0.86x; at batch 1 0.66-0.74x and 0.56-0.9x; 96 @112 at batch 8 1.4x
// and 1.2x slower). Where AVX-512 runs at full width, as at stride 1, from 17 x 17 output pixels
// on: against the blocks of 16 channels (Xeon, A/B, ratios to torch, forward, planes -> blocks:
// batch 8 1024 @8 0.27x -> 2.4x, 512 @14 0.74x -> 2.6x, at batch 1 1.5x -> 5.5x; 256 @28 1.65x
// -> 1.74x; 144 @56 2.05x -> 1.93x). On Zen 4, as at stride 1, up to 8 x 8 output pixels (A/B,
// forward, planes -> blocks of 16: batch 8 1024 @8 0.2 -> 0.11 ms; 7 x 7, 512 and 576 @14 at
// batch 8 and 1, alike).
constexpr int64_t kMaxStride2PlaneBytes = int64_t{16} << 10;
bool depthwise_3x3_stride_2_planes_faster(const Conv2dGeometry& g) {
  const int64_t pixels = g.out_h * g.out_w;
  const bool planes_pay = use_avx512() ? pixels > max_avx512_blocks_pixels() : pixels >= kMinPlanesPixels;
  return depthwise_3x3_stride_2_applies(g) && planes_pay && g.in_h * g.in_w * int64_t{sizeof(float)} <= kMaxStride2PlaneBytes;
}

// The channels of a block: a vector's, 16 where the AVX-512 build runs and the channels come in
// sixteens, else the AVX2 build's 8.
int64_t channel_block(const Conv2dGeometry& g) {
  return use_avx512() && g.in_channels % avx512::Vec<float>::kLanes == 0 ? avx512::Vec<float>::kLanes
                                                                          : avx2::Vec<float>::kLanes;
}

// The band's width: the padded rows, and past them the zeros that the row kernel's blocks of 8
// output pixels read.
int64_t channel_block_band_width(const Conv2dGeometry& g) {
  return std::max(g.in_w + 2 * g.pad_w, ((g.out_w + 7) / 8 * 8 - 1) * g.stride_w + g.kernel_w);
}

// The layers the channel blocks can take: on AVX-512 CPUs too (Zen 4, blocks of 8 against the
// AVX-512 build's planes, A/B, forward and forward+backward, batch 8: 5x5 240
// @28 0.86x and 0.69x the time, 672 @14 0.91x and 0.84x, 7x7 96 @56 0.61x and 0.55x, 384 @14 0.8x
// and 0.61x, 768 @7 0.52x and 0.35x; batch 1 0.56-0.95x and 0.5-0.7x; the strided planes' loops
// they replace at stride 2, 3x3 96 @112 and 5x5 240 @28, 0.12-0.3x forward).
bool channel_blocks_apply(const Conv2dGeometry& g, at::ScalarType dtype) {
  const int64_t band_bytes = (g.in_h + 2 * g.pad_h) * channel_block_band_width(g) * channel_block(g) * int64_t{sizeof(float)};
  const bool strides = g.stride_h == g.stride_w && (g.stride_h == 1 || g.stride_h == 2);
  return dtype == at::kFloat && use_avx2() && g.groups == g.in_channels &&
         g.out_channels == g.groups && g.in_channels % 8 == 0 && strides && g.dilation_h == 1 &&
         g.dilation_w == 1 && g.kernel_h == g.kernel_w && (g.kernel_h == 3 || g.kernel_h == 5 || g.kernel_h == 7) &&
         band_bytes <= kMaxChannelBlockBand;
}

bool depthwise_by_channel_blocks(const Conv2dGeometry& g, at::ScalarType dtype) {
  return channel_blocks_apply(g, dtype) && !depthwise_3x3_planes_faster(g) && !depthwise_3x3_stride_2_planes_faster(g);
}

// The weight gradients the channel blocks take (depthwise_grad_weight_by_channel_blocks): 5 x 5
// and 7 x 7 ones (against the planes' kernels, Zen 3, A/B: at batch 8 5x5 960 @7, 672 @14 and 240
// @28 and 7x7 384 @14 and 32 @112 0.2-0.37x the time, at batch 1 5x5 960 @7 to 32 @112, 3x3/2 144
// @56 and 7x7 96 @56 0.2-0.28x); 3 x 3 ones of stride-1 planes under 400 output pixels (1024 @7
// at batch 8 and 1 0.66x, 512 @14 0.92x; 256 @20 and @28 1.14-1.22x slower), and of inputs
// over 8 MiB, which the planes' kernels read from memory (batch 8: 32 @112 0.67x, 96 @112 at
// stride 2 0.6x, 144 @56 at stride 2 0.73x, 64 @80 0.72x, 512 @28 at stride 2 0.89x, 128 @56
// 0.93x; at 6.4 MiB 256 @28 at stride 2 and 1024 @14 at stride 2 1.1-1.2x slower, and inputs in
// cache at batch 1, fewer blocks than planes to share among the threads, 1.2-1.55x slower).
constexpr int64_t kMinChannelBlocksGradWeightInputBytes = int64_t{8} << 20;
bool channel_blocks_take_grad_weight(const Conv2dGeometry& g, at::ScalarType dtype) {
  // Not the stride-1 3x3 ones on AVX-512 CPUs, whose forward keeps to the planes too
  // (depthwise_3x3_planes_faster).
  if (!channel_blocks_apply(g, dtype) || (use_avx512() && depthwise_3x3_planes_faster(g))) return false;
  const int64_t input_bytes = g.batch * g.in_channels * g.in_h * g.in_w * int64_t{sizeof(float)};
  return g.kernel_h > 3 || (g.unit_stride() && g.out_h * g.out_w < kMinPlanesPixels) ||
         input_bytes > kMinChannelBlocksGradWeightInputBytes;
}

// fn(K, S) with the channel blocks' kernel size (3, 5 or 7) and stride (1 or 2) as compile-time
// constants (std::integral_constant): the row kernels' instance for the layer.
template <typename Fn>
auto for_kernel_and_stride(const Conv2dGeometry& g, Fn&& fn) {
  const auto with_stride = [&](auto k) {
    return g.stride_h == 1 ? fn(k, std::integral_constant<int, 1>{}) : fn(k, std::integral_constant<int, 2>{});
  };
  return g.kernel_h == 3   ? with_stride(std::integral_constant<int, 3>{})
         : g.kernel_h == 5 ? with_stride(std::integral_constant<int, 5>{})
                           : with_stride(std::integral_constant<int, 7>{});
}

// A task's B planes x_block (of an image, from its block's first channel) into its band, channels
// innermost, inside the band's zero border.
void move_into_band(Transpose<float> transpose, const float* x_block, const Conv2dGeometry& g, int64_t B, int64_t band_w,
                    float* band) {
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    transpose(x_block + ih * g.in_w, g.in_h * g.in_w, B, g.in_w, band + ((ih + g.pad_h) * band_w + g.pad_w) * B, B, false);
  }
}

// The output pixels a task's block of channels moves to their planes at a time, where rows are
// no multiple of 8 pixels: whole rows, adjacent in its buffer (8 KiB of 8 channels), so that the
// transposes' edges come once per buffer rather than once per row (Zen 3, forward, A/B: 3x3 1024 @7 at batch
// 8 0.215 -> 0.181 ms, at batch 1 0.034 -> 0.030; 3x3 512 @14 0.30 -> 0.26; 7x7 384 @14 0.555 ->
// 0.52; 5x5 240 @28 0.78 -> 0.76). Rows of whole squares, which have no edges, go one at a time
// (buffers of 4 rows of 56 had measured 3x3/2 96 @112 at batch 8 1.12-1.18x as long, near this
// VM's noise there). The tasks go by block, its images in turn, so that each thread moves a
// block's taps once (alike in time).
constexpr int64_t kTransposedOutputPixels = 256;

void depthwise_forward_by_channel_blocks(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                         const Conv2dGeometry& g, Tensor& output) {
  const int64_t K = g.kernel_h, plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t band_w = channel_block_band_width(g), band_h = g.in_h + 2 * g.pad_h, out_w8 = (g.out_w + 7) / 8 * 8;
  const auto transpose = transpose_for_this_cpu<float>();
  const int64_t S = g.stride_h, B = channel_block(g);
  const auto row_kernel = for_kernel_and_stride(g, [&](auto k, auto s) {
    return B == avx2::Vec<float>::kLanes ? &avx2::depthwise_row_channel_block<k, s> : &avx512::depthwise_row_channel_block<k, s>;
  });
  const float* x = input.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  const float* b = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* y = output.mutable_data_ptr<float>();
  const int64_t blocks = g.in_channels / B, rows_at_once = g.out_w % 8 == 0 ? 1 : std::max<int64_t>(1, kTransposedOutputPixels / g.out_w);
  at::parallel_for(0, g.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<float> band(band_h * band_w * B, 0.0f), taps(K * K * B);  // band's border stays zero
    AlignedVector<float> rows(((rows_at_once - 1) * g.out_w + out_w8) * B);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task % g.batch, c0 = task / g.batch * B;
      move_into_band(transpose, x + (n * g.in_channels + c0) * plane, g, B, band_w, band.data());
      if (task == begin || n == 0) transpose(w + c0 * K * K, K * K, B, K * K, taps.data(), B, false);
      float* y_block = y + (n * g.out_channels + c0) * out_plane;
      for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += rows_at_once) {
        const int64_t count = std::min(rows_at_once, g.out_h - oh0);
        for (int64_t r = 0; r < count; ++r) {  // each row's last block of 8 pixels may write into the next row, written after it
          row_kernel(band.data() + (oh0 + r) * S * band_w * B, band_w, taps.data(), b != nullptr ? b + c0 : nullptr,
                     g.out_w, rows.data() + r * g.out_w * B);
        }
        transpose(rows.data(), B, count * g.out_w, B, y_block + oh0 * g.out_w, out_plane, false);
      }
    }
  });
}

// The weight gradient of those layers by the same blocks: a task per block of channels, its
// images summed in order, each image's input planes of the block moved into the band and its
// gradient planes, channels innermost, into a buffer; every tap's sums across the block's
// channels in vectors (depthwise_grad_weight_row_channel_block), moved to the filters at the end.
void depthwise_grad_weight_by_channel_blocks(const Tensor& input, const Tensor& grad_output, const Conv2dGeometry& g,
                                             Tensor& grad_weight) {
  const int64_t K = g.kernel_h, plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t band_w = channel_block_band_width(g), band_h = g.in_h + 2 * g.pad_h;
  const auto transpose = transpose_for_this_cpu<float>();
  const int64_t S = g.stride_h, B = channel_block(g);
  const auto row_kernel = for_kernel_and_stride(g, [&](auto k, auto s) {
    return B == avx2::Vec<float>::kLanes ? &avx2::depthwise_grad_weight_row_channel_block<k, s>
                                         : &avx512::depthwise_grad_weight_row_channel_block<k, s>;
  });
  const float* x = input.const_data_ptr<float>();
  const float* gy = grad_output.const_data_ptr<float>();
  float* gw = grad_weight.mutable_data_ptr<float>();
  at::parallel_for(0, g.in_channels / B, 1, [&](int64_t begin, int64_t end) {
    AlignedVector<float> band(band_h * band_w * B, 0.0f), gy_pixels(out_plane * B);  // band's border stays zero
    AlignedVector<float> image_sums(K * K * B), sums(K * K * B);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * B;
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t n = 0; n < g.batch; ++n) {
        move_into_band(transpose, x + (n * g.in_channels + c0) * plane, g, B, band_w, band.data());
        transpose(gy + (n * g.out_channels + c0) * out_plane, out_plane, B, out_plane, gy_pixels.data(), B, false);
        std::fill(image_sums.begin(), image_sums.end(), 0.0f);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          row_kernel(band.data() + oh * S * band_w * B, band_w, gy_pixels.data() + oh * g.out_w * B, g.out_w,
                     image_sums.data());
        }
        for (int64_t i = 0; i < K * K * B; ++i) sums[i] += image_sums[i];
      }
      transpose(sums.data(), B, K * K, B, gw + c0 * K * K, K * K, false);
    }
  });
}

Tensor direct_conv2d_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                             const Conv2dGeometry& g) {
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (input.scalar_type() == at::kFloat && depthwise_by_channel_blocks(g, weight.scalar_type())) {
    depthwise_forward_by_channel_blocks(input, weight, bias, g, output);
    return output;
  }
  TORCH_INTERNAL_ASSERT(input.scalar_type() == weight.scalar_type() || direct_forward_reads_reduced(g));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_ext_direct_forward", [&] {
    const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
    const auto kernels = plane_kernels<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    const bool unit_stride = g.unit_stride();
    if (!unit_stride || kg == 1) {
      // One task per output plane. With stride 1 and one output channel per group (depthwise),
      // float32 and float64 planes are summed row by row straight from the input where the build
      // has vectors (measured against the padded copy: 1.1-1.3x faster at 28x28 and 56x56,
      // 2x at 14x14), and so are float16 and bfloat16 3x3 planes in the AVX-512 build; the
      // others take long multiply-adds over a padded copy of the plane (a 3x3 kernel's nine
      // taps in one pass; float16 and bfloat16 widened in the copy), which beat blocks of
      // accumulators (measured).
      with_io_type<scalar_t>(input, [&](auto io) {
        using io_t = decltype(io);
        const auto io_kernels = plane_kernels<scalar_t, io_t>();
        // float16 and bfloat16 3x3 planes widened and rounded in registers (measured against the
        // padded copies, bfloat16 with AVX-512: 256 @28 1.5x faster at batch 8, 1.3x at batch 1,
        // 512 @14 1.75x, 144 @56 1.5x; float16 256 @28 1.65x).
        const bool rows = io_kernels.forward_rows != nullptr &&
                          (std::is_same_v<io_t, scalar_t>
                               ? (unit_stride ? g.kernel_w <= kMaxRowsKernelWidth
                                              : io_kernels.forward_stride_2_3x3 != nullptr && depthwise_3x3_stride_2_applies(g))
                               : unit_stride && depthwise_3x3_rows_apply(g));
        const int64_t work_size = unit_stride && !rows ? generic::unit_stride_work_size(g) : 0;
        const PlaneCopy copy = rows ? depthwise_3x3_plane_copy(g, output) : PlaneCopy::none;
        const io_t* x = input.const_data_ptr<io_t>();
        io_t* y = output.mutable_data_ptr<io_t>();
        const auto group_input = [&](int64_t plane) {  // of output plane (n, k)
          return x + (plane / g.out_channels * g.in_channels + plane % g.out_channels / kg * cg) * g.in_h * g.in_w;
        };
        at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t begin, int64_t end) {
          AlignedVector<scalar_t> work(work_size, scalar_t(0));  // per task: the padded plane's border
          AlignedVector<scalar_t> scratch(copy != PlaneCopy::none ? g.out_h * g.out_w : 0);  // per task: the copied plane
          for (int64_t plane = begin; plane < end; ++plane) {
            const int64_t k = plane % g.out_channels;
            const io_t* x_group = group_input(plane);
            if (plane + 1 < end) {
              prefetch_plane(group_input(plane + 1), cg * g.in_h * g.in_w * int64_t{sizeof(io_t)});
            }
            const scalar_t bias_k = b != nullptr ? b[k] : scalar_t(0);
            io_t* y_plane = y + plane * g.out_h * g.out_w;
            if (rows) {
              forward_rows_into(io_kernels, x_group, w + k * g.patch_size(), bias_k, y_plane, g, scratch.data(), copy);
              continue;
            }
            if constexpr (std::is_same_v<io_t, scalar_t>) {  // float16 and bfloat16 are read only at stride 1
              if (!unit_stride) {
                io_kernels.forward(x_group, w + k * g.patch_size(), bias_k, y_plane, g);
                continue;
              }
            }
            io_kernels.forward_unit_stride(x_group, w + k * g.patch_size(), bias_k, y_plane, g, work.data());
          }
          if (copy == PlaneCopy::streamed) _mm_sfence();
        });
      });
      return;
    }
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = output.mutable_data_ptr<scalar_t>();
    // Stride 1: one task per (image, group), on a zero-padded copy of the group's input whose
    // rows reach past the last block of output columns; up to 8 output channels at a time.
    const int64_t padded_h = g.in_h + 2 * g.pad_h;
    // Padded rows reach past the last block of any build.
    constexpr int64_t columns = std::max({generic::kBlockColumns<scalar_t>, avx2::kBlockColumns<scalar_t>,
                                          avx512::kBlockColumns<scalar_t>});
    const int64_t blocks = (g.out_w + columns - 1) / columns;
    const int64_t row_length = std::max(g.in_w + 2 * g.pad_w, blocks * columns + (g.kernel_w - 1) * g.dilation_w);
    at::parallel_for(0, g.batch * g.groups, 1, [&](int64_t begin, int64_t end) {
      AlignedVector<scalar_t> padded(cg * padded_h * row_length, scalar_t(0));  // borders stay zero
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / g.groups, group = task % g.groups;
        const scalar_t* x_group = x + (n * g.in_channels + group * cg) * g.in_h * g.in_w;
        for (int64_t c = 0; c < cg; ++c) {
          generic::copy_into_padded(x_group + c * g.in_h * g.in_w, g, row_length,
                                    padded.data() + c * padded_h * row_length);
        }
        for (int64_t k0 = group * kg; k0 < (group + 1) * kg; k0 += generic::kMaxBlockChannels) {
          const auto kernel = kernels.forward_group_unit_stride_for(
              std::min(generic::kMaxBlockChannels, (group + 1) * kg - k0));
          kernel(padded.data(), padded_h, row_length, w + k0 * g.patch_size(), b != nullptr ? b + k0 : nullptr,
                 y + (n * g.out_channels + k0) * g.out_h * g.out_w, g);
        }
      }
    });
  });
  return output;
}

Tensor direct_conv2d_grad_input(const Tensor& grad_output, const Tensor& weight,
                                const Conv2dGeometry& g) {
  Tensor grad_input = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "conv_ext_direct_grad_input", [&] {
    const auto kernels = plane_kernels<scalar_t>();
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
    const int64_t kernel_area = g.kernel_h * g.kernel_w;
    if (depthwise_stride_2_reads_planes(g, grad_output.scalar_type()) && kg == 1) {
      at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          kernels.grad_input_stride_2_3x3(gy + plane * g.out_h * g.out_w, w + plane % g.in_channels * kernel_area,
                                          gx + plane * g.in_h * g.in_w, g);
        }
      });
      return;
    }
    at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / g.in_channels, c = plane % g.in_channels;
        const int64_t group = c / cg, first_k = group * kg;
        kernels.grad_input(gy + (n * g.out_channels + first_k) * g.out_h * g.out_w,
                           w + (first_k * cg + c % cg) * kernel_area, g.patch_size(),
                           gx + plane * g.in_h * g.in_w, g);
      }
    });
  });
  return grad_input;
}

Tensor direct_conv2d_grad_weight(const Tensor& input, const Tensor& grad_output,
                                 const Conv2dGeometry& g) {
  TORCH_INTERNAL_ASSERT(!at::isReducedFloatingType(input.scalar_type()) || direct_grad_weight_reads_reduced(g));
  Tensor grad_weight = at::empty({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w},
                                 input.options().dtype(at::toOpMathType(input.scalar_type())));
  if (channel_blocks_take_grad_weight(g, input.scalar_type())) {
    depthwise_grad_weight_by_channel_blocks(input, grad_output, g, grad_weight);
    return grad_weight;
  }
  AT_DISPATCH_FLOATING_TYPES(grad_weight.scalar_type(), "conv_ext_direct_grad_weight", [&] {
    const auto kernels = plane_kernels<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
    const int64_t kernel_area = g.kernel_h * g.kernel_w;
    const bool unit_stride = g.unit_stride();
    if (!unit_stride) {
      const scalar_t* x = input.const_data_ptr<scalar_t>();
      const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
      const bool by_phases = stride_2_grad_weight_by_phases(g);
      const auto plane_kernel = depthwise_stride_2_reads_planes(g, input.scalar_type())
                                    ? kernels.grad_weight_stride_2_3x3
                                    : kernels.grad_weight;
      // Tasks over the (output channel, input channel) filters, images summed in order.
      at::parallel_for(0, g.out_channels * cg, 1, [&](int64_t begin, int64_t end) {
        AlignedVector<scalar_t> work(by_phases ? generic::stride_2_work_size(g) : 0, scalar_t(0));
        std::fill(gw + begin * kernel_area, gw + end * kernel_area, scalar_t(0));
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t filter = begin; filter < end; ++filter) {
            const int64_t k = filter / cg, channel = k / kg * cg + filter % cg;
            const scalar_t* x_plane = x + (n * g.in_channels + channel) * g.in_h * g.in_w;
            const scalar_t* gy_plane = gy + (n * g.out_channels + k) * g.out_h * g.out_w;
            if (by_phases) {
              kernels.grad_weight_stride_2(x_plane, gy_plane, gw + filter * kernel_area, g, work.data());
            } else {
              plane_kernel(x_plane, gy_plane, gw + filter * kernel_area, g);
            }
          }
        }
      });
      return;
    }
    // Stride 1: tasks over the filters of pairs of output channels (k, k + 1) of a group and one
    // input channel, images summed in order; a task's consecutive units of one pair share their
    // gradient planes' copies.
    const int64_t pairs = (kg + 1) / 2, units = g.groups * pairs * cg;
    with_io_type<scalar_t>(input, [&](auto io) {
      using io_t = decltype(io);
      const auto io_kernels = plane_kernels<scalar_t, io_t>();
      const io_t* x = input.const_data_ptr<io_t>();
      const io_t* gy = grad_output.const_data_ptr<io_t>();
      // 3x3 kernels with undilated rows run on the input and gradient planes in place where the
      // build has vectors (float16 and bfloat16 with AVX-512, widened as loaded: against the
      // padded copies, depthwise 256 @28 1.25x faster, 512 @14 1.8x, 32 groups of 8 @28 1.4x),
      // the others on padded copies (float16 and bfloat16 widened in them).
      const bool rows = grad_weight_reads_rows(io_kernels, g);
      at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
        AlignedVector<scalar_t> work(rows ? 0 : generic::unit_stride_work_size(g, 2), scalar_t(0));  // per task: the zero borders
        struct Unit {
          int64_t k, channel;  // the pair's first output channel; the input channel
          scalar_t* filters[2];  // gw's filters (k, c) and (k + 1, c), the second null past the group
        };
        const auto unit_at = [&](int64_t unit) {
          const int64_t group = unit / (pairs * cg), k = group * kg + 2 * (unit / cg % pairs), c = unit % cg;
          const bool two = k + 1 < (group + 1) * kg;
          return Unit{k, group * cg + c, {gw + (k * cg + c) * kernel_area, two ? gw + ((k + 1) * cg + c) * kernel_area : nullptr}};
        };
        for (int64_t unit = begin; unit < end; ++unit) {
          for (scalar_t* filter : unit_at(unit).filters) {
            if (filter != nullptr) std::fill(filter, filter + kernel_area, scalar_t(0));
          }
        }
        const auto planes_of = [&](int64_t n, const Unit& u) {  // the unit's gradient and input planes in image n
          return std::pair(gy + (n * g.out_channels + u.k) * g.out_h * g.out_w, x + (n * g.in_channels + u.channel) * g.in_h * g.in_w);
        };
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t unit = begin; unit < end; ++unit) {
            const Unit u = unit_at(unit);
            const auto [gy_k, x_c] = planes_of(n, u);
            if (unit + 1 < end || n + 1 < g.batch) {
              const Unit next = unit_at(unit + 1 < end ? unit + 1 : begin);
              const auto [next_gy, next_x] = planes_of(unit + 1 < end ? n : n + 1, next);
              prefetch_plane(next_gy, (next.filters[1] == nullptr ? 1 : 2) * g.out_h * g.out_w * int64_t{sizeof(io_t)});
              prefetch_plane(next_x, g.in_h * g.in_w * int64_t{sizeof(io_t)});
            }
            if (rows) {
              const io_t* const planes[2] = {gy_k, u.filters[1] == nullptr ? nullptr : gy_k + g.out_h * g.out_w};
              io_kernels.grad_weight_rows_3x3(x_c, planes, u.filters, g, false);
              continue;
            }
            const bool same_pair = unit > begin && (unit - 1) / cg == unit / cg;
            const io_t* const planes[2] = {same_pair ? nullptr : gy_k,
                                           same_pair || u.filters[1] == nullptr ? nullptr : gy_k + g.out_h * g.out_w};
            io_kernels.grad_weight_unit_stride(x_c, planes, u.filters, g, work.data());
          }
        }
      });
    });
  });
  return grad_weight;
}

bool grad_weight_rows_3x3_apply(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_h == 1;
}

bool depthwise_stride_2_reads_planes(const Conv2dGeometry& g, at::ScalarType dtype) {
  return use_avx2() && (dtype == at::kFloat || dtype == at::kDouble) && depthwise_3x3_stride_2_applies(g);
}

bool stride_2_grad_weight_by_phases(const Conv2dGeometry& g) {
  const bool rows_3x3 = grad_weight_rows_3x3_apply(g) && cpu_isa() != Isa::generic;  // grad_weight_rows_3x3's, or in place
  return g.stride_h == 2 && g.stride_w == 2 && g.dilation_h == 1 && g.dilation_w == 1 && !rows_3x3;
}

bool direct_backward_fuses(const Conv2dGeometry& g, const Conv2dGeometry& t, at::ScalarType dtype) {
  // The kernels that read planes in place: for float32 and float64 in the vector builds, kernels
  // up to kMaxRowsKernelWidth wide; for float16 and bfloat16 (widened in registers) in the
  // AVX-512 build, 3x3 ones padded by 1. Not where the input gradient runs by channel blocks
  // instead (Zen 3, forward and backward at batch 8: depthwise 5x5 240 @28 7.0-7.5 -> 6.6-7.1 ms,
  // 7x7 384 @14 5.7-6.1 -> 5.2; 3x3 256 @28 alike).
  const bool in_place = dtype == at::kFloat || dtype == at::kDouble
                            ? cpu_isa() != Isa::generic && g.kernel_w <= kMaxRowsKernelWidth
                            : at::isReducedFloatingType(dtype) && use_avx512() && depthwise_3x3_rows_apply(g) &&
                                  depthwise_3x3_rows_apply(t);
  return in_place && g.unit_stride() && g.groups == g.in_channels && g.groups == g.out_channels && t.pad_h >= 0 &&
         t.pad_w >= 0 && g.in_channels >= 4 * at::get_num_threads() && !depthwise_by_channel_blocks(t, dtype);
}

// A stride-2 layer's grad_output plane (h x w) spread into the stride-1 layer's (row_length
// wide) rows 2i; its odd rows, zeros, are left as they are.
template <typename io_t>
void spread_plane(const io_t* plane, int64_t h, int64_t w, io_t* spread, int64_t row_length) {
  for (int64_t i = 0; i < h; ++i) spread_row(plane + i * w, row_length, spread + 2 * i * row_length);
}

// The one-pass backward prefetches the next input plane into L2 where it is of 6 KiB or more
// and the input outgrows the core's L2 (streams): the weight gradient's kernel, the first to
// read it, had waited on it (Zen 3, the three gradients at batch 8, A/B: float32 144 @56 0.82x
// the time, at stride 2 0.85x, 96 @80 at stride 2 0.92x, 32 @112 0.95x; float64 256 @28 0.84x,
// 192 @28 at stride 2 0.94x; float32 planes of 28 x 28 and 40 x 40, 3 and 6.3 KiB, 1.0-1.04x).
constexpr int64_t kPrefetchedInputPlaneBytes = int64_t{6} << 10;

std::array<Tensor, 3> direct_conv2d_backward(const Tensor& input, const Tensor& grad_output, const Tensor& weight,
                                             const Conv2dGeometry& g, const Conv2dGeometry& t,
                                             std::array<bool, 3> output_mask, bool spreads) {
  const auto [want_input, want_weight, want_bias] = output_mask;
  Tensor grad_input = want_input ? at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options()) : Tensor();
  Tensor grad_weight = want_weight ? at::empty({g.out_channels, 1, g.kernel_h, g.kernel_w}, weight.options()) : Tensor();
  Tensor grad_bias = want_bias ? at::empty({g.out_channels}, weight.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_ext_direct_backward", [&] {
    with_io_type<scalar_t>(grad_output, [&](auto io) {
      using io_t = decltype(io);
      const auto kernels = plane_kernels<scalar_t, io_t>();
      const io_t* x = input.const_data_ptr<io_t>();
      const io_t* gy = grad_output.const_data_ptr<io_t>();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      io_t* gx = want_input ? grad_input.mutable_data_ptr<io_t>() : nullptr;
      scalar_t* gw = want_weight ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gb = want_bias ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
      const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w, area = g.kernel_h * g.kernel_w;
      const int64_t gy_h = grad_output.size(2), gy_w = grad_output.size(3);  // g's output, or the strided layer's
      const bool prefetch_input = gw != nullptr && in_plane * int64_t{sizeof(io_t)} >= kPrefetchedInputPlaneBytes && streams(input);
      const bool rows_3x3 = grad_weight_reads_rows(kernels, g);
      Conv2dGeometry strided = g;  // the stride-2 layer, where it spreads
      strided.stride_h = strided.stride_w = 2, strided.out_h = gy_h, strided.out_w = gy_w;
      const bool in_place = spreads && depthwise_stride_2_reads_planes(strided, weight.scalar_type());  // no spread
      const bool gw_by_phases = gw != nullptr && spreads && !in_place && stride_2_grad_weight_by_phases(strided);
      const PlaneCopy copy = gx != nullptr && !in_place ? depthwise_3x3_plane_copy(t, grad_input) : PlaneCopy::none;
      // Tasks over channels, images summed in order (as direct_conv2d_grad_weight sums them), each
      // image's planes of a task's channels in turn: consecutive planes, which the hardware
      // prefetchers follow (a channel's planes image by image, apart by the image's size, ran the
      // backward of 256 @28 at batch 8 1.2x slower).
      at::parallel_for(0, g.in_channels, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> bias_sums(want_bias ? end - begin : 0);  // float32 would lose digits to a large batch
        std::vector<scalar_t> flipped(area);  // the input gradient's filter: the layer's rotated by 180 degrees
        AlignedVector<scalar_t> work(rows_3x3 || gw == nullptr || in_place || gw_by_phases ? 0 : generic::unit_stride_work_size(g, 2),
                                     scalar_t(0));
        AlignedVector<scalar_t> scratch(copy != PlaneCopy::none ? in_plane : 0);  // streamed: forward and backward of 256 @28 at batch 8 1.05x faster
        AlignedVector<io_t> spread(spreads && !in_place ? out_plane : 0, io_t(0));  // zeros but where each plane is spread
        AlignedVector<scalar_t> phases(gw_by_phases ? generic::stride_2_work_size(strided) : 0, scalar_t(0));
        if (gw != nullptr) std::fill(gw + begin * area, gw + end * area, scalar_t(0));
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t c = begin; c < end; ++c) {
            const int64_t plane = n * g.in_channels + c;
            const io_t* own = gy + plane * gy_h * gy_w;
            if (prefetch_input && c + 1 < end) prefetch_plane(x + (plane + 1) * in_plane, in_plane * int64_t{sizeof(io_t)});
            if (spreads && !in_place) spread_plane(own, gy_h, gy_w, spread.data(), g.out_w);
            const io_t* const gy_planes[2] = {spreads ? spread.data() : own, nullptr};
            if (gx != nullptr && in_place) {
              kernels.grad_input_stride_2_3x3(own, w + c * area, gx + plane * in_plane, strided);
            } else if (gx != nullptr) {
              std::reverse_copy(w + c * area, w + (c + 1) * area, flipped.begin());
              forward_rows_into(kernels, gy_planes[0], flipped.data(), scalar_t(0), gx + plane * in_plane, t, scratch.data(),
                                copy, spreads);
            }
            if (gw != nullptr) {
              scalar_t* const filters[2] = {gw + c * area, nullptr};
              if (in_place) {
                kernels.grad_weight_stride_2_3x3(x + plane * in_plane, own, filters[0], strided);
              } else if (gw_by_phases) {
                kernels.grad_weight_stride_2(x + plane * in_plane, own, filters[0], strided, phases.data());
              } else if (rows_3x3) {
                kernels.grad_weight_rows_3x3(x + plane * in_plane, gy_planes, filters, g, spreads);
              } else {
                kernels.grad_weight_unit_stride(x + plane * in_plane, gy_planes, filters, g, work.data());
              }
            }
            if (gb != nullptr) bias_sums[c - begin] += kernels.sum_plane(own, gy_h * gy_w);
          }
        }
        for (int64_t c = begin; c < end && gb != nullptr; ++c) gb[c] = static_cast<scalar_t>(bias_sums[c - begin]);
        if (copy == PlaneCopy::streamed) _mm_sfence();
      });
    });
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace conv_ext
