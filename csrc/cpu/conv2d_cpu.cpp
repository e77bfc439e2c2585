// CPU kernels of the three conv_ext operators. Three algorithms, chosen by shape:
// - GEMM: the forward as an implicit GEMM with AVX2 (implicit_gemm_conv2d.cpp; for strided and
//   grouped layers, and stride-1 ones Winograd does not take, over channels-last bands,
//   channels_last_gemm_conv2d.cpp, which also serves their gradients) or im2col in bounded
//   tiles and a batched GEMM per tile (at::bmm over groups); im2col+GEMM for the weight
//   gradient and col2im for the input gradient;
// - direct (direct_conv2d.cpp), for few channels per group (depthwise, narrow groups);
// - Winograd F(4x4, 3x3) and F(2x2, 5x5) (winograd_conv2d.cpp), for 3x3 and 5x5 stride-1
//   layers, forward and weight gradient, dilated ones over their dilation phases
//   (dilation_phases.h).
// With stride 1 the input gradient is a forward convolution (see transposed_geometry), so it
// runs on whichever algorithm suits that convolution; col2im serves the other strides, and
// stride-1 layers with few pixels for their filters (flipping_pays_off).
//
// float32 and float64 run natively; float16 and bfloat16 are computed in float32 and rounded
// once at the end, so every sum accumulates in float32. Where the CPU has AMX, the bfloat16
// forward and weight gradient run on its tiles, and where it has AVX512_BF16 on its bfloat16 dot
// products (bf16_pairs_conv2d.cpp), which also sum in float32 (and so does the input gradient,
// a forward convolution at stride 1, per stride phase otherwise).
#include "aligned_vector.h"
#include "bf16_pairs_conv2d.h"
#include "bands.h"
#include "channels_last_gemm_conv2d.h"
#include "cpu_features.h"
#include "depthwise_channels_last.h"
#include "dilation_phases.h"
#include "direct_conv2d.h"
#include "grouped_channels_last.h"
#include "implicit_gemm_conv2d.h"
#include "matrix_vector.h"
#include "micro_kernel.h"
#include "winograd_conv2d.h"
#include "winograd_1d_conv2d.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <type_traits>

namespace conv_ext {
namespace {

using at::Tensor;

// Upper bound on the elements of one im2col tile (16 MiB of float32), so the workspace stays
// bounded however large the image is; the forward's per-thread tiles aim at 1 MiB, a core's L2.
constexpr int64_t kMaxTileElements = int64_t{1} << 22;
constexpr int64_t kCacheTileElements = int64_t{1} << 18;
constexpr int64_t kOneGemmColumns = 1024;
// Patches this short (the 3-channel 7x7 stem's 147) are thin for MKL, and at stride 1 patches
// up to kStrideOnePatch (implicit_gemm_pays_off).
constexpr int64_t kThinPatch = 160, kStrideOnePatch = 640;
// Input channels the channels-last GEMM wants (measured down to 16; the stem's 3 lose).
constexpr int64_t kChannelsLastGemmChannels = 16;

// Output rows [row_begin, row_end) of one image form a tile.
struct RowTile {
  int64_t row_begin, row_end;
  int64_t rows() const { return row_end - row_begin; }
};

template <typename Fn>
void for_each_row_tile(const Conv2dGeometry& g, Fn&& fn) {
  const int64_t row_elements = std::max<int64_t>(1, g.in_channels * g.kernel_h * g.kernel_w * g.out_w);
  const int64_t rows_per_tile = std::clamp<int64_t>(kMaxTileElements / row_elements, 1, g.out_h);
  for (int64_t row = 0; row < g.out_h; row += rows_per_tile) {
    fn(RowTile{row, std::min(row + rows_per_tile, g.out_h)});
  }
}

// A 1x1 kernel with stride 1 and no padding reads the image itself as its im2col matrix.
bool is_pointwise(const Conv2dGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.unit_stride() &&
         g.pad_h == 0 && g.pad_w == 0;
}

// cols[(c, ki, kj), (oh, ow)] = image[c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw], zero outside.
// Rows of cols are row_stride apart (the tile's size, or more when several images share cols).
template <typename scalar_t>
void im2col_tile(const scalar_t* image, const Conv2dGeometry& g, RowTile tile, scalar_t* cols,
                 int64_t row_stride) {
  const int64_t kernel_area = g.kernel_h * g.kernel_w;
  const GatherRow<scalar_t> gather_row = row_gatherer<scalar_t>();
  at::parallel_for(0, g.in_channels * kernel_area, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / kernel_area, ki = (row / g.kernel_w) % g.kernel_h,
                    kj = row % g.kernel_w;
      const scalar_t* plane = image + c * g.in_h * g.in_w;
      scalar_t* out = cols + row * row_stride;
      for (int64_t oh = tile.row_begin; oh < tile.row_end; ++oh, out += g.out_w) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) {
          std::fill(out, out + g.out_w, scalar_t(0));
        } else {
          gather_row(plane + ih * g.in_w, g.in_w, kj * g.dilation_w - g.pad_w, g.stride_w, g.out_w, out);
        }
      }
    }
  });
}

// The adjoint of im2col_tile: image[c, ih, iw] += cols[(c, ki, kj), (oh, ow)], rows of cols
// row_stride apart. Parallel over channels, since the rows of one channel write only into that
// channel's plane.
template <typename scalar_t>
void col2im_tile_add(const scalar_t* cols, const Conv2dGeometry& g, RowTile tile, scalar_t* image,
                     int64_t row_stride) {
  const int64_t kernel_area = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      scalar_t* plane = image + c * g.in_h * g.in_w;
      for (int64_t k = 0; k < kernel_area; ++k) {
        const int64_t ki = k / g.kernel_w, kj = k % g.kernel_w;
        const scalar_t* in = cols + (c * kernel_area + k) * row_stride;
        for (int64_t oh = tile.row_begin; oh < tile.row_end; ++oh, in += g.out_w) {
          const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
          if (ih < 0 || ih >= g.in_h) continue;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
            if (iw >= 0 && iw < g.in_w) plane[ih * g.in_w + iw] += in[ow];
          }
        }
      }
    }
  });
}

// The im2col matrix of one image's tile as (groups, patch_size, tile pixels); for a pointwise
// kernel, a view of the image itself.
Tensor im2col(const Tensor& image, const Conv2dGeometry& g, RowTile tile) {
  if (is_pointwise(g)) {
    return image.view({g.groups, g.patch_size(), g.in_h * g.in_w})
        .narrow(2, tile.row_begin * g.out_w, tile.rows() * g.out_w);
  }
  Tensor cols = at::empty({g.groups, g.patch_size(), tile.rows() * g.out_w}, image.options());
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "conv_ext_im2col", [&] {
    im2col_tile(image.const_data_ptr<scalar_t>(), g, tile, cols.mutable_data_ptr<scalar_t>(),
                tile.rows() * g.out_w);
  });
  return cols;
}

// One image's output (or grad_output) rows of a tile as (groups, channels per group, pixels).
Tensor output_tile(const Tensor& image_out, const Conv2dGeometry& g, RowTile tile) {
  return image_out.narrow(1, tile.row_begin, tile.rows())
      .view({g.groups, g.out_channels_per_group(), tile.rows() * g.out_w});
}

Tensor weight_matrix(const Tensor& weight, const Conv2dGeometry& g) {
  return weight.view({g.groups, g.out_channels_per_group(), g.patch_size()});
}

enum class Algorithm { gemm, direct, winograd };

// CONV_EXT_CPU_ALGORITHM (gemm, direct, winograd; default: by shape) forces a path, so the tests
// can run each one; Winograd only where it applies. The forced GEMM or direct path, if any:
std::optional<Algorithm> forced_algorithm() {
  switch (cpu_switches().algorithm) {
    case CpuSwitches::Algorithm::gemm: return Algorithm::gemm;
    case CpuSwitches::Algorithm::direct: return Algorithm::direct;
    default: return std::nullopt;
  }
}

bool winograd_forced() { return cpu_switches().algorithm == CpuSwitches::Algorithm::winograd; }

// pays_off (winograd_pays_off, or the weight gradient's) is asked only where Winograd applies
// (its tiles exist only for 3x3 and 5x5).
bool winograd_chosen(const Conv2dGeometry& g, bool (*pays_off)(const Conv2dGeometry&) = winograd_pays_off) {
  return winograd_applies(g) && (winograd_forced() || pays_off(g));
}

bool implicit_gemm_pays_off(const Conv2dGeometry& g);
bool channels_last_gemm_grad_weight_pays_off(const Conv2dGeometry& g);
bool grouped_channels_last_pays_off(const Conv2dGeometry& g);

// With few input channels Winograd's transforms cost about as much as its GEMMs save: the
// implicit GEMM's forward is faster (measured with AVX-512: 16 or 24 input channels 1.1-1.7x,
// 32 Winograd 1.3x). Its weight gradient still pays (the GEMM path's is 1.3-1.5x slower there).
constexpr int64_t kWinogradForwardChannels = 32;

Algorithm choose_algorithm(const Conv2dGeometry& g) {
  if (const auto forced = forced_algorithm()) return *forced;
  const bool implicit_gemm_preferred = g.in_channels < kWinogradForwardChannels && implicit_gemm_available() && implicit_gemm_pays_off(g);
  if (winograd_chosen(g) && !implicit_gemm_preferred) return Algorithm::winograd;
  return direct_pays_off(g) && !grouped_channels_last_pays_off(g) ? Algorithm::direct : Algorithm::gemm;
}

// The weight gradient's direct kernel (one filter at a time) beats im2col+GEMM with up to 64
// channel pairs per group at stride 1, where each tap's sum is one long dot product over a
// padded plane, and with one or two pairs (depthwise) otherwise (measured).
Algorithm choose_grad_weight_algorithm(const Conv2dGeometry& g) {
  if (const auto forced = forced_algorithm()) return *forced;
  if (channels_last_gemm_grad_weight_pays_off(g)) return Algorithm::gemm;
  if (winograd_chosen(g, winograd_grad_weight_pays_off)) return Algorithm::winograd;
  const int64_t pairs = g.in_channels_per_group() * g.out_channels_per_group();
  return pairs <= (g.unit_stride() ? 64 : 2) ? Algorithm::direct : Algorithm::gemm;
}

// Pixels per task of transpose_images: 64 KiB of float32 at 64 channels.
constexpr int64_t kRelayoutPixels = 256;

// out = t, t dense in the other layout of NCHW and NHWC than out: each image's (channels x
// pixels) matrix transposed in blocks of pixels, on every thread, by this CPU's transposes.
template <typename from_t, typename to_t>
void transpose_images(const Tensor& t, const Tensor& out, bool to_channels_last) {
  const auto transpose = transpose_for_this_cpu<from_t, to_t>();
  const int64_t channels = t.size(1), pixels = t.size(2) * t.size(3);
  const int64_t blocks = (pixels + kRelayoutPixels - 1) / kRelayoutPixels;
  const from_t* src = t.const_data_ptr<from_t>();
  to_t* dst = out.mutable_data_ptr<to_t>();
  const bool stream = streams(out);
  at::parallel_for(0, t.size(0) * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t image = task / blocks * channels * pixels, p = task % blocks * kRelayoutPixels;
      const int64_t count = std::min(kRelayoutPixels, pixels - p);
      if (to_channels_last) {
        transpose(src + image + p, pixels, channels, count, dst + image + p * channels, channels, stream);
      } else {
        transpose(src + image + p * channels, channels, count, channels, dst + image + p, pixels, stream);
      }
    }
    if (stream) _mm_sfence();  // the non-temporal stores reach memory before the threads join
  });
}

