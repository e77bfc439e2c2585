#include "micro_kernel.h"

#include "cpu_features.h"
#include "vec.h"

#include <type_traits>

namespace conv_ext {

// 6 rows x one panel (2 vectors): 12 of AVX2's 16 registers.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kRows = 6, kPanels = 1, kOnePanelRows = 6;
constexpr int64_t kDepth = 1024;
#include "micro_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

// 12 rows x two panels (one vector each): 24 of AVX-512's 32 registers. With one panel, the 12
// broadcasts per step of depth, one per FMA, kept the FMA units half idle (measured); where one
// panel is all there is, 16 rows of it.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {
constexpr int kRows = 12, kPanels = 2, kOnePanelRows = 16;
constexpr int64_t kDepth = 256;
#include "micro_kernel.inc"
}  // namespace avx512
#pragma GCC pop_options

namespace generic {
constexpr int kRows = 6, kPanels = 1, kOnePanelRows = 6;
constexpr int64_t kDepth = 256;

template <typename scalar_t>
void run_micro_kernel(int rows, int /*panels: always 1*/, int64_t depth, const scalar_t* a, int64_t a_row,
                      const scalar_t* panel, int64_t /*panel_step*/, const int64_t* taps, Bias<scalar_t> bias,
                      Write write, scalar_t* y, int64_t y_row) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  for (int i = 0; i < rows; ++i) {
    scalar_t acc[W] = {};
    for (int64_t k = 0; k < depth; ++k) {
      const int64_t step = taps != nullptr ? taps[k] : k;  // where the operand in place has step k
      const scalar_t ai = a_row == 0 ? a[k * kRows + i] : a[i * a_row + step];
      const scalar_t* bk = a_row == 0 ? panel + (taps != nullptr ? step : k * W) : panel + k * W;
      for (int64_t j = 0; j < W; ++j) acc[j] += ai * bk[j];
    }
    scalar_t* yi = y + i * y_row;
    for (int64_t j = 0; j < W; ++j) {
      const scalar_t start = bias.values == nullptr ? scalar_t(0) : bias.values[bias.per_column ? j : i];
      yi[j] = (write == Write::add ? yi[j] : start) + acc[j];  // no streaming here
    }
  }
}
}  // namespace generic

template <typename scalar_t>
MicroKernel<scalar_t> micro_kernel_for_this_cpu() {
  static_assert(avx512::kRows <= kMaxMicroKernelRows && avx512::kPanels <= kMaxMicroKernelPanels &&
                avx2::kDepth <= kMaxMicroKernelDepth);
  switch (cpu_isa()) {
    case Isa::avx512:
      return {avx512::kRows, avx512::kPanels, avx512::kOnePanelRows, avx512::kDepth, &avx512::run_micro_kernel<scalar_t>};
    case Isa::avx2:
      return {avx2::kRows, avx2::kPanels, avx2::kOnePanelRows, avx2::kDepth, &avx2::run_micro_kernel<scalar_t>};
    default:
      return {generic::kRows, generic::kPanels, generic::kOnePanelRows, generic::kDepth, &generic::run_micro_kernel<scalar_t>};
  }
}

template MicroKernel<float> micro_kernel_for_this_cpu<float>();
template MicroKernel<double> micro_kernel_for_this_cpu<double>();

}  // namespace conv_ext
