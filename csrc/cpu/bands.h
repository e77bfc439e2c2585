// Bands: a few rows of an image, every channel, held channels-innermost in cache for the
// kernels that vectorise across channels (Winograd's transforms, the channels-last GEMM),
// moved from and to the tensors' own layout (NCHW or NHWC) by register transposes.
#pragma once

#include "cpu_features.h"
#include "reduced_rows.h"
#include "vec.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace conv_ext {

// An image's `height` rows in bands for a batch's tasks, `per_image` bands of at most `rows` rows:
// the most rows, up to max_rows, whose band takes at most budget bytes (bytes_per_row per row, on
// top of fixed_bytes), with at least one band per thread; where the batch has few bands, as many
// per image as make every thread's share the same (at batch 1 on 2 threads, 3 bands had left one
// thread twice the other's rows); and their rows as even as they come (first).
struct Bands {
  int64_t height, rows, per_image;

  Bands(int64_t height, int64_t batch, int64_t max_rows, int64_t bytes_per_row, int64_t fixed_bytes, int64_t budget)
      : height(height) {
    rows = std::clamp<int64_t>(max_rows, 1, height);
    while (rows > 1 && rows * bytes_per_row + fixed_bytes > budget) --rows;
    const int64_t threads = at::get_num_threads();
    per_image = std::min(height, std::max((height + rows - 1) / rows, (threads + batch - 1) / batch));
    if (batch * per_image < 4 * threads) {
      for (int64_t more = per_image; more <= std::min(height, 2 * per_image); ++more) {
        if (batch * more % threads == 0) {
          per_image = more;
          break;
        }
      }
    }
    rows = (height + per_image - 1) / per_image;
  }
  // The first row of band b of an image, and its rows.
  int64_t first(int64_t b) const { return b * height / per_image; }
  int64_t rows_of(int64_t b) const { return first(b + 1) - first(b); }
};

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: between NCHW rows and
// the bands' channels-innermost order, float16 or bfloat16 widened to float32 or float32 rounded
// to them on the way where from_t and to_t differ. With stream, where the build can and the types
// are the same, dst's whole cache lines are written with non-temporal stores (for outputs far
// larger than the caches; callers fence with _mm_sfence before other threads read dst).
template <typename from_t, typename to_t = from_t>
using Transpose = void (*)(const from_t* src, int64_t src_stride, int64_t rows, int64_t cols, to_t* dst,
                           int64_t dst_stride, bool stream);

// The wider of a transpose's two types, whose values fill its registers (float32 where one of
// them is float16 or bfloat16).
template <typename from_t, typename to_t>
using Wider = std::conditional_t<(sizeof(from_t) >= sizeof(to_t)), from_t, to_t>;

namespace generic {

template <typename to_t, typename from_t>
to_t value_as(from_t v) {
  if constexpr (std::is_same_v<from_t, to_t> || std::is_same_v<to_t, float>) {
    return static_cast<to_t>(v);
  } else {
    return narrow<to_t>(v);
  }
}

template <typename from_t, typename to_t>
void transpose(const from_t* src, int64_t src_stride, int64_t rows, int64_t cols, to_t* dst, int64_t dst_stride,
               bool /*stream*/ = false) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = value_as<to_t>(src[i * src_stride + j]);
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
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {

// Transpose in blocks of one vector square (8 float32 or 4 float64) transposed in
// registers: element by element, the copies took a third of Winograd's time on 64 channels at
// 56x56 (measured).
inline __m256 load8(const float* src) { return _mm256_loadu_ps(src); }
template <typename io_t>
__m256 load8(const io_t* src) {
  return widen8(src);
}
inline void store8(float* dst, __m256 v) { _mm256_storeu_ps(dst, v); }
template <typename io_t>
void store8(io_t* dst, __m256 v) {
  narrow8(v, dst);
}

// Rows r[i] become columns: the 8 x 8 transpose of float32 in registers.
[[gnu::always_inline]] inline void transpose_in_registers(__m256 (&r)[8]) {
  __m256 t[8];
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
    t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
    t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
  }
  for (int j = 0; j < 8; ++j) r[j] = t[j];
}

// The 4 x 4 of float64.
[[gnu::always_inline]] inline void transpose_in_registers(__m256d (&r)[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20), r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31), r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

template <typename from_t, typename to_t>
void transpose_square(const from_t* src, int64_t src_stride, to_t* dst, int64_t dst_stride) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = load8(src + i * src_stride);
  transpose_in_registers(r);
  for (int j = 0; j < 8; ++j) store8(dst + j * dst_stride, r[j]);
}

inline void transpose_square(const double* src, int64_t src_stride, double* dst, int64_t dst_stride) {
  __m256d r[4];
  for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + i * src_stride);
  transpose_in_registers(r);
  for (int j = 0; j < 4; ++j) _mm256_storeu_pd(dst + j * dst_stride, r[j]);
}

