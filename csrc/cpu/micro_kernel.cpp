#include "micro_kernel.h"

#include "cpu_features.h"
#include "vec.h"

#include <algorithm>
#include <type_traits>
#include <vector>

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

// Blocks of kDepth input channels keep the kernel's panels in L1 while the tiles pass over them.
template <typename scalar_t>
void multiply_by_filters(int64_t elements, const scalar_t* v, int64_t v_row, const scalar_t* u, int64_t u_stride,
                         scalar_t* p, int64_t count, int64_t C, int64_t panels, bool add) {
  constexpr int64_t W = kPanelWidth<scalar_t>, kDepth = 256;
  const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
  const int64_t tile_rows = kernel.rows;
  for (int64_t e = 0; e < elements; ++e) {
    const scalar_t* ve = v + e * count * v_row;
    scalar_t* pe = p + e * count * panels * W;
    for (int64_t c0 = 0; c0 < C; c0 += kDepth) {
      const int64_t depth = std::min(kDepth, C - c0);
      for (int64_t panel = 0; panel < panels; panel += kernel.panels) {
        const int n = static_cast<int>(std::min<int64_t>(kernel.panels, panels - panel));
        const scalar_t* b = u + e * u_stride + (panel * C + c0) * W;
        for (int64_t t = 0; t < count; t += tile_rows) {
          const int rows = static_cast<int>(std::min(tile_rows, count - t));
          const scalar_t* a = ve + t * v_row + c0;
          scalar_t* y = pe + t * panels * W + panel * W;
          kernel.run(rows, n, depth, a, v_row, b, C * W, nullptr, {}, add || c0 > 0 ? Write::add : Write::store, y, panels * W);
        }
      }
    }
  }
}

template <typename scalar_t>
void multiply_tiles_transposed(int64_t elements, const scalar_t* w, int64_t w_row, int64_t rows, const scalar_t* packed_v,
                               int64_t v_element, int64_t C, int64_t count, Write write, scalar_t* s, int64_t s_row,
                               int64_t s_element) {
  constexpr int64_t W = kPanelWidth<scalar_t>;
  const auto kernel = micro_kernel_for_this_cpu<scalar_t>();
  const int64_t panels = (C + W - 1) / W;
  std::vector<int64_t> taps(std::min(count, kernel.depth));  // step k of W's columns: row k of W
  for (int64_t k = 0; k < static_cast<int64_t>(taps.size()); ++k) taps[k] = k * w_row;
  for (int64_t e = 0; e < elements; ++e) {
    for (int64_t t0 = 0; t0 < count; t0 += kernel.depth) {
      const int64_t depth = std::min(kernel.depth, count - t0);
      const Write block_write = t0 == 0 ? write : Write::add;
      for (int64_t p = 0; p < panels; p += kernel.panels) {
        const int n = static_cast<int>(std::min<int64_t>(kernel.panels, panels - p));
        const scalar_t* panel = packed_v + e * v_element + (p * count + t0) * W;
        for (int64_t r0 = 0; r0 < rows; r0 += kernel.rows) {
          kernel.run(static_cast<int>(std::min<int64_t>(kernel.rows, rows - r0)), n, depth,
                     w + (e * count + t0) * w_row + r0, 1, panel, count * W, taps.data(), {}, block_write,
                     s + e * s_element + r0 * s_row + p * W, s_row);
        }
      }
    }
  }
}

#define CONV_EXT_WINOGRAD_PRODUCTS(scalar_t)                                                                          \
  template void multiply_by_filters<scalar_t>(int64_t, const scalar_t*, int64_t, const scalar_t*, int64_t, scalar_t*,  \
                                              int64_t, int64_t, int64_t, bool);                                        \
  template void multiply_tiles_transposed<scalar_t>(int64_t, const scalar_t*, int64_t, int64_t, const scalar_t*,       \
                                                    int64_t, int64_t, int64_t, Write, scalar_t*, int64_t, int64_t);
CONV_EXT_WINOGRAD_PRODUCTS(float)
CONV_EXT_WINOGRAD_PRODUCTS(double)
#undef CONV_EXT_WINOGRAD_PRODUCTS

}  // namespace conv_ext
