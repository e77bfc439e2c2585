#include "grouped_channels_last.h"

#include "bands.h"
#include "cpu_features.h"
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

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kVectorRegisters = 16, kAccumulators = 12, kGradWeightAccumulators = 12;
#include "grouped_channels_last.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2,fma")
namespace avx512 {
constexpr int kVectorRegisters = 32, kAccumulators = 16, kGradWeightAccumulators = 24;
#include "grouped_channels_last.inc"
}  // namespace avx512
#pragma GCC pop_options

namespace {

// fn(std::integral_constant<int, K>()) for a layer's K channels a group: 4, 8 or 16.
template <typename Fn>
void with_group_channels(int64_t channels, Fn&& fn) {
  switch (channels) {
    case 4: return fn(std::integral_constant<int, 4>());
    case 8: return fn(std::integral_constant<int, 8>());
    default: return fn(std::integral_constant<int, 16>());
  }
}

// The groups a vector takes in turn: alike in both builds.
template <typename scalar_t, int K>
constexpr int kGroups = avx2::GroupLayout<scalar_t, K>::kGroups;
static_assert(kGroups<float, 4> == avx512::GroupLayout<float, 4>::kGroups);
static_assert(kGroups<double, 4> == avx512::GroupLayout<double, 4>::kGroups);

// Stride 1: a band row holds an input row's pixels and the padding on both sides.
int64_t band_columns(const Conv2dGeometry& g) { return g.in_w + 2 * g.pad_w; }

// The input rows a band holds beyond its output rows.
int64_t band_halo(const Conv2dGeometry& g) { return (g.kernel_h - 1) * g.dilation_h; }

// Where each tap of the band's first output pixel reads (in elements from the band's start),
// width channels a pixel.
std::vector<int64_t> band_tap_offsets(const Conv2dGeometry& g, int64_t width) {
  std::vector<int64_t> offsets(g.kernel_h * g.kernel_w);
  for (int64_t i = 0; i < g.kernel_h; ++i) {
    for (int64_t j = 0; j < g.kernel_w; ++j) {
      offsets[i * g.kernel_w + j] = (i * g.dilation_h * band_columns(g) + j * g.dilation_w) * width;
    }
  }
  return offsets;
}

// A task's band: its output rows' input rows, each block's channels apart and zero-padded,
// at most half a core's L2, and no fewer bands than threads.
int64_t band_rows(const Conv2dGeometry& g, int64_t columns, int64_t element_size) {
  const int64_t row_bytes = columns * g.in_channels * element_size;
  const int64_t fit = std::max<int64_t>(1, core_l2_bytes() / 2 / std::max<int64_t>(row_bytes, 1) - band_halo(g));
  const int64_t per_image = (at::get_num_threads() + g.batch - 1) / g.batch;
  const int64_t bands = std::min(g.out_h, std::max((g.out_h + fit - 1) / fit, per_image));
  return (g.out_h + bands - 1) / bands;
}

// Where group_band reads a block's filter vectors (of its output channels, as lanes, one per tap
// and input channel): at first + block * K * K taps * kGroups + tap * tap_stride + channel *
// channel_stride.
template <typename scalar_t>
struct FilterVectors {
  at::Tensor packed;  // where they are not the weight's own
  const scalar_t* first;
  int64_t tap_stride, channel_stride;
};

// The filter vectors of a dense NCHW or NHWC weight, as given or (order) flipped and transposed.
// With a group a vector, each group's a transpose of its filters or the weight itself: in an NCHW
// weight a group's filters are a (K x K taps) matrix of rows over channels then taps, in an NHWC
// one over taps then channels; flipped and transposed, the vectors are the NHWC weight's own runs
// of channels, a tap's K x K values a row. (torch's permuted copy took 20-60 us, a third of the
// forward at batch 1, the NHWC weight's move to NCHW another 20.) Blocks of groups taken in turn
// (K a quarter of 8 or 16 channels: a small weight) are packed value by value.
template <typename scalar_t, int K>
FilterVectors<scalar_t> filter_vectors(const at::Tensor& weight, FilterOrder order, const Conv2dGeometry& g) {
  constexpr int64_t G = kGroups<scalar_t, K>, kWidth = K * G;
  const int64_t taps = g.kernel_h * g.kernel_w, group_size = K * K * taps;
  const bool nhwc = weight.is_contiguous(at::MemoryFormat::ChannelsLast) && !weight.is_contiguous();
  const bool flipped = order == FilterOrder::flipped_transposed;
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  if (G == 1 && flipped && nhwc) return {at::Tensor(), w + (taps - 1) * K, -K, taps * K};
  at::Tensor packed = at::empty({g.groups * group_size}, weight.options());
  scalar_t* p = packed.mutable_data_ptr<scalar_t>();
  if constexpr (G > 1) {
    // p[block][tap][c][k][group of the block] = the filter of output channel k, input channel c
    // at tap (flipped: of output channel c, input channel k, at the opposite tap).
    const auto s = weight.strides();
    at::parallel_for(0, g.groups / G, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        scalar_t* to = p + block * kWidth * K * taps;
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t tap = flipped ? taps - 1 - t : t, i = tap / g.kernel_w, j = tap % g.kernel_w;
          for (int64_t c = 0; c < K; ++c) {
            for (int64_t k = 0; k < K; ++k) {
              for (int64_t group = block * G; group < (block + 1) * G; ++group) {
                const int64_t out = group * K + (flipped ? c : k), in = flipped ? k : c;
                *to++ = w[out * s[0] + in * s[1] + i * s[2] + j * s[3]];
              }
            }
          }
        }
      }
    });
    return {packed, p, K * kWidth, kWidth};
  }
  const auto transpose = transpose_for_this_cpu<scalar_t>();
  at::parallel_for(0, g.groups, 8, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      if (flipped) {
        transpose(w + group * group_size, taps, K * K, taps, p + group * group_size, K * K, false);
      } else {
        transpose(w + group * group_size, K * taps, K, K * taps, p + group * group_size, K, false);
      }
    }
  });
  if (flipped) return {packed, p + (taps - 1) * K * K, -K * K, K};
  return {packed, p, nhwc ? K * K : K, nhwc ? K : taps * K};
}

}  // namespace