// The first `rows` rows and `cols` columns of a square of float32 or float64, through masked
// loads and partial stores (AVX2 masks no 16-bit values): the edges of a transpose, which element by
// element had taken most of the time of depthwise layers on rows of 7 or 14 pixels.
template <typename T>
void transpose_part(const T* src, int64_t src_stride, int rows, int cols, T* dst, int64_t dst_stride) {
  using V = Vec<T>;
  typename V::type r[V::kLanes];
  for (int i = 0; i < V::kLanes; ++i) r[i] = i < rows ? V::load_first(src + i * src_stride, cols) : V::zero();
  transpose_in_registers(r);
  for (int j = 0; j < cols; ++j) V::store_first(dst + j * dst_stride, r[j], rows);
}

template <typename from_t, typename to_t>
void transpose(const from_t* src, int64_t src_stride, int64_t rows, int64_t cols, to_t* dst, int64_t dst_stride,
               bool /*stream*/ = false) {
  constexpr int64_t B = 32 / sizeof(Wider<from_t, to_t>);
  const int64_t whole_rows = rows / B * B, whole_cols = cols / B * B;
  for_each_square(0, whole_rows, whole_cols, B, src_stride, dst_stride, [&](int64_t i, int64_t j) {
    transpose_square(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
  });
  if constexpr (std::is_same_v<from_t, to_t> && std::is_floating_point_v<from_t>) {
    for (int64_t i = 0; i < rows; i += B) {  // the last column of squares, then the last row
      const int n = static_cast<int>(std::min(B, rows - i));
      for (int64_t j = n == B ? whole_cols : 0; j < cols; j += B) {
        transpose_part(src + i * src_stride + j, src_stride, n, static_cast<int>(std::min(B, cols - j)),
                       dst + j * dst_stride + i, dst_stride);
      }
    }
  } else {
    generic::transpose(src + whole_cols, src_stride, whole_rows, cols - whole_cols, dst + whole_cols * dst_stride, dst_stride);
    generic::transpose(src + whole_rows * src_stride, src_stride, rows - whole_rows, cols, dst + whole_rows, dst_stride);
  }
}

}  // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 shuffles start their results from a deliberately undefined vector, which
// -Wuninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")
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

// Rows r[i] (16 dwords each) become columns: a 16 x 16 transpose of 32-bit values. Always
// inlined, as the 8 x 8 below: with the float16 and bfloat16 transposes in a unit, GCC stopped
// inlining it, and its registers went through memory (3x3 256 @14's forward ~5% slower).
[[gnu::always_inline]] inline void transpose_16x16(__m512i r[16]) {
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
[[gnu::always_inline]] inline void transpose_8x8(__m512i r[8]) {
  for (int i = 0; i < 8; i += 2) {  // r[i + e], 128-bit lane L: column 2L + e of rows i, i + 1
    const __m512i lo = _mm512_unpacklo_epi64(r[i], r[i + 1]), hi = _mm512_unpackhi_epi64(r[i], r[i + 1]);
    r[i] = lo;
    r[i + 1] = hi;
  }
  for (int e = 0; e < 2; ++e) transpose_lanes(r[e], r[2 + e], r[4 + e], r[6 + e]);
}

// A square's row as 512 bits: float32 and float64 as they are, float16 and bfloat16 widened to
// float32; with a mask, the values outside it zero (and not read).
template <typename T>
__m512i load_row(const T* src) {
  if constexpr (std::is_floating_point_v<T>) {
    return _mm512_loadu_si512(src);
  } else {
    return _mm512_castps_si512(widen16(src, 0xFFFF));
  }
}
template <typename T>
__m512i load_row(const T* src, unsigned mask) {
  if constexpr (std::is_same_v<T, double>) {
    return _mm512_maskz_loadu_epi64(static_cast<__mmask8>(mask), src);
  } else if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>(mask), src);
  } else {
    return _mm512_castps_si512(widen16(src, static_cast<__mmask16>(mask)));
  }
}

// The other way: a row stored as T (float32 rounded to float16 or bfloat16); non-temporally when
// stream (T float32 or float64, dst 64-byte aligned), or only the values in a mask.
template <typename T>
void store_row(T* dst, __m512i v, bool stream) {
  if constexpr (!std::is_floating_point_v<T>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), narrow16(_mm512_castsi512_ps(v), dst));
  } else if (stream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
  } else {
    _mm512_storeu_si512(dst, v);
  }
}
template <typename T>
void store_row_masked(T* dst, __m512i v, unsigned mask) {
  if constexpr (std::is_same_v<T, double>) {
    _mm512_mask_storeu_epi64(dst, static_cast<__mmask8>(mask), v);
  } else if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_epi32(dst, static_cast<__mmask16>(mask), v);
  } else {
    _mm256_mask_storeu_epi16(dst, static_cast<__mmask16>(mask), narrow16(_mm512_castsi512_ps(v), dst));
  }
}