// A fresh dense copy of t of dtype in format (NCHW or NHWC). Between the two layouts by
// transpose_images, where torch's copy goes element by element: 12x a plain copy's time (Zen 4,
// 8x256x28x28 float32 NHWC to NCHW: 1.04 ms against 0.08 ms for a clone), which a model in
// channels_last paid on the way in and out of every kernel that computes in NCHW (MobileNet's
// depthwise 3x3 256 @28 at batch 8: 2.3 ms forward against 0.27 ms on NCHW tensors). Float32 and
// float64 as they are, float16 and bfloat16 to and from float32 (the transposes keep no 16-bit
// values as they are: those copies stay torch's).
Tensor relayout(const Tensor& t, at::ScalarType dtype, at::MemoryFormat format) {
  const Tensor out = at::empty(t.sizes(), t.options().dtype(dtype).memory_format(format));
  const bool to_channels_last = format == at::MemoryFormat::ChannelsLast;
  const auto from = to_channels_last ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  const auto type = t.scalar_type();
  const auto reduced = [](at::ScalarType s) { return s == at::kHalf || s == at::kBFloat16; };
  const bool types = type == dtype ? !reduced(type) : (reduced(type) && dtype == at::kFloat) || (type == at::kFloat && reduced(dtype));
  if (t.dim() != 4 || t.numel() == 0 || !types || !t.is_contiguous(from) || t.is_contiguous(format)) return out.copy_(t);
  dispatch_band_types(type == at::kFloat ? dtype : type, [&](auto compute, auto io) {
    using io_t = decltype(io);
    if (type == dtype) {
      transpose_images<io_t, io_t>(t, out, to_channels_last);
    } else if constexpr (!std::is_same_v<io_t, decltype(compute)>) {
      if (type == at::kFloat) {
        transpose_images<float, io_t>(t, out, to_channels_last);
      } else {
        transpose_images<io_t, float>(t, out, to_channels_last);
      }
    }
  });
  return out;
}

// t dense in format, of dtype (by default its own): itself where it is.
Tensor dense(const Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous,
             std::optional<at::ScalarType> dtype = std::nullopt) {
  if (!t.defined() || (t.scalar_type() == dtype.value_or(t.scalar_type()) && t.is_contiguous(format))) return t;
  return relayout(t, dtype.value_or(t.scalar_type()), format);
}

// A dense copy to compute with (in the algorithm's layout): float16 and bfloat16 are widened to
// float32 so that every sum accumulates in float32; the result is rounded once by `finish`.
Tensor compute_operand(const Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  if (!t.defined()) return t;
  const bool reduced = t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
  return dense(t, format, reduced ? at::kFloat : t.scalar_type());
}

// A dense operand of the kernels that read NCHW and NHWC alike through bands (Winograd, the
// channels-last GEMM), in t's own layout: the bands widen float16 and bfloat16 as they read
// them (bands.h), so those stay as they are.
Tensor band_operand(const Tensor& t) { return t.contiguous(t.suggest_memory_format()); }

// The result in the caller's dtype and layout, with at most one copy.
Tensor finish(const Tensor& result, at::ScalarType dtype, at::MemoryFormat format) {
  if (result.scalar_type() == dtype && has_fresh_strides(result, format)) return result;
  return relayout(result, dtype, format);
}

// Whether the batch's im2col makes one GEMM's operand: few columns, the workspace bounded.
bool fits_one_gemm(const Conv2dGeometry& g) {
  const int64_t columns = g.batch * g.out_h * g.out_w;
  return columns <= kOneGemmColumns && columns * g.in_channels * g.kernel_h * g.kernel_w <= kMaxTileElements;
}

// Few output pixels in a batch of images (the last stages of a network) with large filters: one
// multi-threaded GEMM over all images' columns reads the filters once instead of per image. (A
// single image runs faster split into per-thread row tiles, but see image_in_one_gemm.)
bool batch_in_one_gemm(const Conv2dGeometry& g) { return g.batch > 1 && fits_one_gemm(g); }

// A single image's forward in one GEMM too, where its patches are long and its pixels not too
// few: MKL's threads then beat per-thread row tiles, each of which reads all the filters.
// Measured at batch 1 (Xeon, AVX-512), ratio to torch per-thread tiles -> one GEMM: 3x3/2 128->256
// @28 0.87x -> 0.97x, 256 @28 0.86x -> 0.97x, 256->512 @28 0.87x -> 0.99x, 256 @20 0.80x ->
// 0.95x; 3x3 dilated by 2, 256 @14 0.71x -> 0.80x, 512 @14 0.58x -> 0.85x; 7x7 64 @14 0.31x ->
// 0.60x. Shorter patches and fewer pixels lose: 3x3/2 64->128 @28 and @56 (patch 576) 1.07x ->
// 0.96x and 1.01x -> 0.91x, 256->512 @14 (49 pixels) 1.04x -> 0.93x; 128->256 @56 alike.
constexpr int64_t kLongPatch = 1024, kImageInOneGemmPixels = 64;
bool image_in_one_gemm(const Conv2dGeometry& g) {
  return g.batch == 1 && fits_one_gemm(g) && !is_pointwise(g) && g.patch_size() >= kLongPatch &&
         g.out_h * g.out_w >= kImageInOneGemmPixels;
}

// A pointwise layer of one group: each image's product over all its pixels, the images in one
// batched call that MKL threads, writing the output in place (gemm_conv2d_forward_pointwise).
// Against tiles of rows multiplied one per task (Xeon with AVX-512, at batch 8 and 1): float32
// 256->64 @56 1.3x and 1.15x faster, 512->128 @28 1.2x, 1024->256 @14 alike and 1.3x, 256->1024
// @14 alike and 1.3x; float64 256->64 @56 1.4x.
bool pointwise_in_one_call(const Conv2dGeometry& g) { return is_pointwise(g) && g.groups == 1; }

// The im2col matrices of all images side by side: (groups, patch, batch * pixels).
Tensor batch_im2col(const Tensor& input, const Conv2dGeometry& g) {
  const int64_t pixels = g.out_h * g.out_w;
  Tensor cols = at::empty({g.groups, g.patch_size(), g.batch * pixels}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_ext_im2col", [&] {
    for (int64_t n = 0; n < g.batch; ++n) {
      im2col_tile(input[n].const_data_ptr<scalar_t>(), g, RowTile{0, g.out_h},
                  cols.mutable_data_ptr<scalar_t>() + n * pixels, g.batch * pixels);
    }
  });
  return cols;
}

// A pointwise kernel's im2col matrix is the image itself, which MKL multiplies in place. With
// AVX2, that is faster for the channel reductions of a batch and for small images in one GEMM;
// the implicit GEMM wins for expansions of few channels and for single images (measured: 64->256
// @56 1.15x, 256->64 @56 at batch 1 1.2x, 256->64 at batch 8 0.85x). Expansions from 128 channels
// run faster on MKL too (Zen 3, batch 8: 128->512 @28 4.95 -> 4.73 ms, 256->1024 @14 5.9 -> 5.0,
// 512->2048 @7 5.1 -> 4.9; 64->256 @56 alike), and so do single images whose filters fill a
// core's L2, which the implicit GEMM packs per call (Zen 3, 1 MiB L2, batch 1: 1024->256 @14
// 0.84 -> 0.66 ms, 1024->512 @14 1.6 -> 1.3-1.5, 2048->512 @7 alike; 512->256 @14 and 512->128
// @28, half and a quarter of it, alike). Strided 1x1 kernels, whose im2col is a strided view,
// run faster on MKL from 128 output pixels in the batch (Zen 3: 1x1/2 at batch 8 64->128 @56 1.09
// -> 0.82 ms, 128->256 @56 3.6 -> 2.9, 512->1024 @28 12.7 -> 10.7, 1024->2048 @14 14.6 -> 9.9; at
// batch 1 256->512 @56 1.56 -> 1.30, 512->1024 @28 alike); with fewer, on the implicit GEMM (1024->2048
// @14 at batch 1, 49 pixels, 2.6 -> 1.67 ms; at batch 2 alike). With AVX-512, MKL's kernels (in
// place, or on tiles of im2col) win on long patches and pointwise kernels (measured: 1x1 1.2-1.3x,
// 3x3/2 128->256 1.1-1.25x and 256->512 1.5x for MKL), the implicit GEMM on thin patches, where
// MKL's packing costs more than it saves (but see one_call_beats_implicit_gemm), and on stride-1
// layers of up to 600-odd, whose panels it reads in place (measured: 3x3 16->16 and 24->24
// 1.5-2x, 5x5 10->32 to 24->32 1.5x; the 3-channel 7x7/2 stem 1.1x, 3x3/2 layers alike). Where
// MKL runs only its AVX2 kernels (AMD's Zen 5), the AVX-512 implicit GEMM wins on every layer
// (measured: 1x1 256->64 @56 1.6x at batch 8 and 2.6x at batch 1, 1024->256 @14 1.9x, 3x3/2
// 128->256 @28 and 3x3 512 @7 at batch 1 1.8x and 2.5x). But with AVX2 the implicit GEMM beats
// MKL's one GEMM over the batch where the batch has at most 256 pixels, or the layer at most 256
// output channels (Zen 3, forward at batch 8, A/B in one process: squeeze-and-excitation's 1x1
// on pooled images 960->240 and 1280->320 0.41x and 0.39x the time, 2048->1000 0.31x; @2 and
// @4 0.51-0.57x, 1024->2048 @4 0.91x; @7 576->160 0.78x, 960->160 0.83x, 768->192 0.60x,
// 1024->256 0.71x, at batch 4 1024->512 and 512->2048 0.81x, at batch 16 576->160 0.70x;
// wider ones lose: @7 960->320 alike, 1024->384 1.06x, 1024->512 1.15x, 512->2048 1.25x).
constexpr int64_t kWideExpansionChannels = 128, kStridedPointwisePixels = 128, kFewPointwisePixels = 256,
                  kFewPointwiseOutputs = 256;
bool implicit_gemm_pays_off(const Conv2dGeometry& g) {
  if (!blas_keeps_up()) return true;
  if (!use_avx512()) {
    if (g.kernel_h * g.kernel_w == 1 && !g.unit_stride()) return g.batch * g.out_h * g.out_w < kStridedPointwisePixels;
    const bool narrow_expansion = g.out_channels > g.in_channels && g.in_channels < kWideExpansionChannels;
    const bool filters_fill_l2 = g.out_channels * g.in_channels_per_group() * int64_t{sizeof(float)} >= core_l2_bytes();
    const bool small_product = g.batch * g.out_h * g.out_w <= kFewPointwisePixels || g.out_channels <= kFewPointwiseOutputs;
    return !is_pointwise(g) ||
           (batch_in_one_gemm(g) ? small_product : narrow_expansion || (g.batch == 1 && !filters_fill_l2));
  }
  return g.patch_size() <= kThinPatch || (g.unit_stride() && !is_pointwise(g) && g.patch_size() <= kStrideOnePatch);
}

// Thin pointwise layers (which implicit_gemm_pays_off gives the implicit GEMM) of more pixels
// than one GEMM over the batch takes run faster in MKL's one call per batch
// (pointwise_in_one_call) where it keeps up with the AVX-512 build: reductions (96->24 and
// 144->24 @56 1.2-1.4x faster), and expansions in float64 (64->256 @56 1.05x and 1.15x at batch
// 8 and 1, 32->64 @112 1.1x). The implicit GEMM keeps float32 expansions (64->256 @56 and 32->64
// @112 1.1-1.2x faster there).
bool one_call_beats_implicit_gemm(const Conv2dGeometry& g, at::ScalarType dtype) {
  return use_avx512() && blas_keeps_up() && pointwise_in_one_call(g) && !batch_in_one_gemm(g) &&
         (g.out_channels <= g.in_channels || dtype == at::kDouble);
}

