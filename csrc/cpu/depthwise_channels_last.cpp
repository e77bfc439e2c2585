#include "depthwise_channels_last.h"

#include "cpu_features.h"
#include "micro_kernel.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace conv_ext {

// 3 x 3 filters that the row kernels hold in registers, sliding along the row.
inline bool depthwise_window_applies(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_h == 1 && g.dilation_w == 1 && g.stride_w <= 2;
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")
// Output pixels per block (kPixels): their sums, a 3 x 3 filter's 9 vectors (or grad_output's
// vectors and the weight gradient's 9 sums) and an input vector in registers.
namespace avx2 {
constexpr int kPixels = 4;
#include "depthwise_channels_last.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2,fma")
namespace avx512 {
constexpr int kPixels = 8;
#include "depthwise_channels_last.inc"
}  // namespace avx512
#pragma GCC pop_options

bool depthwise_channels_last_applies(const Conv2dGeometry& g, const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  return g.groups == g.in_channels && g.groups == g.out_channels && use_avx2() &&
         input.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16);
}

// The filters as (R * S, C): a tap's filter values are a vector of channels.
at::Tensor taps_by_channel(const at::Tensor& weight, const Conv2dGeometry& g) {
  return weight.reshape({g.in_channels, g.kernel_h * g.kernel_w}).t().contiguous();
}

at::Tensor depthwise_channels_last_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                           const Conv2dGeometry& g) {
  const int64_t C = g.in_channels;
  const at::Tensor taps = taps_by_channel(weight, g);
  at::Tensor output = at::empty({g.batch, C, g.out_h, g.out_w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_channels_last_forward", [&] {
    const auto row_kernel = use_avx512() ? &avx512::depthwise_row_channels_last<scalar_t>
                                         : &avx2::depthwise_row_channels_last<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* t = taps.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    // Outputs larger than the caches by non-temporal stores, where each pixel's channels are
    // whole vectors (and so 64-byte aligned, as the allocation is).
    const bool stream = streams(output) && C * int64_t{sizeof(scalar_t)} % (use_avx512() ? 64 : 32) == 0;
    at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.out_h, oy = r % g.out_h;
        row_kernel(in + n * g.in_h * g.in_w * C, t, b, g, oy, stream, out + r * g.out_w * C);
      }
      if (stream) _mm_sfence();  // the non-temporal stores reach memory before the threads join
    });
  });
  return output;
}

at::Tensor depthwise_channels_last_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                              const Conv2dGeometry& g) {
  const int64_t C = g.in_channels, taps_count = g.kernel_h * g.kernel_w;
  const at::Tensor taps = taps_by_channel(weight, g);
  at::Tensor grad_input =
      at::empty({g.batch, C, g.in_h, g.in_w}, grad_output.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "depthwise_channels_last_grad_input", [&] {
    const auto row_kernel = use_avx512() ? &avx512::depthwise_grad_input_row_channels_last<scalar_t>
                                         : &avx2::depthwise_grad_input_row_channels_last<scalar_t>;
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* t = taps.const_data_ptr<scalar_t>();
    scalar_t* out = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> offsets(2 * taps_count);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.in_h, iy = r % g.in_h;
        row_kernel(gy + n * g.out_h * g.out_w * C, t, g, iy, offsets.data(), offsets.data() + taps_count,
                   out + r * g.in_w * C);
      }
    });
  });
  return grad_input;
}

bool depthwise_channels_last_grad_weight_applies(const Conv2dGeometry& g, const at::Tensor& input) {
  return depthwise_channels_last_applies(g, input) && depthwise_window_applies(g);
}

// Output rows per partial weight gradient: enough blocks for every thread at batch 1.
constexpr int64_t kGradWeightRows = 4;

at::Tensor depthwise_channels_last_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                               const Conv2dGeometry& g) {
  const int64_t C = g.in_channels, blocks = (g.out_h + kGradWeightRows - 1) / kGradWeightRows;
  at::Tensor parts = at::empty({g.batch * blocks, 9, C}, input.options());
  at::Tensor grad_weight = at::empty({C, 1, 3, 3}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_channels_last_grad_weight", [&] {
    const bool avx512 = use_avx512(), stride_1 = g.stride_w == 1;
    const auto rows_kernel = avx512 ? (stride_1 ? &avx512::grad_weight_rows_3x3<1, scalar_t> : &avx512::grad_weight_rows_3x3<2, scalar_t>)
                                    : (stride_1 ? &avx2::grad_weight_rows_3x3<1, scalar_t> : &avx2::grad_weight_rows_3x3<2, scalar_t>);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    scalar_t* part = parts.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, oy = task % blocks * kGradWeightRows;
        rows_kernel(in + n * g.in_h * g.in_w * C, gy + n * g.out_h * g.out_w * C, g, oy,
                    std::min(oy + kGradWeightRows, g.out_h), part + task * 9 * C);
      }
    });
    // grad_weight[c][t] = the parts' sums, in the parts' order.
    scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t count = g.batch * blocks;
    at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t t = 0; t < 9; ++t) {
          scalar_t sum = 0;
          for (int64_t k = 0; k < count; ++k) sum += part[(k * 9 + t) * C + c];
          out[c * 9 + t] = sum;
        }
      }
    });
  });
  return grad_weight;
}

}  // namespace conv_ext
