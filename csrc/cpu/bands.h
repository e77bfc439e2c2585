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
// the bands' channels-innermost order. With stream, where the build can, dst's whole cache lines
// are written with non-temporal stores (for outputs far larger than the caches; callers fence
// with _mm_sfence before other threads read dst).
template <typename scalar_t>
using Transpose = void (*)(const scalar_t* src, int64_t src_stride, int64_t rows, int64_t cols, scalar_t* dst,
                           int64_t dst_stride, bool stream);

namespace generic {

template <typename T>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride,
               bool /*stream*/ = false) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

}  // namespace generic

// fn(i, j) for the squares of side B at rows [first, rows) and columns [0, cols) of src, along
// the rows of the side whose rows lie farther apart (a tensor's planes in memory, the other side
// a band in cache): each is then read or written as one stream, which the prefetchers follow,
// where a square's column of 64 planes was 64 streams at once.
template <typename Fn>
void for_each_square(int64_t first, int64_t rows, int64_t cols, int64_t B, int64_t src_stride, int64_t dst_stride, Fn&& fn) {
  if (dst_stride > src_stride) {
    for (int64_t j = 0; j < cols; j += B) {
      for (int64_t i = first; i < rows; i += B) fn(i, j);
    }
  } else {
    for (int64_t i = first; i < rows; i += B) {
      for (int64_t j = 0; j < cols; j += B) fn(i, j);
    }
  }
}

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
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride,
               bool /*stream*/ = false) {
  constexpr int64_t B = 32 / sizeof(T);
  const int64_t whole_rows = rows / B * B, whole_cols = cols / B * B;
  for_each_square(0, whole_rows, whole_cols, B, src_stride, dst_stride, [&](int64_t i, int64_t j) {
    transpose_square(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
  });
  generic::transpose(src + whole_cols, src_stride, whole_rows, cols - whole_cols, dst + whole_cols * dst_stride, dst_stride);
  generic::transpose(src + whole_rows * src_stride, src_stride, rows - whole_rows, cols, dst + whole_rows, dst_stride);
}

}  // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 shuffles start their results from a deliberately undefined vector, which
// -Wuninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {

// x_i becomes lane i of x_0..x_3: a 4 x 4 transpose of 128-bit lanes.
inline void transpose_lanes(__m512i& x0, __m512i& x1, __m512i& x2, __m512i& x3) {
  const __m512i c0 = _mm512_shuffle_i32x4(x0, x1, 0x88), c1 = _mm512_shuffle_i32x4(x0, x1, 0xDD);
  const __m512i c2 = _mm512_shuffle_i32x4(x2, x3, 0x88), c3 = _mm512_shuffle_i32x4(x2, x3, 0xDD);
  x0 = _mm512_shuffle_i32x4(c0, c2, 0x88);
  x1 = _mm512_shuffle_i32x4(c1, c3, 0x88);
  x2 = _mm512_shuffle_i32x4(c0, c2, 0xDD);
  x3 = _mm512_shuffle_i32x4(c1, c3, 0xDD);
}

// Rows r[i] (16 dwords each) become columns: a 16 x 16 transpose of 32-bit values.
inline void transpose_16x16(__m512i r[16]) {
  __m512i a[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + m]: rows i..i+3 of column m of each 128-bit lane
    r[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  for (int m = 0; m < 4; ++m) transpose_lanes(r[m], r[4 + m], r[8 + m], r[12 + m]);
}

// Rows r[i] (8 qwords each) become columns: an 8 x 8 transpose of 64-bit values.
inline void transpose_8x8(__m512i r[8]) {
  for (int i = 0; i < 8; i += 2) {  // r[i + e], 128-bit lane L: column 2L + e of rows i, i + 1
    const __m512i lo = _mm512_unpacklo_epi64(r[i], r[i + 1]), hi = _mm512_unpackhi_epi64(r[i], r[i + 1]);
    r[i] = lo;
    r[i + 1] = hi;
  }
  for (int e = 0; e < 2; ++e) transpose_lanes(r[e], r[2 + e], r[4 + e], r[6 + e]);
}

// One cache line square (16 float32 or 8 float64) through the registers; each of its rows is a
// line of dst, stored non-temporally when stream (dst then 64-byte aligned).
template <typename T>
void transpose_square(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, bool stream) {
  constexpr int B = 64 / sizeof(T);
  __m512i r[B];
  for (int i = 0; i < B; ++i) r[i] = _mm512_loadu_si512(src + i * src_stride);
  if constexpr (B == 16) {
    transpose_16x16(r);
  } else {
    transpose_8x8(r);
  }
  for (int j = 0; j < B; ++j) {
    if (stream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + j * dst_stride), r[j]);
    } else {
      _mm512_storeu_si512(dst + j * dst_stride, r[j]);
    }
  }
}

// The first `rows` rows and `cols` columns of a square (each at most a line), through masked
// loads and stores: the edges of a transpose, which element by element had taken most of a
// band's time on rows of 7 or 14 pixels.
template <typename T>
void transpose_part(const T* src, int64_t src_stride, int rows, int cols, T* dst, int64_t dst_stride) {
  constexpr int B = 64 / sizeof(T);
  const unsigned col_mask = (1u << cols) - 1, row_mask = (1u << rows) - 1;
  __m512i r[B];
  for (int i = 0; i < B; ++i) {
    if (i >= rows) {
      r[i] = _mm512_setzero_si512();
    } else if constexpr (B == 16) {
      r[i] = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(col_mask), src + i * src_stride);
    } else {
      r[i] = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(col_mask), src + i * src_stride);
    }
  }
  if constexpr (B == 16) {
    transpose_16x16(r);
    for (int j = 0; j < cols; ++j) _mm512_mask_storeu_epi32(dst + j * dst_stride, static_cast<__mmask16>(row_mask), r[j]);
  } else {
    transpose_8x8(r);
    for (int j = 0; j < cols; ++j) _mm512_mask_storeu_epi64(dst + j * dst_stride, static_cast<__mmask8>(row_mask), r[j]);
  }
}