// What every use of the channels-last GEMM on one group asks: this CPU runs it and a kernel
// larger than 1x1.
bool channels_last_gemm_applies(const Conv2dGeometry& g) {
  return channels_last_gemm_available() && g.groups == 1 && g.kernel_h * g.kernel_w > 1;
}

// Where it applies, more than kOneGemmColumns output pixels in the batch, unless MKL does not
// keep up (Zen 5: 3x3/2 128->256 @28 at batch 1, 196 pixels, input gradient 1.45x faster,
// forward and weight gradient 1.1x).
bool channels_last_gemm_may_pay_off(const Conv2dGeometry& g) {
  return channels_last_gemm_applies(g) && g.batch * g.out_h * g.out_w > (blas_keeps_up() ? kOneGemmColumns : 0);
}

// Grouped layers (ResNeXt's, 4 to 64 channels per group) whose direct kernels lose, forward and
// input gradient: every stride above 1, and at stride 1 groups wider than the direct kernels
// take (direct_pays_off: 8 channels, 16 in the AVX-512 build). Measured against the paths they
// took (32 groups; ratios to torch): at batch 8, 3x3/2 with 4, 8, 16, 32 and 64 channels per
// group 0.29x -> 0.66x, 0.14x -> 0.92x, 0.39x -> 0.87x, 0.32x -> 0.90x and 0.34x -> 0.90x
// forward, and 3x3 @7 with 32 and 64 0.41x -> 0.82x and 0.38x -> 0.76x; at batch 1 faster too
// (3x3/2 512 ch @28 0.40x -> 1.0-1.2x, 3x3 1024 ch @7 1.09x -> 1.24-1.40x); input gradients
// alike or faster. In the AVX2 build (Zen 3), ResNeXt's 16 channels per group at stride 1 had
// fallen to im2col+MKL: 3x3 512 ch @14 forward 0.46x -> 1.4x, input gradient 0.33x -> 1.0x at
// batch 8, at batch 1 0.46x -> 1.55x and 0.36x -> 1.2x; 256 ch @28 0.75x -> 1.3x. The direct
// group kernel keeps fewer than 4 channels per group, and its own at stride 1 (AVX2, 8 @28:
// 1.15-1.2x faster than here; AVX-512, 8 @28: 1.1x against 0.6x; 16 @14: 0.8x either way).
bool grouped_channels_last_may_pay_off(const Conv2dGeometry& g) {
  return channels_last_gemm_available() && g.groups > 1 && g.kernel_h * g.kernel_w > 1 &&
         std::min(g.in_channels_per_group(), g.out_channels_per_group()) >= 4;
}

bool grouped_channels_last_pays_off(const Conv2dGeometry& g) {
  return grouped_channels_last_may_pay_off(g) && (!g.unit_stride() || !direct_pays_off(g));
}

// Whether fewer pixels than channels_last_gemm_may_pay_off asks for still repay the filters the
// channels-last GEMM packs per call: at least as many as the output channels. Strided layers
// take it with patches shorter than kLongPatch (at batch 1, 3x3/2 64->128 @28 and @56 forward
// 1.04x -> 1.18x and 1.0x -> 1.14x torch); longer ones run faster as MKL's one GEMM
// (image_in_one_gemm: 128->128 and 128->256 @56 1.0x against 0.83x and 0.74x).
bool pixels_repay_packed_filters(const Conv2dGeometry& g) {
  return channels_last_gemm_applies(g) && g.batch * g.out_h * g.out_w >= std::max<int64_t>(g.out_channels, 1);
}

// Strided layers of many pixels and kernels larger than 1x1: the channels-last GEMM reads its
// input in place whatever the stride, where the implicit GEMM packs panels of short output rows
// and MKL multiplies copied im2col tiles (measured at batch 8, 3x3/2: with AVX-512 64->128 @56 1.1x,
// 128->256 @28 1.2x, 128 @56, 256 @28 and 16 or 32 channels @112 1.05-1.2x faster than MKL;
// with AVX2 1.05-1.25x faster than the implicit GEMM). It packs the filters per call, which few
// pixels do not repay (392 pixels of 512 @14: MKL 1.25x faster), nor do 1x1 kernels, whose
// im2col is a strided view for MKL (1.3x), nor the stem's 3 channels (1.25x slower than the
// implicit GEMM: its output, 21 times its input, is moved from the band). Its weight gradient,
// the same products summed the other way, beats im2col+MKL on those layers too (measured at
// batch 8: 3x3/2 64->128 @56 1.4x, 32->64 @112 1.9x, 128->256 @28 alike), and its input
// gradient, by stride phase, col2im (1.1-1.4x, 1.35-2x, 1.1-1.4x). Long patches lose only to
// MKL's one GEMM (image_in_one_gemm), which the AVX2 build does not take (implicit_gemm_pays_off):
// against its implicit GEMM they win (Zen 3, batch 1, forward, input and weight gradients, ms:
// 3x3/2 120->64 @24 0.31 -> 0.15, 0.22 -> 0.19, 0.30 -> 0.19; 128 @56 1.9 -> 1.4, 1.8 -> 1.45, 1.9
// -> 1.7).
bool strided_channels_last_gemm_pays_off(const Conv2dGeometry& g) {
  const bool repaid = channels_last_gemm_may_pay_off(g) ||
                      (pixels_repay_packed_filters(g) && (g.patch_size() < kLongPatch || !use_avx512()));
  return repaid && !g.unit_stride() && g.in_channels >= kChannelsLastGemmChannels;
}

// In the AVX2 build, the forward and input gradient of strided layers with half as many pixels
// as output channels (which do not repay the weight gradient's packed filters) win against the
// implicit GEMM as well (Zen 3, batch 1, ms: 3x3/2 128->256 @28 0.98 -> 0.72 and 0.84 -> 0.81,
// 256 @28 1.88 -> 1.53 and 1.62 -> 1.72; weight gradients 0.9 -> 1.0 and 1.76 -> 2.37); fewer
// lose (256->512 @14 at batch 2, 98 pixels: input gradient 1.76 -> 2.04 ms).
bool strided_avx2_channels_last_gemm_pays_off(const Conv2dGeometry& g) {
  return !use_avx512() && channels_last_gemm_applies(g) && !g.unit_stride() &&
         g.in_channels >= kChannelsLastGemmChannels && 2 * g.batch * g.out_h * g.out_w >= g.out_channels;
}

// Stride-1 layers which Winograd does not take (dilated ones, and kernels other than 3x3 and
// 5x5): the channels-last GEMM reads their taps in place where im2col copies them. Measured
// (Xeon, AVX-512, batch 8, against im2col+MKL), forward and input gradient, 3x3 dilated by 2: 32
// @56 1.2x faster, 64 @56 1.35-1.4x (by 4 too), 128 @28 1.35x, 256 @14 1.25x, 512 @14 1.2x; 16
// channels @64 0.9x, left to MKL. Forward, in ratios to torch: 7x7 64 @28 0.46x -> 0.90x (and
// 0.42x -> 0.89x forward and backward), 128 @14 0.28x -> 0.72x, 64 @56 at batch 1 0.53x -> 1.0x;
// Inception's 1x7 128 @17 0.72x -> 0.93x, 7x1 192 @17 0.67x -> 0.83x, 1x3 384 @8 and 3x1 448->384
// @8 at batch 32 0.72x -> 0.93x and 0.72x -> 0.85x; 2x2 64 @56 0.66x -> 1.02x.
// Fewer pixels in the batch repay the packed filters too where they are at least as many as the
// output channels (at batch 1, ratios to torch, forward against im2col+MKL: 7x7 64 @14 0.63x ->
// 0.91x, @28 0.59x -> 0.95x, 128 @14 0.65x -> 0.77x, 1x7 128 @17 0.76x -> 1.03x, 7x1 192 @17
// 0.89x -> 0.94x, 3x3 dilated by 2 256 @28 alike; fewer lose: 1x3 384 @8 1.13x -> 0.74x, 3x3
// dilated by 2 256 @14 0.83x -> 0.77x, by 4 512 @14 0.76x -> 0.70x).
bool stride_one_channels_last_gemm_may_pay_off(const Conv2dGeometry& g) {
  return (channels_last_gemm_may_pay_off(g) || pixels_repay_packed_filters(g)) && g.unit_stride() && !winograd_applies(g);
}

bool channels_last_gemm_pays_off(const Conv2dGeometry& g) {
  const bool stride_one = stride_one_channels_last_gemm_may_pay_off(g) && g.in_channels >= 2 * kChannelsLastGemmChannels;
  return strided_channels_last_gemm_pays_off(g) || strided_avx2_channels_last_gemm_pays_off(g) ||
         grouped_channels_last_pays_off(g) || stride_one;
}

// Whether g's forward (or, at strides above 1, its input gradient) runs on the channels-last
// GEMM: the GEMM path chosen, or forced, and the GEMM's rules met.
bool channels_last_gemm_chosen(const Conv2dGeometry& g) {
  return choose_algorithm(g) == Algorithm::gemm && channels_last_gemm_pays_off(g);
}