bool grouped_channels_last_applies(const Conv2dGeometry& g, const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  const int64_t channels = g.in_channels_per_group();
  // 4 float32 channels a group take the groups in pairs (float16 and bfloat16 compute in float32).
  const bool paired = channels == 4 && dtype != at::kDouble;
  return g.groups > 1 && g.unit_stride() && channels == g.out_channels_per_group() &&
         (channels == 4 || channels == 8 || channels == 16) && (!paired || g.groups % 2 == 0) && use_avx2() &&
         input.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16);
}

at::Tensor grouped_channels_last_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                         const at::Tensor& bias, const Conv2dGeometry& g) {
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (output.numel() == 0) return output;
  const int64_t columns = band_columns(g), halo = band_halo(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grouped_channels_last_forward", [&] {
    with_group_channels(g.in_channels_per_group(), [&](auto channels) {
      constexpr int K = decltype(channels)::value;
      const FilterVectors<scalar_t> filters = filter_vectors<scalar_t, K>(weight, order, g);
      const std::vector<int64_t> tap_offsets = band_tap_offsets(g, K * kGroups<scalar_t, K>);
      const auto band_kernel = use_avx512() ? &avx512::group_band<scalar_t, K> : &avx2::group_band<scalar_t, K>;
      const int64_t rows = band_rows(g, columns, sizeof(scalar_t)), bands = (g.out_h + rows - 1) / rows;
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* out = output.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.batch * bands, 1, [&](int64_t begin, int64_t end) {
        const at::Tensor band = at::empty({(rows + halo) * columns * g.in_channels}, input.options());
        for (int64_t task = begin; task < end; ++task) {
          const int64_t n = task / bands, oy = task % bands * rows;
          band_kernel(in + n * g.in_h * g.in_w * g.in_channels, filters.first, filters.tap_stride,
                      filters.channel_stride, b, g, oy, std::min(rows, g.out_h - oy), rows + halo, columns,
                      tap_offsets.data(), band.mutable_data_ptr<scalar_t>(),
                      out + (n * g.out_h + oy) * g.out_w * g.out_channels);
        }
      });
    });
  });
  return output;
}

