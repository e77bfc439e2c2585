#include "matrix_vector.h"

#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <array>
#include <utility>

namespace conv_ext {
namespace {

// Rows of m per block of the forward (one sum each in registers, every vector of x read once
// for all of them), and vectors of columns per strip of the input gradient (a sum each).
constexpr int kBlockRows = 8, kStripVectors = 8;

// Rows of m per pass of the input gradient over a thread's strips: each pass reads those rows'
// columns of the thread from one end to the other, where strip by strip over all rows had read
// 256 bytes of each row in turn, a pattern that memory streams slowly (Zen 4, 2048->1000 with
// the filters out of cache: 0.41-0.52 -> 0.30-0.40 ms, the forward's 0.24-0.29; 64 rows a pass
// 0.42-0.54). The sums are the same.
constexpr int64_t kPassRows = 16;

// Products of fewer multiply-adds than this per thread stay on fewer threads: waking another
// costs about what that many take.
constexpr int64_t kMultiplyAddsPerThread = 16384;

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// y[r] = bias[r] + m[r] . x for the R rows at m (cols apart): a vector of columns a step, the
// last one masked.
template <int R, typename scalar_t>
void rows_times_vector(const scalar_t* m, int64_t cols, const scalar_t* x, const scalar_t* bias, scalar_t* y) {
  using V = avx2::Vec<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type sums[R];
  for (int r = 0; r < R; ++r) sums[r] = V::zero();
  int64_t c = 0;
  for (; c + L <= cols; c += L) {
    const auto xc = V::load(x + c);
    for (int r = 0; r < R; ++r) sums[r] = V::fma(V::load(m + r * cols + c), xc, sums[r]);
  }
  if (c < cols) {
    const auto valid = V::lanes(0, static_cast<int>(cols - c));
    const auto xc = V::load(x + c, valid);
    for (int r = 0; r < R; ++r) sums[r] = V::fma(V::load(m + r * cols + c, valid), xc, sums[r]);
  }
  for (int r = 0; r < R; ++r) y[r] = (bias != nullptr ? bias[r] : scalar_t(0)) + V::sum(sums[r]);
}

// x[c] (+)= sum_r m[r][c] y[r] over `rows` rows for the N vectors of columns at m and x, of
// which the last holds `last` columns (masked): adding to x's sums where `adds`, in the order of
// the rows, so that passes over consecutive rows make the sums one pass over all would.
template <int N, typename scalar_t>
void columns_times_vector(const scalar_t* m, int64_t rows, int64_t cols, const scalar_t* y, scalar_t* x, int last,
                          bool adds) {
  using V = avx2::Vec<scalar_t>;
  constexpr int L = V::kLanes;
  const auto valid = V::lanes(0, last);
  typename V::type sums[N];
  for (int v = 0; v + 1 < N; ++v) sums[v] = adds ? V::load(x + v * L) : V::zero();
  sums[N - 1] = adds ? V::load(x + (N - 1) * L, valid) : V::zero();
  for (int64_t r = 0; r < rows; ++r, m += cols) {
    const auto yr = V::broadcast(y[r]);
    for (int v = 0; v + 1 < N; ++v) sums[v] = V::fma(V::load(m + v * L), yr, sums[v]);
    sums[N - 1] = V::fma(V::load(m + (N - 1) * L, valid), yr, sums[N - 1]);
  }
  for (int v = 0; v + 1 < N; ++v) V::store(x + v * L, sums[v]);
  V::store_first(x + (N - 1) * L, sums[N - 1], last);
}

#pragma GCC pop_options

// The instances for 1 to Count rows (vectors), so that a block's run-time size picks one.
template <typename scalar_t, std::size_t... I>
constexpr auto rows_kernels(std::index_sequence<I...>) {
  return std::array{&rows_times_vector<static_cast<int>(I) + 1, scalar_t>...};
}
template <typename scalar_t, std::size_t... I>
constexpr auto columns_kernels(std::index_sequence<I...>) {
  return std::array{&columns_times_vector<static_cast<int>(I) + 1, scalar_t>...};
}

// At least as many blocks per thread as keep kMultiplyAddsPerThread multiply-adds on it.
int64_t grain(int64_t multiply_adds_per_block) {
  return std::max<int64_t>(1, kMultiplyAddsPerThread / std::max<int64_t>(1, multiply_adds_per_block));
}

}  // namespace

at::Tensor matrix_times_vector(const at::Tensor& m, const at::Tensor& x, const at::Tensor& bias) {
  const int64_t rows = m.size(0), cols = m.size(1);
  const at::Tensor mc = m.contiguous(), xc = x.contiguous(), bc = bias.defined() ? bias.contiguous() : bias;
  at::Tensor y = at::empty({rows}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "matrix_times_vector", [&] {
    static constexpr auto kernels = rows_kernels<scalar_t>(std::make_index_sequence<kBlockRows>());
    const scalar_t *mp = mc.const_data_ptr<scalar_t>(), *xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
    at::parallel_for(0, blocks, grain(kBlockRows * cols), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r = b * kBlockRows, count = std::min<int64_t>(kBlockRows, rows - r);
        kernels[count - 1](mp + r * cols, cols, xp, bp != nullptr ? bp + r : nullptr, yp + r);
      }
    });
  });
  return y;
}

at::Tensor matrix_transposed_times_vector(const at::Tensor& m, const at::Tensor& y) {
  const int64_t rows = m.size(0), cols = m.size(1);
  const at::Tensor mc = m.contiguous(), yc = y.contiguous();
  at::Tensor x = at::empty({cols}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "matrix_transposed_times_vector", [&] {
    static constexpr auto kernels = columns_kernels<scalar_t>(std::make_index_sequence<kStripVectors>());
    constexpr int64_t L = avx2::Vec<scalar_t>::kLanes, strip = kStripVectors * L;
    const scalar_t *mp = mc.const_data_ptr<scalar_t>(), *yp = yc.const_data_ptr<scalar_t>();
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (cols + strip - 1) / strip, grain(strip * rows), [&](int64_t begin, int64_t end) {
      for (int64_t r = 0; r < rows; r += kPassRows) {
        for (int64_t s = begin; s < end; ++s) {
          const int64_t c = s * strip, width = std::min(strip, cols - c), vectors = (width + L - 1) / L;
          kernels[vectors - 1](mp + r * cols + c, std::min(kPassRows, rows - r), cols, yp + r, xp + c,
                               static_cast<int>(width - (vectors - 1) * L), r > 0);
        }
      }
    });
  });
  return x;
}

}  // namespace conv_ext