// Rows [r0, r1) and columns [c0, c1) of src in transpose_part's pieces.
template <typename T>
void transpose_parts(const T* src, int64_t src_stride, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* dst,
                     int64_t dst_stride) {
  constexpr int64_t B = 64 / sizeof(T);
  for (int64_t i = r0; i < r1; i += B) {
    for (int64_t j = c0; j < c1; j += B) {
      transpose_part(src + i * src_stride + j, src_stride, static_cast<int>(std::min(B, r1 - i)),
                     static_cast<int>(std::min(B, c1 - j)), dst + j * dst_stride + i, dst_stride);
    }
  }
}

// avx2::transpose in cache line squares, half the shuffles per element of its 8 x 8 float32.
// With stream, when dst's rows are whole lines apart, the squares from dst's first line boundary
// on are streamed (the rows of src before it, and the edges, are stored through the cache).
template <typename T>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride, bool stream) {
  constexpr int64_t B = 64 / sizeof(T);
  const auto address = reinterpret_cast<uintptr_t>(dst);
  stream = stream && dst_stride % B == 0;
  const int64_t first = stream ? std::min<int64_t>(rows, (B - address / sizeof(T) % B) % B) : 0;
  const int64_t whole_rows = first + (rows - first) / B * B, whole_cols = cols / B * B;
  transpose_parts(src, src_stride, 0, first, 0, cols, dst, dst_stride);
  for_each_square(first, whole_rows, whole_cols, B, src_stride, dst_stride, [&](int64_t i, int64_t j) {
    transpose_square(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride, stream);
  });
  transpose_parts(src, src_stride, first, rows, whole_cols, cols, dst, dst_stride);
  transpose_parts(src, src_stride, whole_rows, rows, 0, whole_cols, dst, dst_stride);
}

}  // namespace avx512
#pragma GCC pop_options
#pragma GCC diagnostic pop

// The transpose of this CPU's instruction set.
template <typename scalar_t>
Transpose<scalar_t> transpose_for_this_cpu() {
  return use_avx512() ? &avx512::transpose<scalar_t> : use_avx2() ? &avx2::transpose<scalar_t> : &generic::transpose<scalar_t>;
}

// Strides and sizes of a dense 4-D tensor, NCHW or NHWC.
struct Layout {
  int64_t n, c, h, w;
  int64_t channels, height, width;
  explicit Layout(const at::Tensor& t)
      : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)),
        channels(t.size(1)), height(t.size(2)), width(t.size(3)) {}
};

// dst[p * dst_stride + j] = the value of channel c0 + j at pixel p of a run of pixels (consecutive
// in memory's order of l, NHWC or NCHW) for p < pixels and j < count, src at the run's first
// pixel's channel c0: channels-innermost, whatever the tensor's layout.
template <typename scalar_t>
void gather_channels(Transpose<scalar_t> transpose, const scalar_t* src, const Layout& l, int64_t pixels, int64_t count,
                     scalar_t* dst, int64_t dst_stride) {
  if (l.c == 1) {  // NHWC: each pixel's channels are a run
    for (int64_t p = 0; p < pixels; ++p) std::copy(src + p * l.w, src + p * l.w + count, dst + p * dst_stride);
  } else {  // NCHW (l.w == 1): the pixels are a run of each channel's plane
    transpose(src, l.c, count, pixels, dst, dst_stride, false);
  }
}

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
    gather_channels(transpose, x + n * l.n + ih * l.h + (col0 + b_begin) * l.w, l, b_end - b_begin, C,
                    band + (a * band_w + b_begin) * C, C);
  }
}

// y[n, c, row0 + a, b] = band[a][b][c] for the rows and columns that exist, the band's pixels
// band_c >= channels values apart; streamed (see Transpose) when stream. Into NCHW, a band as wide
// as the image moves as one run of pixels per channel, whose lines the squares fill whole.
template <typename scalar_t>
void store_band(Transpose<scalar_t> transpose, const scalar_t* band, int64_t rows, int64_t band_w, scalar_t* y, const Layout& l,
                int64_t n, int64_t row0, int64_t band_c, bool stream) {
  const int64_t C = l.channels, stride = band_c;
  rows = std::min(rows, l.height - row0);
  scalar_t* y_rows = y + n * l.n + row0 * l.h;
  if (l.c != 1 && band_w == l.width && l.h == l.width) {
    transpose(band, stride, rows * l.width, C, y_rows, l.c, stream);
  } else {
    for (int64_t a = 0; a < rows; ++a) {
      const scalar_t* src = band + a * band_w * stride;
      scalar_t* dst = y_rows + a * l.h;
      if (l.c == 1) {
        for (int64_t b = 0; b < l.width; ++b) std::copy(src + b * stride, src + b * stride + C, dst + b * l.w);
      } else {
        transpose(src, stride, l.width, C, dst, l.c, stream);
      }
    }
  }
  if (stream) _mm_sfence();
}

}  // namespace conv_ext
