// Bands: a few rows of an image, every channel, held channels-innermost in cache for the
// kernels that vectorise across channels (Winograd's transforms, the channels-last GEMM),
// moved from and to the tensors' own layout (NCHW or NHWC) by register transposes.
#pragma once

#include "cpu_features.h"

#include <ATen/ATen.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace conv_ext {

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: between NCHW rows and
// the bands' channels-innermost order.
template <typename scalar_t>
using Transpose = void (*)(const scalar_t* src, int64_t src_stride, int64_t rows, int64_t cols, scalar_t* dst,
                           int64_t dst_stride);

namespace generic {

template <typename T>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

// Transpose in blocks of one vector square (8 float32 or 4 float64) transposed in
// registers: element by element, the copies took a third of Winograd's time on 64 channels at
// 56x56 (measured).
inline void transpose_square(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(dst + j * dst_stride, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * dst_stride, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

inline void transpose_square(const double* src, int64_t src_stride, double* dst, int64_t dst_stride) {
  __m256d r[4], t[4];
  for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + i * src_stride);
  t[0] = _mm256_unpacklo_pd(r[0], r[1]), t[1] = _mm256_unpackhi_pd(r[0], r[1]);
  t[2] = _mm256_unpacklo_pd(r[2], r[3]), t[3] = _mm256_unpackhi_pd(r[2], r[3]);
  for (int j = 0; j < 2; ++j) {
    _mm256_storeu_pd(dst + j * dst_stride, _mm256_permute2f128_pd(t[j], t[j + 2], 0x20));
    _mm256_storeu_pd(dst + (j + 2) * dst_stride, _mm256_permute2f128_pd(t[j], t[j + 2], 0x31));
  }
}

template <typename T>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  constexpr int64_t B = 32 / sizeof(T);
  const int64_t whole_rows = rows / B * B, whole_cols = cols / B * B;
  for (int64_t i = 0; i < whole_rows; i += B) {
    for (int64_t j = 0; j < whole_cols; j += B) {
      transpose_square(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
    }
  }
  generic::transpose(src + whole_cols, src_stride, whole_rows, cols - whole_cols, dst + whole_cols * dst_stride, dst_stride);
  generic::transpose(src + whole_rows * src_stride, src_stride, rows - whole_rows, cols, dst + whole_rows, dst_stride);
}

}  // namespace avx2
#pragma GCC pop_options

// The transpose of this CPU's instruction set (AVX-512 gains nothing on a copy's shuffles).
template <typename scalar_t>
Transpose<scalar_t> transpose_for_this_cpu() {
  return use_avx2() ? &avx2::transpose<scalar_t> : &generic::transpose<scalar_t>;
}

// Strides and sizes of a dense 4-D tensor, NCHW or NHWC.
struct Layout {
  int64_t n, c, h, w;
  int64_t channels, height, width;
  explicit Layout(const at::Tensor& t)
      : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)),
        channels(t.size(1)), height(t.size(2)), width(t.size(3)) {}
};

// band[a][b][c] = x[n, c, row0 + a, col0 + b] for a < rows and b < band_w, zero outside the
// image: the tiles' blocks read it channels-innermost, whatever x's layout (NHWC or NCHW).
template <typename scalar_t>
void fill_band(Transpose<scalar_t> transpose, const scalar_t* x, const Layout& l, int64_t n, int64_t row0, int64_t rows,
               int64_t col0, int64_t band_w, scalar_t* band) {
  const int64_t C = l.channels;
  std::fill(band, band + rows * band_w * C, scalar_t(0));
  const int64_t b_begin = std::max<int64_t>(0, -col0), b_end = std::min(band_w, l.width - col0);
  for (int64_t a = 0; a < rows; ++a) {
    const int64_t ih = row0 + a;
    if (ih < 0 || ih >= l.height || b_end <= b_begin) continue;
    const scalar_t* src = x + n * l.n + ih * l.h + (col0 + b_begin) * l.w;
    scalar_t* dst = band + (a * band_w + b_begin) * C;
    if (l.c == 1) {
      for (int64_t b = 0; b < b_end - b_begin; ++b) std::copy(src + b * l.w, src + b * l.w + C, dst + b * C);
    } else {
      transpose(src, l.c, C, b_end - b_begin, dst, C);  // NCHW: l.w == 1
    }
  }
}

// y[n, c, row0 + a, b] = band[a][b][c] for the rows and columns that exist, the band's pixels
// band_c >= channels values apart.
template <typename scalar_t>
void store_band(Transpose<scalar_t> transpose, const scalar_t* band, int64_t rows, int64_t band_w, scalar_t* y, const Layout& l,
                int64_t n, int64_t row0, int64_t band_c) {
  const int64_t C = l.channels, stride = band_c;
  for (int64_t a = 0; a < rows && row0 + a < l.height; ++a) {
    const scalar_t* src = band + a * band_w * stride;
    scalar_t* dst = y + n * l.n + (row0 + a) * l.h;
    if (l.c == 1) {
      for (int64_t b = 0; b < l.width; ++b) std::copy(src + b * stride, src + b * stride + C, dst + b * l.w);
    } else {
      transpose(src, stride, l.width, C, dst, l.c);
    }
  }
}

}  // namespace conv_ext