// The weight gradient runs there too for few input channels (up to 15) and at least 16 output
// channels, at any stride: its products' rows are a kernel row's taps times the channels, which
// the stem's 7 x 3 fill where the other paths' panels of its 3 channels stay mostly empty
// (measured at batch 8, against the paths chosen before: the 7x7/2 stem 1.7-1.9x faster, 3x3
// 3->64 @224 2.2x, 3x3/2 3->32 @224 and 8->32 @112 1.8-2.1x, 5x5 3->16 and 10->32 @64 2.1-2.3x;
// 8 output channels, half a panel, 2x slower). Grouped layers' weight gradients run there at
// strides above 1 and, at stride 1, beyond the direct kernel's 64 channel pairs (see
// choose_grad_weight_algorithm) or where it does not read 3x3 rows in place (its padded planes
// took 3.6-6.6x as long on 5x5 and 7x7 with 8 channels per group, 1.5-2.3x with 4: Zen 3,
// AVX2, at batch 8 and 1), of any number of pixels: at batch 8, 16 channels per group @14
// 0.32x -> 0.75x torch, 32 @7 0.17x -> 0.83x, 3x3/2 with 8 to 64 0.39x-0.65x -> 0.99x-1.14x; at
// batch 1, 3x3/2 512 ch @28 (196 pixels) 0.53x -> 1.23x; with 49 pixels (3x3 @7 at batch 1, 32
// groups) against im2col+MKL's per-image products: Zen 5, 32 channels per group 1.3x faster; an
// Intel Xeon (AVX-512, AMX), 16, 32 and 64 channels per group 2.5x, 1.7x and 1.1x faster (0.43x
// -> 1.05x torch, 0.53x -> 0.85x, 0.68x -> 0.76x), 32 at batch 2 2.3x. Where MKL does not keep up
// (blas_keeps_up), 1x1 kernels run there too (Zen 5, 1x1 @56 and @14: 1.3-2x faster at batch 8,
// alike to 1.7x at batch 1).
bool channels_last_gemm_grad_weight_pays_off(const Conv2dGeometry& g) {
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const bool few_channels = channels_last_gemm_may_pay_off(g) && g.in_channels > 0 &&
                            g.in_channels < kChannelsLastGemmChannels && g.out_channels >= kChannelsLastGemmChannels;
  const bool grouped = grouped_channels_last_may_pay_off(g) && pixels > 0 &&
                       (!g.unit_stride() || g.in_channels_per_group() * g.out_channels_per_group() > 64 ||
                        !grad_weight_rows_3x3_apply(g));
  // And in the AVX2 build for a batch within one GEMM of more than 256 pixels and at most 256
  // output channels, where MKL's product runs slower (Zen 3, A/B in one process, weight gradient
  // alone: @7 at batch 8 960->160 0.61x the time, 768->192 0.69x, 1024->256 0.79x, 96->48 0.44x,
  // at batch 16 576->160 0.47x; wider or fewer lose: 2048->512 @7 1.19x slower, 1024->512 @7 at
  // batch 4 1.19x, 2048->1000 on 8 pooled images 6.7x, 960->160 @7 at batch 1 1.76x).
  const bool one_gemm_narrow = cpu_isa() == Isa::avx2 && is_pointwise(g) && batch_in_one_gemm(g) &&
                               pixels > kFewPointwisePixels && g.out_channels <= kFewPointwiseOutputs;
  const bool pointwise = (!blas_keeps_up() || one_gemm_narrow) && channels_last_gemm_available() && g.groups == 1 &&
                         g.kernel_h * g.kernel_w == 1 && g.in_channels > 0 && pixels > 0;
  // The weight gradients of stride-1 layers Winograd does not take (stride_one_channels_last_gemm_may_pay_off)
  // with 32 pixels in the batch per input channel or more, or at most 128 output channels (the
  // rows of im2col+MKL's product, too few to repay its copy of every tap), measured at batch 8
  // (3x3 dilated by 2): 16 @64 3.3x faster, 32 @56 1.75x, 64 @56 1.35x, 128 @28 1.07x; and in
  // ratios to torch, forward and weight gradient: 7x7 64 @28 at batch 1 0.55x -> 0.91x, 64 @14
  // 0.75x -> 0.86x, 128 @14 at batch 8 0.64x -> 0.81x. Up to 256 input channels 4 pixels per
  // channel are enough since it skips the padding's kernel rows (Xeon, AVX-512, weight gradient
  // alone, against im2col+MKL): 3x3 dilated by 2 256 @28 and @14 at batch 8 1.12x and 1.07x
  // faster, Inception's 7x1 192 @17 at batch 8 and 4 1.23x and 1.17x, 1x7 160 @17 1.14x, 7x7 256
  // @14 1.04x; 3 per channel alike (256 @14 at batch 4, @28 at batch 1). More channels lose
  // (dilated 384 @14 and 512 @14 at batch 8 0.93x and 0.73x, 1x3 and 3x1 384 @8 0.79x). Where
  // MKL does not keep up, a pixel for every 4 input channels is enough (Zen 4, weight gradient
  // alone, in-process A/B against im2col+MKL: 1x3 384 @8 at batch 8, 4 and 2 2.8 against 3.1
  // ms, 1.8 against 2.9, 1.35 against 1.7; 1x3 256 @8 at batch 1 0.50 against 0.58; 7x1 192
  // @17 and 1x7 160 @17 at batch 1 0.79 against 1.04 and 0.89 against 1.79; 1x7 512 @17 8.1
  // against 9.6); with fewer MKL's is faster (1x3 384 @8 at batch 1 0.57 against 0.47 ms, 512
  // @7 at batch 2 2.3 against 2.0).
  const bool stride_one = stride_one_channels_last_gemm_may_pay_off(g) &&
                          std::min(g.in_channels, g.out_channels) >= kChannelsLastGemmChannels &&
                          (pixels >= 32 * g.in_channels || g.out_channels <= 128 ||
                           (g.in_channels <= 256 && pixels >= 4 * g.in_channels) ||
                           (!blas_keeps_up() && 4 * pixels >= g.in_channels));
  return few_channels || grouped || pointwise || stride_one || strided_channels_last_gemm_pays_off(g);
}

// out (n, K, pixels) = the n products a b, each output row k plus bias[k] (bias undefined, or K
// values, or n times K: the tiles' groups).
void multiply_into(Tensor& out, const Tensor& a, const Tensor& b, const Tensor& bias) {
  if (out.size(0) == 1) {  // a single product as at::mm's: 4-5 us less per call than at::bmm's (Zen 3)
    Tensor out_matrix = out[0];
    if (bias.defined()) {
      at::addmm_out(out_matrix, bias.view({out.size(1), 1}).expand_as(out_matrix), a[0], b[0]);
    } else {
      at::mm_out(out_matrix, a[0], b[0]);
    }
    return;
  }
  if (bias.defined()) {
    at::baddbmm_out(out, bias.view({-1, out.size(1), 1}).expand_as(out), a, b);
  } else {
    at::bmm_out(out, a, b);
  }
}

Tensor gemm_conv2d_forward_in_one_gemm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                       const Conv2dGeometry& g) {
  const int64_t pixels = g.out_h * g.out_w;
  const Tensor cols = batch_im2col(input, g);
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  // One image's product is its output; a batch's, (groups, channels, images, pixels), is permuted into it.
  Tensor product = g.batch == 1 ? output.view({g.groups, g.out_channels_per_group(), pixels})
                                : at::empty({g.groups, g.out_channels_per_group(), g.batch * pixels}, input.options());
  multiply_into(product, weight_matrix(weight, g), cols, bias);
  if (g.batch > 1) {
    output.view({g.batch, g.groups, g.out_channels_per_group(), pixels})
        .copy_(product.view({g.groups, g.out_channels_per_group(), g.batch, pixels}).permute({2, 0, 1, 3}));
  }
  return output;
}

Tensor gemm_conv2d_forward_pointwise(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                     const Conv2dGeometry& g) {
  const int64_t pixels = g.out_h * g.out_w;
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  Tensor out = output.view({g.batch, g.out_channels, pixels});
  const Tensor w = weight.view({1, g.out_channels, g.in_channels}).expand({g.batch, g.out_channels, g.in_channels});
  multiply_into(out, w, input.view({g.batch, g.in_channels, pixels}), bias);
  return output;
}

// Where it pays off the forward is an implicit GEMM (implicit_gemm_conv2d.cpp). Otherwise each
// task builds the im2col matrix of a few output rows of one image, which with their output
// stays in the core's cache, and runs their GEMM single-threaded (inside the parallel region);
// the rows are split finely enough that every thread gets work, in tiles of equal rows (56 rows
// as 18 + 18 + 18 + 2 had left one of two threads 36 rows, the other 20: 1.2x slower).
Tensor gemm_conv2d_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                           const Conv2dGeometry& g) {
  if (implicit_gemm_available() && implicit_gemm_pays_off(g) && !one_call_beats_implicit_gemm(g, input.scalar_type())) {
    return implicit_gemm_conv2d_forward(input, weight, bias, g);
  }
  if (batch_in_one_gemm(g) || image_in_one_gemm(g)) return gemm_conv2d_forward_in_one_gemm(input, weight, bias, g);
  if (pointwise_in_one_call(g)) return gemm_conv2d_forward_pointwise(input, weight, bias, g);
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  const Tensor w = weight_matrix(weight, g);
  // The larger of a row's im2col and output (an expansion's output outgrows its input).
  const int64_t row_elements = std::max<int64_t>(1, std::max(g.patch_size() * g.groups, g.out_channels) * g.out_w);
  const int64_t rows_per_thread = (g.batch * g.out_h + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t most_rows =
      std::clamp<int64_t>(std::min(kCacheTileElements / row_elements, rows_per_thread), 1, std::max<int64_t>(1, g.out_h));
  const int64_t tiles_per_image = (g.out_h + most_rows - 1) / most_rows;
  const int64_t rows_per_tile = (g.out_h + tiles_per_image - 1) / std::max<int64_t>(1, tiles_per_image);
  at::parallel_for(0, g.batch * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state: stay below autograd here too.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tiles_per_image, row = task % tiles_per_image * rows_per_tile;
      const RowTile tile{row, std::min(row + rows_per_tile, g.out_h)};
      Tensor out = output_tile(output[n], g, tile);
      multiply_into(out, w, im2col(input[n], g, tile), bias);
    }
  });
  return output;
}

// The input gradient as the adjoint of im2col: cols = w^T gy, then col2im. Per image and tile of
// rows, or, for few pixels in a batch, one GEMM over all images' columns (which reads the
// filters once).
Tensor gemm_conv2d_grad_input(const Tensor& grad_output, const Tensor& weight,
                              const Conv2dGeometry& g) {
  Tensor grad_input = at::zeros({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  // cols = w^T gy per group, (groups, patch, pixels) from gy (groups, Kg, pixels): on MKL, or
  // where it does not keep up (blas_keeps_up) as a 1x1 convolution on the implicit GEMM, gy's
  // pixels one row of an image and w^T its filters (Zen 5: the 7x7/2 stem's input gradient
  // 1.5-2x faster, 1.2-1.7x -> 2.4x torch's).
  const bool on_implicit_gemm = !blas_keeps_up() && implicit_gemm_available();
  const Tensor w_t = on_implicit_gemm ? weight_matrix(weight, g).transpose(1, 2).contiguous()
                                      : weight_matrix(weight, g).transpose(1, 2);
  const auto columns_of = [&](const Tensor& gy) {
    if (!on_implicit_gemm) return at::bmm(w_t, gy);
    const int64_t pixels = gy.size(2), rows = g.groups * g.patch_size();
    const Conv2dGeometry pointwise{1, g.out_channels, 1, pixels, rows, 1, 1, 1, pixels, 1, 1, 0, 0, 1, 1, g.groups};
    return implicit_gemm_conv2d_forward(gy.reshape({1, g.out_channels, 1, pixels}).contiguous(),
                                        w_t.view({rows, g.out_channels_per_group(), 1, 1}), Tensor(), pointwise)
        .view({g.groups, g.patch_size(), pixels});
  };
  const auto add_columns = [&](const Tensor& cols, int64_t n, RowTile tile, int64_t row_stride, int64_t first) {
    AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), "conv_ext_col2im", [&] {
      col2im_tile_add(cols.const_data_ptr<scalar_t>() + first, g, tile, grad_input[n].mutable_data_ptr<scalar_t>(), row_stride);
    });
  };
  if (batch_in_one_gemm(g)) {
    const int64_t pixels = g.out_h * g.out_w, columns = g.batch * pixels;
    const Tensor gy = grad_output.view({g.batch, g.groups, g.out_channels_per_group(), pixels})
                          .permute({1, 2, 0, 3})
                          .reshape({g.groups, g.out_channels_per_group(), columns});
    const Tensor cols = columns_of(gy);
    for (int64_t n = 0; n < g.batch; ++n) add_columns(cols, n, RowTile{0, g.out_h}, columns, n * pixels);
    return grad_input;
  }
  for (int64_t n = 0; n < g.batch; ++n) {
    for_each_row_tile(g, [&](RowTile tile) {
      add_columns(columns_of(output_tile(grad_output[n], g, tile)), n, tile, tile.rows() * g.out_w, 0);
    });
  }
  return grad_input;
}