// Values of a transpose's registers per row: 16 float32 (however stored) or 8 float64.
template <typename from_t, typename to_t>
constexpr int64_t kSquare = 64 / sizeof(Wider<from_t, to_t>);

// One square (a cache line of float32 or float64) through the registers; each of its rows is
// a row of dst, stored non-temporally when stream (dst then 64-byte aligned).
template <typename from_t, typename to_t>
void transpose_square(const from_t* src, int64_t src_stride, to_t* dst, int64_t dst_stride, bool stream) {
  constexpr int B = kSquare<from_t, to_t>;
  __m512i r[B];
  for (int i = 0; i < B; ++i) r[i] = load_row(src + i * src_stride);
  if constexpr (B == 16) {
    transpose_16x16(r);
  } else {
    transpose_8x8(r);
  }
  for (int j = 0; j < B; ++j) store_row(dst + j * dst_stride, r[j], stream);
}

// The first `rows` rows and `cols` columns of a square (each at most a line), through masked
// loads and stores: the edges of a transpose, which element by element had taken most of a
// band's time on rows of 7 or 14 pixels.
template <typename from_t, typename to_t>
void transpose_part(const from_t* src, int64_t src_stride, int rows, int cols, to_t* dst, int64_t dst_stride) {
  constexpr int B = kSquare<from_t, to_t>;
  const unsigned col_mask = (1u << cols) - 1, row_mask = (1u << rows) - 1;
  __m512i r[B];
  for (int i = 0; i < B; ++i) r[i] = i < rows ? load_row(src + i * src_stride, col_mask) : _mm512_setzero_si512();
  if constexpr (B == 16) {
    transpose_16x16(r);
  } else {
    transpose_8x8(r);
  }
  for (int j = 0; j < cols; ++j) store_row_masked(dst + j * dst_stride, r[j], row_mask);
}