// The weight gradient's bands of output rows (at most kGradWeightRows, all alike), and tasks:
// the images' bands in order, in at most kGradWeightTasks runs of as many, each summed by a task
// into its own part, the parts added in order. Both set by the layer, not the threads, the sums
// are the same whatever the threads; and the parts, each as large as the weight, are bounded.
constexpr int64_t kGradWeightRows = 8, kGradWeightTasks = 8;

at::Tensor grouped_channels_last_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                             const Conv2dGeometry& g) {
  const int64_t K = g.in_channels_per_group(), taps = g.kernel_h * g.kernel_w, group_size = K * K * taps;
  at::Tensor grad_weight = at::empty({g.out_channels, K, g.kernel_h, g.kernel_w},
                                     input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (g.batch * g.out_h * g.out_w == 0) return grad_weight.zero_();
  const int64_t columns = band_columns(g), halo = band_halo(g);
  const int64_t bands = (g.out_h + kGradWeightRows - 1) / kGradWeightRows, rows = (g.out_h + bands - 1) / bands;
  const int64_t items = g.batch * bands, tasks = std::min(items, kGradWeightTasks);
  // sums[task][block][tap][c][k][group of the block]: each task's over its run of bands.
  at::Tensor sums = at::empty({tasks, g.groups * group_size}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grouped_channels_last_grad_weight", [&] {
    with_group_channels(K, [&](auto channels) {
      constexpr int k = decltype(channels)::value;
      constexpr int64_t G = kGroups<scalar_t, k>;
      const std::vector<int64_t> tap_offsets = band_tap_offsets(g, k * G);
      const auto band_kernel =
          use_avx512() ? &avx512::group_grad_weight_band<scalar_t, k> : &avx2::group_grad_weight_band<scalar_t, k>;
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
      scalar_t* s = sums.mutable_data_ptr<scalar_t>();
      const int64_t size = g.groups * group_size;
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        const int64_t band_size = (rows + halo) * columns * g.in_channels;
        const at::Tensor bands_of_task = at::empty({band_size + rows * g.out_w * g.out_channels}, input.options());
        scalar_t* band = bands_of_task.mutable_data_ptr<scalar_t>();
        for (int64_t task = begin; task < end; ++task) {
          for (int64_t item = task * items / tasks; item < (task + 1) * items / tasks; ++item) {
            const int64_t n = item / bands, oy = item % bands * rows;
            band_kernel(in + n * g.in_h * g.in_w * g.in_channels, gy + n * g.out_h * g.out_w * g.out_channels, g, oy,
                        std::min(rows, g.out_h - oy), rows + halo, columns, tap_offsets.data(), band,
                        band + band_size, item == task * items / tasks, s + task * size);
          }
        }
      });
      at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t task = 1; task < tasks; ++task) {
          for (int64_t i = begin; i < end; ++i) s[i] += s[task * size + i];
        }
      });
      // grad_weight[(block * G + group) * K + k][tap][c] (NHWC) = sums[block][tap][c][k][group]:
      // with a group a block, a transpose of each group's sums.
      scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
      if constexpr (G > 1) {
        at::parallel_for(0, g.groups / G, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin * G * group_size; i < end * G * group_size; ++i) {
            const int64_t block = i / (G * group_size), tc = i / (k * G) % (taps * k), lane = i % (k * G);
            out[((block * G + lane % G) * k + lane / G) * taps * k + tc] = s[i];
          }
        });
        return;
      }
      const auto transpose = transpose_for_this_cpu<scalar_t>();
      at::parallel_for(0, g.groups, 8, [&](int64_t begin, int64_t end) {
        for (int64_t group = begin; group < end; ++group) {
          transpose(s + group * group_size, k, taps * k, k, out + group * group_size, taps * k, false);
        }
      });
    });
  });
  return grad_weight;
}

}  // namespace conv_ext
