// Winograd F(4x4, 3x3) on the CPU. The output is cut into 4x4 tiles; per chunk of tiles (one
// chunk per task, sized to stay in the core's cache):
//   V[e] = B^T d B     the 6x6 input block of each tile, per input channel   (e = 36 elements)
//   M[e] = V[e] U[e]   36 GEMMs (tiles x C) (C x K), U = G w G^T per filter, transformed once
//   y    = A^T M A     the 4x4 output block, per output channel, plus bias
// Everything runs channels_last, so the transforms vectorise across channels.
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
// write on every call than the algorithm saves at common batch sizes (measured: 512x512).
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
    std::vector<scalar_t> tmp(27 * kLanes);
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
  int64_t count() const { return rows * cols; }
};

template <typename scalar_t>
void winograd_forward_kernel(const Tensor& input, const Tensor& weight, const Tensor& bias,
                             Tensor& output, const Conv2dGeometry& g) {
  const TileGrid grid{(g.out_h + kTile - 1) / kTile, (g.out_w + kTile - 1) / kTile};
  const int64_t tiles = g.batch * grid.count();
  const int64_t C = g.in_channels, K = g.out_channels;
  // Tiles per chunk: V and M in cache, but enough tiles that the GEMMs repay packing U, and at
  // least one chunk per thread.
  const int64_t per_thread = (tiles + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t chunk = std::max<int64_t>(
      1, std::min(std::max(kMinChunk, kChunkElements / (kElements * (C + K))), per_thread));
  const int64_t chunks = (tiles + chunk - 1) / chunk;

  const auto transforms = transforms_for_this_cpu<scalar_t>();
  Tensor u = at::empty({kElements, K, C}, weight.options());
  transform_filters(transforms, weight.const_data_ptr<scalar_t>(), u.mutable_data_ptr<scalar_t>(), C, K);
  const Tensor u_t = u.transpose(1, 2);  // (36, C, K)
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y = output.mutable_data_ptr<scalar_t>();
  const std::vector<scalar_t> zeros(C, scalar_t(0));  // the input outside the image

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Tensor v_buffer = at::empty({kElements * chunk * C}, input.options());
    Tensor m_buffer = at::empty({kElements * chunk * K}, input.options());
    std::vector<scalar_t> tmp(kElements * kLanes), discard(K);
    for (int64_t chunk_index = begin; chunk_index < end; ++chunk_index) {
      const int64_t first = chunk_index * chunk, count = std::min(chunk, tiles - first);
      Tensor v = v_buffer.narrow(0, 0, kElements * count * C).view({kElements, count, C});
      Tensor m = m_buffer.narrow(0, 0, kElements * count * K).view({kElements, count, K});
      scalar_t* v_data = v.mutable_data_ptr<scalar_t>();
      scalar_t* m_data = m.mutable_data_ptr<scalar_t>();

      for (int64_t t = 0; t < count; ++t) {
        const int64_t n = (first + t) / grid.count(), tile = (first + t) % grid.count();
        const int64_t ih0 = tile / grid.cols * kTile - g.pad_h, iw0 = tile % grid.cols * kTile - g.pad_w;
        for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
          const int64_t lanes = std::min(kLanes, C - c0);
          const scalar_t* d[6][6];
          for (int64_t a = 0; a < kBlock; ++a) {
            const int64_t ih = ih0 + a;
            for (int64_t bb = 0; bb < kBlock; ++bb) {
              const int64_t iw = iw0 + bb;
              const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
              d[a][bb] = inside ? x + ((n * g.in_h + ih) * g.in_w + iw) * C + c0 : zeros.data();
            }
          }
          scalar_t* vt[36];
          for (int64_t e = 0; e < kElements; ++e) vt[e] = v_data + (e * count + t) * C + c0;
          transforms.input(d, vt, tmp.data(), lanes);
        }
      }

      at::bmm_out(m, v, u_t);

      for (int64_t t = 0; t < count; ++t) {
        const int64_t n = (first + t) / grid.count(), tile = (first + t) % grid.count();
        const int64_t oh0 = tile / grid.cols * kTile, ow0 = tile % grid.cols * kTile;
        for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
          const int64_t lanes = std::min(kLanes, K - k0);
          const scalar_t* mt[36];
          for (int64_t e = 0; e < kElements; ++e) mt[e] = m_data + (e * count + t) * K + k0;
          scalar_t* yt[4][4];
          for (int64_t i = 0; i < kTile; ++i) {
            for (int64_t j = 0; j < kTile; ++j) {
              const int64_t oh = oh0 + i, ow = ow0 + j;
              yt[i][j] = oh < g.out_h && ow < g.out_w
                             ? y + ((n * g.out_h + oh) * g.out_w + ow) * K + k0
                             : discard.data();
            }
          }
          transforms.output(mt, b != nullptr ? b + k0 : nullptr, yt, tmp.data(), lanes);
        }
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
  const int64_t tiles = ((g.out_h + kTile - 1) / kTile) * ((g.out_w + kTile - 1) / kTile);
  return g.in_channels >= 16 && g.out_channels >= 16 &&
         kElements * g.in_channels * g.out_channels <= kMaxFilterElements &&
         2 * kElements * tiles <= 9 * g.out_h * g.out_w && g.batch * tiles >= 32;
}

Tensor winograd_conv2d_forward(const Tensor& input, const Tensor& weight, const Tensor& bias,
                               const Conv2dGeometry& g) {
  const Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                            input.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_ext_winograd_forward", [&] {
    winograd_forward_kernel<scalar_t>(x, weight, bias, output, g);
  });
  return output;
}

}  // namespace conv_ext