// Rows [r0, r1) and columns [c0, c1) of src in transpose_part's pieces.
template <typename from_t, typename to_t>
void transpose_parts(const from_t* src, int64_t src_stride, int64_t r0, int64_t r1, int64_t c0, int64_t c1, to_t* dst,
                     int64_t dst_stride) {
  constexpr int64_t B = kSquare<from_t, to_t>;
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
template <typename from_t, typename to_t>
void transpose(const from_t* src, int64_t src_stride, int64_t rows, int64_t cols, to_t* dst, int64_t dst_stride,
               bool stream) {
  constexpr int64_t B = kSquare<from_t, to_t>;
  const auto address = reinterpret_cast<uintptr_t>(dst);
  stream = stream && std::is_same_v<from_t, to_t> && dst_stride % B == 0;
  const int64_t first = stream ? std::min<int64_t>(rows, (B - address / sizeof(to_t) % B) % B) : 0;
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
template <typename from_t, typename to_t = from_t>
Transpose<from_t, to_t> transpose_for_this_cpu() {
  return use_avx512()  ? &avx512::transpose<from_t, to_t>
         : use_avx2() ? &avx2::transpose<from_t, to_t>
                      : &generic::transpose<from_t, to_t>;
}

// How a kernel moves its bands from a tensor of from_t into to_t (or back): NCHW planes by this
// CPU's transposes, NHWC pixels' runs of channels by its row conversions. Resolved once per
// call of a kernel rather than per band (cpu_isa reads the environment).
template <typename from_t, typename to_t = from_t>
struct BandMoves {
  Transpose<from_t, to_t> transpose = transpose_for_this_cpu<from_t, to_t>();
  ConvertRow<from_t, to_t> convert = convert_row_for_this_cpu<from_t, to_t>();
};

// fn(compute, io) for a tensor of dtype: io a value of its element type (float64, float32,
// float16 or bfloat16), compute one of the type the kernels on its bands compute in (float32 for
// float16 and bfloat16, which the bands widen as they read them and round as they store them).
template <typename Fn>
void dispatch_band_types(at::ScalarType dtype, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "conv_ext_bands",
                                  [&] { fn(at::opmath_type<scalar_t>{}, scalar_t{}); });
}

// t's options with the kernels' compute type as the dtype.
template <typename scalar_t>
at::TensorOptions compute_options(const at::Tensor& t) {
  return t.options().dtype(c10::CppTypeToScalarType<scalar_t>::value);
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
// pixel's channel c0: channels-innermost, whatever the tensor's layout, widened on the way where
// the tensor holds float16 or bfloat16 (io_t). Reading them so in place spares a widened copy of
// the tensor, 15-20% of a bfloat16 Winograd layer (64 ch @56, measured).
template <typename io_t, typename scalar_t>
void gather_channels(const BandMoves<io_t, scalar_t>& moves, const io_t* src, const Layout& l, int64_t pixels,
                     int64_t count, scalar_t* dst, int64_t dst_stride) {
  if (l.c != 1) {  // NCHW (l.w == 1): the pixels are a run of each channel's plane
    moves.transpose(src, l.c, count, pixels, dst, dst_stride, false);
  } else {  // NHWC: each pixel's channels are a run
    for (int64_t p = 0; p < pixels; ++p) {
      if constexpr (std::is_same_v<io_t, scalar_t>) {
        std::copy(src + p * l.w, src + p * l.w + count, dst + p * dst_stride);
      } else {
        moves.convert(src + p * l.w, count, dst + p * dst_stride);
      }
    }
  }
}

// The other way: the value of channel j at pixel p of a run of pixels of dst (layout l) =
// src[p * src_stride + j], rounded where the tensor holds float16 or bfloat16; streamed (see
// Transpose) when stream.
template <typename scalar_t, typename io_t>
void scatter_channels(const BandMoves<scalar_t, io_t>& moves, const scalar_t* src, int64_t src_stride, int64_t pixels,
                      int64_t count, io_t* dst, const Layout& l, bool stream) {
  if (l.c != 1) {
    moves.transpose(src, src_stride, pixels, count, dst, l.c, stream);
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      if constexpr (std::is_same_v<io_t, scalar_t>) {
        std::copy(src + p * src_stride, src + p * src_stride + count, dst + p * l.w);
      } else {
        moves.convert(src + p * src_stride, count, dst + p * l.w);
      }
    }
  }
}

// band[a][b][c] = x[n, c, row0 + a, col0 + b] for a < rows and b < band_w, zero outside the
// image: the tiles' blocks read it channels-innermost, whatever x's layout (NHWC or NCHW), x's
// float16 or bfloat16 (io_t) widened to the band's float32. The band's pixels band_c values
// apart (the channels, unless given more: the values past them zero).
template <typename io_t, typename scalar_t>
void fill_band(const BandMoves<io_t, scalar_t>& moves, const io_t* x, const Layout& l, int64_t n, int64_t row0, int64_t rows,
               int64_t col0, int64_t band_w, scalar_t* band, int64_t band_c = 0) {
  const int64_t C = l.channels, pixel = std::max(band_c, C);
  const int64_t b_begin = std::max<int64_t>(0, -col0), b_end = std::min(band_w, l.width - col0);
  for (int64_t a = 0; a < rows; ++a) {
    scalar_t* row = band + a * band_w * pixel;
    const int64_t ih = row0 + a;
    if (ih < 0 || ih >= l.height || b_end <= b_begin) {
      std::fill(row, row + band_w * pixel, scalar_t(0));
      continue;
    }
    // Zero only what the gather leaves: the columns outside the image, the values past C.
    std::fill(row, row + b_begin * pixel, scalar_t(0));
    std::fill(row + b_end * pixel, row + band_w * pixel, scalar_t(0));
    for (int64_t b = b_begin; b < b_end && pixel > C; ++b) std::fill(row + b * pixel + C, row + (b + 1) * pixel, scalar_t(0));
    gather_channels(moves, x + n * l.n + ih * l.h + (col0 + b_begin) * l.w, l, b_end - b_begin, C, row + b_begin * pixel,
                    pixel);
  }
}

// y[n, c, row0 + a, b] = band[a][b][c] for the rows and columns that exist, the band's pixels
// band_c >= channels values apart, rounded where y holds float16 or bfloat16 (io_t); streamed
// (see Transpose) when stream. Into NCHW, a band as wide as the image moves as one run of pixels
// per channel, whose lines the squares fill whole.
template <typename scalar_t, typename io_t>
void store_band(const BandMoves<scalar_t, io_t>& moves, const scalar_t* band, int64_t rows, int64_t band_w, io_t* y,
                const Layout& l, int64_t n, int64_t row0, int64_t band_c, bool stream) {
  const int64_t C = l.channels;
  rows = std::min(rows, l.height - row0);
  io_t* y_rows = y + n * l.n + row0 * l.h;
  if (l.c != 1 && band_w == l.width && l.h == l.width) {
    scatter_channels(moves, band, band_c, rows * l.width, C, y_rows, l, stream);
  } else {
    for (int64_t a = 0; a < rows; ++a) {
      scatter_channels(moves, band + a * band_w * band_c, band_c, l.width, C, y_rows + a * l.h, l, stream);
    }
  }
  if (stream) _mm_sfence();
}

}  // namespace conv_ext