Tensor gemm_conv2d_grad_weight(const Tensor& input, const Tensor& grad_output,
                               const Conv2dGeometry& g) {
  if (batch_in_one_gemm(g)) {  // one GEMM whose depth is the batch's pixels, not one image's
    const Tensor gy = grad_output.view({g.batch, g.groups, g.out_channels_per_group(), g.out_h * g.out_w})
                          .permute({1, 2, 0, 3})
                          .reshape({g.groups, g.out_channels_per_group(), g.batch * g.out_h * g.out_w});
    return at::bmm(gy, batch_im2col(input, g).transpose(1, 2))
        .view({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w});
  }
  // The first tile's product written over grad_weight, the others added: zeroing it first, and
  // MKL's reading it back to add to, had taken a fifth of the time where the product is one
  // (3x3 512 @7 at batch 1, 9.4 MB of filters: 1.27-1.39 -> 1.04-1.06 ms, A/B).
  Tensor grad_weight = at::empty({g.groups, g.out_channels_per_group(), g.patch_size()}, input.options());
  bool written = false;
  for (int64_t n = 0; n < g.batch; ++n) {
    for_each_row_tile(g, [&](RowTile tile) {
      const Tensor gy = output_tile(grad_output[n], g, tile), cols = im2col(input[n], g, tile).transpose(1, 2);
      written ? grad_weight.baddbmm_(gy, cols) : at::bmm_out(grad_weight, gy, cols);
      written = true;
    });
  }
  if (!written) grad_weight.zero_();
  return grad_weight.view({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w});
}

// Whether a bfloat16 call runs on the pair kernels: wherever AMX's tiles apply, unless a path is
// forced (CONV_EXT_CPU_ALGORITHM=gemm, direct or winograd then run it widened, as CPUs without
// them do). AVX512_BF16's vectors, twice an FMA's products, are taken on 1x1, strided and
// dilated layers with at least 32 channels per group: Winograd's 4x fewer products, widened to
// float32, beat them (Zen 5, 3x3 512 @7 at batch 8: forward 1.2x, weight gradient 1.5x faster),
// and with 16 per group half of every pair block is zeros (ResNeXt's 3x3/2 512 @28, g=32:
// forward 1.3x faster widened). over_winograd: the vectors where Winograd is chosen too.
bool bf16_pairs_chosen(const Conv2dGeometry& g, at::ScalarType dtype, bool over_winograd = false) {
  if (dtype != at::kBFloat16 || forced_algorithm() || winograd_forced() ||
      !bf16_pairs_conv2d_applies(g)) {
    return false;
  }
  return bf16_pairs_on_tiles() || bf16_vectors_forced() ||
         (g.in_channels_per_group() >= 32 && (over_winograd || !winograd_chosen(g)));
}

// A 1x1 stride-1 layer of one group on NHWC tensors (channels_last) is one matrix product over
// the batch's pixels, which MKL (or the micro-kernel: pointwise_on_micro_kernel) runs on them in
// place, where the NCHW paths transpose the input and the output (measured on Zen 4, 1x1 256->64
// @56 at batch 8 with a channels_last input: 26.9 ms, against 9.4 ms for an NCHW one; its input
// gradient 18.0 -> 13.0 ms). float32, float64 and float16 (its products summed in float32;
// bfloat16 has its pair kernels), where the algorithm is not forced.
bool pointwise_on_pixel_rows(const Conv2dGeometry& g, const Tensor& t) {
  const auto dtype = t.scalar_type();
  return is_pointwise(g) && g.groups == 1 && (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf) &&
         t.suggest_memory_format() == at::MemoryFormat::ChannelsLast && !forced_algorithm();
}

// A 1x1 layer over a single pixel (a squeeze-excitation's or a classifier's on one image's pooled
// features) is a matrix-vector product in each direction, which reads the filters once: the
// implicit GEMM packs them first, then fills one of each panel's 16 columns. float32 and float64
// in the vector builds. MKL's GEMV against the implicit GEMM: in the AVX2 build (Zen 3, A/B:
// forward 576->144 44 -> 17 us, 960->240 53 -> 46, 2048->1000 and 1280->1000 1.02-1.06x faster;
// input gradient 960->240 82 -> 33 us, 2048->1000 1.43 -> 0.26 ms; weight gradient, an outer
// product, 1.35-2.3x faster) and the AVX-512 build (Zen 4, fresh processes alternated: forward
// 960->240 92-101 -> 27 us, 576->144 37 -> 16, 2048->1000 0.46 -> 0.16 ms; forward and backward
// 960->240 0.42-0.70 -> 0.14 ms, 2048->1000 4.5-4.8 -> 1.1-1.3 ms; float64 960->240 forward 67 ->
// 44 us, with backward 0.94-1.0 -> 0.2 ms). Our kernels (matrix_vector.cpp) against MKL's GEMV,
// which runs its generic code on AMD's CPUs (mkl_blas_def_xsgemv), on one thread (Zen 4, A/B,
// fresh processes: forward 960->240 22-23 -> 12 us, 576->144 11 -> 8, 2048->1000 0.15 ->
// 0.06-0.07 ms; input gradient 960->240 26 -> 15-16 us, 2048->1000 0.15-0.16 -> 0.10-0.11 ms;
// float64 960->240 forward 37-41 -> 19-25 us, input gradient 41-44 -> 29-35).
bool single_pixel_product(const Conv2dGeometry& g, const Tensor& t) {
  const auto dtype = t.scalar_type();
  return is_pointwise(g) && g.groups == 1 && g.batch == 1 && g.in_h == 1 && g.in_w == 1 &&
         (dtype == at::kFloat || dtype == at::kDouble) && use_avx2() && !forced_algorithm();
}

// An operand of those products: float16 widened to float32 in its own layout (rows stay rows).
Tensor product_operand(const Tensor& t) { return t.defined() && t.scalar_type() == at::kHalf ? t.to(at::kFloat) : t; }

// t (N, C, H, W) as the matrix (N H W, C) of its pixels' channels: a view of a channels_last t.
Tensor pixel_rows(const Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({t.size(0) * t.size(2) * t.size(3), t.size(1)});
}

// The matrix (N H W, C) of pixel_rows as the (N, C, H, W) tensor, channels_last.
Tensor from_pixel_rows(const Tensor& rows, int64_t n, int64_t h, int64_t w) {
  return rows.view({n, h, w, rows.size(1)}).permute({0, 3, 1, 2});
}

// Where MKL does not keep up (blas_keeps_up), the micro-kernel takes those products, reading the
// rows in place too, where the product's columns (the result's channels) fill its panels
// (channels_last_pointwise_applies). Measured against MKL on one Zen 4 core at batch 8, with a
// bias, forward and input gradient: 1x1 256->64 @56 13.6 -> 10.3 and 13.0 -> 8.8 ms, 64->256 @56
// 11.7 -> 8.6 and 12.9 -> 10.1 ms, 1024->256 @14 8.3 -> 7.9 and 8.3 -> 8.1 ms (torch's forward
// on channels_last: 12.4, 11.4 and 8.6 ms).
bool pointwise_on_micro_kernel(int64_t columns, const Tensor& operand) {
  return !blas_keeps_up() && channels_last_pointwise_applies(columns, operand.scalar_type());
}

// The forward on Winograd, reading the weight in the given order.
Tensor winograd_forward(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                        const Conv2dGeometry& g, at::MemoryFormat result_format) {
  const Tensor x = band_operand(input);
  const Tensor output = winograd_conv2d_forward(x, compute_operand(weight), order, compute_operand(bias), g, result_format);
  return finish(output, input.scalar_type(), result_format);
}

// Fewest input and output channels for the dilation phases: with fewer, copying the input and
// the output phase by phase costs about what Winograd saves (3x3 dilated by 2, 32 @56 at batch
// 8: forward 1.02x -> 0.83x torch, input gradient 1.12x -> 0.86x).
constexpr int64_t kDilationPhasesChannels = 64;

// The most bytes of the input's and the output's phases one pass over a batch's images copies:
// the workspace the dilation phases add stays bounded, however large the batch.
constexpr int64_t kMaxPhaseBytes = int64_t{32} << 20;

// fn(first image, geometry of the pass's images) over passes of as many images as the bound
// allows (at least one).
template <typename Fn>
void for_each_phase_pass(const Conv2dGeometry& g, int64_t element_size, Fn&& fn) {
  Conv2dGeometry image = g;
  image.batch = 1;
  const Conv2dGeometry u = undilated_geometry(image);
  const int64_t image_bytes = u.batch * (g.in_channels * u.in_h * u.in_w + g.out_channels * u.out_h * u.out_w) * element_size;
  const int64_t step = std::clamp<int64_t>(kMaxPhaseBytes / std::max<int64_t>(1, image_bytes), 1, g.batch);
  for (int64_t first = 0; first < g.batch; first += step) {
    Conv2dGeometry pass = g;
    pass.batch = std::min(step, g.batch - first);
    fn(first, pass);
  }
}

// Dilated stride-1 layers run on their dilation phases (dilation_phases.h) where `choose` gives
// the phases' undilated convolution Winograd and its tiles save products against the layer's
// own outputs (the phases' outputs past the layer's are thrown away): see
// forward_by_dilation_phases.
bool by_dilation_phases(const Conv2dGeometry& g, Algorithm (*choose)(const Conv2dGeometry&)) {
  const bool dilated = g.dilation_h > 1 || g.dilation_w > 1;
  if (!dilated || !g.unit_stride() || std::min(g.in_channels, g.out_channels) < kDilationPhasesChannels) return false;
  const Conv2dGeometry u = undilated_geometry(g);
  return choose(u) == Algorithm::winograd && winograd_saves_products(u, g.batch * g.out_h * g.out_w);
}

// The forward of a dilated layer as Winograd's over its phases, reading the weight in the given
// order (the input gradient's too; the weight gradient is Winograd's over the phases of input
// and grad_output). Measured against the channels-last GEMM and im2col+MKL the layers had run
// on (Xeon, AVX-512, 3x3, ratios to torch of forward / input gradient / weight gradient):
// dilated by 2 at batch 8, 64 @56 0.96x / 1.07x / 1.04x -> 1.2x / 1.25x / 1.27x, 128 @28 1.0x ->
// 1.3x, 256 @28 1.0x / 1.0x / 0.91x -> 1.42x / 1.38x / 1.4x, 512 @14 0.82x / 0.84x / 0.87x ->
// 1.5x / 1.57x / 1.43x; at batch 1, 256 @28 0.95x / 0.94x / 0.82x -> 1.52x / 1.5x / 1.3x, 512 @14
// 0.87x / 0.86x / 1.0x -> 1.43x / 1.3x / 1.27x, 512 @7 0.89x / 0.78x / 1.25x -> 1.22x / 1.09x /
// 1.26x; by 4, 512 @14 at batch 8 0.85x / 0.86x / 0.75x -> 1.15x / 1.18x / 1.1x, at batch 1
// 0.75x / 0.73x / 0.92x -> 1.11x / 1.02x / 0.98x (one 4 x 4 tile per phase of 6 x 6 pixels,
// mostly padding, which the GEMM paths skip).
Tensor forward_by_dilation_phases(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                                  const Conv2dGeometry& g, at::MemoryFormat result_format) {
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(result_format));
  for_each_phase_pass(g, input.element_size(), [&](int64_t first, const Conv2dGeometry& pass) {
    const Conv2dGeometry u = undilated_geometry(pass);
    const Tensor phases = split_into_dilation_phases(input.narrow(0, first, pass.batch), pass, g.pad_h, g.pad_w, u.in_h, u.in_w);
    Tensor images = output.narrow(0, first, pass.batch);
    join_dilation_phases(winograd_forward(phases, weight, order, bias, u, result_format), pass, images);
  });
  return output;
}

