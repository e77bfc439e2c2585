// The register-blocked AVX2 micro-kernel that the implicit GEMM and the Winograd GEMMs share:
// kRows rows of output times two vectors of columns stay in registers (12 of the 16), one
// broadcast of an A value and two FMAs per row and step of depth. Its B operand is a packed panel
// of 2 * kLanes columns per step, its A operand rows read in place.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace conv_ext {

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// A vector of kLanes elements and its operations; kRows x 2 vectors of output stay in registers
// (12 of the 16).
template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  using type = __m256;
  static constexpr int kLanes = 8, kRows = 6;
  static type zero() { return _mm256_setzero_ps(); }
  static type load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
  static type broadcast(float x) { return _mm256_set1_ps(x); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  static type add(type a, type b) { return _mm256_add_ps(a, b); }
  static type load_even(const float* p) {  // p[0], p[2], ..., p[14]: reads p[0, 16)
    const __m256 s = _mm256_shuffle_ps(load(p), load(p + 8), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
};
template <>
struct Vec<double> {
  using type = __m256d;
  static constexpr int kLanes = 4, kRows = 6;
  static type zero() { return _mm256_setzero_pd(); }
  static type load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, type v) { _mm256_storeu_pd(p, v); }
  static type broadcast(double x) { return _mm256_set1_pd(x); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
  static type add(type a, type b) { return _mm256_add_pd(a, b); }
  static type load_even(const double* p) {  // p[0], p[2], p[4], p[6]: reads p[0, 8)
    return _mm256_permute4x64_pd(_mm256_unpacklo_pd(load(p), load(p + 4)), _MM_SHUFFLE(3, 1, 2, 0));
  }
};

// y's tile of Rows channels x 2 vectors of pixels: y (+)= a . panel over depth, where row i of
// a (a_row apart) holds channel i's filter values and the panel depth rows of 2 * kLanes
// pixels. Starting from the bias (or zero) unless accumulating.
template <int Rows, typename scalar_t>
inline void micro_kernel(int64_t depth, const scalar_t* a, int64_t a_row, const scalar_t* panel,
                         const scalar_t* bias, bool accumulate, scalar_t* y, int64_t y_row) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[Rows][2];
#pragma GCC unroll 8
  for (int i = 0; i < Rows; ++i) {
    acc[i][0] = acc[i][1] = (bias != nullptr && !accumulate) ? V::broadcast(bias[i]) : V::zero();
  }
  for (int64_t k = 0; k < depth; ++k) {
    const auto b0 = V::load(panel + k * 2 * L), b1 = V::load(panel + k * 2 * L + L);
#pragma GCC unroll 8
    for (int i = 0; i < Rows; ++i) {
      const auto ai = V::broadcast(a[i * a_row + k]);
      acc[i][0] = V::fma(ai, b0, acc[i][0]);
      acc[i][1] = V::fma(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < Rows; ++i) {
    scalar_t* yi = y + i * y_row;
    V::store(yi, accumulate ? V::add(V::load(yi), acc[i][0]) : acc[i][0]);
    V::store(yi + L, accumulate ? V::add(V::load(yi + L), acc[i][1]) : acc[i][1]);
  }
}

// micro_kernel for any number of rows up to kRows (fewer at the edge of a matrix).
template <typename scalar_t, int Rows = Vec<scalar_t>::kRows>
inline void micro_kernel_rows(int rows, int64_t depth, const scalar_t* a, int64_t a_row,
                              const scalar_t* panel, const scalar_t* bias, bool accumulate,
                              scalar_t* y, int64_t y_row) {
  if constexpr (Rows > 0) {
    if (rows == Rows) {
      micro_kernel<Rows>(depth, a, a_row, panel, bias, accumulate, y, y_row);
    } else {
      micro_kernel_rows<scalar_t, Rows - 1>(rows, depth, a, a_row, panel, bias, accumulate, y, y_row);
    }
  }
}

#pragma GCC pop_options

// Columns of a packed panel: 16 float32 or 8 float64.
template <typename scalar_t>
constexpr int64_t kPanelWidth = 2 * Vec<scalar_t>::kLanes;

}  // namespace conv_ext