// The forward on the channels-last GEMM, reading the weight in the given order.
Tensor channels_last_gemm_forward(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                                  const Conv2dGeometry& g, at::MemoryFormat result_format) {
  const Tensor output = channels_last_gemm_conv2d_forward(band_operand(input), compute_operand(weight), order,
                                                          compute_operand(bias), g, result_format);
  return finish(output, input.scalar_type(), result_format);
}

// Whether a layer's forward (or the stride-1 input gradient's, t; given its pays_off, the weight
// gradient) runs on Winograd along one dimension (1 x R and R x 1 kernels): where it applies and
// pays off, or Winograd is forced.
bool winograd_1d_chosen(const Conv2dGeometry& g, bool (*pays_off)(const Conv2dGeometry&) = winograd_1d_pays_off) {
  return winograd_1d_applies(g) && !forced_algorithm() && (winograd_forced() || pays_off(g));
}

// Its forward, reading the weight in the given order.
Tensor winograd_1d_forward(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                           const Conv2dGeometry& g, at::MemoryFormat result_format) {
  const Tensor output = winograd_1d_conv2d_forward(band_operand(input), compute_operand(weight), order,
                                                   compute_operand(bias), g, result_format);
  return finish(output, input.scalar_type(), result_format);
}

// Whether a layer's forward (or the stride-1 input gradient's, t) runs on the NHWC group kernels:
// where the direct kernels are chosen and they apply; the weight gradient's too.
bool grouped_channels_last_chosen(const Conv2dGeometry& g, const Tensor& input) {
  return choose_algorithm(g) == Algorithm::direct && grouped_channels_last_applies(g, input);
}

// The forward on the NHWC group kernel, reading the weight in the given order in its own layout.
Tensor grouped_channels_last(const Tensor& input, const Tensor& weight, FilterOrder order, const Tensor& bias,
                             const Conv2dGeometry& g, at::MemoryFormat result_format) {
  const Tensor output = grouped_channels_last_forward(compute_operand(input, at::MemoryFormat::ChannelsLast),
                                                      compute_operand(weight, weight.suggest_memory_format()), order,
                                                      compute_operand(bias), g);
  return finish(output, input.scalar_type(), result_format);
}

Tensor forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
               const Conv2dGeometry& g, at::MemoryFormat result_format) {
  if (bf16_pairs_chosen(g, input.scalar_type())) {
    const Tensor output = bf16_pairs_conv2d_forward(dense(input), dense(weight), FilterOrder::as_given, bias, g);
    return finish(output, input.scalar_type(), result_format);
  }
  if (single_pixel_product(g, input)) {
    const Tensor y = matrix_times_vector(weight.reshape({g.out_channels, g.in_channels}), input.reshape({g.in_channels}), bias);
    return finish(y.view({1, g.out_channels, 1, 1}), input.scalar_type(), result_format);
  }
  if (pointwise_on_pixel_rows(g, input)) {
    const Tensor x = product_operand(input), w = product_operand(weight), b = product_operand(bias);
    if (pointwise_on_micro_kernel(g.out_channels, x)) {
      return finish(channels_last_pointwise_forward(x, w, b, g), input.scalar_type(), result_format);
    }
    const Tensor w_t = w.reshape({g.out_channels, g.in_channels}).t();
    const Tensor rows = b.defined() ? at::addmm(b, pixel_rows(x), w_t) : at::mm(pixel_rows(x), w_t);
    return finish(from_pixel_rows(rows, g.batch, g.out_h, g.out_w), input.scalar_type(), result_format);
  }
  const Algorithm algorithm = choose_algorithm(g);
  if (algorithm == Algorithm::winograd) return winograd_forward(input, weight, FilterOrder::as_given, bias, g, result_format);
  if (winograd_1d_chosen(g)) return winograd_1d_forward(input, weight, FilterOrder::as_given, bias, g, result_format);
  if (by_dilation_phases(g, choose_algorithm)) {
    return forward_by_dilation_phases(input, weight, FilterOrder::as_given, bias, g, result_format);
  }
  if (channels_last_gemm_chosen(g)) {
    return channels_last_gemm_forward(input, weight, FilterOrder::as_given, bias, g, result_format);
  }
  if (grouped_channels_last_chosen(g, input)) {
    return grouped_channels_last(input, weight, FilterOrder::as_given, bias, g, result_format);
  }
  if (algorithm == Algorithm::direct && depthwise_channels_last_applies(g, input)) {
    const Tensor output = depthwise_channels_last_forward(compute_operand(input, at::MemoryFormat::ChannelsLast),
                                                          compute_operand(weight), compute_operand(bias), g);
    return finish(output, input.scalar_type(), result_format);
  }
  const bool reads_reduced = algorithm == Algorithm::direct && direct_forward_reads_reduced(g);
  const Tensor x = reads_reduced ? dense(input) : compute_operand(input);
  const Tensor w = compute_operand(weight), b = compute_operand(bias);
  const Tensor output = algorithm == Algorithm::direct ? direct_conv2d_forward(x, w, b, g) : gemm_conv2d_forward(x, w, b, g);
  return finish(output, input.scalar_type(), result_format);
}

// With stride 1 the input gradient is itself a convolution: of grad_output with the flipped
// filters, input and output channels swapped within each group, and padding d * (k - 1) - p
// (when that is not negative). The geometry of that convolution:
Conv2dGeometry transposed_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry t = g;
  t.in_channels = g.out_channels, t.in_h = g.out_h, t.in_w = g.out_w;
  t.out_channels = g.in_channels, t.out_h = g.in_h, t.out_w = g.in_w;
  t.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  t.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  return t;
}

bool grad_input_is_forward(const Conv2dGeometry& g, const Conv2dGeometry& t) {
  return g.unit_stride() && t.pad_h >= 0 && t.pad_w >= 0;
}

// The forward route (but for Winograd) copies the filters flipped, a pass over all of them; with
// fewer output pixels in the batch than output channels per group, the col2im path, whose GEMM
// reads them in place, is faster (measured at batch 1: 512x512 @7 3.1 -> 1.9 ms, 256x256 @14
// 1.8 -> 1.3 ms, 1x1 1024->256 @14 2.0 -> 0.9 ms; at batch 8 512x512 @7 alike, 256x256 @14 1.7x
// slower). Where MKL, which col2im's GEMM runs on, does not keep up (blas_keeps_up), flipping
// 1x1 filters, a transpose, pays off whatever the pixels (Zen 5: 1x1 1024->256 @14 at batch 1
// 0.70 -> 0.36 ms), and so it does in the AVX2 build, where col2im's product with the filters
// transposed in place crawls on few pixels (Zen 3, A/B in one process: 1x1 on pooled images at
// batch 8, 2048->1000 8.8 -> 1.1 ms, 960->240 and 240->960 0.30x and 0.41x the time; at batch 1
// 1024->256 @14 and 2048->512 @7 0.86-0.9x; 512->2048 @7 and 1024->2048 @7 at batch 2 alike).
bool flipping_pays_off(const Conv2dGeometry& g) {
  return g.batch * g.out_h * g.out_w >= g.out_channels_per_group() ||
         ((!blas_keeps_up() || cpu_isa() == Isa::avx2) && g.kernel_h * g.kernel_w == 1);
}

// Whether the stride-1 input gradient's forward convolution t runs on Winograd, which reads the
// layer's filters flipped and transposed in place: no copy to repay, so it beats col2im even
// where flipping_pays_off does not (measured: 512x512 @7 batch 8 1.5x, batch 4 1.25x, 256x256
// @14 batch 1 1.35x faster).
bool winograd_reads_flipped(const Conv2dGeometry& t, at::ScalarType dtype) {
  return !bf16_pairs_chosen(t, dtype) && choose_algorithm(t) == Algorithm::winograd;
}

// out[group * Cg + c][k] = weight[group * Kg + k][c] rotated by 180 degrees, each thread
// writing whole filters of its input channels (at::flip on 3-wide rows of a transposed view took
// 3 ms for 512x512x3x3, measured, as long as the convolution's GEMMs). float32 and float64 by
// register transposes; float16 and bfloat16 in blocks of kFlipBlock x kFlipBlock filters, which
// read and write whole runs of them (filter by filter, every read and write touched its own
// cache line: the input gradient of 512x512 @7 at batch 1 took 1.6-2x as long, measured).
Tensor flipped_transposed_filters(const Tensor& weight, const Conv2dGeometry& g) {
  const Tensor w = dense(weight);
  Tensor out = at::empty({g.in_channels, g.out_channels_per_group(), g.kernel_h, g.kernel_w}, w.options());
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "conv_ext_flip_filters", [&] {
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      // Per group and block of its input channels: the block's columns of the (kg x cg * taps)
      // weight to (cg * taps x kg) rows (for 1x1 filters the result), then each channel's
      // (taps x kg) to (kg x taps), its taps' rows read last to first. (The blocked loop's
      // reads, rows of powers of two apart, had made the flip of a 1024x256 1x1 filter cost as
      // much as the input gradient's GEMM: Zen 5, 0.25 ms, measured.)
      const auto transpose = transpose_for_this_cpu<scalar_t>();
      constexpr int64_t kChannels = 16;
      const int64_t blocks = (cg + kChannels - 1) / kChannels;
      at::parallel_for(0, g.groups * blocks, 1, [&](int64_t begin, int64_t end) {
        AlignedVector<scalar_t> by_tap(taps > 1 ? kChannels * taps * kg : 0);  // [c][tap][k]
        for (int64_t task = begin; task < end; ++task) {
          const int64_t group = task / blocks, c0 = task % blocks * kChannels, count = std::min(kChannels, cg - c0);
          scalar_t* first = dst + (group * cg + c0) * kg * taps;
          transpose(src + (group * kg * cg + c0) * taps, cg * taps, kg, count * taps, taps == 1 ? first : by_tap.data(), kg, false);
          for (int64_t c = 0; c < count && taps > 1; ++c) {
            transpose(by_tap.data() + (c * taps + taps - 1) * kg, -kg, taps, kg, first + c * kg * taps, taps, false);
          }
        }
      });
      return;
    }
    constexpr int64_t kFlipBlock = 16;
    at::parallel_for(0, (g.in_channels + kFlipBlock - 1) / kFlipBlock, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c0 = begin * kFlipBlock; c0 < std::min(end * kFlipBlock, g.in_channels); c0 += kFlipBlock) {
        for (int64_t k0 = 0; k0 < kg; k0 += kFlipBlock) {
          for (int64_t c = c0; c < std::min(c0 + kFlipBlock, g.in_channels); ++c) {
            // Channel c's filter of output channel k of its group at filters + k * cg * taps.
            const scalar_t* filters = src + (c / cg * kg * cg + c % cg) * taps;
            for (int64_t k = k0; k < std::min(k0 + kFlipBlock, kg); ++k) {
              std::reverse_copy(filters + k * cg * taps, filters + (k * cg + 1) * taps, dst + (c * kg + k) * taps);
            }
          }
        }
      }
    });
  });
  return out;
}

Tensor conv2d_cpu(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups) {
  read_cpu_switches();
  const auto g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  if (input.is_complex()) return complex_conv2d(input, weight, bias, stride, padding, dilation, groups);
  return forward(input, weight, bias.value_or(Tensor()), g, conv2d_memory_format(input, weight));
}

// One dimension of a stride phase of the input gradient: the positions a, a + s, ... of the
// input (s the stride) get grad_output's values at u + e_j times the taps ki_j, j < count, for
// the taps with (a + pad - ki * dilation) divisible by s (e_j = that quotient). Those taps are
// every s / gcd(s, d)-th, so (in descending order, as the flipped filters hold them) this is a
// stride-1 convolution with dilation d / gcd(s, d) of the rows of grad_output it reads, which
// here are a view (begin, length) zero-padded by `pad` on both sides; its output from row
// `skip` on is the phase's `size` positions.
struct PhaseDimension {
  int64_t size = 0, count = 0, first_flipped = 0, step = 1, dilation = 1;
  int64_t begin = 0, length = 0, pad = 0, skip = 0;

  PhaseDimension(int64_t a, int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad_in, int64_t dil) {
    size = (in - a + stride - 1) / stride;
    int64_t last = -1;  // the largest valid tap
    for (int64_t k = 0; k < kernel; ++k) {
      if ((a + pad_in - k * dil) % stride == 0) last = k, ++count;
    }
    if (size <= 0 || count == 0) return;
    step = stride / std::gcd(stride, dil), dilation = dil / std::gcd(stride, dil);
    first_flipped = kernel - 1 - last;
    const int64_t lo = (a + pad_in - last * dil) / stride, hi = size - 1 + lo + (count - 1) * dilation;
    begin = std::max<int64_t>(0, lo), length = std::min(out - 1, hi) - begin + 1;
    const int64_t top = begin - lo, bottom = hi - std::min(out - 1, hi);
    pad = std::max(top, bottom), skip = pad - top;
  }
  bool empty() const { return size <= 0 || count == 0 || length <= 0; }
};

// The input gradient of a strided layer as stride_h x stride_w forward convolutions of
// grad_output, one per stride phase of the input, each with the flipped filters' taps that reach
// its positions, so that each phase runs on AMX (measured in bfloat16: 3x3/2 128->256 @28 and
// 1x1/2 256->512 @56 2-3x faster than col2im on float32 copies). In float32 col2im is faster
// (1.3-3x: the phases' small kernels, their copies of grad_output).
Tensor grad_input_by_phases(const Tensor& grad_output, const Tensor& weight, const Conv2dGeometry& g,
                            at::MemoryFormat result_format) {
  const Tensor flipped = flipped_transposed_filters(weight, g);
  // at::zeros would drop the memory format.
  Tensor grad_input =
      at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options().memory_format(result_format)).zero_();
  for (int64_t a = 0; a < g.stride_h; ++a) {
    const PhaseDimension rows(a, g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
    if (rows.empty()) continue;
    for (int64_t b = 0; b < g.stride_w; ++b) {
      const PhaseDimension cols(b, g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
      if (cols.empty()) continue;
      Conv2dGeometry phase = transposed_geometry(g);
      phase.in_h = rows.length, phase.in_w = cols.length;
      phase.kernel_h = rows.count, phase.kernel_w = cols.count;
      phase.stride_h = phase.stride_w = 1;
      phase.pad_h = rows.pad, phase.pad_w = cols.pad;
      phase.dilation_h = rows.dilation, phase.dilation_w = cols.dilation;
      phase.out_h = rows.length + 2 * rows.pad - rows.dilation * (rows.count - 1);
      phase.out_w = cols.length + 2 * cols.pad - cols.dilation * (cols.count - 1);
      const Tensor taps = flipped.slice(2, rows.first_flipped, rows.first_flipped + (rows.count - 1) * rows.step + 1, rows.step)
                              .slice(3, cols.first_flipped, cols.first_flipped + (cols.count - 1) * cols.step + 1, cols.step)
                              .contiguous();
      const Tensor gy = grad_output.narrow(2, rows.begin, rows.length).narrow(3, cols.begin, cols.length);
      grad_input.slice(2, a, g.in_h, g.stride_h)
          .slice(3, b, g.in_w, g.stride_w)
          .copy_(forward(gy, taps, Tensor(), phase, at::MemoryFormat::Contiguous)
                     .narrow(2, rows.skip, rows.size)
                     .narrow(3, cols.skip, cols.size));
    }
  }
  return grad_input;
}

// Depthwise layers at stride 2 padded by half their odd kernels (MobileNet's and EfficientNet's
// downsampling) have the gradients of the stride-1 layer whose grad_output is theirs spread out
// to the input's size, zeros between its pixels (each gradient op all of it; conv2d_backward
// plane by plane, in its one pass as at stride 1, where that applies; weight gradients where no
// kernel reads 3x3 rows sum over the input's stride phases instead, stride_2_grad_weight_by_phases,
// and 3x3 layers' gradients in the AVX2 build read the strided planes in place, depthwise_stride_2_reads_planes: the
// weight gradient of 144 @56 alone at batch 8 1.4-2.1 -> 0.5-0.9 ms, at batch 1 0.14 ->
// 0.06-0.07, the one-pass backward 0.9-0.95x the time): the stride-1 kernels read whole vectors of
// columns, where the strided planes' loops go value by value, and that repays the zeros' four
// times the products (Zen 3, all three gradients, A/B: 3x3 144 @56 at batch 8 6.1 -> 3.0 ms,
// 0.51x -> 1.04x torch; at batch 1 0.74 -> 0.29; 192 @28 2.35 -> 0.95, 576 @14 1.9 -> 1.05, 96
// @112 at batch 4 8.9 -> 5.2; 5x5 240 @28 7.6 -> 4.5, 144 @56 15.7 -> 11.3; float64 144 @56
// alike). (The input, where a gradient reads it, dense as well.)
bool depthwise_gradients_spread(const Conv2dGeometry& g, const Tensor& grad_output, const Tensor& input = Tensor()) {
  const auto dtype = grad_output.scalar_type();
  return (dtype == at::kFloat || dtype == at::kDouble) && g.groups == g.in_channels && g.groups == g.out_channels &&
         g.stride_h == 2 && g.stride_w == 2 && g.dilation_h == 1 && g.dilation_w == 1 && g.kernel_h % 2 == 1 &&
         g.kernel_w % 2 == 1 && 2 * g.pad_h + 1 == g.kernel_h && 2 * g.pad_w + 1 == g.kernel_w &&
         grad_output.is_contiguous() && (!input.defined() || input.is_contiguous()) && grad_output.numel() > 0 &&
         !forced_algorithm();
}

// Where the gradients are computed apart, all of grad_output is spread at once, into a tensor
// of the input's size: up to 32 MiB, glibc's largest mmap threshold. A larger one comes from
// mmap on every call, and its page faults cost more than the spread saves (96 @112 at batch 8,
// 38.5 MB: 31.8 -> 35.9 ms). The one-pass backward spreads plane by plane instead (below).
constexpr int64_t kMaxSpreadBytes = int64_t{32} << 20;
constexpr int64_t kUnitStride[2] = {1, 1};
bool depthwise_backward_spreads(const Conv2dGeometry& g, const Tensor& grad_output, const Tensor& input = Tensor()) {
  const int64_t spread_bytes = g.batch * g.in_channels * g.in_h * g.in_w * int64_t{grad_output.element_size()};
  return depthwise_gradients_spread(g, grad_output, input) && spread_bytes <= kMaxSpreadBytes;
}

// Whether such a layer's weight gradient reads the strided grad_output (its planes in place, or
// over the input's stride phases) rather than the spread one.
bool grad_weight_reads_strided(const Conv2dGeometry& g, at::ScalarType dtype) {
  return depthwise_stride_2_reads_planes(g, dtype) || stride_2_grad_weight_by_phases(g);
}

// The stride-1 layer whose gradients it has: its output the input's size.
Conv2dGeometry spread_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry u = g;
  u.stride_h = u.stride_w = 1;
  u.out_h = g.in_h, u.out_w = g.in_w;
  return u;
}

// Its grad_output spread out: row and column 2i hold grad_output's i (ceil(in / 2) of them, the
// output's rows and columns), zeros the others. Written in one pass, row by row (zeroed whole,
// then grad_output's values copied in, it had taken a fifth of the backward: 3x3 144 @56 at
// batch 8 5.5 -> 4.4 ms, at batch 1 0.49 -> 0.36, 192 @28 1.03 -> 0.92).
Tensor spread_grad_output(const Tensor& grad_output, const Conv2dGeometry& g) {
  Tensor spread = at::empty({g.batch, g.out_channels, g.in_h, g.in_w}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "conv_ext_spread_grad_output", [&] {
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    scalar_t* out = spread.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.out_channels * g.in_h, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // row r % in_h of plane r / in_h
        scalar_t* row = out + r * g.in_w;
        const int64_t ih = r % g.in_h;
        if (ih % 2 == 1) {
          std::fill(row, row + g.in_w, scalar_t(0));
          continue;
        }
        spread_row(gy + (r / g.in_h * g.out_h + ih / 2) * g.out_w, g.in_w, row);
      }
    });
  });
  return spread;
}

Tensor conv2d_grad_input_cpu(const Tensor& grad_output, const Tensor& weight,
                             at::IntArrayRef input_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  read_cpu_switches();
  const auto g =
      check_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups);
  if (grad_output.is_complex()) {
    return complex_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups);
  }
  if (depthwise_gradients_spread(g, grad_output) && depthwise_stride_2_reads_planes(g, grad_output.scalar_type())) {
    return finish(direct_conv2d_grad_input(grad_output, compute_operand(weight), g), grad_output.scalar_type(),
                  conv2d_memory_format(grad_output, weight));
  }
  if (depthwise_backward_spreads(g, grad_output)) {
    return conv2d_grad_input_cpu(spread_grad_output(grad_output, g), weight, input_size, kUnitStride, padding, dilation,
                                 groups);
  }
  const at::MemoryFormat result_format = conv2d_memory_format(grad_output, weight);
  if (single_pixel_product(g, grad_output)) {
    const Tensor gx = matrix_transposed_times_vector(weight.reshape({g.out_channels, g.in_channels}), grad_output.reshape({g.out_channels}));
    return finish(gx.view({1, g.in_channels, 1, 1}), grad_output.scalar_type(), result_format);
  }
  if (pointwise_on_pixel_rows(g, grad_output)) {
    const Tensor gy = product_operand(grad_output), w = product_operand(weight);
    if (pointwise_on_micro_kernel(g.in_channels, gy)) {
      return finish(channels_last_pointwise_grad_input(gy, w, g), grad_output.scalar_type(), result_format);
    }
    const Tensor rows = at::mm(pixel_rows(gy), w.reshape({g.out_channels, g.in_channels}));
    return finish(from_pixel_rows(rows, g.batch, g.in_h, g.in_w), grad_output.scalar_type(), result_format);
  }
  const Conv2dGeometry t = transposed_geometry(g);
  if (grad_input_is_forward(g, t)) {
    if (winograd_reads_flipped(t, grad_output.scalar_type())) {
      return winograd_forward(grad_output, weight, FilterOrder::flipped_transposed, Tensor(), t, result_format);
    }
    // The pair kernels read the filters flipped as they pack them, and beat col2im's widened GEMM
    // whatever the pixels (Zen 5, 3x3 dilated by 2, 512 @7: at batch 8 17 -> 6.7 ms, at batch 1
    // 3.7 -> 2.2 ms).
    if (bf16_pairs_chosen(t, grad_output.scalar_type())) {
      const Tensor grad_input = bf16_pairs_conv2d_forward(dense(grad_output), dense(weight),
                                                          FilterOrder::flipped_transposed, Tensor(), t);
      return finish(grad_input, grad_output.scalar_type(), result_format);
    }
    if (winograd_1d_chosen(t)) {
      return winograd_1d_forward(grad_output, weight, FilterOrder::flipped_transposed, Tensor(), t, result_format);
    }
    if (by_dilation_phases(t, choose_algorithm)) {
      return forward_by_dilation_phases(grad_output, weight, FilterOrder::flipped_transposed, Tensor(), t, result_format);
    }
    if (grouped_channels_last_chosen(t, grad_output)) {
      return grouped_channels_last(grad_output, weight, FilterOrder::flipped_transposed, Tensor(), t, result_format);
    }
    if (flipping_pays_off(g)) {
      // The channels-last GEMM packs the filters flipped as it reads them: no copy first.
      if (channels_last_gemm_chosen(t)) {
        return channels_last_gemm_forward(grad_output, weight, FilterOrder::flipped_transposed, Tensor(), t, result_format);
      }
      return forward(grad_output, flipped_transposed_filters(weight, g), Tensor(), t, result_format);
    }
  }
  if (!g.unit_stride() && choose_algorithm(g) == Algorithm::direct && depthwise_channels_last_applies(g, grad_output)) {
    const Tensor grad_input = depthwise_channels_last_grad_input(
        compute_operand(grad_output, at::MemoryFormat::ChannelsLast), compute_operand(weight), g);
    return finish(grad_input, grad_output.scalar_type(), result_format);
  }
  // Per stride phase on the tiles; on the vectors the phases' small forwards lose to the widened
  // paths (Zen 5, 3x3/2 128->256 @28 at batch 1: 1.0 against 0.68 ms; level at batch 8).
  if (!g.unit_stride() && bf16_pairs_chosen(g, grad_output.scalar_type()) && (bf16_pairs_on_tiles() || bf16_vectors_forced())) {
    return grad_input_by_phases(grad_output, weight, g, result_format);
  }
  // Not at stride 1: grouped layers reach here then with fewer pixels than output channels per
  // group (flipping_pays_off), where col2im measured faster (64 channels per group @7 at batch
  // 1: 1.2x).
  if (!g.unit_stride() && channels_last_gemm_chosen(g)) {
    const Tensor gy = band_operand(grad_output);
    return finish(channels_last_gemm_conv2d_grad_input(gy, compute_operand(weight), g, result_format),
                  grad_output.scalar_type(), result_format);
  }
  const Tensor gy = compute_operand(grad_output), w = compute_operand(weight);
  const Tensor grad_input = choose_algorithm(g) == Algorithm::direct
                                ? direct_conv2d_grad_input(gy, w, g)
                                : gemm_conv2d_grad_input(gy, w, g);
  return finish(grad_input, grad_output.scalar_type(), result_format);
}

Tensor conv2d_grad_weight_cpu(const Tensor& input, const Tensor& grad_output,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  read_cpu_switches();
  const auto g =
      check_conv2d_grad_weight(input, grad_output, kernel_size, stride, padding, dilation, groups);
  if (input.is_complex()) {
    return complex_conv2d_grad_weight(input, grad_output, kernel_size, stride, padding, dilation, groups);
  }
  if (depthwise_backward_spreads(g, grad_output, input) && !grad_weight_reads_strided(g, input.scalar_type())) {
    return conv2d_grad_weight_cpu(input, spread_grad_output(grad_output, g), kernel_size, kUnitStride, padding, dilation,
                                  groups);
  }
  if (choose_grad_weight_algorithm(g) == Algorithm::direct && depthwise_channels_last_grad_weight_applies(g, input)) {
    const auto format = at::MemoryFormat::ChannelsLast;
    const Tensor grad_weight = depthwise_channels_last_grad_weight(compute_operand(input, format),
                                                                   compute_operand(grad_output, format), g);
    return finish(grad_weight, input.scalar_type(), conv2d_memory_format(input, grad_output));
  }
  if (grouped_channels_last_chosen(g, input)) {
    const auto format = at::MemoryFormat::ChannelsLast;
    const Tensor grad_weight = grouped_channels_last_grad_weight(compute_operand(input, format),
                                                                 compute_operand(grad_output, format), g);
    return finish(grad_weight, input.scalar_type(), conv2d_memory_format(input, grad_output));
  }
  if (single_pixel_product(g, input)) {
    const Tensor grad_weight = at::outer(grad_output.reshape({g.out_channels}), input.reshape({g.in_channels}));
    return finish(grad_weight.view({g.out_channels, g.in_channels, 1, 1}), input.scalar_type(),
                  conv2d_memory_format(input, grad_output));
  }
  // Where the channels-last GEMM takes these weight gradients (blas_keeps_up false), it runs alike
  // (Zen 4, 1x1 256->64 @56 at batch 8: 10.8 against 11.2 ms).
  if (pointwise_on_pixel_rows(g, input) && pointwise_on_pixel_rows(g, grad_output) &&
      !channels_last_gemm_grad_weight_pays_off(g)) {
    const Tensor grad_weight = at::mm(product_operand(pixel_rows(grad_output).t()), product_operand(pixel_rows(input)));
    return finish(grad_weight.view({g.out_channels, g.in_channels, 1, 1}), input.scalar_type(),
                  conv2d_memory_format(input, grad_output));
  }
  // The vectors' weight gradient beats Winograd's with at least 1024 output pixels in the batch
  // (Zen 5, 3x3 at batch 8: 64 @56 1.1-1.7x, 128 @28 1.0-1.3x, 256 @14 1.2-1.3x faster; with
  // fewer, level at 128 @28 at batch 1, 1.5x slower at 512 @7 at batch 8), but not on Zen 4
  // (3x3 at batch 8: Winograd's 1.15-1.2x faster at 64 @56, 128 @28 and 256 @14, alike at 512
  // @7; forward+backward 5-10% faster).
  const bool over_winograd = !cpu_halves_avx512() && g.batch * g.out_h * g.out_w >= 1024;
  if (bf16_pairs_chosen(g, input.scalar_type(), over_winograd)) {
    return finish(bf16_pairs_conv2d_grad_weight(dense(input), dense(grad_output), g), input.scalar_type(),
                  conv2d_memory_format(input, grad_output));
  }
  const at::MemoryFormat format = conv2d_memory_format(input, grad_output);
  if (winograd_1d_chosen(g, winograd_1d_grad_weight_pays_off)) {
    return finish(winograd_1d_conv2d_grad_weight(band_operand(input), band_operand(grad_output), g), input.scalar_type(),
                  format);
  }
  if (by_dilation_phases(g, choose_grad_weight_algorithm)) {
    // The phases' products summed over the batch of their images (see forward_by_dilation_phases),
    // and over the passes.
    Tensor grad_weight;
    for_each_phase_pass(g, input.element_size(), [&](int64_t first, const Conv2dGeometry& pass) {
      const Conv2dGeometry u = undilated_geometry(pass);
      const Tensor x = split_into_dilation_phases(input.narrow(0, first, pass.batch), pass, g.pad_h, g.pad_w, u.in_h, u.in_w);
      const Tensor gy = split_into_dilation_phases(grad_output.narrow(0, first, pass.batch), pass, 0, 0, u.out_h, u.out_w);
      const Tensor sum = winograd_conv2d_grad_weight(x, gy, u);
      grad_weight = grad_weight.defined() ? grad_weight.add_(sum) : sum;
    });
    return finish(grad_weight, input.scalar_type(), format);
  }
  const Algorithm algorithm = choose_grad_weight_algorithm(g);
  const bool channels_last_gemm = algorithm == Algorithm::gemm && channels_last_gemm_grad_weight_pays_off(g);
  if (algorithm == Algorithm::winograd || channels_last_gemm) {
    const Tensor x = band_operand(input), gy = band_operand(grad_output);
    return finish(channels_last_gemm ? channels_last_gemm_conv2d_grad_weight(x, gy, g) : winograd_conv2d_grad_weight(x, gy, g),
                  input.scalar_type(), format);
  }
  const bool reads_reduced = algorithm == Algorithm::direct && direct_grad_weight_reads_reduced(g);
  const Tensor x = reads_reduced ? dense(input) : compute_operand(input);
  const Tensor gy = reads_reduced ? dense(grad_output) : compute_operand(grad_output);
  const Tensor grad_weight = algorithm == Algorithm::direct ? direct_conv2d_grad_weight(x, gy, g) : gemm_conv2d_grad_weight(x, gy, g);
  return finish(grad_weight, input.scalar_type(), format);
}

// Depthwise stride-1 layers' gradients in one pass over grad_output (direct_conv2d_backward)
// where the three ops would each run their direct kernels (measured against them, Xeon with
// AVX-512, 3x3: the three gradients of 256 @28 1.2x faster at batch 8 and 1, 144 @56, 32 @112
// and 512 @14 at batch 8 1.15-1.3x, 1024 @7 1.08x; forward and backward of 256 @28 at batch 8
// 1.36-1.41 -> 1.10-1.17 ms; in bfloat16, whose bias gradient had been torch's sum over
// bfloat16, 256 @28 1.45x and 144 @56 1.65x; 5x5 240 @28 and 672 @14 1.1x); elsewhere the three
// ops. Stride-2 layers that spread grad_output (depthwise_gradients_spread) spread each plane
// into L1 there, where spreading all of it first had written, and the pass read, a tensor four
// times grad_output's size (Zen 3, A/B, builds interleaved: 3x3 144 @56 at batch 8 2.8 -> 2.2
// ms, 1.1x -> 1.6x torch, at batch 1 0.23 -> 0.19 ms; 96 @112 at batch 4 4.6 -> 3.1 ms, and at
// batch 8, whose spread had been too large to make, 32 -> 21 ms; float64 144 @56 6.5 -> 4.5 ms,
// 192 @28 1.5 -> 1.05 ms).
std::tuple<Tensor, Tensor, Tensor> conv2d_backward_cpu(const Tensor& grad_output, const Tensor& input,
                                                       const Tensor& weight, at::IntArrayRef stride,
                                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                                       int64_t groups, std::array<bool, 3> output_mask) {
  read_cpu_switches();
  const auto layer = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups);
  const bool spreads = depthwise_gradients_spread(layer, grad_output, input);
  const Conv2dGeometry g = spreads ? spread_geometry(layer) : layer, t = transposed_geometry(g);
  const bool one_pass = !grad_output.is_complex() && grad_output.is_contiguous() && input.is_contiguous() &&
                        direct_backward_fuses(g, t, grad_output.scalar_type()) &&
                        choose_algorithm(t) == Algorithm::direct && choose_grad_weight_algorithm(g) == Algorithm::direct;
  // One spread for both ops, but where the weight gradient reads the strided grad_output.
  if (!one_pass && depthwise_backward_spreads(layer, grad_output, input) &&
      !grad_weight_reads_strided(layer, input.scalar_type())) {
    return conv2d_backward_by_three_ops(spread_grad_output(grad_output, layer), input, weight, kUnitStride, padding,
                                        dilation, groups, output_mask);
  }
  if (!one_pass) {
    return conv2d_backward_by_three_ops(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
  }
  const auto [grad_input, grad_weight, grad_bias] =
      direct_conv2d_backward(input, grad_output, compute_operand(weight), g, t, output_mask, spreads);
  const auto dtype = grad_output.scalar_type();
  return {grad_input.defined() ? finish(grad_input, dtype, conv2d_memory_format(grad_output, weight)) : Tensor(),
          grad_weight.defined() ? finish(grad_weight, dtype, conv2d_memory_format(input, grad_output)) : Tensor(),
          grad_bias.defined() ? finish(grad_bias, dtype, at::MemoryFormat::Contiguous) : Tensor()};
}

}  // namespace

TORCH_LIBRARY_IMPL(conv_ext, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_grad_input", &conv2d_grad_input_cpu);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace conv_ext
